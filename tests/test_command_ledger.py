"""The compound's command ledger: at most once per id across restarts, never late, every state reported."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from foundation.commands import ActuatorState
from foundation.events import utc_now
from gateway.command_ledger import INTERRUPTED, KEEP_IDS, CommandLedger, Step
from tests.command_orders import barrier_open
from uplink.commands import CommandOrder, CommandOrigin, CommandState


def order(command_id: str, issued: datetime, lifetime: timedelta = timedelta(minutes=1)) -> CommandOrder:
    """A barrier open issued at ``issued``."""
    return barrier_open(command_id, issued=issued, lifetime=lifetime)


async def states_reported(ledger: CommandLedger) -> list[tuple[str, CommandState]]:
    """Every report still to send, as (command id, state)."""
    return [(r.command_id, r.state) for _, r in await ledger.unreported(1000)]


async def test_the_same_id_delivered_three_times_with_a_restart_between_is_sent_once(tmp_path: Path) -> None:
    """Three deliveries of one id, the gateway restarted between the 2nd and 3rd: claimed exactly once.

    Broken on purpose once: with ``claim`` accepting a command in state ``sent`` as well as
    ``queued``, the second claim succeeded and ``claims`` was 2.
    """
    path = tmp_path / "commands.db"
    now = utc_now()
    sent = order("cmd-once", now)
    claims = 0
    async with CommandLedger(path) as ledger:
        first = await ledger.admit(sent, CommandOrigin.DISTRICT, now)
        assert (first.new, first.state) == (True, CommandState.QUEUED)
        claims += await ledger.claim(sent.command_id, now) is not None
        again = await ledger.admit(sent, CommandOrigin.DISTRICT, now)
        assert (again.new, again.state) == (False, CommandState.SENT)
        claims += await ledger.claim(sent.command_id, now) is not None
        # the gateway dies here, before the device answered
    async with CommandLedger(path) as ledger:
        queued, interrupted = await ledger.recover(now)
        assert (queued, interrupted) == ([], 1)
        third = await ledger.admit(sent, CommandOrigin.DISTRICT, now)
        assert (third.new, third.state) == (False, CommandState.FAILED)
        claims += await ledger.claim(sent.command_id, now) is not None
        entry = await ledger.entry(sent.command_id)
        assert entry is not None
        assert (entry.state, entry.detail) == (CommandState.FAILED, INTERRUPTED)
        assert await states_reported(ledger) == [
            ("cmd-once", CommandState.QUEUED),
            ("cmd-once", CommandState.SENT),
            ("cmd-once", CommandState.FAILED),
        ]
    assert claims == 1


async def test_a_command_is_never_executed_after_its_expiry(tmp_path: Path) -> None:
    """Arriving after its expiry (the compound was offline) or waiting past it: expired, never claimed.

    Broken on purpose once: without the expiry check in ``admit`` the late order was queued and
    claimed.
    """
    now = utc_now()
    async with CommandLedger(tmp_path / "commands.db") as ledger:
        late = order("cmd-late", now - timedelta(minutes=5))  # expired 4 minutes ago
        admitted = await ledger.admit(late, CommandOrigin.DISTRICT, now)
        assert (admitted.new, admitted.state) == (True, CommandState.EXPIRED)
        assert await ledger.claim("cmd-late", now) is None
        waiting = order("cmd-waits", now, timedelta(seconds=10))
        await ledger.admit(waiting, CommandOrigin.DISTRICT, now)
        assert await ledger.claim("cmd-waits", now + timedelta(seconds=10)) is None
        entry = await ledger.entry("cmd-waits")
        assert entry is not None
        assert entry.state is CommandState.EXPIRED
        reports = [r for _, r in await ledger.unreported()]
        assert [(r.command_id, r.state) for r in reports] == [
            ("cmd-late", CommandState.EXPIRED),
            ("cmd-waits", CommandState.QUEUED),
            ("cmd-waits", CommandState.EXPIRED),
        ]
        assert reports[0].reason is not None
        assert "after its expiry" in reports[0].reason


async def test_a_queued_command_survives_a_restart_and_states_end_final(tmp_path: Path) -> None:
    """Queued at the stop: executed after the restart; verified is final; reports go once."""
    path = tmp_path / "commands.db"
    now = utc_now()
    async with CommandLedger(path) as ledger:
        await ledger.admit(order("cmd-q", now), CommandOrigin.RULE, now)
    async with CommandLedger(path) as ledger:
        queued, interrupted = await ledger.recover(now)
        assert ([e.order.command_id for e in queued], interrupted) == (["cmd-q"], 0)
        assert queued[0].origin is CommandOrigin.RULE
        claimed = await ledger.claim("cmd-q", now)
        assert claimed is not None
        assert await ledger.advance("cmd-q", Step(CommandState.ACKNOWLEDGED, device_code="200"), now)
        assert await ledger.advance("cmd-q", Step(CommandState.VERIFIED, observed=ActuatorState.OPEN), now)
        assert not await ledger.advance("cmd-q", Step(CommandState.FAILED, "too late to change"), now)
        reports = await ledger.unreported()
        assert [r.state for _, r in reports] == [
            CommandState.QUEUED,
            CommandState.SENT,
            CommandState.ACKNOWLEDGED,
            CommandState.VERIFIED,
        ]
        assert reports[-1][1].observed is ActuatorState.OPEN
        assert reports[2][1].device_code == "200"
        await ledger.mark_reported([seq for seq, _ in reports[:3]])
    async with CommandLedger(path) as ledger:
        assert [r.state for _, r in await ledger.unreported()] == [CommandState.VERIFIED]
        assert await ledger.counts() == {"verified": 1}


async def test_a_redelivery_after_the_id_was_forgotten_is_expired_not_run(tmp_path: Path) -> None:
    """Ids are purged only after ``KEEP_IDS``, longer than any order lives: a late copy is expired."""
    now = utc_now()
    issued = now - KEEP_IDS - timedelta(hours=1)
    old = order("cmd-old", issued)
    async with CommandLedger(tmp_path / "commands.db") as ledger:
        await ledger.admit(old, CommandOrigin.DISTRICT, issued)
        assert await ledger.claim("cmd-old", issued) is not None
        await ledger.advance("cmd-old", Step(CommandState.VERIFIED), issued)
        await ledger.admit(order("cmd-new", now), CommandOrigin.DISTRICT, now)
        await ledger.mark_reported([seq for seq, _ in await ledger.unreported()])
        assert await ledger.purge(now) == 1
        assert await ledger.entry("cmd-old") is None
        assert await ledger.entry("cmd-new") is not None
        again = await ledger.admit(old, CommandOrigin.DISTRICT, now)
        assert (again.new, again.state) == (True, CommandState.EXPIRED)
        assert await ledger.claim("cmd-old", now) is None
