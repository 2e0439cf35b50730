"""District commands: the operator API's ``command`` action, the command desk, the book, the CLI.

The district runs for real (``serve_api`` with both desks on a real Mosquitto, the embedded SQLite
store, the operations database and the command book). The compound is, in the first test, the
real gateway with the simulated LPR camera on its own Mosquitto (as ``tests/test_command_service.py``
runs it); in the finer cases a double written from ``uplink/commands.py`` alone, which records the
orders it receives and reports whatever the test tells it to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from device_sims.broker import Mosquitto
from device_sims.inventory import DISTRICT_ID
from district.command_book import BookState, CommandBook, CommandRecord, Limits, ListFilter, Reported
from district.config import DistrictConfig
from district.query_model import Role
from foundation.commands import ActuatorState, CommandAction
from foundation.errors import TransportError
from foundation.events import utc_now
from foundation.mqtt import MqttSession, SessionOptions
from foundation.supervision import until_first_ends
from gateway.runtime import run_gateway
from tests.command_orders import BARRIER
from tests.district_data import running
from tests.evidence_double import C1, C2, District, alarm, running_district, seed, write_config
from tests.test_command_service import gateway_config
from tests.test_commands import camera, camera_online
from uplink.commands import (
    CommandOrder,
    CommandOrigin,
    CommandReport,
    CommandState,
    decode_order,
    encode_json,
    order_topic,
    report_topic,
)
from uplink.protocol import DEFAULT_PREFIX, status_topic

DEADLINE_S = 60  # generous: the suite shares two cores
REASON = "救护车进入小区 120 急救"
FINAL = {"verified", "failed", "expired", "refused", "no_answer"}


def district_config(workdir: Path, broker: Mosquitto, commands: str = "") -> DistrictConfig:
    """The evidence tests' district with ``commands`` as its ``[commands]`` lines."""
    workdir.mkdir(parents=True, exist_ok=True)
    return write_config(workdir, broker.port, extra=f"\n[commands]\n{commands}\n")


@contextlib.asynccontextmanager
async def district_up(config: DistrictConfig) -> AsyncIterator[District]:
    """The API with both desks subscribed; tokens of ``running_district`` plus staff_c1 and operator_c2.

    ``staff_c1``: a viewer scoped to compound 1 only (property staff); ``operator_c2``: an
    operator scoped to compound 2 only. The barrier camera is known to be compound 1's (an event).
    """
    await seed(config, [alarm("evt-barrier-0001", C1).model_copy(update={"device_id": BARRIER})])
    async with running_district(config) as district:
        district.tokens["staff_c1"] = await district.ops.create_token(
            "staff_c1", Role.VIEWER, DISTRICT_ID, (C1,), "test"
        )
        district.tokens["operator_c2"] = await district.ops.create_token(
            "operator_c2", Role.OPERATOR, DISTRICT_ID, (C2,), "test"
        )
        async with asyncio.timeout(DEADLINE_S):
            while 'cgw_transport_up{transport="command_desk"} 1.0' not in await district.metrics():
                await asyncio.sleep(0.05)
        yield district


async def order(district: District, who: str = "operator", **body: Any) -> tuple[int, Any]:
    """POST /commands: a barrier open with a reason unless ``body`` says otherwise."""
    request = {"device": BARRIER, "action": "barrier_open", "reason": REASON, **body}
    return await district.call(
        "POST", "/commands", who, json={k: v for k, v in request.items() if v is not None}
    )


async def status(district: District, command_id: str, who: str = "operator") -> Any:
    """GET /commands/{id} (200 expected)."""
    code, body = await district.call("GET", f"/commands/{command_id}", who)
    assert code == 200, body
    return body


