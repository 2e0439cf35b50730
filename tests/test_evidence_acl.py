"""Evidence topics on the district broker as deployed: a compound sees only its own requests.

The shipped ``deploy/mosquitto/district.conf`` and ``acl`` run on a real Mosquitto with TLS client
certificates (CN = MQTT user name). The district's evidence desk (``district-evidence``) asks two
compounds for evidence; each compound must receive its own request and nothing of the other's,
and may deliver evidence only under its own name.

Teeth: the ``too_broad`` parameter (strict xfail) runs the same test against an ACL that lets every
compound read every request topic, as a careless ``pattern read cgw/v1/+/+/request/+`` would; the
test then fails because a compound receives its neighbour's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from datetime import timedelta

import aiomqtt
import pytest

from device_sims.inventory import DISTRICT_ID
from foundation.events import utc_now
from tests.test_district_tls import C1, C2, ROOT, District, district, make_certs, received
from uplink.evidence import (
    ANSWER,
    CHUNK,
    EventEvidence,
    EvidenceRequest,
    compound_evidence_topic,
    decode_request,
    encode_json,
    evidence_filter,
    request_topic,
)

__all__ = ["district"]  # the fixture, imported for pytest

PREFIX = "cgw/v1"
DESK = "district-evidence"


def _request(compound: str) -> EvidenceRequest:
    now = utc_now()
    return EvidenceRequest(
        request_id=f"req-{compound[-4:]}-0001",
        subject=EventEvidence(event_id=f"event-of-{compound}"),
        operator="op-wang",
        role="operator",
        reason="thrown-object alarm at 7幢, confirm the floor",
        requested_at=now,
        expires_at=now + timedelta(minutes=15),
    )


async def _reload_acl(district: District, acl_text: str) -> None:
    (district.certs / "acl").write_text(acl_text, encoding="utf-8")
    # the fixture's broker reads the ACL at start; a running Mosquitto reloads it on SIGHUP
    process = district.process
    assert process is not None
    process.send_signal(1)
    await asyncio.sleep(0.5)


@pytest.mark.parametrize(
    "acl",
    [
        "shipped",
        pytest.param(
            "too_broad",
            marks=pytest.mark.xfail(
                strict=True, reason="every compound reads every request", raises=AssertionError
            ),
        ),
    ],
)
async def test_each_compound_receives_only_its_own_evidence_requests(district: District, acl: str) -> None:
    make_certs(district.certs, DESK)
    for key in district.certs.glob("*.key"):
        key.chmod(0o644)
    if acl == "too_broad":
        shipped = (district.certs / "acl").read_text(encoding="utf-8")
        await _reload_acl(district, shipped + "\npattern read cgw/v1/+/+/request/+\n")
    async with (
        district.client(DESK) as desk,
        district.client(C1) as first,
        district.client(C2) as second,
    ):
        # each compound subscribes as widely as it can: the ACL filters what reaches it
        await first.subscribe(f"{PREFIX}/#", qos=1)
        await second.subscribe(f"{PREFIX}/#", qos=1)
        await asyncio.sleep(0.2)
        for compound in (C1, C2):
            await desk.publish(
                request_topic(PREFIX, DISTRICT_ID, compound), encode_json(_request(compound)), qos=1
            )
        got_first = await received(first, 1.0)
        got_second = await received(second, 0.5)
    assert [decode_request(body).subject for _, body in got_first] == [
        EventEvidence(event_id=f"event-of-{C1}")
    ]
    assert [decode_request(body).subject for _, body in got_second] == [
        EventEvidence(event_id=f"event-of-{C2}")
    ]


async def test_a_compound_delivers_evidence_only_under_its_own_name(district: District) -> None:
    """C1 answering as C2 (or sending C2 a request) is dropped by the broker; the desk sees only the genuine ones.

    Broken on purpose once by adding ``pattern write cgw/v1/+/+/evidence/+`` to the ACL: the spoofed
    answer reached the desk and the exact comparison failed.
    """
    make_certs(district.certs, DESK)
    for key in district.certs.glob("*.key"):
        key.chmod(0o644)
    async with (
        district.client(DESK) as desk,
        district.client(C1) as first,
        district.client(C2) as second,
    ):
        await desk.subscribe(evidence_filter(PREFIX), qos=1)
        await second.subscribe(request_topic(PREFIX, DISTRICT_ID, C2), qos=1)
        await asyncio.sleep(0.2)
        own = compound_evidence_topic(PREFIX, DISTRICT_ID, C1, ANSWER)
        spoofed = compound_evidence_topic(PREFIX, DISTRICT_ID, C2, CHUNK)
        await first.publish(own, b"c1's own answer", qos=1)
        with contextlib.suppress(
            aiomqtt.MqttCodeError
        ):  # v5 brokers may refuse with 0x87 instead of dropping
            await first.publish(spoofed, b"c1 pretending to be c2", qos=1)
            await first.publish(request_topic(PREFIX, DISTRICT_ID, C2), encode_json(_request(C2)), qos=1)
        await second.publish(
            compound_evidence_topic(PREFIX, DISTRICT_ID, C2, ANSWER), b"c2's own answer", qos=1
        )
        got = await received(desk, 1.5)
        forged_requests = await received(second, 0.3)
    assert sorted(got) == sorted(
        [
            (own, b"c1's own answer"),
            (compound_evidence_topic(PREFIX, DISTRICT_ID, C2, ANSWER), b"c2's own answer"),
        ]
    )
    assert forged_requests == []


def test_the_shipped_acl_names_the_evidence_desk() -> None:
    """The desk's account exists in the shipped ACL with exactly its two evidence rights."""
    acl = (ROOT / "deploy" / "mosquitto" / "acl").read_text(encoding="utf-8")
    section = acl.split(f"user {DESK}\n", 1)[1].split("\n\n", 1)[0].strip().splitlines()
    assert section == ["topic write cgw/v1/+/+/request/evidence", "topic read cgw/v1/+/+/evidence/+"]
    assert shutil.which("openssl")  # the certificates above came from deploy/make-test-ca.sh
