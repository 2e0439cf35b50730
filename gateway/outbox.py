"""The durable outbox: every accepted event stays here until the uplink confirms it.

SQLite in WAL mode with ``synchronous=FULL``: a batch is durable when ``commit()`` returns, and only
then is anything acknowledged to a device. Events are unique by event id (a re-sent event is stored
once). The outbox is bounded in bytes: when full, routine events are shed oldest first (recorded as
tombstones and counted); alarms are never shed. Rejected payloads go to a bounded dead-letter table.

``Outbox`` is synchronous and owned by one thread; ``OutboxWriter`` is its asyncio front end, which
group-commits whatever accumulated while the previous commit was running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import structlog

from adapters.base import MediaBlob
from gateway.errors import OutboxError
from gateway.events import Event, utc_now

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
DEAD_LETTER_PAYLOAD_MAX = 64 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    severity     TEXT NOT NULL,
    alarm        INTEGER NOT NULL,
    device_id    TEXT NOT NULL,
    occurred_at  TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    size         INTEGER NOT NULL,
    body         BLOB,
    state        TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'shed')),
    settled_at   TEXT
);
CREATE INDEX IF NOT EXISTS events_pending ON events (state, alarm, seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    transport    TEXT NOT NULL,
    dialect      TEXT,
    device       TEXT,
    reason       TEXT NOT NULL,
    field        TEXT,
    detail       TEXT NOT NULL,
    payload      BLOB NOT NULL,
    payload_size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT NOT NULL,
    a     TEXT NOT NULL,
    b     TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (name, a, b)
);
"""


@dataclass(frozen=True)
class EventRow:
    """An event ready for the outbox: its serialized body and the columns the outbox indexes.

    Serializing where the event is parsed (possibly in a parser process) keeps that work off the
    event loop and makes the hand-over cheap to pickle.
    """

    event_id: str
    kind: str
    severity: str
    alarm: bool
    device_id: str
    occurred_at: str
    received_at: str
    body: bytes

    @classmethod
    def from_event(cls, event: Event) -> EventRow:
        """Serialize a canonical event."""
        return cls(
            event_id=event.event_id,
            kind=event.kind.value,
            severity=event.severity.value,
            alarm=event.is_alarm,
            device_id=event.device_id,
            occurred_at=event.occurred_at.isoformat(),
            received_at=event.received_at.isoformat(),
            body=event.model_dump_json().encode(),
        )


@dataclass(frozen=True)
class StoreEvents:
    """Store these events (and the pictures they reference) durably."""

    events: Sequence[EventRow]
    media: Sequence[MediaBlob] = ()


@dataclass(frozen=True)
class DeadLetter:
    """A payload that was refused, kept for inspection."""

    transport: str
    dialect: str | None
    device: str | None
    reason: str
    field: str | None
    detail: str
    payload: bytes


Operation = StoreEvents | DeadLetter


@dataclass(frozen=True)
class StoreResult:
    """What happened to each event of a ``StoreEvents``."""

    stored: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    shed: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredEvent:
    """A row of the outbox as the uplink sees it."""

    seq: int
    event_id: str
    alarm: bool
    body: bytes


@dataclass
class OutboxStats:
    """Depth and counters, for status output and metrics."""

    pending: int
    pending_alarms: int
    pending_bytes: int
    oldest_pending_received_at: str | None
    delivered: int
    shed_total: int
    dead_letters: int
    counters: dict[tuple[str, str, str], int] = field(default_factory=dict)


