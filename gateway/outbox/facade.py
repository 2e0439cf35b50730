"""The outbox file: one SQLite database (WAL, ``synchronous=FULL``) and the picture directory beside it.

The parts each own their tables (``event_states``, ``dead_letters``, ``watch_queue``,
``counters``) or files (``media_store``); this module puts them together and owns the transaction:
a batch's events, dead letters, queued work, counters and byte budget commit together or not at
all, after the batch's pictures are on disk. A batch is durable when ``commit`` returns, and only
then is anything acknowledged to a device.

Two ways in, one set of operations (``_OutboxFile``):

* ``Outbox``: synchronous, for the one intake worker that writes batches (``gateway/pipeline.py``),
  the command line and tests; use it from one thread at a time.
* ``OutboxReader``: a second connection for the event loop (the forwarder, retention, the watch
  matcher, the HTTP endpoints), owned by one ``SqliteThread``, so the loop never waits on disk.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from adapters.base import MediaBlob
from foundation.errors import OutboxError
from foundation.sqlite_thread import SqliteThread, open_durable, transaction
from gateway.outbox import counters, dead_letters, event_states, media_index, watch_queue
from gateway.outbox.counters import Counters, read_counters
from gateway.outbox.dead_letters import (
    DeadLetter,
    add_dead_letter,
    dead_letter_count,
    newest_dead_letters,
    trim_dead_letters,
)
from gateway.outbox.event_states import (
    ByteBudget,
    EventDepth,
    EventRow,
    EventState,
    StoredEvent,
    StoreResult,
    event_depth,
    event_ids_in,
    events_after,
    pending_events,
    store_events,
)
from gateway.outbox.media_index import (
    FetchedFile,
    FetchJob,
    IndexedEvent,
    IndexedFile,
    MediaCatalog,
    due_fetches,
    eviction_order,
    fetch_done,
    fetch_failed,
    fetch_retry,
    forget_fetches,
    forget_paths,
    indexed_bytes,
    pending_fetches,
    record_event_media,
)
from gateway.outbox.media_store import MediaStore
from gateway.outbox.watch_queue import (
    WatchItem,
    enqueue_watch,
    finish_watch_items,
    oldest_watch_items,
    shed_watch_items,
    waiting,
)

SCHEMA_VERSION = 1

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    + event_states.DDL
    + dead_letters.DDL
    + watch_queue.DDL
    + counters.DDL
    + media_index.DDL
)


@dataclass(frozen=True, slots=True)
class StoreEvents:
    """Store these events (and the pictures they reference) durably."""

    events: Sequence[EventRow]
    media: Sequence[MediaBlob] = ()


Operation = StoreEvents | DeadLetter


@dataclass(frozen=True, slots=True)
class OutboxStats(EventDepth):
    """Depth and counters, for status output and metrics."""

    shed_total: int
    dead_letters: int
    counters: Counters = field(default_factory=dict)


class _OutboxFile:
    """The operations on an open connection, shared by ``Outbox`` and ``OutboxReader``."""

    def __init__(
        self, path: Path, *, max_bytes: int, dead_letter_keep: int, fetch_devices: Collection[str] = ()
    ) -> None:
        self.path = path
        self.media = MediaStore(path.parent / "media")
        self.max_bytes = max_bytes
        self.dead_letter_keep = dead_letter_keep
        self.fetch_devices = frozenset(fetch_devices)

    def prepare(self, db: sqlite3.Connection) -> None:
        """Check the schema version, recover the byte budget, make the picture directory."""
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        (version,) = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if int(version) != SCHEMA_VERSION:
            raise OutboxError(f"{self.path}: outbox schema {version}, this gateway reads {SCHEMA_VERSION}")
        ByteBudget.initialise(db)
        self.media.create()

    def commit(self, db: sqlite3.Connection, operations: Sequence[Operation]) -> list[StoreResult | None]:
        # Pictures first, fsynced: a committed row must never refer to a picture a crash lost.
        for op in operations:
            if isinstance(op, StoreEvents):
                self.media.write(op.media)
        results: list[StoreResult | None] = []
        with transaction(db):
            budget = ByteBudget.load(db, self.max_bytes)
            fresh_media: list[IndexedEvent] = []
            for op in operations:
                if isinstance(op, StoreEvents):
                    result = store_events(db, op.events, budget)
                    _queue_watch_work(db, op.events, result, fresh_media)
                    results.append(result)
                else:
                    add_dead_letter(db, op)
                    results.append(None)
            # the whole batch's pictures and device fetches at once, with the events they belong to
            record_event_media(db, fresh_media, self.fetch_devices)
            trim_dead_letters(db, self.dead_letter_keep)
            budget.save(db)
        return results

    def mark_sent(self, db: sqlite3.Connection, event_ids: Sequence[str]) -> int:
        with transaction(db):
            return event_states.mark_sent(db, event_ids)

    def requeue_sent(
        self, db: sqlite3.Connection, sent_before: datetime, alarms_sent_before: datetime | None
    ) -> int:
        with transaction(db):
            return event_states.requeue_sent(db, sent_before, alarms_sent_before)

    def mark_delivered(self, db: sqlite3.Connection, event_ids: Sequence[str]) -> int:
        with transaction(db):
            budget = ByteBudget.load(db, self.max_bytes)
            done = event_states.mark_delivered(db, event_ids, budget)
            budget.save(db)
            return done

    def purge_tombstones(self, db: sqlite3.Connection, settled_before: datetime) -> int:
        with transaction(db):
            return event_states.purge_tombstones(db, settled_before)

    def watch_done(self, db: sqlite3.Connection, seqs: Sequence[int]) -> None:
        with transaction(db):
            finish_watch_items(db, seqs)

    def watch_shed(self, db: sqlite3.Connection, keep: int, kind: str, counted_as: str) -> int:
        if waiting(db, kind) <= keep:
            return 0  # the usual case: no write transaction at all
        with transaction(db):
            return shed_watch_items(db, kind, keep, counted_as=counted_as)

    def purge_media(self, db: sqlite3.Connection, older_than: datetime) -> int:
        removed = self.media.purge_paths(older_than)
        forget_paths(db, removed)  # the index follows the files
        forget_fetches(db, older_than)
        return len(removed)

    def evict(self, db: sqlite3.Connection, max_bytes: int) -> tuple[int, list[IndexedFile]]:
        """Delete files (routine first, then evidence, oldest first) until the index fits ``max_bytes``."""
        used = indexed_bytes(db)
        evicted: list[IndexedFile] = []
        while used > max_bytes:
            batch = eviction_order(db, 256)
            if not batch:
                break
            chosen: list[IndexedFile] = []
            for candidate in batch:
                if used <= max_bytes:
                    break
                chosen.append(candidate)
                used -= candidate.size
            if not chosen:
                break
            # rows first: a row must never point at a deleted file; a crash between leaves an orphan
            # file, which the age purge removes in time
            forget_paths(db, [f.path for f in chosen])
            for f in chosen:
                (self.media.directory / f.path).unlink(missing_ok=True)
            evicted += chosen
        return used, evicted

    def stats(self, db: sqlite3.Connection) -> OutboxStats:
        depth = event_depth(db)
        dead = dead_letter_count(db)
        counted = read_counters(db)
        shed_total = sum(v for (n, _, _), v in counted.items() if n == "shed")
        return OutboxStats(**asdict(depth), shed_total=shed_total, dead_letters=dead, counters=counted)


def _queue_watch_work(
    db: sqlite3.Connection, rows: Sequence[EventRow], result: StoreResult, media: list[IndexedEvent]
) -> None:
    """Queue the work of the events just stored (not of duplicates or shed ones), once per event.

    Also collects, into ``media``, the stored events that carry media references (for the index).
    """
    fresh = set(result.stored)
    for row in rows:
        if row.event_id in fresh:
            fresh.discard(row.event_id)  # the first row of an id is the one that was inserted
            if row.media:
                media.append(
                    IndexedEvent(
                        row.event_id,
                        row.kind,
                        row.severity,
                        row.device_id,
                        row.dialect,
                        row.occurred_at,
                        row.media,
                    )
                )
            if row.watch is not None:
                enqueue_watch(
                    db, row.watch, event_id=row.event_id, device_id=row.device_id, occurred_at=row.occurred_at
                )


class Outbox:
    """The outbox, synchronously: open it (``with Outbox(...)``) and use it from one thread at a time."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        dead_letter_keep: int = 10_000,
        fetch_devices: Collection[str] = (),
    ) -> None:
        """``fetch_devices``: the devices whose ``device:`` media are queued for download (``media_url``)."""
        self._file = _OutboxFile(
            path, max_bytes=max_bytes, dead_letter_keep=dead_letter_keep, fetch_devices=fetch_devices
        )
        self.path = path
        self.media_dir = self._file.media.directory
        self.max_bytes = max_bytes
        self.dead_letter_keep = dead_letter_keep
        self._db: sqlite3.Connection | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> Outbox:
        """Open (creating if needed) and recover the byte budget from the file."""
        db = open_durable(self.path, SCHEMA)
        try:
            self._file.prepare(db)
        except BaseException:
            db.close()
            raise
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

    # --- writes ------------------------------------------------------------------------------------

    def commit(self, operations: Sequence[Operation]) -> list[StoreResult | None]:
        """Apply a batch in one transaction; durable on return. Pictures are on disk before the rows.

        Returns, per operation, what became of its events (``None`` for a dead letter).
        """
        return self._file.commit(self.db, operations)

    def mark_sent(self, event_ids: Sequence[str]) -> int:
        """The district broker took these; they stay (with their bodies) until the district's receipt."""
        return self._file.mark_sent(self.db, event_ids)

    def requeue_sent(self, sent_before: datetime, alarms_sent_before: datetime | None = None) -> int:
        """Sent but never confirmed (a receipt lost, a broker that lost its queue): send them again.

        Alarms may have a shorter wait (``alarms_sent_before``, later than ``sent_before``).
        """
        return self._file.requeue_sent(self.db, sent_before, alarms_sent_before)

    def mark_delivered(self, event_ids: Sequence[str]) -> int:
        """The district confirmed these: drop their bodies, keep a tombstone so re-sends stay duplicates."""
        return self._file.mark_delivered(self.db, event_ids)

    def purge_tombstones(self, settled_before: datetime) -> int:
        """Forget delivered/shed tombstones older than the de-duplication window."""
        return self._file.purge_tombstones(self.db, settled_before)

    def watch_done(self, seqs: Sequence[int]) -> None:
        """Forget finished matcher work."""
        self._file.watch_done(self.db, seqs)

    def watch_shed(self, keep: int, *, kind: str, counted_as: str) -> int:
        """Bound the backlog of one kind of work: drop its oldest beyond ``keep``, counted as ``counted_as``."""
        return self._file.watch_shed(self.db, keep, kind, counted_as)

    def purge_media(self, older_than: datetime) -> int:
        """Delete stored pictures older than the retention period (by the time they were written)."""
        return self._file.purge_media(self.db, older_than)

    # --- reads -------------------------------------------------------------------------------------

    def pending(self, limit: int = 1000, *, alarms_first: bool = True) -> list[StoredEvent]:
        """Events awaiting the uplink: alarms first, then oldest first."""
        return pending_events(self.db, limit, alarms_first=alarms_first)

    def event_ids(self, state: EventState = "pending") -> list[str]:
        """All event ids in a state (tests and tools)."""
        return event_ids_in(self.db, state)

    def watch_items(self, limit: int) -> list[WatchItem]:
        """The oldest queued matcher work."""
        return oldest_watch_items(self.db, limit)

    def dead_letters(self, limit: int = 50) -> list[dict[str, object]]:
        """The newest dead letters, newest first, for inspection."""
        return newest_dead_letters(self.db, limit)

    def pending_bytes(self) -> int:
        """The byte budget in use (shared by every connection to the file)."""
        return ByteBudget.load(self.db, self.max_bytes).used

    def stats(self) -> OutboxStats:
        """Depth, age and counters."""
        return self._file.stats(self.db)


