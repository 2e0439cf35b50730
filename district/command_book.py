"""The district's command book: every command issued to a compound's device, and what came of it.

One SQLite file (``[commands] book_path``, default ``commands.db`` beside the operations database;
WAL, one thread). It is the queue between the ``command`` action and the command desk, like the
evidence index: the action writes a ``pending`` command, the desk publishes what is not yet
published and not yet expired, and records each report the compound sends::

    pending -> queued -> sent -> acknowledged -> verified
       |         |        |          +--------> failed
       +---------+--------+-------------------> failed | expired | refused

``pending`` is the district's own state (written, not yet taken up by the compound); the others are
the compound's (``uplink.commands.CommandState``). Reports are at least once and may arrive out of
order: each ``(command_id, state)`` is kept once in the history, and a command's state only moves
forwards (a late ``sent`` after ``verified`` changes nothing). A command past its expiry plus
``[commands] no_answer_grace_s`` without a final report is *shown* as ``no_answer`` (a reading, not
a stored state: a late final report still lands).

Issuing is one transaction: the same ``command_id`` again with the same content returns the
command already there; the per-token and per-compound limits count the book's rows of the last
minute (so they hold across API restarts).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from foundation.commands import ActuatorState, CommandAction
from foundation.sqlite_thread import SqliteBacked, transaction
from foundation.sqlite_thread import sortable_time as _iso
from foundation.sqlite_thread import time_from_text as _time
from uplink.commands import FINAL_STATES, CommandReport, CommandState

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY, district_id TEXT NOT NULL, compound_id TEXT NOT NULL,
    device_id TEXT NOT NULL, action TEXT NOT NULL, channel INTEGER NOT NULL, issued_by TEXT NOT NULL,
    role TEXT NOT NULL, reason TEXT NOT NULL, issued_at TEXT NOT NULL, expires_at TEXT NOT NULL,
    published_at TEXT, state TEXT NOT NULL, updated_at TEXT NOT NULL, detail TEXT, rule TEXT,
    observed TEXT, device_code TEXT);
CREATE INDEX IF NOT EXISTS commands_by_issuer ON commands (issued_by, issued_at);
CREATE INDEX IF NOT EXISTS commands_by_compound ON commands (compound_id, issued_at);
CREATE INDEX IF NOT EXISTS commands_by_issued ON commands (issued_at);
CREATE INDEX IF NOT EXISTS commands_by_state ON commands (state);
CREATE TABLE IF NOT EXISTS command_reports (
    command_id TEXT NOT NULL, state TEXT NOT NULL, at TEXT NOT NULL, received_at TEXT NOT NULL,
    reason TEXT, rule TEXT, device_code TEXT, observed TEXT, PRIMARY KEY (command_id, state));
"""


class BookState(StrEnum):
    """Where a command stands as the district sees it."""

    PENDING = "pending"  # written at the district; the compound has not reported it yet
    QUEUED = CommandState.QUEUED.value
    SENT = CommandState.SENT.value
    ACKNOWLEDGED = CommandState.ACKNOWLEDGED.value
    VERIFIED = CommandState.VERIFIED.value
    FAILED = CommandState.FAILED.value
    EXPIRED = CommandState.EXPIRED.value
    REFUSED = CommandState.REFUSED.value
    NO_ANSWER = "no_answer"  # shown only: past its expiry and the grace, and no final report


FINAL = frozenset(BookState(s.value) for s in FINAL_STATES)
"""States a command never leaves."""
_RANK = {
    BookState.PENDING: 0,
    BookState.QUEUED: 1,
    BookState.SENT: 2,
    BookState.ACKNOWLEDGED: 3,
    **dict.fromkeys(FINAL, 4),
}
OPEN_STATES = (BookState.PENDING, BookState.QUEUED, BookState.SENT, BookState.ACKNOWLEDGED)