class Outbox:
    """Synchronous SQLite outbox; use from one thread at a time."""

    def __init__(self, path: Path, *, max_bytes: int, dead_letter_keep: int = 10_000) -> None:
        self.path = path
        self.media_dir = path.parent / "media"
        self.max_bytes = max_bytes
        self.dead_letter_keep = dead_letter_keep
        self._db: sqlite3.Connection | None = None
        self._pending_bytes = 0

    # --- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> Outbox:
        """Open (creating if needed) and recover the byte budget from the table."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.media_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        db.executescript(_SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        (version,) = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if int(version) != SCHEMA_VERSION:
            raise OutboxError(f"{self.path}: outbox schema {version}, this gateway reads {SCHEMA_VERSION}")
        (pending_bytes,) = db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM events WHERE state='pending'"
        ).fetchone()
        self._pending_bytes = int(pending_bytes)
        self._db = db
        return self

    def close(self) -> None:
        """Close the database (a WAL checkpoint happens on close)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Outbox:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        """The open connection."""
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # --- writes ------------------------------------------------------------------------------------

    def commit(self, operations: Sequence[Operation]) -> list[StoreResult | None]:
        """Apply a batch in one transaction; durable on return. Pictures are on disk before the rows."""
        for op in operations:
            if isinstance(op, StoreEvents):
                for blob in op.media:
                    self._write_media(blob)
        pending_before = self._pending_bytes
        try:
            with self._transaction() as db:
                results: list[StoreResult | None] = []
                for op in operations:
                    if isinstance(op, StoreEvents):
                        results.append(self._store(db, op.events))
                    else:
                        self._dead_letter(db, op)
                        results.append(None)
                self._trim_dead_letters(db)
        except BaseException:
            self._pending_bytes = pending_before
            raise
        return results

    def _store(self, db: sqlite3.Connection, events: Sequence[EventRow]) -> StoreResult:
        stored: list[str] = []
        duplicates: list[str] = []
        shed: list[str] = []
        for event in events:
            if self._exists(db, event.event_id):
                # Checked before any shedding: a re-send must never push out another event.
                duplicates.append(event.event_id)
                self._count(db, "duplicates", event.device_id, "")
                continue
            body = event.body
            size = len(body)
            over = self._pending_bytes + size - self.max_bytes
            if over > 0:
                over -= self._shed_routine(db, over)
            if over > 0 and not event.alarm:
                # Nothing older left to shed: this routine event is itself the oldest we can drop.
                self._insert(db, event, None, size, state="shed")
                self._count(db, "shed", event.kind, "")
                shed.append(event.event_id)
                continue
            self._insert(db, event, body, size, state="pending")
            self._pending_bytes += size
            stored.append(event.event_id)
        return StoreResult(tuple(stored), tuple(duplicates), tuple(shed))

    @staticmethod
    def _exists(db: sqlite3.Connection, event_id: str) -> bool:
        return db.execute("SELECT 1 FROM events WHERE event_id=?", (event_id,)).fetchone() is not None

    @staticmethod
    def _insert(
        db: sqlite3.Connection, event: EventRow, body: bytes | None, size: int, *, state: str
    ) -> None:
        db.execute(
            "INSERT INTO events (event_id, kind, severity, alarm, device_id, occurred_at, received_at,"
            " size, body, state, settled_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                event.event_id,
                event.kind,
                event.severity,
                int(event.alarm),
                event.device_id,
                event.occurred_at,
                event.received_at,
                size if body is not None else 0,
                body,
                state,
                None if state == "pending" else utc_now().isoformat(),
            ),
        )

    def _shed_routine(self, db: sqlite3.Connection, need: int) -> int:
        freed = 0
        while freed < need:
            rows = db.execute(
                "SELECT seq, size, kind FROM events WHERE state='pending' AND alarm=0 ORDER BY seq LIMIT 256"
            ).fetchall()
            if not rows:
                break
            now = utc_now().isoformat()
            for seq, size, kind in rows:
                db.execute(
                    "UPDATE events SET state='shed', body=NULL, size=0, settled_at=? WHERE seq=?", (now, seq)
                )
                self._count(db, "shed", kind, "")
                self._pending_bytes -= size
                freed += size
                if freed >= need:
                    break
        if freed:
            log.warning("outbox_shed_routine", freed_bytes=freed, pending_bytes=self._pending_bytes)
        return freed

    def _dead_letter(self, db: sqlite3.Connection, letter: DeadLetter) -> None:
        db.execute(
            "INSERT INTO dead_letters (at, transport, dialect, device, reason, field, detail, payload, payload_size)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (
                utc_now().isoformat(),
                letter.transport,
                letter.dialect,
                letter.device,
                letter.reason,
                letter.field,
                letter.detail,
                letter.payload[:DEAD_LETTER_PAYLOAD_MAX],
                len(letter.payload),
            ),
        )
        self._count(db, "rejected", letter.device or "(unknown)", letter.reason)

    def _trim_dead_letters(self, db: sqlite3.Connection) -> None:
        db.execute(
            "DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?",
            (self.dead_letter_keep,),
        )

    @staticmethod
    def _count(db: sqlite3.Connection, name: str, a: str, b: str, by: int = 1) -> None:
        db.execute(
            "INSERT INTO counters VALUES (?,?,?,?) ON CONFLICT (name, a, b) DO UPDATE SET value = value + ?",
            (name, a, b, by, by),
        )

    def _write_media(self, blob: MediaBlob) -> None:
        target = self.media_dir / blob.relative_path
        if target.exists():
            return  # content-addressed: same bytes, same file
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob.data)
                handle.flush()
                os.fsync(handle.fileno())
            Path(tmp).replace(target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def mark_delivered(self, event_ids: Sequence[str]) -> int:
        """The uplink confirmed these: drop their bodies, keep a tombstone so re-sends stay duplicates."""
        now = utc_now().isoformat()
        done = 0
        with self._transaction() as db:
            for event_id in event_ids:
                row = db.execute(
                    "SELECT size FROM events WHERE event_id=? AND state='pending'", (event_id,)
                ).fetchone()
                if row is None:
                    continue
                db.execute(
                    "UPDATE events SET state='delivered', body=NULL, size=0, settled_at=? WHERE event_id=?",
                    (now, event_id),
                )
                self._pending_bytes -= int(row[0])
                done += 1
        return done

    def purge_tombstones(self, settled_before: datetime) -> int:
        """Forget delivered/shed tombstones older than the de-duplication window."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM events WHERE state != 'pending' AND settled_at < ?",
                (settled_before.isoformat(),),
            )
            return cursor.rowcount

    # --- reads -------------------------------------------------------------------------------------

    def pending(self, limit: int = 1000, *, alarms_first: bool = True) -> list[StoredEvent]:
        """Events awaiting the uplink: alarms first, then oldest first."""
        order = "alarm DESC, seq" if alarms_first else "seq"
        rows = self.db.execute(
            f"SELECT seq, event_id, alarm, body FROM events WHERE state='pending' ORDER BY {order} LIMIT ?",  # noqa: S608 - order is one of two literals
            (limit,),
        ).fetchall()
        return [StoredEvent(seq, event_id, bool(alarm), bytes(body)) for seq, event_id, alarm, body in rows]

    def event_ids(self, state: Literal["pending", "delivered", "shed"] = "pending") -> list[str]:
        """All event ids in a state (tests and tools)."""
        rows = self.db.execute("SELECT event_id FROM events WHERE state=? ORDER BY seq", (state,)).fetchall()
        return [row[0] for row in rows]

    def dead_letters(self, limit: int = 50) -> list[dict[str, object]]:
        """The newest dead letters, newest first, for inspection."""
        cursor = self.db.execute(
            "SELECT id, at, transport, dialect, device, reason, field, detail, payload, payload_size"
            " FROM dead_letters ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def stats(self) -> OutboxStats:
        """Depth, age and counters."""
        db = self.db
        pending, alarms, size, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(alarm), 0), COALESCE(SUM(size), 0), MIN(received_at)"
            " FROM events WHERE state='pending'"
        ).fetchone()
        (delivered,) = db.execute("SELECT COUNT(*) FROM events WHERE state='delivered'").fetchone()
        (dead,) = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        counters = {(n, a, b): v for n, a, b, v in db.execute("SELECT name, a, b, value FROM counters")}
        shed_total = sum(v for (n, _, _), v in counters.items() if n == "shed")
        return OutboxStats(pending, alarms, size, oldest, delivered, shed_total, dead, counters)


@dataclass(frozen=True)
class _Submission:
    operations: list[Operation]
    future: asyncio.Future[list[StoreResult | None]]


class OutboxWriter:
    """Asyncio front end: a bounded queue in front of one writer thread, group commit.

    Overflow policy of the queue: *block*. Producers wait for room, which is the back-pressure the
    transports need: the MQTT intake stops acknowledging (its read throttle then stops reading the
    broker's socket) and HTTP pushes wait, up to their commit timeout.
    """

    def __init__(
        self, outbox: Outbox, *, batch_max: int = 512, window_ms: float = 2.0, queue_size: int = 4096
    ) -> None:
        self.outbox = outbox
        self._batch_max = batch_max
        self._window_s = window_ms / 1000
        # One entry per submission; a submission is one operation or a parsed batch of them.
        self._queue: asyncio.Queue[_Submission] = asyncio.Queue(maxsize=queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self.commits = 0
        self.events_stored = 0

    async def __aenter__(self) -> OutboxWriter:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.outbox.open)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Any commit still running in the thread finishes before the database closes.
        await asyncio.get_running_loop().run_in_executor(self._executor, self.outbox.close)
        self._executor.shutdown(wait=True)

    async def store(self, events: Sequence[EventRow], media: Sequence[MediaBlob] = ()) -> StoreResult:
        """Durably store events; returns after the commit (raises ``OutboxError`` if it failed)."""
        (result,) = await self.enqueue([StoreEvents(events, media)])
        if result is None:  # pragma: no cover - StoreEvents always yields a result
            raise OutboxError("store produced no result")
        return result

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Durably keep a refused payload."""
        await self.enqueue([letter])

    def enqueue(self, operations: Sequence[Operation]) -> asyncio.Future[list[StoreResult | None]]:
        """Queue operations for the next commit, without waiting for it.

        Returns the future of their results (in order), set once they are durable. If the queue is
        full, the future resolves only after room was made and the commit happened: awaiting it is
        the back-pressure.
        """
        future: asyncio.Future[list[StoreResult | None]] = asyncio.get_running_loop().create_future()
        submission = _Submission(list(operations), future)
        try:
            self._queue.put_nowait(submission)
        except asyncio.QueueFull:
            return asyncio.ensure_future(self._enqueue_when_room(submission))
        return future

    async def _enqueue_when_room(self, submission: _Submission) -> list[StoreResult | None]:
        await self._queue.put(submission)
        return await submission.future

    async def run(self) -> None:
        """The writer task: take what is queued, commit it in one transaction, resolve the futures."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self._window_s
            while len(batch) < self._batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        batch.append(await self._queue.get())
                except TimeoutError:
                    break
            operations = [op for submission in batch for op in submission.operations]
            try:
                results = await loop.run_in_executor(self._executor, self.outbox.commit, operations)
            except (sqlite3.Error, OSError) as exc:
                log.error("outbox_commit_failed", error=str(exc), operations=len(operations))
                for submission in batch:
                    if not submission.future.done():
                        submission.future.set_exception(OutboxError(f"outbox commit failed: {exc}"))
                continue
            self.commits += 1
            self.events_stored += sum(len(r.stored) for r in results if r is not None)
            start = 0
            for submission in batch:
                end = start + len(submission.operations)
                if not submission.future.done():
                    submission.future.set_result(results[start:end])
                start = end
