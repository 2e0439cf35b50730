"""The embedded store (no server needed): one SQLite table, unique by event id, and its hourly roll-ups.

``event_rollups`` holds event counts per district, compound, kind, severity and UTC hour (by point
time, i.e. occurred_at). A trigger adds each event to its hour in the transaction that inserts it,
and fires only for rows actually inserted (``INSERT OR IGNORE`` of a re-sent event id inserts
nothing), so a re-sent event counts once and a late backlog adds to its own, older hours. Deleting
events (retention) does not touch the roll-ups: they are purged by their own, longer
``rollup_days``.

``event_rollups_daily`` holds the same counts per local day of the district (a fixed UTC offset in
whole hours, ``rollup_day_offset_hours``), kept by its own trigger and rebuilt from the hours when
the offset changes.

``device_activity`` holds per district, compound and device its last event (time and dialect) and
its last status report (time and state), kept by a second trigger as events arrive (an event that
is not newer changes nothing, so re-sent and late events leave it exact). It answers the device
inventory without reading a month of events; retention removes what it says about purged events.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal, Self, TypeVar

from pydantic import Field

from foundation.config_types import ConfigModel
from foundation.events import Event
from foundation.sqlite_thread import SqliteBacked, transaction
from uplink.lineprotocol import point_time_ns
from uplink.stores.base import (
    HIT_CROP_FIELD,
    HIT_CROP_KIND,
    HIT_CROPS_BATCH_MAX,
    RetentionPass,
    RetentionRules,
    RetentionTally,
    StoreError,
)

T = TypeVar("T")


class SqliteStoreConfig(ConfigModel):
    """The embedded store: a SQLite file."""

    type: Literal["sqlite"] = "sqlite"
    path: Path
    rollup_day_offset_hours: int | None = Field(
        default=8,
        ge=-12,
        le=14,
        description="UTC offset (whole hours) of the district's local day for the daily roll-ups:"
        " [api] timezone's (Asia/Shanghai: 8); none: no daily level (day counts sum hours)",
    )

    def build(self) -> SqliteStore:
        """The store this config names (enter it with ``async with``)."""
        return SqliteStore(self)


class SqliteStore(SqliteBacked):
    """The embedded store (no server needed): one table, unique by event id."""

    def __init__(self, config: SqliteStoreConfig) -> None:
        super().__init__(config.path, SQLITE_SCHEMA, "sqlite-store")
        hours = config.rollup_day_offset_hours
        self.day_offset_ns: int | None = None if hours is None else hours * HOUR_NS
        """The daily roll-ups' local day: its UTC offset in ns (None: no daily level)."""

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        offset = self.day_offset_ns
        await self._file.call(lambda db: migrate_sqlite_store(db, day_offset_ns=offset))
        return self

    async def call(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``function(connection)`` in the store's thread (the query layer reads this way)."""
        return await self._file.call(function)

    async def write(self, events: Sequence[Event]) -> None:
        """Insert the events in one transaction (existing event ids are left as they are)."""
        rows = [sqlite_row(e) for e in events]

        def insert(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.executemany(SQLITE_INSERT, rows)

        try:
            await self._file.call(insert)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}", retryable=True) from exc

    async def purge_batch(self, cutoff_ns: int, batch_rows: int) -> int:
        """Delete up to ``batch_rows`` events whose point time is before ``cutoff_ns``, in one transaction.

        Returns how many this call deleted: fewer than ``batch_rows`` means none are left. Safe when
        several ingesters purge one file together: a DELETE removes only rows still there, so the
        counts of all purgers add up to the rows removed.
        """

        def delete_batch(db: sqlite3.Connection) -> int:
            with transaction(db):
                cursor = db.execute(
                    "DELETE FROM events WHERE event_id IN"
                    " (SELECT event_id FROM events WHERE time_ns < ? LIMIT ?)",
                    (cutoff_ns, batch_rows),
                )
                return cursor.rowcount

        try:
            return await self._file.call(delete_batch)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}", retryable=True) from exc

    async def purge_before(
        self, cutoff_ns: int, batch_rows: int, on_batch: Callable[[int], None] | None = None
    ) -> int:
        """Delete every event whose point time is before ``cutoff_ns``; returns how many this call deleted.

        Batch after batch, each its own transaction: each holds the file's write lock, and an
        ingester writing a round (this one's or another's sharing the file) waits for it, so a first
        purge of months of events must not hold the lock for all of them at once. ``on_batch`` is
        told each batch's count as soon as it is committed (a purge failing halfway has still
        deleted those).
        """
        purged = 0
        while True:
            deleted = await self.purge_batch(cutoff_ns, batch_rows)
            purged += deleted
            if on_batch is not None:
                on_batch(deleted)
            if deleted < batch_rows:
                return purged

    async def purge_rollups_before(self, cutoff_ns: int, batch_rows: int) -> int:
        """Delete the roll-up rows of hours before ``cutoff_ns``, ``batch_rows`` at a time; returns how many.

        Only whole hours go: an hour that starts before the cutoff is kept until it ends before it,
        so a day summed from hours is never half purged at the cutoff's own hour.
        """
        # the hour holding the cutoff starts before it: keep it (drop only hours fully before)
        cutoff_hour = cutoff_ns // HOUR_NS * HOUR_NS

        def delete_batch(db: sqlite3.Connection) -> int:
            with transaction(db):
                hours = db.execute(
                    "DELETE FROM event_rollups WHERE rowid IN"
                    " (SELECT rowid FROM event_rollups WHERE hour_ns < ? LIMIT ?)",
                    (cutoff_hour, batch_rows),
                ).rowcount
                # days go whole too: only those that ended before the cutoff's hour
                days = db.execute(
                    "DELETE FROM event_rollups_daily WHERE rowid IN"
                    " (SELECT rowid FROM event_rollups_daily WHERE day_ns + ? <= ? LIMIT ?)",
                    (DAY_NS, cutoff_hour, batch_rows),
                ).rowcount
                return max(hours, days)

        purged = 0
        try:
            while True:
                deleted = await self._file.call(delete_batch)
                purged += deleted
                if deleted < batch_rows:
                    return purged
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}", retryable=True) from exc

    async def forget_activity_before(self, cutoff_ns: int) -> None:
        """Drop from ``device_activity`` what it says about events older than ``cutoff_ns`` (purged ones).

        A device whose last event is older goes; a last status report that is older is forgotten.
        The summary then says what the stored events say.
        """

        def forget(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute("DELETE FROM device_activity WHERE last_ns < ?", (cutoff_ns,))
                db.execute(
                    "UPDATE device_activity SET status_state = NULL, status_ns = NULL WHERE status_ns < ?",
                    (cutoff_ns,),
                )

        try:
            await self._file.call(forget)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}", retryable=True) from exc

    async def rebuild_summaries(self) -> tuple[int, int]:
        """Recount the hourly roll-ups of every hour whose events are all stored; rebuild the days and ``device_activity``.

        The repair tool behind ``compound-gateway ingest --backfill-rollups``; the triggers keep
        them exact as events arrive. Returns (hourly roll-up rows written, devices summarised).
        """
        offset = self.day_offset_ns

        def rebuild(db: sqlite3.Connection) -> tuple[int, int]:
            with transaction(db):
                hours = rebuild_rollup_hours(db, -(2**62), 2**62)
                rebuild_rollup_days(db, offset)
                return hours, rebuild_device_activity(db)

        try:
            return await self._file.call(rebuild)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}", retryable=True) from exc

    async def rebuild_rollups(self, start_ns: int, end_ns: int) -> int:
        """Recount the roll-ups of the hours from ``start_ns`` to ``end_ns`` from the events still stored.

        A repair tool (no command wires it yet): the trigger keeps the roll-ups
        exact as events arrive. Hours whose events retention already deleted would be recounted
        from what is left, so the range is cut at the oldest hour that still has all its events:
        give ranges within ``events_days``. Returns the roll-up rows written.
        """

        def rebuild(db: sqlite3.Connection) -> int:
            with transaction(db):
                return rebuild_rollup_hours(db, start_ns, end_ns)

        try:
            return await self._file.call(rebuild)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}", retryable=True) from exc

    async def strip_hit_crops_batch(self, cutoff_ns: int, batch_rows: int) -> int:
        """Set the face crop of up to ``batch_rows`` watch-list hits before ``cutoff_ns`` to null, in one transaction.

        Only the crop changes (``json_set`` keeps the rest of the body as it was, byte for byte);
        the row and its columns stay. Returns how many this call stripped: fewer than
        ``batch_rows`` means none are left. Only rows still carrying a crop are touched, so a second
        pass, or another ingester stripping the same file, finds nothing more: the counts add up.
        """

        def strip_batch(db: sqlite3.Connection) -> int:
            with transaction(db):
                cursor = db.execute(
                    f"UPDATE events SET body = json_set(body, '{HIT_CROP_PATH}', NULL) WHERE event_id IN"  # noqa: S608 - our constants only
                    f" (SELECT event_id FROM events WHERE {HIT_CROP_PRESENT} AND time_ns < ? LIMIT ?)",
                    (cutoff_ns, batch_rows),
                )
                return cursor.rowcount

        try:
            return await self._file.call(strip_batch)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}", retryable=True) from exc

    async def enforce_retention(
        self, rules: RetentionRules, now: datetime, tally: RetentionTally
    ) -> RetentionPass:
        """Delete the expired events, then strip the expired hit crops; batch by batch, each counted.

        Events first: a hit about to be deleted is not worth rewriting. Crop batches are at most
        ``HIT_CROPS_BATCH_MAX`` rows (each rewrites a body of up to 256 KiB under the write lock).
        """

        def purged(deleted: int) -> None:
            tally.events_purged += deleted

        events_cutoff = rules.cutoff_ns(rules.events_days, now)
        await self.purge_before(events_cutoff, rules.batch_rows, on_batch=purged)
        await self.forget_activity_before(events_cutoff)
        await self.purge_rollups_before(rules.cutoff_ns(rules.rollup_days, now), rules.batch_rows)
        cutoff_ns = rules.cutoff_ns(rules.hit_crops_days, now)
        batch_rows = min(rules.batch_rows, HIT_CROPS_BATCH_MAX)
        while True:
            stripped = await self.strip_hit_crops_batch(cutoff_ns, batch_rows)
            tally.hit_crops_purged += stripped
            if stripped < batch_rows:
                return RetentionPass()

    async def ping(self) -> None:
        """A trivial query in the store's thread."""
        try:
            await super().ping()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}", retryable=True) from exc


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id    TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    district_id TEXT NOT NULL,
    compound_id TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    severity    TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body        TEXT NOT NULL
);
"""
# Columns added for the query layer (schema 2); ``migrate_sqlite_store`` adds them to older files.
# time_ns is the same point time InfluxDB gets, so both stores order and page identically.
SQLITE_QUERY_COLUMNS = (("time_ns", "INTEGER"), ("plate", "TEXT"), ("person_ref", "TEXT"))
SQLITE_INSERT = (
    "INSERT OR IGNORE INTO events (event_id, kind, district_id, compound_id, device_id, severity,"
    " occurred_at, received_at, body, time_ns, plate, person_ref) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
HOUR_NS = 3600 * 1_000_000_000  # spelled out in the SQL below (3600000000000)
# Roll-ups: event counts per UTC hour. rowid table (the primary key is the unique index) so that
# retention can delete in rowid batches. The hour is the point time's (occurred_at's: the point time
# adds under a millisecond to it, never crossing an hour). One UPSERT per inserted event, in the
# insert's own transaction; an ignored INSERT fires no AFTER INSERT trigger.
SQLITE_ROLLUPS = """
CREATE TABLE IF NOT EXISTS event_rollups (
    compound_id TEXT NOT NULL,
    hour_ns     INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    district_id TEXT NOT NULL,
    events      INTEGER NOT NULL,
    PRIMARY KEY (compound_id, hour_ns, kind, severity, district_id)
);
CREATE INDEX IF NOT EXISTS event_rollups_by_hour ON event_rollups (hour_ns);
CREATE TRIGGER IF NOT EXISTS events_rollup AFTER INSERT ON events BEGIN
    INSERT INTO event_rollups (compound_id, hour_ns, kind, severity, district_id, events)
    VALUES (NEW.compound_id, NEW.time_ns / 3600000000000 * 3600000000000, NEW.kind, NEW.severity, NEW.district_id, 1)
    ON CONFLICT (compound_id, hour_ns, kind, severity, district_id) DO UPDATE SET events = events + 1;
