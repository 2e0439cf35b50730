"""The compound's command ledger: every command id it has seen, where each command stands, what to report.

At most once, across restarts: an order is admitted by inserting its id (a second delivery of the
same id finds the row and is not executed again), and the executor *claims* a queued command by
moving it to ``sent`` in one transaction before anything goes to the device. A gateway that dies
between the claim and the device's answer does not send it again on restart: the command ends
``failed`` ("interrupted"), because the device may or may not have moved, and a barrier opened
twice is worse than an operator told to look. Ids are kept ``KEEP_IDS`` (longer than any order may
live, ``uplink.commands.MAX_LIFETIME``), so a redelivery older than that is expired, not run.

Every state a command reaches is also a row of ``command_reports``, sent up to the district by the
command service and marked when the broker acknowledged it: a report survives a restart or an
unreachable district and goes up when it can.

One SQLite file (``<state>/commands.db``) through ``foundation.sqlite_thread``: nothing blocks the loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from foundation.commands import ActuatorState, CommandAction
from foundation.sqlite_thread import SqliteBacked, transaction
from uplink.commands import (
    FINAL_STATES,
    MAX_LIFETIME,
    CommandOrder,
    CommandOrigin,
    CommandReport,
    CommandState,
)

KEEP_IDS = MAX_LIFETIME + timedelta(days=1)
"""How long a command id is remembered after its order was received (its expiry is sooner)."""

INTERRUPTED = "interrupted by a gateway restart before the device's answer; not sent again (at most once)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, action TEXT NOT NULL,
    channel INTEGER NOT NULL, clip INTEGER, origin TEXT NOT NULL, issued_by TEXT NOT NULL, role TEXT NOT NULL,
    reason TEXT NOT NULL,
    issued_at TEXT NOT NULL, expires_at TEXT NOT NULL, received_at TEXT NOT NULL,
    state TEXT NOT NULL, updated_at TEXT NOT NULL, detail TEXT, rule TEXT);
CREATE INDEX IF NOT EXISTS commands_by_state ON commands (state, received_at);
CREATE TABLE IF NOT EXISTS command_reports (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, command_id TEXT NOT NULL, report TEXT NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS command_reports_unsent ON command_reports (reported, seq);
"""


@dataclass(frozen=True)
class Step:
    """A state a command reached, with what is known about it.

    Attributes:
        state: the state.
        detail: why it failed, expired or was refused.
        rule: the compound's policy rule that refused it.
        device_code: the vendor's status code, when the device gave one.
        observed: the state read back from the device.
    """

    state: CommandState
    detail: str | None = None
    rule: str | None = None
    device_code: str | None = None
    observed: ActuatorState | None = None


@dataclass(frozen=True)
class Admission:
    """What admitting an order did.

    Attributes:
        new: the id was unknown: the order is now in the ledger (queued, or expired already).
        state: the command's state now (for a known id: whatever it reached before).
    """

    new: bool
    state: CommandState


@dataclass(frozen=True)
class LedgerEntry:
    """A command as the ledger holds it."""

    order: CommandOrder
    origin: CommandOrigin
    state: CommandState
    received_at: datetime
    updated_at: datetime
    detail: str | None
    rule: str | None


def _report(order: CommandOrder, origin: CommandOrigin, step: Step, at: datetime) -> CommandReport:
    return CommandReport(
        command_id=order.command_id,
        device_id=order.device_id,
        action=order.action,
        state=step.state,
        at=at,
        origin=origin,
        issued_by=order.issued_by,
        reason=step.detail[:256] if step.detail else None,
        rule=step.rule[:64] if step.rule else None,
        device_code=step.device_code[:64] if step.device_code else None,
        observed=step.observed,
    )


def _append_report(db: sqlite3.Connection, report: CommandReport) -> None:
    db.execute(
        "INSERT INTO command_reports (command_id, report) VALUES (?, ?)",
        (report.command_id, report.model_dump_json(exclude_none=True)),
    )


def _order_of(row: Sequence[Any]) -> CommandOrder:
    command_id, device_id, action, channel, clip, _, issued_by, role, reason, issued_at, expires_at = row[:11]
    return CommandOrder(
        command_id=command_id,
        device_id=device_id,
        action=CommandAction(action),
        channel=channel,
        clip=clip,
        issued_by=issued_by,
        role=role,
        reason=reason,
        issued_at=datetime.fromisoformat(issued_at),
        expires_at=datetime.fromisoformat(expires_at),
    )


