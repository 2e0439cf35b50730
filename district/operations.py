"""The district's operations database: operator tokens, the audit log and alarm lifecycles.

One SQLite file (WAL, synchronous=FULL) owned by one thread.

* Tokens are random 256-bit secrets shown once at creation; only their SHA-256 is stored (a fast
  hash is enough for secrets of that entropy, and lookups stay constant-time per request).
* The audit log is append-only twice over: triggers refuse UPDATE and DELETE, and every entry
  carries the SHA-256 of its predecessor's hash and its own content, so ``verify_audit`` finds a
  row edited or removed behind SQLite's back.
* Console sessions are stored by the SHA-256 of their random id (the cookie); the row holds the
  token sealed with a key only the cookie yields, so the database alone opens no session.
* Alarm actions are append-only too; an alarm's state is its last action's. A transition is checked
  and recorded in one ``BEGIN IMMEDIATE`` transaction, so two operators cannot both acknowledge.
  Each action also carries its alarm's kind and time (``kind``, ``occurred_at`` in UTC), so
  outcomes per local day or month come from this table alone (``alarm_outcomes``), never from
  reading the alarms back from the event store. Rows written before those columns existed have
  them NULL (the table refuses UPDATE, so they are never filled in); such an alarm counts by the
  time of its first action and under no kind, unless a later action of it carries them.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field

from district.query_model import ALARM_TRANSITIONS, AlarmAction, AlarmState, Model, Role
from foundation.errors import ConflictError, InvalidQueryError
from foundation.events import utc_now
from foundation.sqlite_thread import SqliteBacked, sortable_time, transaction

TOKEN_PREFIX = "cgw_"
GENESIS = "0" * 64

OPS_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
    district_id TEXT NOT NULL, compounds TEXT NOT NULL, created_at TEXT NOT NULL,
    created_by TEXT NOT NULL, revoked_at TEXT);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, actor TEXT, role TEXT,
    channel TEXT NOT NULL, client TEXT, action TEXT NOT NULL, filters TEXT NOT NULL,
    outcome TEXT NOT NULL, status INTEGER NOT NULL, rows INTEGER, reason TEXT, detail TEXT,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS alarm_actions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, compound_id TEXT NOT NULL,
    from_state TEXT NOT NULL, to_state TEXT NOT NULL, actor TEXT NOT NULL, at TEXT NOT NULL,
    note TEXT NOT NULL, kind TEXT, occurred_at TEXT);
CREATE INDEX IF NOT EXISTS alarm_actions_by_event ON alarm_actions (event_id, seq);
CREATE TRIGGER IF NOT EXISTS alarm_actions_no_update BEFORE UPDATE ON alarm_actions
    BEGIN SELECT RAISE(ABORT, 'alarm history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS alarm_actions_no_delete BEFORE DELETE ON alarm_actions
    BEGIN SELECT RAISE(ABORT, 'alarm history is append-only'); END;
CREATE TABLE IF NOT EXISTS console_sessions (
    id_sha256 TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL, sealed_token BLOB NOT NULL,
    created_at TEXT NOT NULL, last_seen TEXT NOT NULL, expires_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS console_sessions_by_expiry ON console_sessions (expires_at);
"""
# Columns added to alarm_actions for the statistics (``migrate_operations_db`` adds them to older
# files); their index is created there, after them: an older file's table lacks the column at first.
ALARM_FACT_COLUMNS = (("kind", "TEXT"), ("occurred_at", "TEXT"))
ALARM_FACT_INDEX = (
    "CREATE INDEX IF NOT EXISTS alarm_actions_by_occurrence ON alarm_actions (occurred_at, event_id)"
)


def migrate_operations_db(db: sqlite3.Connection) -> None:
    """Bring an operations file to the current schema (alarm actions gain ``kind`` and ``occurred_at``)."""

    def missing() -> list[tuple[str, str]]:
        present = {row[1] for row in db.execute("PRAGMA table_info(alarm_actions)")}
        return [(name, kind) for name, kind in ALARM_FACT_COLUMNS if name not in present]

    if missing():
        with transaction(db):
            # read again under the write lock: two services opening an old file together
            for name, kind in missing():
                db.execute(f"ALTER TABLE alarm_actions ADD COLUMN {name} {kind}")
    db.execute(ALARM_FACT_INDEX)