class OutboxReader:
    """A second connection to the outbox file for the event loop, owned by one thread.

    Every call runs in that thread (``SqliteThread``); the event loop only awaits it.
    """

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self._file = _OutboxFile(path, max_bytes=max_bytes, dead_letter_keep=0)  # never writes letters
        self._thread = SqliteThread(path, SCHEMA, "uplink-outbox")

    async def __aenter__(self) -> Self:
        await self._thread.__aenter__()
        try:
            await self._thread.call(self._file.prepare)
        except BaseException as exc:
            await self._thread.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._thread.__aexit__(exc_type, exc, tb)

    async def pending(self, limit: int, *, after: tuple[int, int] = (0, 0)) -> list[StoredEvent]:
        """Alarms first, then oldest first; ``after``: only alarms / routine events past these seqs."""
        return await self._thread.call(lambda db: pending_events(db, limit, after=after))

    async def events_after(
        self, after: int, kinds: Collection[str], limit: int
    ) -> tuple[int, list[StoredEvent]]:
        """Events of ``kinds`` committed after ``after``, in commit order, and where to continue."""
        wanted = frozenset(kinds)
        return await self._thread.call(lambda db: events_after(db, after, wanted, limit))

    async def delivered(self, event_ids: Sequence[str]) -> int:
        """Confirmed by the district: tombstone them."""
        ids = list(event_ids)  # a snapshot: the caller may reuse its list while the thread works
        return await self._thread.call(lambda db: self._file.mark_delivered(db, ids))

    async def sent(self, event_ids: Sequence[str]) -> None:
        """Taken by the district broker; kept until the district's receipt."""
        ids = list(event_ids)
        await self._thread.call(lambda db: self._file.mark_sent(db, ids))

    async def stats(self) -> OutboxStats:
        """Depth, ages and counters."""
        return await self._thread.call(self._file.stats)

    async def requeue(self, sent_before: datetime, alarms_sent_before: datetime | None = None) -> int:
        """Sent long ago and never confirmed: back to pending (alarms after a shorter wait)."""
        return await self._thread.call(
            lambda db: self._file.requeue_sent(db, sent_before, alarms_sent_before)
        )

    async def watch_items(self, limit: int) -> list[WatchItem]:
        """The oldest queued matcher work."""
        return await self._thread.call(lambda db: oldest_watch_items(db, limit))

    async def watch_done(self, seqs: Sequence[int]) -> None:
        """Forget finished matcher work."""
        done = list(seqs)
        await self._thread.call(lambda db: self._file.watch_done(db, done))

    async def watch_shed(self, keep: int, *, kind: str, counted_as: str) -> int:
        """Bound the backlog of one kind of work (oldest first), counted as ``counted_as``."""
        return await self._thread.call(lambda db: self._file.watch_shed(db, keep, kind, counted_as))

    async def purge_media(self, older_than: datetime) -> int:
        """Delete pictures older than the retention period, and their index rows."""
        # file I/O as well as SQL: it runs in the outbox's thread, off the event loop
        return await self._thread.call(lambda db: self._file.purge_media(db, older_than))

    async def evict_media(self, max_bytes: int) -> tuple[int, list[IndexedFile]]:
        """Keep the indexed media under ``max_bytes``: bytes left, and the files deleted (in order)."""
        return await self._thread.call(lambda db: self._file.evict(db, max_bytes))

    async def media_bytes(self) -> int:
        """Bytes of the indexed media files."""
        return await self._thread.call(indexed_bytes)

    @property
    def catalog(self) -> MediaCatalog:
        """The media index as the evidence service reads it (``gateway.evidence_catalog.EvidenceCatalog``)."""
        return MediaCatalog(self._thread, self._file.media.directory)

    # --- the device fetch queue (gateway/media_fetch.py) ----------------------------------------------

    async def due_fetches(self, limit: int, skip_devices: Collection[str]) -> list[FetchJob]:
        """Pending fetches due now, of devices not in ``skip_devices``, oldest first."""
        skip = frozenset(skip_devices)
        return await self._thread.call(lambda db: due_fetches(db, limit, skip))

    async def pending_fetches(self) -> int:
        """How many device files wait to be fetched."""
        return await self._thread.call(pending_fetches)

    async def fetch_done(self, seq: int, stored: FetchedFile) -> None:
        """Index a fetched file and queue its announcement."""
        await self._thread.call(lambda db: fetch_done(db, seq, stored))

    async def fetch_retry(self, seq: int, delay_s: float, detail: str) -> None:
        """Try again later."""
        await self._thread.call(lambda db: fetch_retry(db, seq, delay_s, detail))

    async def fetch_failed(self, seq: int, detail: str) -> None:
        """Give up, keeping the reason."""
        await self._thread.call(lambda db: fetch_failed(db, seq, detail))

    async def purge_tombstones(self, settled_before: datetime) -> int:
        """Forget delivered and shed events settled before the cutoff."""
        return await self._thread.call(lambda db: self._file.purge_tombstones(db, settled_before))

    @property
    def media_dir(self) -> Path:
        """Where the pictures are."""
        return self._file.media.directory