_COLUMNS = (
    "command_id, device_id, action, channel, clip, origin, issued_by, role, reason, issued_at, expires_at,"
    " state, received_at, updated_at, detail, rule"
)


def _entry_of(row: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(
        order=_order_of(row),
        origin=CommandOrigin(row[5]),
        state=CommandState(row[11]),
        received_at=datetime.fromisoformat(row[12]),
        updated_at=datetime.fromisoformat(row[13]),
        detail=row[14],
        rule=row[15],
    )


class CommandLedger(SqliteBacked):
    """Every command id the compound has seen, its state, and the reports still to send up."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA, "command-ledger")

    async def known(self, command_id: str) -> CommandState | None:
        """The state of a command id seen before, or None."""

        def read(db: sqlite3.Connection) -> CommandState | None:
            row = db.execute("SELECT state FROM commands WHERE command_id = ?", (command_id,)).fetchone()
            return None if row is None else CommandState(row[0])

        return await self._file.call(read)

    async def admit(
        self,
        order: CommandOrder,
        origin: CommandOrigin,
        now: datetime,
        *,
        refused: tuple[str, str] | None = None,
    ) -> Admission:
        """Record a new order; a known id changes nothing.

        It is ``queued``, or ``expired`` if it arrived too late, or ``refused`` with ``refused`` =
        (rule, reason) as judged by the caller: in one transaction, so a restart never finds a
        refused command queued.
        """

        def write(db: sqlite3.Connection) -> Admission:
            with transaction(db):
                known = db.execute(
                    "SELECT state FROM commands WHERE command_id = ?", (order.command_id,)
                ).fetchone()
                if known is not None:
                    return Admission(new=False, state=CommandState(known[0]))
                rule: str | None = None
                detail: str | None = None
                state = CommandState.QUEUED
                if order.expired(now):
                    state = CommandState.EXPIRED
                    detail = f"arrived at {now.isoformat()}, after its expiry {order.expires_at.isoformat()}"
                elif refused is not None:
                    state, (rule, detail) = CommandState.REFUSED, refused
                db.execute(
                    f"INSERT INTO commands ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608 - our columns
                    (
                        order.command_id,
                        order.device_id,
                        order.action.value,
                        order.channel,
                        order.clip,
                        origin.value,
                        order.issued_by,
                        order.role,
                        order.reason,
                        order.issued_at.isoformat(),
                        order.expires_at.isoformat(),
                        state.value,
                        now.isoformat(),
                        now.isoformat(),
                        detail,
                        rule,
                    ),
                )
                _append_report(db, _report(order, origin, Step(state, detail, rule), now))
                return Admission(new=True, state=state)

        return await self._file.call(write)

    async def claim(self, command_id: str, now: datetime) -> LedgerEntry | None:
        """Move a queued command to ``sent`` before it goes to the device; None: not to be sent.

        A command that is no longer queued (sent, final) is not claimed; one whose expiry has
        passed while it waited ends ``expired`` instead.
        """

        def write(db: sqlite3.Connection) -> LedgerEntry | None:
            with transaction(db):
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM commands WHERE command_id = ?",  # noqa: S608 - our columns
                    (command_id,),
                ).fetchone()
                if row is None or row[11] != CommandState.QUEUED.value:
                    return None
                entry = _entry_of(row)
                if entry.order.expired(now):
                    detail = f"its expiry {entry.order.expires_at.isoformat()} passed while it waited"
                    self._move(db, entry, Step(CommandState.EXPIRED, detail), now)
                    return None
                self._move(db, entry, Step(CommandState.SENT), now)
                return LedgerEntry(
                    entry.order, entry.origin, CommandState.SENT, entry.received_at, now, None, None
                )

        return await self._file.call(write)

    async def advance(self, command_id: str, step: Step, now: datetime) -> bool:
        """Record the next state of a command that is not final yet; False if it was final or unknown."""

        def write(db: sqlite3.Connection) -> bool:
            with transaction(db):
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM commands WHERE command_id = ?",  # noqa: S608 - our columns
                    (command_id,),
                ).fetchone()
                if row is None or CommandState(row[11]) in FINAL_STATES:
                    return False
                self._move(db, _entry_of(row), step, now)
                return True

        return await self._file.call(write)

    @staticmethod
    def _move(db: sqlite3.Connection, entry: LedgerEntry, step: Step, now: datetime) -> None:
        db.execute(
            "UPDATE commands SET state = ?, updated_at = ?, detail = ?, rule = ? WHERE command_id = ?",
            (step.state.value, now.isoformat(), step.detail, step.rule, entry.order.command_id),
        )
        _append_report(db, _report(entry.order, entry.origin, step, now))

    async def recover(self, now: datetime) -> tuple[list[LedgerEntry], int]:
        """On start: the queued commands to execute (oldest first), and how many in-flight ones were failed.

        In-flight commands (sent or acknowledged when the gateway stopped) are never sent again.
        """

        def write(db: sqlite3.Connection) -> tuple[list[LedgerEntry], int]:
            with transaction(db):
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM commands WHERE state IN (?, ?, ?) ORDER BY received_at",  # noqa: S608 - our columns
                    (CommandState.QUEUED.value, CommandState.SENT.value, CommandState.ACKNOWLEDGED.value),
                ).fetchall()
                queued: list[LedgerEntry] = []
                interrupted = 0
                for row in rows:
                    entry = _entry_of(row)
                    if entry.state is CommandState.QUEUED:
                        queued.append(entry)
                    else:
                        self._move(db, entry, Step(CommandState.FAILED, INTERRUPTED), now)
                        interrupted += 1
                return queued, interrupted

        return await self._file.call(write)

    async def queued(self, limit: int = 1000) -> list[LedgerEntry]:
        """Commands accepted and not yet claimed, oldest first (the sweep's backlog)."""

        def read(db: sqlite3.Connection) -> list[LedgerEntry]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM commands WHERE state = ? ORDER BY received_at LIMIT ?",  # noqa: S608 - our columns
                (CommandState.QUEUED.value, limit),
            ).fetchall()
            return [_entry_of(row) for row in rows]

        return await self._file.call(read)

    async def entry(self, command_id: str) -> LedgerEntry | None:
        """One command as the ledger holds it."""

        def read(db: sqlite3.Connection) -> LedgerEntry | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM commands WHERE command_id = ?",  # noqa: S608 - our columns
                (command_id,),
            ).fetchone()
            return None if row is None else _entry_of(row)

        return await self._file.call(read)

    async def unreported(self, limit: int = 100) -> list[tuple[int, CommandReport]]:
        """Reports not yet acknowledged by the district broker, oldest first."""

        def read(db: sqlite3.Connection) -> list[tuple[int, CommandReport]]:
            rows = db.execute(
                "SELECT seq, report FROM command_reports WHERE reported = 0 ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
            return [(seq, CommandReport.model_validate_json(body)) for seq, body in rows]

        return await self._file.call(read)

    async def mark_reported(self, seqs: Sequence[int]) -> None:
        """The broker acknowledged these reports."""
        if not seqs:
            return
        chunk = list(seqs)

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.executemany("UPDATE command_reports SET reported = 1 WHERE seq = ?", [(s,) for s in chunk])

        await self._file.call(write)

    async def purge(self, now: datetime, keep: timedelta = KEEP_IDS) -> int:
        """Forget final commands received more than ``keep`` ago (never less than ``KEEP_IDS``), and their sent reports."""
        before = (now - max(keep, KEEP_IDS)).isoformat()
        finals = [s.value for s in FINAL_STATES]

        def write(db: sqlite3.Connection) -> int:
            with transaction(db):
                slots = ",".join("?" * len(finals))
                gone = db.execute(
                    f"DELETE FROM commands WHERE received_at < ? AND state IN ({slots})",  # noqa: S608 - placeholders only
                    (before, *finals),
                ).rowcount
                db.execute(
                    "DELETE FROM command_reports WHERE reported = 1 AND command_id NOT IN (SELECT command_id FROM commands)"
                )
                return gone

        return await self._file.call(write)

    async def counts(self) -> dict[str, int]:
        """Commands per state (metrics)."""

        def read(db: sqlite3.Connection) -> dict[str, int]:
            return dict(db.execute("SELECT state, count(*) FROM commands GROUP BY state").fetchall())

        return await self._file.call(read)
