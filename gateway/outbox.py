"""The durable outbox: every accepted event stays here until the uplink confirms it.

SQLite in WAL mode with ``synchronous=FULL``: a batch is durable when ``commit()`` returns, and only
then is anything acknowledged to a device. Events are unique by event id (a re-sent event is stored
once). The outbox is bounded in bytes: when full, routine events are shed oldest first (recorded as
tombstones and counted); alarms are never shed. Rejected payloads go to a bounded dead-letter table.

``Outbox`` is synchronous and owned by one worker (``gateway/pipeline.py``), which commits a whole
batch of payloads per transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import structlog

from adapters.base import MediaBlob
from foundation.durable_files import write_atomically
from foundation.errors import OutboxError
from foundation.events import Event, FaceAccessPayload, VehiclePassPayload, utc_now

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
    state        TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'delivered', 'shed')),
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
-- Work for the watch-list matcher, queued in the same transaction as its event: a face picture to
-- analyse or a plate to look up. Survives restarts; the matcher deletes what it has done.
CREATE TABLE IF NOT EXISTS watch_queue (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('face', 'plate')),
    subject      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    occurred_at  TEXT NOT NULL,
    direction    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT NOT NULL,
    a     TEXT NOT NULL,
    b     TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (name, a, b)
);
"""


@dataclass(frozen=True, slots=True)
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
    watch: WatchWork | None = None

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
            watch=WatchWork.for_event(event),
        )


@dataclass(frozen=True, slots=True)
class WatchWork:
    """What the watch-list matcher has to look at for one event: a face picture or a plate."""

    kind: Literal["face", "plate"]
    subject: str  # the picture's path in the media store, or the plate
    direction: str

    @classmethod
    def for_event(cls, event: Event) -> WatchWork | None:
        """Face-gate events with a stored face picture, vehicle passes with a plate; else None."""
        payload = event.payload
        if isinstance(payload, FaceAccessPayload):
            for media in event.media:
                if media.role in {"face", "scene"} and media.ref.startswith("local:"):
                    return cls("face", media.ref.removeprefix("local:"), payload.direction.value)
        elif isinstance(payload, VehiclePassPayload) and payload.plate:
            return cls("plate", payload.plate, payload.direction.value)
        return None


@dataclass(frozen=True, slots=True)
class WatchItem:
    """A queued piece of matcher work."""

    seq: int
    event_id: str
    kind: Literal["face", "plate"]
    subject: str
    device_id: str
    occurred_at: str
    direction: str


@dataclass(frozen=True, slots=True)
class StoreEvents:
    """Store these events (and the pictures they reference) durably."""

    events: Sequence[EventRow]
    media: Sequence[MediaBlob] = ()


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What happened to each event of a ``StoreEvents``."""

    stored: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    shed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A row of the outbox as the uplink sees it."""

    seq: int
    event_id: str
    kind: str
    alarm: bool
    received_at: str
    body: bytes