async def wait_state(district: District, command_id: str, states: set[str]) -> Any:
    """Poll until the command is in one of ``states``; returns its status document."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            document = await status(district, command_id)
            if document["command"]["state"] in states:
                return document
            await asyncio.sleep(0.1)


async def last_audit(district: District) -> Any:
    """The newest audit entry."""
    return (await district.ops.audit_records(limit=1))[0].entry


@dataclass
class CompoundDouble:
    """A compound on the district broker: records the orders it reads, reports what it is told."""

    compound: str
    port: int
    orders: list[CommandOrder] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    session: MqttSession | None = None

    @contextlib.asynccontextmanager
    async def online(self) -> AsyncIterator[CompoundDouble]:
        """Connected with a persistent session (orders sent while it is away wait at the broker)."""
        options = SessionOptions(
            host="127.0.0.1",
            port=self.port,
            client_id=f"compound-{self.compound}",
            clean_start=False,
            session_expiry_s=3600,
        )
        async with MqttSession(options) as session:
            self.session = session
            await session.subscribe(order_topic(DEFAULT_PREFIX, DISTRICT_ID, self.compound), qos=1)

            async def read() -> None:
                async for message in session.messages():
                    self.orders.append(decode_order(message.payload))
                    self.arrived.set()

            task = asyncio.create_task(read(), name=f"double-{self.compound}")
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self.session = None

    async def received(self, count: int) -> list[CommandOrder]:
        """Wait until ``count`` orders arrived."""
        async with asyncio.timeout(DEADLINE_S):
            while len(self.orders) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return list(self.orders)

    async def report(
        self,
        command_id: str,
        state: CommandState,
        *,
        device_id: str = BARRIER,
        as_compound: str | None = None,
        origin: CommandOrigin = CommandOrigin.DISTRICT,
        **extra: Any,
    ) -> None:
        """Publish a report on this compound's report topic (``as_compound``: another's topic)."""
        assert self.session is not None
        report = CommandReport(
            command_id=command_id,
            device_id=device_id,
            action=CommandAction.BARRIER_OPEN,
            state=state,
            at=utc_now(),
            origin=origin,
            issued_by="operator",
            **extra,
        )
        topic = report_topic(DEFAULT_PREFIX, DISTRICT_ID, as_compound or self.compound)
        await self.session.publish(topic, encode_json(report), qos=1)


async def gateway_online(district_broker: Mosquitto) -> None:
    """Wait until compound 1's gateway announced itself online on the district broker (it has subscribed)."""
    async with (
        asyncio.timeout(DEADLINE_S),
        aiomqtt.Client("127.0.0.1", district_broker.port, identifier="test-status-watch") as client,
    ):
        await client.subscribe(status_topic(DEFAULT_PREFIX, DISTRICT_ID, C1), qos=1)
        async for message in client.messages:
            if json.loads(bytes(message.payload)).get("state") == "online":
                return


# ---- end to end ------------------------------------------------------------------------------