END;
"""
# Device activity: one row per district, compound and device. Every SET expression of an UPSERT
# reads the row as it was, so the last event's dialect and time change together, and only for a
# newer event (a re-sent or late one changes nothing).
SQLITE_DEVICE_ACTIVITY = """
CREATE TABLE IF NOT EXISTS device_activity (
    district_id  TEXT NOT NULL,
    compound_id  TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    dialect      TEXT,
    last_ns      INTEGER NOT NULL,
    status_state TEXT,
    status_ns    INTEGER,
    PRIMARY KEY (district_id, compound_id, device_id)
);
CREATE TRIGGER IF NOT EXISTS events_device_activity AFTER INSERT ON events BEGIN
    INSERT INTO device_activity (district_id, compound_id, device_id, dialect, last_ns, status_state, status_ns)
    VALUES (NEW.district_id, NEW.compound_id, NEW.device_id, json_extract(NEW.body, '$.source.dialect'), NEW.time_ns,
            CASE WHEN NEW.kind = 'device_status' THEN json_extract(NEW.body, '$.payload.state') END,
            CASE WHEN NEW.kind = 'device_status' THEN NEW.time_ns END)
    ON CONFLICT (district_id, compound_id, device_id) DO UPDATE SET
        dialect = CASE WHEN excluded.last_ns > last_ns THEN excluded.dialect ELSE dialect END,
        last_ns = max(last_ns, excluded.last_ns),
        status_state = CASE WHEN excluded.status_ns > coalesce(status_ns, -1) THEN excluded.status_state ELSE status_state END,
        status_ns = CASE WHEN excluded.status_ns > coalesce(status_ns, -1) THEN excluded.status_ns ELSE status_ns END;