@dataclass
class OutboxStats:
    """Depth and counters, for status output and metrics."""

    pending: int
    pending_alarms: int
    pending_bytes: int
    oldest_pending_received_at: str | None
    oldest_unconfirmed_received_at: str | None
    sent: int
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
        # The byte budget lives in the file, so that every connection (the intake worker storing,
        # the uplink marking delivered) works from the same figure.
        db.execute(
            "INSERT OR IGNORE INTO meta SELECT 'pending_bytes', COALESCE(SUM(size), 0) FROM events WHERE state='pending'"
        )
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
            (value,) = db.execute("SELECT value FROM meta WHERE key='pending_bytes'").fetchone()
            self._pending_bytes = int(value)
            yield db
            db.execute("UPDATE meta SET value=? WHERE key='pending_bytes'", (str(self._pending_bytes),))
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
        with self._transaction() as db:
            results: list[StoreResult | None] = []
            for op in operations:
                if isinstance(op, StoreEvents):
                    results.append(self._store(db, op.events))
                else:
                    self._dead_letter(db, op)
                    results.append(None)
            self._trim_dead_letters(db)
        return results

    def _store(self, db: sqlite3.Connection, events: Sequence[EventRow]) -> StoreResult:
        stored: list[str] = []
        duplicates: list[str] = []
        shed: list[str] = []
        by_kind_device: Counter[tuple[str, str]] = Counter()
        for event in events:
            size = len(event.body)
            over = self._pending_bytes + size - self.max_bytes
            if over > 0:
                # Checked before any shedding: a re-send must never push out another event.
                if self._exists(db, event.event_id):
                    duplicates.append(event.event_id)
                    self._count(db, "duplicates", event.device_id, "")
                    continue
                over -= self._shed_routine(db, over)
                if over > 0 and not event.alarm:
                    # Nothing older left to shed: this routine event is itself the oldest we can drop.
                    self._insert(db, event, None, size, state="shed")
                    self._count(db, "shed", event.kind, "")
                    shed.append(event.event_id)
                    continue
            if self._insert(db, event, event.body, size, state="pending"):
                self._pending_bytes += size
                stored.append(event.event_id)
                if event.watch is not None:
                    db.execute(
                        "INSERT INTO watch_queue (event_id, kind, subject, device_id, occurred_at, direction)"
                        " VALUES (?,?,?,?,?,?)",
                        (
                            event.event_id,
                            event.watch.kind,
                            event.watch.subject,
                            event.device_id,
                            event.occurred_at,
                            event.watch.direction,
                        ),
                    )
                by_kind_device[(event.kind, event.device_id)] += 1
            else:
                duplicates.append(event.event_id)
                self._count(db, "duplicates", event.device_id, "")
        for (kind, device), count in by_kind_device.items():
            self._count(db, "stored", kind, device, count)
        return StoreResult(tuple(stored), tuple(duplicates), tuple(shed))

    @staticmethod
    def _exists(db: sqlite3.Connection, event_id: str) -> bool:
        return db.execute("SELECT 1 FROM events WHERE event_id=?", (event_id,)).fetchone() is not None

    @staticmethod
    def _insert(
        db: sqlite3.Connection, event: EventRow, body: bytes | None, size: int, *, state: str
    ) -> bool:
        """Insert unless the event id is known; True when inserted."""
        cursor = db.execute(
            "INSERT OR IGNORE INTO events (event_id, kind, severity, alarm, device_id, occurred_at, received_at,"
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
        return cursor.rowcount == 1

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
        write_atomically(target, blob.data)

    def mark_sent(self, event_ids: Sequence[str]) -> int:
        """The district broker took these; they stay (with their bodies) until the district's receipt."""
        now = utc_now().isoformat()
        with self._transaction() as db:
            cursor = db.executemany(
                "UPDATE events SET state='sent', settled_at=? WHERE event_id=? AND state='pending'",
                [(now, event_id) for event_id in event_ids],
            )
            return cursor.rowcount

    def requeue_sent(self, sent_before: datetime, alarms_sent_before: datetime | None = None) -> int:
        """Sent but never confirmed (a receipt lost, a broker that lost its queue): send them again.

        Alarms may have a shorter wait (``alarms_sent_before``, later than ``sent_before``).
        """
        alarms_cutoff = max(sent_before, alarms_sent_before or sent_before)
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE events SET state='pending', settled_at=NULL WHERE state='sent'"
                " AND (settled_at < ? OR (alarm = 1 AND settled_at < ?))",
                (sent_before.isoformat(), alarms_cutoff.isoformat()),
            )
            return cursor.rowcount

    def mark_delivered(self, event_ids: Sequence[str]) -> int:
        """The district confirmed these: drop their bodies, keep a tombstone so re-sends stay duplicates."""
        now = utc_now().isoformat()
        done = 0
        with self._transaction() as db:
            for event_id in event_ids:
                row = db.execute(
                    "SELECT size FROM events WHERE event_id=? AND state IN ('pending', 'sent')", (event_id,)
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
                "DELETE FROM events WHERE state IN ('delivered', 'shed') AND settled_at < ?",
                (settled_before.isoformat(),),
            )
            return cursor.rowcount

    # --- watch-list matcher queue ------------------------------------------------------------------

    def watch_items(self, limit: int) -> list[WatchItem]:
        """The oldest queued matcher work."""
        rows = self.db.execute(
            "SELECT seq, event_id, kind, subject, device_id, occurred_at, direction FROM watch_queue"
            " ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [WatchItem(*row) for row in rows]

    def watch_done(self, seqs: Sequence[int]) -> None:
        """Forget finished work."""
        with self._transaction() as db:
            db.executemany("DELETE FROM watch_queue WHERE seq = ?", [(s,) for s in seqs])

    def watch_shed(self, keep: int) -> int:
        """Bound the picture backlog: drop the oldest face work beyond ``keep`` (counted as shed)."""
        (waiting,) = self.db.execute("SELECT count(*) FROM watch_queue WHERE kind = 'face'").fetchone()
        if int(waiting) <= keep:
            return 0  # the usual case: no write transaction at all
        with self._transaction() as db:
            (waiting,) = db.execute("SELECT count(*) FROM watch_queue WHERE kind = 'face'").fetchone()
            excess = int(waiting) - keep
            if excess <= 0:
                return 0
            db.execute(
                "DELETE FROM watch_queue WHERE seq IN"
                " (SELECT seq FROM watch_queue WHERE kind = 'face' ORDER BY seq LIMIT ?)",
                (excess,),
            )
            self._count(db, "pictures_shed", "", "", excess)
            return excess

    def purge_media(self, older_than: datetime) -> int:
        """Delete stored pictures older than the retention period (by the time they were written)."""
        cutoff = older_than.timestamp()
        removed = 0
        for path in self.media_dir.glob("*/*"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    # --- reads -------------------------------------------------------------------------------------

    def pending(self, limit: int = 1000, *, alarms_first: bool = True) -> list[StoredEvent]:
        """Events awaiting the uplink: alarms first, then oldest first.

        Two index range scans on (state, alarm, seq), so a million-event backlog costs no sort.
        """
        columns = "SELECT seq, event_id, kind, alarm, received_at, body FROM events WHERE state='pending'"
        if alarms_first:
            rows = self.db.execute(f"{columns} AND alarm=1 ORDER BY seq LIMIT ?", (limit,)).fetchall()
            rows += self.db.execute(
                f"{columns} AND alarm=0 ORDER BY seq LIMIT ?", (limit - len(rows),)
            ).fetchall()
        else:
            rows = self.db.execute(f"{columns} ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [
            StoredEvent(seq, eid, kind, bool(alarm), received, bytes(body))
            for seq, eid, kind, alarm, received, body in rows
        ]

    def event_ids(self, state: Literal["pending", "sent", "delivered", "shed"] = "pending") -> list[str]:
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

    def pending_bytes(self) -> int:
        """The byte budget in use (shared by every connection to the file)."""
        (value,) = self.db.execute("SELECT value FROM meta WHERE key='pending_bytes'").fetchone()
        return int(value)

    def stats(self) -> OutboxStats:
        """Depth, age and counters."""
        db = self.db
        pending, alarms, size, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(alarm), 0), COALESCE(SUM(size), 0), MIN(received_at)"
            " FROM events WHERE state='pending'"
        ).fetchone()
        sent, oldest_sent = db.execute(
            "SELECT COUNT(*), MIN(received_at) FROM events WHERE state='sent'"
        ).fetchone()
        unconfirmed = min((t for t in (oldest, oldest_sent) if t is not None), default=None)
        (delivered,) = db.execute("SELECT COUNT(*) FROM events WHERE state='delivered'").fetchone()
        (dead,) = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        counters = {(n, a, b): v for n, a, b, v in db.execute("SELECT name, a, b, value FROM counters")}
        shed_total = sum(v for (n, _, _), v in counters.items() if n == "shed")
        return OutboxStats(
            pending, alarms, size, oldest, unconfirmed, sent, delivered, shed_total, dead, counters
        )