@dataclass(frozen=True)
class CommandRecord:
    """One command as the book keeps it."""

    command_id: str
    district_id: str
    compound_id: str
    device_id: str
    action: CommandAction
    channel: int
    issued_by: str
    role: str
    reason: str
    issued_at: datetime
    expires_at: datetime
    state: BookState = BookState.PENDING
    updated_at: datetime | None = None
    published_at: datetime | None = None
    detail: str | None = None
    rule: str | None = None
    observed: ActuatorState | None = None
    device_code: str | None = None
    seq: int = 0  # the book's row number: the list's cursor

    def same_order(self, other: CommandRecord) -> bool:
        """Whether ``other`` asks for the same thing (an issuer's retry, not a new command)."""
        return (
            self.compound_id,
            self.device_id,
            self.action,
            self.channel,
            self.issued_by,
            self.reason,
        ) == (other.compound_id, other.device_id, other.action, other.channel, other.issued_by, other.reason)

    def shown_state(self, now: datetime, grace: timedelta) -> BookState:
        """The state to show: ``no_answer`` once it is overdue without a final report."""
        if self.state not in FINAL and now >= self.expires_at + grace:
            return BookState.NO_ANSWER
        return self.state


@dataclass(frozen=True)
class ReportRecord:
    """One state a compound reported for a command (kept once, however often it came)."""

    state: BookState
    at: datetime
    received_at: datetime
    reason: str | None = None
    rule: str | None = None
    device_code: str | None = None
    observed: ActuatorState | None = None


class Issued(StrEnum):
    """What ``issue`` did."""

    CREATED = "created"
    EXISTING = "existing"  # the same id with the same content: the command already there
    CONFLICT = "conflict"  # the same id with other content
    TOKEN_LIMIT = "token_limit"
    COMPOUND_LIMIT = "compound_limit"


class Reported(StrEnum):
    """What ``apply_report`` did with a report."""

    APPLIED = "applied"  # a new state, and the command moved to it
    RECORDED = "recorded"  # a new state in the history; the command is already further on
    DUPLICATE = "duplicate"  # this state of this command was reported before


@dataclass(frozen=True)
class Limits:
    """Commands per minute: one token's, and all tokens' to one compound."""

    per_token: int
    per_compound: int


_COLUMNS = (
    "command_id, district_id, compound_id, device_id, action, channel, issued_by, role, reason, issued_at,"
    " expires_at, state, updated_at, published_at, detail, rule, observed, device_code, rowid"
)
_REPORT_COLUMNS = "state, at, received_at, reason, rule, device_code, observed"


def _from_row(row: Sequence[Any]) -> CommandRecord:
    (cid, district, compound, device, action, channel, by, role, reason, issued, expires) = row[:11]
    (state, updated, published, detail, rule, observed, code, seq) = row[11:]
    return CommandRecord(
        command_id=cid,
        district_id=district,
        compound_id=compound,
        device_id=device,
        action=CommandAction(action),
        channel=channel,
        issued_by=by,
        role=role,
        reason=reason,
        issued_at=datetime.fromisoformat(issued),
        expires_at=datetime.fromisoformat(expires),
        state=BookState(state),
        updated_at=_time(updated),
        published_at=_time(published),
        detail=detail,
        rule=rule,
        observed=ActuatorState(observed) if observed else None,
        device_code=code,
        seq=seq,
    )


def _read(db: sqlite3.Connection, command_id: str) -> CommandRecord | None:
    row = db.execute(
        f"SELECT {_COLUMNS} FROM commands WHERE command_id = ?",  # noqa: S608 - constant columns
        (command_id,),
    ).fetchone()
    return _from_row(row) if row else None


@dataclass(frozen=True)
class ListFilter:
    """Which commands a list shows (None: any)."""

    compounds: tuple[str, ...] | None = None  # the caller's scope, or the one asked for
    device_id: str | None = None
    state: BookState | None = None
    since: datetime | None = None
    until: datetime | None = None