async def test_a_remote_barrier_open_goes_through_the_gateway_is_verified_and_audited(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """API -> desk -> district broker -> the real gateway -> the simulated barrier -> verified back.

    The camera's relay moved exactly once, the barrier is open, the book holds every state once in
    the order the compound reached them, and the audit log keeps who, what and why.
    Broken on purpose once: with the desk not recording reports (``apply_report`` returning
    ``DUPLICATE`` without writing) the command stayed ``pending`` and the wait timed out.
    """
    sim = camera()
    gateway = gateway_config(tmp_path, mosquitto, district_broker)
    config = district_config(tmp_path / "district", district_broker)
    async with (
        district_up(config) as district,
        camera_online(mosquitto, sim),
        running(lambda ready: run_gateway(gateway, ready=ready), "gateway"),
    ):
        await gateway_online(district_broker)
        code, issued = await order(district, command_id="cmd-e2e-1")
        assert code == 200, issued
        assert (issued["command_id"], issued["compound_id"], issued["repeated"]) == ("cmd-e2e-1", C1, False)
        done = await wait_state(district, "cmd-e2e-1", FINAL)
        audit = (await district.ops.audit_records(limit=5, action="command"))[0].entry
    assert done["command"]["state"] == "verified"
    assert done["command"]["observed"] == ActuatorState.OPEN.value
    assert [r["state"] for r in done["reports"]] == ["queued", "sent", "acknowledged", "verified"]
    assert (sim.commands_executed, sim.gate_open) == (1, True)
    assert (audit.actor, audit.role, audit.outcome, audit.status, audit.reason) == (
        "operator",
        "operator",
        "ok",
        200,
        REASON,
    )
    assert (audit.filters["device"], audit.filters["action"]) == (BARRIER, "barrier_open")
    assert "reason" not in audit.filters


# ---- who may order ---------------------------------------------------------------------------


async def test_refusals_are_audited_and_never_reach_the_compound(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """No reason: 400; a district-wide viewer: 403; an operator of another compound: 403; each audited.

    A viewer scoped to exactly the barrier's compound (property staff) may order. Only that one
    order reaches the compound. Broken on purpose once: with ``_authorise`` accepting every
    principal, the district-wide viewer's order was 200, not 403.
    """
    config = district_config(tmp_path, district_broker)
    double = CompoundDouble(C1, district_broker.port)
    async with district_up(config) as district, double.online():
        code, body = await order(district, reason=None)
        assert (code, body["error"], body["field"]) == (400, "invalid_query", "reason")
        audit = await last_audit(district)
        assert (audit.action, audit.actor, audit.outcome, audit.status) == (
            "command",
            "operator",
            "invalid_query",
            400,
        )

        code, body = await order(district, "viewer")
        assert (code, body["error"]) == (403, "forbidden"), body
        audit = await last_audit(district)
        assert (audit.action, audit.actor, audit.outcome, audit.reason) == (
            "command",
            "viewer",
            "forbidden",
            REASON,
        )

        code, body = await order(district, "operator_c2")
        assert (code, body["error"]) == (403, "forbidden"), body
        audit = await last_audit(district)
        assert (audit.actor, audit.outcome, audit.status) == ("operator_c2", "forbidden", 403)

        code, body = await order(district, "staff_c1", command_id="cmd-staff-1")
        assert code == 200, body
        orders = await double.received(1)
        await asyncio.sleep(0.5)  # any wrongly sent order has had its time to arrive too
        listed = await district.call("GET", "/commands", "operator")
    assert [(o.command_id, o.issued_by, o.role, o.reason) for o in double.orders] == [
        ("cmd-staff-1", "staff_c1", "viewer", REASON)
    ]
    assert orders[0].action is CommandAction.BARRIER_OPEN
    assert listed[0] == 200
    assert [c["command_id"] for c in listed[1]["commands"]] == ["cmd-staff-1"]


async def test_the_per_token_rate_limit_refuses_a_burst(tmp_path: Path, district_broker: Mosquitto) -> None:
    """With 3 commands per token and minute, the 4th and 5th are 429 (audited); another token still orders.

    Broken on purpose once: with ``issue`` skipping the per-token count, all five were 200.
    """
    config = district_config(
        tmp_path, district_broker, "per_token_per_minute = 3\nper_compound_per_minute = 10"
    )
    double = CompoundDouble(C1, district_broker.port)
    async with district_up(config) as district, double.online():
        codes = [(await order(district, command_id=f"cmd-burst-{i}"))[0] for i in range(5)]
        audit = await last_audit(district)
        other, _ = await order(district, "operator_a", command_id="cmd-other-token")
        await double.received(4)
    assert codes == [200, 200, 200, 429, 429]
    assert (audit.outcome, audit.status) == ("rate_limited", 429)
    assert other == 200
    assert sorted(o.command_id for o in double.orders) == [
        "cmd-burst-0",
        "cmd-burst-1",
        "cmd-burst-2",
        "cmd-other-token",
    ]


async def test_the_same_id_again_returns_the_same_command(tmp_path: Path, district_broker: Mosquitto) -> None:
    """The same id and content: the command already there (one order sent); other content: 409.

    Broken on purpose once: with ``same_order`` always false the retry was 409.
    """
    config = district_config(tmp_path, district_broker)
    double = CompoundDouble(C1, district_broker.port)
    async with district_up(config) as district, double.online():
        first = await order(district, command_id="cmd-retry-1")
        again = await order(district, command_id="cmd-retry-1")
        other = await order(district, command_id="cmd-retry-1", action="barrier_close")
        await double.received(1)
        await asyncio.sleep(0.5)
    assert (first[0], again[0], other[0]) == (200, 200, 409)
    assert (first[1]["repeated"], again[1]["repeated"]) == (False, True)
    assert first[1]["issued_at"] == again[1]["issued_at"]
    assert other[1]["field"] == "command_id"
    assert [o.command_id for o in double.orders] == ["cmd-retry-1"]


# ---- reports ---------------------------------------------------------------------------------


async def test_reports_are_kept_once_and_states_never_go_back(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """Each (command, state) once however often reported; a late ``sent`` after ``verified`` is history only.

    Broken on purpose once: with the rank check removed from ``apply_report`` the command ended
    ``sent``; with ``ON CONFLICT DO NOTHING`` made an upsert no report counted as a duplicate (the
    wait for three timed out).
    """
    config = district_config(tmp_path, district_broker)
    double = CompoundDouble(C1, district_broker.port)
    async with district_up(config) as district, double.online():
        code, _ = await order(district, command_id="cmd-reports-1")
        assert code == 200
        await double.received(1)
        for state in (CommandState.QUEUED, CommandState.QUEUED, CommandState.ACKNOWLEDGED):
            await double.report("cmd-reports-1", state)
        await double.report("cmd-reports-1", CommandState.VERIFIED, observed=ActuatorState.OPEN)
        await double.report("cmd-reports-1", CommandState.VERIFIED, observed=ActuatorState.OPEN)
        await double.report("cmd-reports-1", CommandState.SENT)  # late, out of order
        await double.report("cmd-reports-1", CommandState.VERIFIED, observed=ActuatorState.OPEN)
        async with asyncio.timeout(DEADLINE_S):
            while (
                'cgw_district_command_reports_total{outcome="duplicate"} 3.0' not in await district.metrics()
            ):
                await asyncio.sleep(0.1)
        document = await status(district, "cmd-reports-1")
        metrics = await district.metrics()
    assert document["command"]["state"] == "verified"
    assert document["command"]["observed"] == "open"
    assert sorted(r["state"] for r in document["reports"]) == ["acknowledged", "queued", "sent", "verified"]
    assert 'cgw_district_command_reports_total{outcome="applied"} 3.0' in metrics
    assert 'cgw_district_command_reports_total{outcome="recorded"} 1.0' in metrics


async def test_a_report_from_the_wrong_compound_is_ignored(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """Compound 2 reporting compound 1's command (on its own topic), a wrong device, an unknown id: refused.

    The command stays where compound 1's own report put it; each refusal is counted by reason.
    Broken on purpose once: with the compound check removed from ``_on_report`` compound 2's
    ``failed`` ended the command (the wait for ``queued`` timed out).
    """
    config = district_config(tmp_path, district_broker)
    c1, c2 = CompoundDouble(C1, district_broker.port), CompoundDouble(C2, district_broker.port)
    async with district_up(config) as district, c1.online(), c2.online():
        assert (await order(district, command_id="cmd-c1-1"))[0] == 200
        await c1.received(1)
        await c2.report("cmd-c1-1", CommandState.FAILED, reason="not yours")
        await c1.report("cmd-c1-1", CommandState.QUEUED, device_id="36010400011210000099")
        await c2.report("cmd-nobody", CommandState.VERIFIED)
        await c2.report("rule-shed-fire-1", CommandState.VERIFIED, origin=CommandOrigin.RULE)
        await c1.report("cmd-c1-1", CommandState.QUEUED)
        await wait_state(district, "cmd-c1-1", {"queued"})
        await asyncio.sleep(0.5)
        document = await status(district, "cmd-c1-1")
        metrics = await district.metrics()
    assert document["command"]["state"] == "queued"
    assert [r["state"] for r in document["reports"]] == ["queued"]
    for reason in ("foreign_command", "foreign_device", "unknown_command"):
        assert f'cgw_district_command_rejected_total{{reason="{reason}"}} 1.0' in metrics
    assert 'cgw_district_command_reports_total{outcome="local_rule"} 1.0' in metrics


# ---- the broker away ---------------------------------------------------------------------------


async def test_orders_issued_while_the_broker_is_down_go_when_it_is_back(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """The API answers with the broker stopped; the order waits (pending, unpublished) and goes once it is back.

    An order whose lifetime ran out meanwhile is never sent: it ends ``expired`` at the district.
    Both desks reconnect: with their sessions' loops in a ``TaskGroup`` (as the evidence desk had
    them) neither came back after the restart (see ``test_the_session_loops_leave_no_cancel_request``).
    Broken on purpose once: with ``unpublished`` ignoring the expiry the short-lived order was
    published once the broker was back and never ended ``expired`` (the wait timed out).
    """
    config = district_config(tmp_path, district_broker, "no_answer_grace_s = 0")
    double = CompoundDouble(C1, district_broker.port)
    async with district_up(config) as district:
        async with double.online():
            pass  # its persistent session now waits at the broker for its orders
        district_broker.stop()
        code, waiting = await order(district, command_id="cmd-later-1", lifetime_s=300)
        assert code == 200, waiting
        code, short = await order(district, command_id="cmd-short-1", lifetime_s=1)
        assert code == 200, short
        assert (waiting["state"], waiting["published"]) == ("pending", False)
        await asyncio.sleep(2)  # the short one's lifetime runs out while the broker is away
        district_broker.start()
        expired = await wait_state(district, "cmd-short-1", {"expired"})
        async with double.online():
            orders = await double.received(1)
            await asyncio.sleep(0.5)
        later = await status(district, "cmd-later-1")
        async with asyncio.timeout(DEADLINE_S):  # the evidence desk reconnected too
            while 'cgw_transport_up{transport="evidence_desk"} 1.0' not in await district.metrics():
                await asyncio.sleep(0.1)
    assert [o.command_id for o in orders] == ["cmd-later-1"]
    assert later["command"]["published"] is True
    assert expired["command"]["published"] is False
    assert "never sent" in expired["command"]["detail"]


async def test_the_session_loops_leave_no_cancel_request() -> None:
    """``until_first_ends``: the loop that failed is raised, the other cancelled, and the caller not.

    Broken on purpose once: the same two loops in an ``asyncio.TaskGroup`` (Python 3.11.7) left
    ``cancelling() == 1`` on the caller, which ``supervise`` takes as "stop" (no reconnect).
    """
    cancelled = asyncio.Event()

    async def waits() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise TransportError("disconnected")

    with pytest.raises(TransportError, match="disconnected"):
        await until_first_ends(waits(), fails())
    task = asyncio.current_task()
    assert task is not None
    assert (task.cancelling(), cancelled.is_set()) == (0, True)


# ---- the CLI ---------------------------------------------------------------------------------


async def cli(token: str, *argv: str) -> tuple[int, str]:
    """``compound-gateway <argv>`` in its own process with ``CGW_TOKEN``: (exit status, stdout)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "CGW_TOKEN": token},
    )
    async with asyncio.timeout(DEADLINE_S * 2):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_the_cli_orders_waits_for_the_outcome_and_lists(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """``command barrier open ... --wait`` exits 0 once verified; ``command list`` shows it; a bad reason: 1."""
    config = district_config(tmp_path, district_broker)
    double = CompoundDouble(C1, district_broker.port)
    path = str(tmp_path / "district.toml")
    async with district_up(config) as district, double.online():
        token = district.tokens["operator"]
        argv = [
            "command",
            "barrier",
            "open",
            BARRIER,
            "--reason",
            REASON,
            "--id",
            "cmd-cli-1",
            "--wait",
            "60",
        ]
        ordering = asyncio.create_task(cli(token, *argv, "--config", path, "--format", "json"))
        await double.received(1)
        for state in (CommandState.QUEUED, CommandState.SENT, CommandState.ACKNOWLEDGED):
            await double.report("cmd-cli-1", state)
        await double.report("cmd-cli-1", CommandState.VERIFIED, observed=ActuatorState.OPEN)
        exit_code, shown = await ordering
        listed, page = await cli(token, "command", "list", "--config", path, "--format", "json")
        refused, _ = await cli(token, "command", "door", "open", BARRIER, "--reason", "no", "--config", path)
    assert exit_code == 0
    document = json.loads(shown)
    assert document["command"]["state"] == "verified"
    assert [r["state"] for r in document["reports"]] == ["queued", "sent", "acknowledged", "verified"]
    assert listed == 0
    assert [c["command_id"] for c in json.loads(page)["commands"]] == ["cmd-cli-1"]
    assert refused == 1


async def test_lifetimes_are_bounded_and_defaulted(tmp_path: Path, district_broker: Mosquitto) -> None:
    """The default lifetime is ``[commands] lifetime_s``; more than ``max_lifetime_s`` is 400."""
    config = district_config(tmp_path, district_broker, "lifetime_s = 45\nmax_lifetime_s = 120")
    async with district_up(config) as district:
        code, issued = await order(district, command_id="cmd-life-1")
        too_long, body = await order(district, command_id="cmd-life-2", lifetime_s=121)
    assert code == 200
    lifetime = datetime.fromisoformat(issued["expires_at"]) - datetime.fromisoformat(issued["issued_at"])
    assert lifetime == timedelta(seconds=45)
    assert (too_long, body["field"]) == (400, "lifetime_s")


async def test_a_scoped_token_sees_only_its_compounds_commands(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """``commands`` lists the token's scope only; another compound's command is 404 in ``command_status``.

    Broken on purpose once: with ``command_status`` skipping the ``covers`` check, operator_c2 read
    compound 1's command (200).
    """
    config = district_config(tmp_path, district_broker)
    async with district_up(config) as district:
        assert (await order(district, command_id="cmd-scope-c1"))[0] == 200
        code, body = await order(
            district, command_id="cmd-scope-c2", device="36010400011210000077", compound=C2
        )
        assert code == 200, body
        mine = await district.call("GET", "/commands", "operator_c2")
        everything = await district.call("GET", "/commands", "operator")
        theirs = await district.call("GET", "/commands/cmd-scope-c1", "operator_c2")
        asked = await district.call("GET", "/commands", "operator_c2", compound=C1)
    assert [c["command_id"] for c in mine[1]["commands"]] == ["cmd-scope-c2"]
    assert [c["command_id"] for c in everything[1]["commands"]] == ["cmd-scope-c2", "cmd-scope-c1"]
    assert (theirs[0], theirs[1]["error"]) == (404, "not_found")
    assert asked[0] == 403


async def test_the_book_filters_pages_and_purges(tmp_path: Path) -> None:
    """The book alone: state filters (``no_answer`` read from the expiry), device, paging by row, retention.

    Broken on purpose once: with the ``expires_at > ?`` condition dropped from an open state's filter,
    ``state=pending`` also listed the overdue command.
    """
    now = utc_now()
    grace = timedelta(seconds=30)

    def record(
        command_id: str, *, device: str = BARRIER, age: timedelta = timedelta(0), life: int = 60
    ) -> CommandRecord:
        issued = now - age
        return CommandRecord(
            command_id=command_id,
            district_id=DISTRICT_ID,
            compound_id=C1,
            device_id=device,
            action=CommandAction.BARRIER_OPEN,
            channel=1,
            issued_by="operator",
            role="operator",
            reason=REASON,
            issued_at=issued,
            expires_at=issued + timedelta(seconds=life),
        )

    limits = Limits(per_token=100, per_compound=100)
    async with CommandBook(tmp_path / "commands.db") as book:
        await book.issue(record("old", age=timedelta(days=400)), limits)
        await book.issue(record("overdue", age=timedelta(minutes=5)), limits)
        await book.issue(record("fresh-1"), limits)
        await book.issue(record("fresh-2", device="36010400011210000077"), limits)
        await book.issue(record("done", age=timedelta(minutes=5)), limits)
        report = CommandReport(
            command_id="done",
            device_id=BARRIER,
            action=CommandAction.BARRIER_OPEN,
            state=CommandState.VERIFIED,
            at=now,
            issued_by="operator",
        )
        assert await book.apply_report(report, now) is Reported.APPLIED

        async def ids(**which: Any) -> list[str]:
            before = which.pop("before", None)
            limit = which.pop("limit", 10)
            found = await book.find(ListFilter(**which), now=now, grace=grace, before=before, limit=limit)
            return [r.command_id for r in found]

        assert await ids(state=BookState.NO_ANSWER) == ["overdue", "old"]
        assert await ids(state=BookState.PENDING) == ["fresh-2", "fresh-1"]
        assert await ids(state=BookState.VERIFIED) == ["done"]
        assert await ids(device_id="36010400011210000077") == ["fresh-2"]
        assert await ids(compounds=(C2,)) == []
        first = await book.find(ListFilter(), now=now, grace=grace, before=None, limit=2)
        rest = await ids(before=first[-1].seq)
        assert [r.command_id for r in first] + rest == ["done", "fresh-2", "fresh-1", "overdue", "old"]
        assert await book.purge(now - timedelta(days=365)) == 1
        assert await book.command("old") is None
        assert await book.reports("done") != []


async def test_the_per_compound_rate_limit_counts_every_token(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """With 2 commands per compound and minute, a third from another token is 429; another compound still gets one.

    Broken on purpose once: with ``issue`` skipping the per-compound count, the third was 200.
    """
    config = district_config(
        tmp_path, district_broker, "per_token_per_minute = 10\nper_compound_per_minute = 2"
    )
    async with district_up(config) as district:
        codes = [
            (await order(district, "operator", command_id="cmd-c-1"))[0],
            (await order(district, "staff_c1", command_id="cmd-c-2"))[0],
        ]
        third, body = await order(district, "operator_a", command_id="cmd-c-3")
        elsewhere, _ = await order(
            district, command_id="cmd-c2-1", device="36010400011210000077", compound=C2
        )
    assert codes == [200, 200]
    assert (third, body["error"]) == (429, "rate_limited")
    assert C1 in body["message"]
    assert elsewhere == 200