class OutboxReader:
    """A second connection to the outbox file for the event loop (the uplink, the endpoints), in one thread."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self._outbox = Outbox(path, max_bytes=max_bytes)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uplink-outbox")

    async def __aenter__(self) -> Self:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._outbox.open)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._outbox.close)
        self._executor.shutdown(wait=True)

    async def pending(self, limit: int) -> list[StoredEvent]:
        """Alarms first, then oldest first."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._outbox.pending, limit)

    async def delivered(self, event_ids: Sequence[str]) -> int:
        """Confirmed by the district: tombstone them."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._outbox.mark_delivered, list(event_ids)
        )

    async def sent(self, event_ids: Sequence[str]) -> None:
        """Taken by the district broker; kept until the district's receipt."""
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self._outbox.mark_sent, list(event_ids)
        )

    async def stats(self) -> OutboxStats:
        """Depth, ages and counters."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._outbox.stats)

    async def requeue(self, sent_before: datetime, alarms_sent_before: datetime | None = None) -> int:
        """Sent long ago and never confirmed: back to pending (alarms after a shorter wait)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._outbox.requeue_sent, sent_before, alarms_sent_before
        )

    async def watch_items(self, limit: int) -> list[WatchItem]:
        """The oldest queued matcher work."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._outbox.watch_items, limit
        )

    async def watch_done(self, seqs: Sequence[int]) -> None:
        """Forget finished matcher work."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._outbox.watch_done, list(seqs))

    async def watch_shed(self, keep: int) -> int:
        """Bound the picture backlog (oldest pictures first)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._outbox.watch_shed, keep)

    async def purge_media(self, older_than: datetime) -> int:
        """Delete pictures older than the retention period."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._outbox.purge_media, older_than
        )

    async def purge_tombstones(self, settled_before: datetime) -> int:
        """Forget delivered and shed events settled before the cutoff."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._outbox.purge_tombstones, settled_before
        )

    @property
    def media_dir(self) -> Path:
        """Where the pictures are."""
        return self._outbox.media_dir