class CommandBook(SqliteBacked):
    """The command book (one SQLite file, one thread)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA, "command-book")

    async def issue(self, record: CommandRecord, limits: Limits) -> tuple[Issued, CommandRecord]:
        """Write a new pending command, unless its id is taken or a limit is reached.

        Returns what happened and the command as the book holds it (the existing one for
        ``EXISTING`` and ``CONFLICT``; ``record`` otherwise). One transaction: two issuers racing
        for one id, or for the last slot of a limit, are served one after the other.
        """
        now = record.issued_at
        minute_ago = _iso(now - timedelta(minutes=1))

        def write(db: sqlite3.Connection) -> tuple[Issued, CommandRecord]:
            with transaction(db):
                existing = _read(db, record.command_id)
                if existing is not None:
                    return (Issued.EXISTING if existing.same_order(record) else Issued.CONFLICT), existing
                by_token = db.execute(
                    "SELECT COUNT(*) FROM commands WHERE issued_by = ? AND issued_at > ?",
                    (record.issued_by, minute_ago),
                ).fetchone()[0]
                if by_token >= limits.per_token:
                    return Issued.TOKEN_LIMIT, record
                to_compound = db.execute(
                    "SELECT COUNT(*) FROM commands WHERE compound_id = ? AND issued_at > ?",
                    (record.compound_id, minute_ago),
                ).fetchone()[0]
                if to_compound >= limits.per_compound:
                    return Issued.COMPOUND_LIMIT, record
                cursor = db.execute(
                    "INSERT INTO commands (command_id, district_id, compound_id, device_id, action, channel,"
                    " issued_by, role, reason, issued_at, expires_at, state, updated_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        record.command_id,
                        record.district_id,
                        record.compound_id,
                        record.device_id,
                        record.action.value,
                        record.channel,
                        record.issued_by,
                        record.role,
                        record.reason,
                        _iso(record.issued_at),
                        _iso(record.expires_at),
                        BookState.PENDING.value,
                        _iso(now),
                    ),
                )
                return Issued.CREATED, replace(record, updated_at=now, seq=cursor.lastrowid or 0)

        return await self._file.call(write)

    async def command(self, command_id: str) -> CommandRecord | None:
        """One command, or None."""
        return await self._file.call(lambda db: _read(db, command_id))

    async def reports(self, command_id: str) -> list[ReportRecord]:
        """The states reported for a command, in the order the compound reached them."""

        def read(db: sqlite3.Connection) -> list[ReportRecord]:
            rows = db.execute(
                f"SELECT {_REPORT_COLUMNS} FROM command_reports WHERE command_id = ? ORDER BY at, received_at",  # noqa: S608 - constant
                (command_id,),
            ).fetchall()
            return [
                ReportRecord(
                    state=BookState(state),
                    at=datetime.fromisoformat(at),
                    received_at=datetime.fromisoformat(received),
                    reason=reason,
                    rule=rule,
                    device_code=code,
                    observed=ActuatorState(observed) if observed else None,
                )
                for state, at, received, reason, rule, code, observed in rows
            ]

        return await self._file.call(read)

    async def find(
        self, which: ListFilter, *, now: datetime, grace: timedelta, before: int | None, limit: int
    ) -> list[CommandRecord]:
        """Commands matching ``which``, newest first, ``limit`` of them after the row ``before``."""
        where: list[str] = []
        args: list[Any] = []
        if which.compounds is not None:
            where.append(f"compound_id IN ({','.join('?' * len(which.compounds))})")
            args += which.compounds
        if which.device_id is not None:
            where.append("device_id = ?")
            args.append(which.device_id)
        if which.since is not None:
            where.append("issued_at >= ?")
            args.append(_iso(which.since))
        if which.until is not None:
            where.append("issued_at < ?")
            args.append(_iso(which.until))
        if before is not None:
            where.append("rowid < ?")
            args.append(before)
        overdue = _iso(now - grace)
        open_states = ",".join(f"'{s.value}'" for s in OPEN_STATES)
        if which.state is BookState.NO_ANSWER:
            where.append(f"state IN ({open_states}) AND expires_at <= ?")
            args.append(overdue)
        elif which.state in FINAL:
            where.append("state = ?")
            args.append(which.state.value)
        elif which.state is not None:
            where.append("state = ? AND expires_at > ?")
            args += [which.state.value, overdue]
        clause = f"WHERE {' AND '.join(where)}" if where else ""

        def read(db: sqlite3.Connection) -> list[CommandRecord]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM commands {clause} ORDER BY rowid DESC LIMIT ?",  # noqa: S608 - built from constants
                (*args, limit),
            ).fetchall()
            return [_from_row(row) for row in rows]

        return await self._file.call(read)

    async def unpublished(self, now: datetime) -> list[CommandRecord]:
        """Pending commands not yet published and not yet expired, oldest first."""

        def read(db: sqlite3.Connection) -> list[CommandRecord]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM commands WHERE published_at IS NULL AND state = 'pending'"  # noqa: S608 - constant
                " AND expires_at > ? ORDER BY rowid LIMIT 100",
                (_iso(now),),
            ).fetchall()
            return [_from_row(row) for row in rows]

        return await self._file.call(read)

    async def mark_published(self, command_id: str, at: datetime) -> None:
        """The order reached the district broker."""

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute(
                    "UPDATE commands SET published_at = ? WHERE command_id = ?", (_iso(at), command_id)
                )

        await self._file.call(write)

    async def end_at_district(self, command_id: str, state: BookState, detail: str, now: datetime) -> None:
        """A command ended before it reached the compound (the broker refused the order)."""

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute(
                    "UPDATE commands SET state = ?, detail = ?, updated_at = ? WHERE command_id = ? AND state = 'pending'",
                    (state.value, detail[:256], _iso(now), command_id),
                )

        await self._file.call(write)

    async def expire_unpublished(self, now: datetime) -> int:
        """Commands that expired before the desk could publish them end ``expired`` (never sent)."""

        def write(db: sqlite3.Connection) -> int:
            with transaction(db):
                return db.execute(
                    "UPDATE commands SET state = 'expired', updated_at = ?,"
                    " detail = 'expired at the district before the broker took the order; never sent'"
                    " WHERE state = 'pending' AND published_at IS NULL AND expires_at <= ?",
                    (_iso(now), _iso(now)),
                ).rowcount

        return await self._file.call(write)

    async def apply_report(self, report: CommandReport, now: datetime) -> Reported:
        """Keep a report of a command the book holds (the caller checked whose it is).

        The history keeps each state once; the command moves to the reported state only forwards.
        """
        state = BookState(report.state.value)
        observed = report.observed.value if report.observed else None

        def write(db: sqlite3.Connection) -> Reported:
            with transaction(db):
                inserted = db.execute(
                    "INSERT INTO command_reports (command_id, state, at, received_at, reason, rule,"
                    " device_code, observed) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                    (
                        report.command_id,
                        state.value,
                        _iso(report.at),
                        _iso(now),
                        report.reason,
                        report.rule,
                        report.device_code,
                        observed,
                    ),
                ).rowcount
                if not inserted:
                    return Reported.DUPLICATE
                # a report proves delivery, also when it beat the desk's record of the PUBACK
                db.execute(
                    "UPDATE commands SET published_at = ? WHERE command_id = ? AND published_at IS NULL",
                    (_iso(now), report.command_id),
                )
                current = _read(db, report.command_id)
                if current is None or _RANK[state] <= _RANK[current.state]:
                    return Reported.RECORDED
                db.execute(
                    "UPDATE commands SET state = ?, updated_at = ?, detail = COALESCE(?, detail),"
                    " rule = COALESCE(?, rule), observed = COALESCE(?, observed),"
                    " device_code = COALESCE(?, device_code) WHERE command_id = ?",
                    (
                        state.value,
                        _iso(now),
                        report.reason,
                        report.rule,
                        observed,
                        report.device_code,
                        report.command_id,
                    ),
                )
                return Reported.APPLIED

        return await self._file.call(write)

    async def state_counts(self) -> dict[str, int]:
        """Commands by stored state."""

        def read(db: sqlite3.Connection) -> dict[str, int]:
            return dict(db.execute("SELECT state, COUNT(*) FROM commands GROUP BY state").fetchall())

        return await self._file.call(read)

    async def purge(self, cutoff: datetime) -> int:
        """Delete commands issued before ``cutoff`` and their reports; returns the commands deleted."""

        def write(db: sqlite3.Connection) -> int:
            with transaction(db):
                db.execute(
                    "DELETE FROM command_reports WHERE command_id IN"
                    " (SELECT command_id FROM commands WHERE issued_at < ?)",
                    (_iso(cutoff),),
                )
                return db.execute("DELETE FROM commands WHERE issued_at < ?", (_iso(cutoff),)).rowcount

        return await self._file.call(write)


@dataclass
class CommandAccess:
    """What the command actions use: the book, and a nudge for the desk.

    ``new_command`` is set when a command is written in this process, so the desk publishes it at
    once (the desk also polls, for commands written while it was reconnecting).
    """

    book: CommandBook
    new_command: asyncio.Event = field(default_factory=asyncio.Event)
