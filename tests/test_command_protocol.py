"""The command contract on the uplink (``uplink/commands.py``) and the district broker's ACL for it.

The ACL tests run the shipped ``deploy/mosquitto/district.conf`` and ``acl`` on a real Mosquitto
with TLS client certificates (CN = MQTT user name), as ``tests/test_evidence_acl.py`` does for
evidence.
"""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta

import aiomqtt
import pytest

from device_sims.inventory import DISTRICT_ID
from foundation.commands import ActuatorState, CommandAction
from foundation.errors import PayloadRejected
from foundation.events import utc_now
from tests.command_orders import BARRIER, barrier_open
from tests.test_district_tls import C1, C2, ROOT, District, district, make_certs, received
from tests.test_evidence_acl import _reload_acl
from uplink.commands import (
    MAX_LIFETIME,
    CommandOrder,
    CommandOrigin,
    CommandReport,
    CommandState,
    decode_order,
    decode_report,
    encode_json,
    order_topic,
    report_filter,
    report_topic,
)

__all__ = ["district"]  # the fixture, imported for pytest

PREFIX = "cgw/v1"
DESK = "district-commands"


def order(command_id: str = "cmd-0001", *, lifetime: timedelta = timedelta(seconds=60)) -> CommandOrder:
    """A barrier open from the district."""
    return barrier_open(command_id, lifetime=lifetime)


def test_an_order_and_a_report_survive_the_wire() -> None:
    sent = order()
    assert decode_order(encode_json(sent)) == sent
    report = CommandReport(
        command_id=sent.command_id,
        device_id=sent.device_id,
        action=sent.action,
        state=CommandState.FAILED,
        at=utc_now(),
        origin=CommandOrigin.DISTRICT,
        issued_by=sent.issued_by,
        reason="the barrier answered OK and did not move",
        observed=ActuatorState.CLOSED,
    )
    assert decode_report(encode_json(report)) == report


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"action": "explode"}, "action"),
        ({"command_id": "bad id with spaces"}, "command_id"),
        ({"device_id": "123"}, "device_id"),
        ({"reason": ""}, "reason"),
        ({"extra": 1}, "extra"),
        ({"channel": 0}, "channel"),
    ],
)
def test_a_bad_order_is_rejected_naming_the_field(change: dict[str, object], field: str) -> None:
    document = json.loads(encode_json(order())) | change
    with pytest.raises(PayloadRejected) as caught:
        decode_order(json.dumps(document).encode())
    assert caught.value.rejection.field == field


def test_an_order_expires_after_it_was_issued_and_not_too_far_ahead() -> None:
    """An expiry at or before the issue, or beyond ``MAX_LIFETIME``, is refused; ``expired`` is exact."""
    with pytest.raises(ValueError, match="after issued_at"):
        order(lifetime=timedelta(0))
    with pytest.raises(ValueError, match="at most"):
        order(lifetime=MAX_LIFETIME + timedelta(seconds=1))
    sent = order(lifetime=MAX_LIFETIME)
    assert not sent.expired(sent.expires_at - timedelta(microseconds=1))
    assert sent.expired(sent.expires_at)


def test_not_json_is_rejected() -> None:
    with pytest.raises(PayloadRejected) as caught:
        decode_order(b"\xff not json")
    assert caught.value.rejection.reason == "malformed_json"


def _certs(district: District) -> None:
    make_certs(district.certs, DESK)
    for key in district.certs.glob("*.key"):
        key.chmod(0o644)


@pytest.mark.parametrize(
    "acl",
    [
        "shipped",
        pytest.param(
            "too_broad",
            marks=pytest.mark.xfail(
                strict=True, reason="every compound reads every order", raises=AssertionError
            ),
        ),
    ],
)
async def test_a_compound_cannot_read_another_compounds_commands(district: District, acl: str) -> None:
    """The desk orders both compounds; each receives exactly its own order, nothing of the other's.

    Teeth: ``too_broad`` adds ``pattern read cgw/v1/+/+/request/+`` (strict xfail): C1 then
    receives C2's order and the exact comparison fails.
    """
    _certs(district)
    if acl == "too_broad":
        shipped = (district.certs / "acl").read_text(encoding="utf-8")
        await _reload_acl(district, shipped + "\npattern read cgw/v1/+/+/request/+\n")
    async with district.client(DESK) as desk, district.client(C1) as first, district.client(C2) as second:
        await first.subscribe(f"{PREFIX}/#", qos=1)
        await second.subscribe(f"{PREFIX}/#", qos=1)
        await desk.subscribe(report_filter(PREFIX), qos=1)
        for compound in (C1, C2):
            await desk.publish(
                order_topic(PREFIX, DISTRICT_ID, compound), encode_json(order(f"cmd-{compound[-4:]}")), qos=1
            )
        got_first = await received(first, 1.0)
        got_second = await received(second, 0.5)
    assert [decode_order(body).command_id for _, body in got_first] == [f"cmd-{C1[-4:]}"]
    assert [decode_order(body).command_id for _, body in got_second] == [f"cmd-{C2[-4:]}"]


async def test_only_the_desk_orders_and_a_compound_reports_only_as_itself(district: District) -> None:
    """C1 ordering C2's devices, or reporting as C2, is dropped; the desk sees the genuine reports only.

    Broken on purpose once by adding ``pattern write cgw/v1/+/+/request/command``: C2 received
    C1's forged order and the empty-list assertion failed.
    """
    _certs(district)
    report = CommandReport(
        command_id="cmd-0001",
        device_id=BARRIER,
        action=CommandAction.BARRIER_OPEN,
        state=CommandState.QUEUED,
        at=utc_now(),
        issued_by="op-wang",
    )
    async with district.client(DESK) as desk, district.client(C1) as first, district.client(C2) as second:
        await desk.subscribe(report_filter(PREFIX), qos=1)
        await second.subscribe(order_topic(PREFIX, DISTRICT_ID, C2), qos=1)
        own = report_topic(PREFIX, DISTRICT_ID, C1)
        await first.publish(own, encode_json(report), qos=1)
        with contextlib.suppress(
            aiomqtt.MqttCodeError
        ):  # v5 brokers may refuse with 0x87 instead of dropping
            await first.publish(report_topic(PREFIX, DISTRICT_ID, C2), encode_json(report), qos=1)
            await first.publish(order_topic(PREFIX, DISTRICT_ID, C2), encode_json(order("cmd-forged")), qos=1)
        got = await received(desk, 1.5)
        forged = await received(second, 0.3)
    assert got == [(own, encode_json(report))]
    assert forged == []


def test_the_shipped_acl_names_the_command_desk() -> None:
    """The desk's account exists in the shipped ACL with exactly its two command rights."""
    acl = (ROOT / "deploy" / "mosquitto" / "acl").read_text(encoding="utf-8")
    section = acl.split(f"user {DESK}\n", 1)[1].split("\n\n", 1)[0].strip().splitlines()
    assert section == ["topic write cgw/v1/+/+/request/command", "topic read cgw/v1/+/+/command/+"]