END;
"""
# Daily roll-ups: the hourly ones summed per local day of the district (a fixed UTC offset in
# whole hours, so a local day is exactly 24 UTC hours). Kept by a trigger built for the offset; the
# offset the table was built for is kept beside it, and another one rebuilds it from the hours.
DAY_NS = 24 * HOUR_NS
SQLITE_ROLLUP_DAYS = """
CREATE TABLE IF NOT EXISTS event_rollups_daily (
    compound_id TEXT NOT NULL,
    day_ns      INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    district_id TEXT NOT NULL,
    events      INTEGER NOT NULL,
    PRIMARY KEY (compound_id, day_ns, kind, severity, district_id)
);
CREATE INDEX IF NOT EXISTS event_rollups_daily_by_day ON event_rollups_daily (day_ns);
CREATE TABLE IF NOT EXISTS event_rollups_daily_offset (offset_ns INTEGER);
"""


def rollup_day_trigger(offset_ns: int) -> str:
    """The trigger adding each inserted event to its local day (day start = UTC midnight - offset)."""
    day = f"(NEW.time_ns + {int(offset_ns)}) / {DAY_NS} * {DAY_NS} - {int(offset_ns)}"  # integers only
    return (
        "CREATE TRIGGER events_rollup_daily AFTER INSERT ON events BEGIN"  # noqa: S608 - integers only
        " INSERT INTO event_rollups_daily (compound_id, day_ns, kind, severity, district_id, events)"
        f" VALUES (NEW.compound_id, {day}, NEW.kind, NEW.severity, NEW.district_id, 1)"
        " ON CONFLICT (compound_id, day_ns, kind, severity, district_id) DO UPDATE SET events = events + 1;"
        " END"
    )


ROLLUP_FROM_EVENTS = (
    "INSERT INTO event_rollups (compound_id, hour_ns, kind, severity, district_id, events)"
    " SELECT compound_id, time_ns / 3600000000000 * 3600000000000, kind, severity, district_id, count(*)"
    " FROM events WHERE time_ns >= ? AND time_ns < ? GROUP BY 1, 2, 3, 4, 5"
)
# A watch-list hit still carrying its face crop. The partial index below holds exactly these rows,
# so the hourly retention pass finds the expired crops without reading every stored hit's body; a
# stripped hit leaves the index. (The query must repeat this text for SQLite to use the index.)
HIT_CROP_PATH = f"$.payload.{HIT_CROP_FIELD}"
HIT_CROP_PRESENT = f"kind = '{HIT_CROP_KIND.value}' AND json_extract(body, '{HIT_CROP_PATH}') IS NOT NULL"
SQLITE_INDEXES = f"""
CREATE INDEX IF NOT EXISTS events_by_time ON events (time_ns);
CREATE INDEX IF NOT EXISTS events_by_compound ON events (compound_id, kind, time_ns);
CREATE INDEX IF NOT EXISTS events_by_device ON events (device_id, time_ns);
CREATE INDEX IF NOT EXISTS events_by_plate ON events (plate, time_ns) WHERE plate IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_person ON events (person_ref, time_ns) WHERE person_ref IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_severity ON events (severity, time_ns);
CREATE INDEX IF NOT EXISTS events_with_hit_crop ON events (time_ns) WHERE {HIT_CROP_PRESENT};
"""


def sqlite_row(event: Event) -> tuple[str | int | None, ...]:
    """One event as a row of the embedded store."""
    payload = event.payload
    return (
        event.event_id,
        event.kind.value,
        event.district_id,
        event.compound_id,
        event.device_id,
        event.severity.value,
        event.occurred_at.isoformat(),
        event.received_at.isoformat(),
        event.model_dump_json(),
        point_time_ns(event),
        getattr(payload, "plate", None),
        getattr(payload, "person_ref", None),
    )


def migrate_sqlite_store(db: sqlite3.Connection, *, day_offset_ns: int | None = 8 * HOUR_NS) -> None:
    """Bring an embedded store file to the current schema (adds and back-fills the query columns).

    ``day_offset_ns``: the local day of the daily roll-ups (None: none kept).
    """

    def missing_columns() -> list[tuple[str, str]]:
        present = {row[1] for row in db.execute("PRAGMA table_info(events)")}
        return [(name, kind) for name, kind in SQLITE_QUERY_COLUMNS if name not in present]

    if missing_columns():
        with transaction(db):
            # read again under the write lock: ingesters starting together on a new file all saw
            # the columns missing, and all but the first failed with "duplicate column name"
            added = missing_columns()
            for name, kind in added:
                db.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")
            rows = db.execute("SELECT body FROM events").fetchall() if added else []
            db.executemany(
                "UPDATE events SET time_ns=?, plate=?, person_ref=? WHERE event_id=?",
                [
                    (row[9], row[10], row[11], row[0])
                    for row in (sqlite_row(Event.model_validate_json(body)) for (body,) in rows)
                ],
            )
    db.executescript(SQLITE_INDEXES)
    if not _has_table(db, "event_rollups"):
        with transaction(db):
            # checked again under the write lock: of ingesters opening the file together, one
            # creates and back-fills, the others find the table (each event counted once)
            if not _has_table(db, "event_rollups"):
                for statement in _statements(SQLITE_ROLLUPS):
                    db.execute(statement)
                db.execute(ROLLUP_FROM_EVENTS, (-(2**63), 2**63 - 1))
    if _day_offset(db) != (day_offset_ns, True):
        with transaction(db):
            if _day_offset(db) != (day_offset_ns, True):  # again under the write lock, as above
                for statement in _statements(SQLITE_ROLLUP_DAYS):
                    db.execute(statement)
                db.execute("DROP TRIGGER IF EXISTS events_rollup_daily")
                if day_offset_ns is not None:
                    db.execute(rollup_day_trigger(day_offset_ns))
                rebuild_rollup_days(db, day_offset_ns)
                db.execute("DELETE FROM event_rollups_daily_offset")
                db.execute("INSERT INTO event_rollups_daily_offset (offset_ns) VALUES (?)", (day_offset_ns,))
    if not _has_table(db, "device_activity"):
        with transaction(db):
            if not _has_table(db, "device_activity"):  # again under the write lock, as above
                for statement in _statements(SQLITE_DEVICE_ACTIVITY):
                    db.execute(statement)
                rebuild_device_activity(db)


def _day_offset(db: sqlite3.Connection) -> tuple[int | None, bool]:
    """The offset the daily roll-ups were built for, and whether they were built at all."""
    if not _has_table(db, "event_rollups_daily_offset"):
        return None, False
    row = db.execute("SELECT offset_ns FROM event_rollups_daily_offset").fetchone()
    return (row[0], True) if row is not None else (None, False)


def rebuild_rollup_days(db: sqlite3.Connection, offset_ns: int | None) -> int:
    """Fill the daily roll-ups again from the hourly ones (run it inside a transaction); returns rows.

    A local day at a whole-hour offset is exactly 24 hourly rows, so the sums are exact and reach
    as far back as the hours do (beyond the stored events).
    """
    db.execute("DELETE FROM event_rollups_daily")
    if offset_ns is None:
        return 0
    return db.execute(
        "INSERT INTO event_rollups_daily (compound_id, day_ns, kind, severity, district_id, events)"
        " SELECT compound_id, (hour_ns + ?) / ? * ? - ?, kind, severity, district_id, sum(events)"
        " FROM event_rollups GROUP BY 1, 2, 3, 4, 5",
        (offset_ns, DAY_NS, DAY_NS, offset_ns),
    ).rowcount


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return (
        db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone()
        is not None
    )


def _statements(script: str) -> list[str]:
    """The statements of a schema script (``executescript`` would COMMIT the open transaction)."""
    statements: list[str] = []
    pending = ""
    for line in script.strip().splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return statements


def rebuild_rollup_hours(db: sqlite3.Connection, start_ns: int, end_ns: int) -> int:
    """Recount the roll-ups of the whole hours from ``start_ns`` to ``end_ns`` (rounded out) from ``events``.

    Run it inside a transaction. The start is moved up to the first hour whose events are all
    still stored (after the oldest stored event's hour), so hours thinned by retention keep the
    counts they had.
    """
    start = start_ns // HOUR_NS * HOUR_NS
    end = -(-end_ns // HOUR_NS) * HOUR_NS
    oldest = db.execute("SELECT min(time_ns) FROM events").fetchone()[0]
    if oldest is None:
        return 0
    start = max(start, (oldest // HOUR_NS + 1) * HOUR_NS)
    if start >= end:
        return 0
    db.execute("DELETE FROM event_rollups WHERE hour_ns >= ? AND hour_ns < ?", (start, end))
    return db.execute(ROLLUP_FROM_EVENTS, (start, end)).rowcount


def rebuild_device_activity(db: sqlite3.Connection) -> int:
    """Fill ``device_activity`` again from the stored events (run it inside a transaction); returns its rows.

    SQLite takes a bare column of a ``max()`` query from the row holding the maximum.
    """
    db.execute("DELETE FROM device_activity")
    db.execute(
        "INSERT INTO device_activity (district_id, compound_id, device_id, dialect, last_ns)"
        " SELECT district_id, compound_id, device_id, json_extract(body, '$.source.dialect'), max(time_ns)"
        " FROM events GROUP BY district_id, compound_id, device_id"
    )
    statuses = db.execute(
        "SELECT json_extract(body, '$.payload.state'), max(time_ns), district_id, compound_id, device_id"
        " FROM events WHERE kind = 'device_status' GROUP BY district_id, compound_id, device_id"
    ).fetchall()
    db.executemany(
        "UPDATE device_activity SET status_state = ?, status_ns = ?"
        " WHERE district_id = ? AND compound_id = ? AND device_id = ?",
        statuses,
    )
    return int(db.execute("SELECT count(*) FROM device_activity").fetchone()[0])


def sqlite_event_ids(path: Path) -> list[str]:
    """All event ids in an embedded store file (tools and tests)."""
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT event_id FROM events")]