def utc_text(moment: datetime) -> str:
    """A time as ``alarm_actions.occurred_at`` holds it: UTC, microseconds always written.

    One fixed width, so the text sorts as the times do and range filters compare text.
    """
    return sortable_time(moment)


@dataclass(frozen=True)
class AlarmOutcome:
    """One alarm as its recorded actions tell it (``alarm_outcomes``).

    ``occurred_at`` is the alarm's time, or its first action's for an alarm recorded before the
    actions carried it; ``kind`` is ``None`` then.
    """

    event_id: str
    compound_id: str
    kind: str | None
    occurred_at: datetime
    confirmed: bool
    false_alarm: bool
    resolved: bool


@dataclass(frozen=True)
class Principal:
    """Who is asking: a token's name, role and scope (``compounds`` empty = the whole district)."""

    name: str
    role: Role
    district_id: str
    compounds: tuple[str, ...] = ()

    def covers(self, district_id: str, compound_id: str) -> bool:
        """Whether the scope includes this compound."""
        return district_id == self.district_id and (not self.compounds or compound_id in self.compounds)


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed (never its secret)."""

    name: str
    role: str
    district_id: str
    compounds: tuple[str, ...]
    created_at: str
    created_by: str
    revoked_at: str | None


SessionState = Literal["live", "unknown", "expired", "idle", "revoked"]


@dataclass(frozen=True)
class ConsoleSession:
    """A console session as looked up: its state and, when live, the token's name and the sealed token."""

    state: SessionState
    token_name: str | None = None
    sealed_token: bytes = b""


class AuditEntry(Model):
    """One audited request: who, through what, asked what, and what came of it."""

    actor: str | None
    role: str | None
    channel: str = Field(description='"api", "cli", or "evidence" (a compound\'s answer to a request)')
    client: str | None = Field(description="remote address or local user")
    action: str = Field(description='"events", "compare", "alarm_action", "token.create", ...')
    filters: dict[str, Any]
    outcome: str = Field(description='"ok" or the error code')
    status: int = Field(description="the HTTP status it maps to")
    rows: int | None = None
    reason: str | None = None
    detail: str | None = None


class AuditRecord(Model):
    """An audit entry as stored."""

    seq: int
    at: str
    entry: AuditEntry


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _entry_hash(prev_hash: str, at: str, entry: AuditEntry) -> str:
    content = json.dumps({"at": at, **entry.model_dump()}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(f"{prev_hash}\n{content}".encode()).hexdigest()


def _entry_from_row(row: sqlite3.Row | tuple[Any, ...]) -> AuditRecord:
    (seq, at, actor, role, channel, client, action, filters, outcome, status, rows, reason, detail) = row[:13]
    entry = AuditEntry(
        actor=actor,
        role=role,
        channel=channel,
        client=client,
        action=action,
        filters=json.loads(filters),
        outcome=outcome,
        status=status,
        rows=rows,
        reason=reason,
        detail=detail,
    )
    return AuditRecord(seq=seq, at=at, entry=entry)


AUDIT_COLUMNS = (
    "seq, at, actor, role, channel, client, action, filters, outcome, status, rows, reason, detail"
)


class OperationsDb(SqliteBacked):
    """Tokens, audit log and alarm history in one SQLite file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, OPS_SCHEMA, "operations-db")

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        await self._file.call(migrate_operations_db)
        return self

    # ---- tokens --------------------------------------------------------------------------

    async def create_token(
        self, name: str, role: Role, district_id: str, compounds: Sequence[str], created_by: str
    ) -> str:
        """Create a token and return its secret (the only time it is ever shown)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = (
            name,
            hash_token(token),
            role.value,
            district_id,
            json.dumps(list(compounds)),
            utc_now().isoformat(),
            created_by,
        )

        def insert(db: sqlite3.Connection) -> None:
            with transaction(db):
                if db.execute("SELECT 1 FROM tokens WHERE name = ?", (name,)).fetchone():
                    raise InvalidQueryError(
                        f"a token named {name!r} exists; revoke it or pick another name", field="name"
                    )
                db.execute(
                    "INSERT INTO tokens (name, token_sha256, role, district_id, compounds, created_at, created_by)"
                    " VALUES (?,?,?,?,?,?,?)",
                    row,
                )

        await self._file.call(insert)
        return token

    async def revoke_token(self, name: str) -> bool:
        """Revoke a token by name; False if there is no such live token."""

        def revoke(db: sqlite3.Connection) -> bool:
            with transaction(db):
                cursor = db.execute(
                    "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                    (utc_now().isoformat(), name),
                )
                return cursor.rowcount == 1

        return await self._file.call(revoke)

    async def principal(self, token: str) -> Principal | None:
        """The live token's principal, or None for an unknown or revoked token."""
        digest = hash_token(token)

        def find(db: sqlite3.Connection) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = db.execute(
                "SELECT name, role, district_id, compounds FROM tokens"
                " WHERE token_sha256 = ? AND revoked_at IS NULL",
                (digest,),
            ).fetchone()
            return row

        row = await self._file.call(find)
        if row is None:
            return None
        name, role, district_id, compounds = row
        return Principal(name, Role(role), district_id, tuple(json.loads(compounds)))

    async def tokens(self) -> list[TokenInfo]:
        """Every token, live or revoked."""

        def listing(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return db.execute(
                "SELECT name, role, district_id, compounds, created_at, created_by, revoked_at"
                " FROM tokens ORDER BY name"
            ).fetchall()

        return [
            TokenInfo(n, r, d, tuple(json.loads(c)), at, by, rev)
            for n, r, d, c, at, by, rev in await self._file.call(listing)
        ]

    # ---- console sessions ----------------------------------------------------------------

    async def open_session(
        self, id_sha256: str, token: str, sealed_token: bytes, lifetime: timedelta, *, max_sessions: int
    ) -> bool:
        """Store a session of a live token (False if the token is unknown or revoked).

        Ended sessions are deleted on the way, and the oldest beyond ``max_sessions`` too, so the
        table stays bounded however many logins there are.
        """
        now = utc_now()
        row = (id_sha256, hash_token(token), sealed_token, now.isoformat(), now.isoformat())
        expires = (now + lifetime).isoformat()

        def insert(db: sqlite3.Connection) -> bool:
            with transaction(db):
                live = db.execute(
                    "SELECT 1 FROM tokens WHERE token_sha256 = ? AND revoked_at IS NULL", (row[1],)
                ).fetchone()
                if live is None:
                    return False
                db.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (now.isoformat(),))
                db.execute(
                    "DELETE FROM console_sessions WHERE id_sha256 IN (SELECT id_sha256 FROM console_sessions"
                    " ORDER BY last_seen DESC LIMIT -1 OFFSET ?)",
                    (max_sessions - 1,),
                )
                db.execute(
                    "INSERT INTO console_sessions (id_sha256, token_sha256, sealed_token, created_at,"
                    " last_seen, expires_at) VALUES (?,?,?,?,?,?)",
                    (*row, expires),
                )
                return True

        return await self._file.call(insert)

    async def touch_session(self, id_sha256: str, idle: timedelta) -> ConsoleSession:
        """Look a session up and mark it used; one that expired, idled or lost its token is deleted.

        The token is checked on every call, so revoking it ends its sessions at their next request.
        """
        now = utc_now()

        def touch(db: sqlite3.Connection) -> ConsoleSession:
            with transaction(db):
                row = db.execute(
                    "SELECT s.sealed_token, s.last_seen, s.expires_at, t.name, t.revoked_at"
                    " FROM console_sessions s LEFT JOIN tokens t ON t.token_sha256 = s.token_sha256"
                    " WHERE s.id_sha256 = ?",
                    (id_sha256,),
                ).fetchone()
                if row is None:
                    return ConsoleSession("unknown")
                sealed, last_seen, expires_at, name, revoked_at = row
                state: SessionState = "live"
                if name is None or revoked_at is not None:
                    state = "revoked"
                elif datetime.fromisoformat(expires_at) <= now:
                    state = "expired"
                elif now - datetime.fromisoformat(last_seen) > idle:
                    state = "idle"
                if state != "live":
                    db.execute("DELETE FROM console_sessions WHERE id_sha256 = ?", (id_sha256,))
                    return ConsoleSession(state, name)
                db.execute(
                    "UPDATE console_sessions SET last_seen = ? WHERE id_sha256 = ?",
                    (now.isoformat(), id_sha256),
                )
                return ConsoleSession("live", name, bytes(sealed))

        return await self._file.call(touch)

    async def end_session(self, id_sha256: str) -> bool:
        """Delete a session (logout); False if there was none."""

        def delete(db: sqlite3.Connection) -> bool:
            with transaction(db):
                cursor = db.execute("DELETE FROM console_sessions WHERE id_sha256 = ?", (id_sha256,))
                return cursor.rowcount == 1

        return await self._file.call(delete)

    async def session_count(self) -> int:
        """How many sessions are stored (live or not yet swept)."""

        def count(db: sqlite3.Connection) -> int:
            return int(db.execute("SELECT count(*) FROM console_sessions").fetchone()[0])

        return await self._file.call(count)

    # ---- audit ---------------------------------------------------------------------------

    async def audit(self, entry: AuditEntry) -> int:
        """Append an entry durably; returns its sequence number."""
        at = utc_now().isoformat()

        def append(db: sqlite3.Connection) -> int:
            with transaction(db):
                last = db.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                prev = last[0] if last else GENESIS
                cursor = db.execute(
                    "INSERT INTO audit (at, actor, role, channel, client, action, filters, outcome, status,"
                    " rows, reason, detail, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        at,
                        entry.actor,
                        entry.role,
                        entry.channel,
                        entry.client,
                        entry.action,
                        json.dumps(entry.filters, sort_keys=True, ensure_ascii=False, default=str),
                        entry.outcome,
                        entry.status,
                        entry.rows,
                        entry.reason,
                        entry.detail,
                        prev,
                        _entry_hash(prev, at, entry),
                    ),
                )
                return int(cursor.lastrowid or 0)

        return await self._file.call(append)

    async def audit_records(
        self,
        *,
        limit: int,
        before_seq: int | None = None,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[AuditRecord]:
        """Audit entries, newest first; each given filter narrows them (``since`` <= at < ``until``)."""
        clauses: list[str] = ["1=1"]
        params: list[str | int] = []
        # entries are appended in time order, so seq order is time order; ``at`` is UTC ISO text,
        # which compares as it sorts
        given: list[tuple[str, str | int | None]] = [
            ("seq < ?", before_seq),
            ("actor = ?", actor),
            ("action = ?", action),
            ("outcome = ?", outcome),
            ("at >= ?", since.astimezone(UTC).isoformat() if since else None),
            ("at < ?", until.astimezone(UTC).isoformat() if until else None),
        ]
        for clause, value in given:
            if value is not None:
                clauses.append(clause)
                params.append(value)
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT ?"  # noqa: S608 - placeholders only

        def read(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return db.execute(sql, [*params, limit]).fetchall()

        return [_entry_from_row(row) for row in await self._file.call(read)]

    async def verify_audit(self) -> tuple[int, int | None]:
        """Walk the hash chain: (entries checked, first broken sequence number or None)."""

        def walk(db: sqlite3.Connection) -> tuple[int, int | None]:
            prev = GENESIS
            checked = 0
            for row in db.execute(f"SELECT {AUDIT_COLUMNS}, prev_hash, hash FROM audit ORDER BY seq"):  # noqa: S608 - constant
                record = _entry_from_row(row)
                if row[13] != prev or row[14] != _entry_hash(prev, record.at, record.entry):
                    return checked, record.seq
                prev = row[14]
                checked += 1
            return checked, None

        return await self._file.call(walk)

    # ---- alarms --------------------------------------------------------------------------

    async def alarm_histories(self, event_ids: Sequence[str]) -> dict[str, list[AlarmAction]]:
        """The recorded actions of each alarm, oldest first (alarms without actions are absent)."""
        if not event_ids:
            return {}
        ids = list(event_ids)

        def read(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = []
            for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
                chunk = ids[start : start + 500]
                slots = ",".join("?" * len(chunk))
                sql = f"SELECT event_id, to_state, actor, at, note FROM alarm_actions WHERE event_id IN ({slots}) ORDER BY seq"  # noqa: S608 - placeholders only
                rows += db.execute(sql, chunk).fetchall()
            return rows

        histories: dict[str, list[AlarmAction]] = {}
        for event_id, state, actor, at, note in await self._file.call(read):
            histories.setdefault(event_id, []).append(
                AlarmAction(state=AlarmState(state), actor=actor, at=datetime.fromisoformat(at), note=note)
            )
        return histories

    async def alarm_outcomes(
        self, compounds: Sequence[str] | None, start: datetime, end: datetime
    ) -> list[AlarmOutcome]:
        """The alarms of ``[start, end)`` (by their time) that have actions, of ``compounds`` (None: all).

        Reads the actions of the range's alarms through the ``occurred_at`` index, plus those
        recorded without it (older files), which are placed by their first action's time.
        """
        bounds = (utc_text(start), utc_text(end))
        where = ""
        params: list[str] = [*bounds]
        if compounds is not None:
            where = f" AND compound_id IN ({','.join('?' * len(compounds))})"
            params += compounds
        sql = (
            "SELECT event_id, min(compound_id), max(kind), coalesce(max(occurred_at), min(at)) AS occurred,"  # noqa: S608 - placeholders only
            " max(to_state = 'confirmed'), max(to_state = 'false_alarm'), max(to_state = 'resolved')"
            " FROM alarm_actions WHERE event_id IN (SELECT event_id FROM alarm_actions"
            " WHERE (occurred_at >= ? AND occurred_at < ?) OR occurred_at IS NULL)"
            f"{where} GROUP BY event_id HAVING occurred >= ? AND occurred < ?"
        )
        params += bounds

        def read(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return db.execute(sql, params).fetchall()

        return [
            AlarmOutcome(
                event_id=event_id,
                compound_id=compound,
                kind=kind,
                occurred_at=datetime.fromisoformat(occurred),
                confirmed=bool(confirmed),
                false_alarm=bool(false_alarm),
                resolved=bool(resolved),
            )
            for event_id, compound, kind, occurred, confirmed, false_alarm, resolved in await self._file.call(
                read
            )
        ]

    async def move_alarm(
        self,
        event_id: str,
        compound_id: str,
        to: AlarmState,
        actor: str,
        note: str,
        *,
        kind: str,
        occurred_at: datetime,
    ) -> AlarmAction:
        """Record a lifecycle step if the alarm's current state allows it (``ConflictError`` if not).

        ``kind`` and ``occurred_at``: the alarm's own, kept with the step for the statistics.
        """
        at = utc_now()
        facts = (kind, utc_text(occurred_at))

        def move(db: sqlite3.Connection) -> AlarmAction:
            with transaction(db):
                row = db.execute(
                    "SELECT to_state FROM alarm_actions WHERE event_id = ? ORDER BY seq DESC LIMIT 1",
                    (event_id,),
                ).fetchone()
                current = AlarmState(row[0]) if row else AlarmState.NEW
                if to not in ALARM_TRANSITIONS[current]:
                    allowed = ", ".join(sorted(s.value for s in ALARM_TRANSITIONS[current])) or "nothing"
                    raise ConflictError(
                        f"alarm {event_id} is {current.value}; it can move to {allowed}, not {to.value}",
                        field="to",
                    )
                db.execute(
                    "INSERT INTO alarm_actions (event_id, compound_id, from_state, to_state, actor, at, note,"
                    " kind, occurred_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (event_id, compound_id, current.value, to.value, actor, at.isoformat(), note, *facts),
                )
            return AlarmAction(state=to, actor=actor, at=at, note=note)

        return await self._file.call(move)
