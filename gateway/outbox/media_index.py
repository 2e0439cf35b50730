"""The media index: which stored file belongs to which event, and the queues that hang off it.

Tables (all in the outbox file, created with ``CREATE TABLE IF NOT EXISTS``):

* ``media_index``: one row per (event, role) whose file is in the media store: pictures that came
  with the event (``local:`` references, written by the intake in the event's transaction) and
  files fetched from the device later. It carries what the evidence service filters on (kind,
  device, dialect, severity, time) and the ``evidence`` flag: fetched media of critical alarms,
  which the byte budget evicts last.
* ``media_fetch``: one row per ``device:`` reference of a stored event whose device has a download
  API (``media_url``), written in the event's transaction; ``gateway/media_fetch.py`` works it.
  The row keeps the event's columns, so a fetched file is indexed without reading the event (its
  body is gone once delivered) and a requester sees "still fetching" before any file exists.
* ``media_manifest``: fetched files to announce to the district (``MediaManifest``).
* ``media_proactive``: fetched snapshot/trajectory pictures of critical thrown-object and fire
  alarms, to send up unasked.

Events stay immutable: a fetched file never changes the event's body; the district learns of it
from the manifest.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from foundation.events import EventKind, Severity, utc_now
from foundation.sqlite_thread import SqliteThread, transaction
from gateway.evidence_catalog import DeviceFetch, EventMedia, FetchState, Outgoing, StoredMedia
from uplink.evidence import MediaItem, MediaRole

DDL = """
CREATE TABLE IF NOT EXISTS media_index (
    event_id     TEXT NOT NULL,
    role         TEXT NOT NULL,
    path         TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    kind         TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    dialect      TEXT NOT NULL,
    severity     TEXT NOT NULL,
    occurred_at  TEXT NOT NULL,
    stored_at    TEXT NOT NULL,
    evidence     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, role)
);
CREATE INDEX IF NOT EXISTS media_index_device ON media_index (device_id, occurred_at);
CREATE INDEX IF NOT EXISTS media_index_path ON media_index (path);
CREATE TABLE IF NOT EXISTS media_fetch (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL,
    role         TEXT NOT NULL,
    key          TEXT NOT NULL,
    kind         TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    dialect      TEXT NOT NULL,
    severity     TEXT NOT NULL,
    occurred_at  TEXT NOT NULL,
    queued_at    TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'fetched', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL DEFAULT 0,
    detail       TEXT,
    UNIQUE (event_id, role)
);
CREATE INDEX IF NOT EXISTS media_fetch_due ON media_fetch (state, next_at);
CREATE INDEX IF NOT EXISTS media_fetch_device ON media_fetch (device_id, occurred_at);
CREATE TABLE IF NOT EXISTS media_manifest (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    role     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS media_proactive (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    role     TEXT NOT NULL
);
"""

PROACTIVE_ROLES = frozenset({"snapshot", "trajectory"})
MAX_CONTENT_TYPE = (
    64  # ``MediaItem.content_type`` is a ``Code``: a longer one would fail every read of its row
)
UNKNOWN_CONTENT_TYPE = "application/octet-stream"
PROACTIVE_KINDS = frozenset({EventKind.THROWN_OBJECT.value, EventKind.EBIKE_SHED.value})
"""Thrown objects and the fire-type kinds (e-bike shed smoke and fire alarms)."""

MediaColumns = tuple[str, str, str | None, str | None, int | None]
"""A media reference as an ``EventRow`` carries it: role, ref, content type, SHA-256, size."""

_INDEX_COLUMNS = (
    "event_id, role, path, sha256, size, content_type, kind, device_id, dialect, severity,"
    " occurred_at, stored_at, evidence"
)


@dataclass(frozen=True, slots=True)
class IndexedEvent:
    """The columns of a stored event the media tables need (``EventRow`` has them)."""

    event_id: str
    kind: str
    severity: str
    device_id: str
    dialect: str
    occurred_at: str
    media: Sequence[MediaColumns]


def record_event_media(
    db: sqlite3.Connection, events: Sequence[IndexedEvent], fetch_devices: Collection[str]
) -> None:
    """Index the inline pictures and queue the device fetches of freshly stored events.

    Inside the transaction that stores them; one ``executemany`` per table for the whole batch
    (the intake's per-event budget has no room for a round trip per picture).
    """
    now = utc_now().isoformat()
    inline: list[tuple[object, ...]] = []
    fetches: list[tuple[object, ...]] = []
    for event in events:
        for role, ref, content_type, sha256, size in event.media:
            if ref.startswith("local:") and sha256 is not None:
                inline.append(
                    (
                        event.event_id,
                        role,
                        ref[len("local:") :],
                        sha256,
                        size or 0,
                        content_type or "application/octet-stream",
                        event.kind,
                        event.device_id,
                        event.dialect,
                        event.severity,
                        event.occurred_at,
                        now,
                        0,  # inline pictures are no fetched alarm evidence
                    )
                )
            elif ref.startswith("device:") and event.device_id in fetch_devices:
                fetches.append(
                    (
                        event.event_id,
                        role,
                        ref[len("device:") :],
                        event.kind,
                        event.device_id,
                        event.dialect,
                        event.severity,
                        event.occurred_at,
                        now,
                    )
                )
    if inline:
        db.executemany(
            f"INSERT OR IGNORE INTO media_index ({_INDEX_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608 - constant
            inline,
        )
    if fetches:
        db.executemany(
            "INSERT OR IGNORE INTO media_fetch (event_id, role, key, kind, device_id, dialect, severity,"
            " occurred_at, queued_at) VALUES (?,?,?,?,?,?,?,?,?)",
            fetches,
        )


# --- the fetch queue ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchJob:
    """A queued ``device:`` reference to download."""

    seq: int
    event_id: str
    role: str
    key: str
    device_id: str
    attempts: int


@dataclass(frozen=True, slots=True)
class FetchedFile:
    """A downloaded file, in the media store at ``path`` (relative)."""

    path: str
    sha256: str
    size: int
    content_type: str


def due_fetches(db: sqlite3.Connection, limit: int, skip_devices: Collection[str]) -> list[FetchJob]:
    """Pending fetches whose retry time has come, oldest first, of devices not in ``skip_devices``."""
    # the busy devices are left out in SQL, not after a LIMIT: a dead camera's backlog at the head
    # of the queue must not hide another camera's files
    rows = db.execute(
        "SELECT seq, event_id, role, key, device_id, attempts FROM media_fetch"
        " WHERE state='pending' AND next_at <= ? AND device_id NOT IN (SELECT value FROM json_each(?))"
        " ORDER BY next_at, seq LIMIT ?",
        (time.time(), _json_list(sorted(skip_devices)), limit),
    ).fetchall()
    return [FetchJob(*row) for row in rows]


def pending_fetches(db: sqlite3.Connection) -> int:
    """How many device files wait to be fetched."""
    (n,) = db.execute("SELECT COUNT(*) FROM media_fetch WHERE state='pending'").fetchone()
    return int(n)


def fetch_retry(db: sqlite3.Connection, seq: int, delay_s: float, detail: str) -> None:
    """A failed attempt; try again after ``delay_s``."""
    with transaction(db):
        db.execute(
            "UPDATE media_fetch SET attempts=attempts+1, next_at=?, detail=? WHERE seq=?",
            (time.time() + delay_s, detail, seq),
        )


def fetch_failed(db: sqlite3.Connection, seq: int, detail: str) -> None:
    """Given up: the row stays, ``failed`` with the reason, so a requester can see why."""
    with transaction(db):
        db.execute(
            "UPDATE media_fetch SET state='failed', attempts=attempts+1, detail=? WHERE seq=?", (detail, seq)
        )


def fetch_done(db: sqlite3.Connection, seq: int, stored: FetchedFile) -> None:
    """The file is in the store: index it, queue its announcement (and its unasked upload), close the row."""
    with transaction(db):
        row = db.execute(
            "SELECT event_id, role, kind, device_id, dialect, severity, occurred_at FROM media_fetch"
            " WHERE seq=?",
            (seq,),
        ).fetchone()
        if row is None:
            return
        event_id, role, kind, device_id, dialect, severity, occurred_at = row
        critical = severity == Severity.CRITICAL.value
        db.execute(
            f"INSERT OR REPLACE INTO media_index ({_INDEX_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608 - constant
            (
                event_id,
                role,
                stored.path,
                stored.sha256,
                stored.size,
                # what the device said, within the contract: a row the catalog cannot read would
                # stop every manifest and alarm picture queued behind it
                stored.content_type
                if 0 < len(stored.content_type) <= MAX_CONTENT_TYPE
                else UNKNOWN_CONTENT_TYPE,
                kind,
                device_id,
                dialect,
                severity,
                occurred_at,
                utc_now().isoformat(),
                int(critical),
            ),
        )
        db.execute("INSERT INTO media_manifest (event_id, role) VALUES (?,?)", (event_id, role))
        if critical and role in PROACTIVE_ROLES and kind in PROACTIVE_KINDS:
            db.execute("INSERT INTO media_proactive (event_id, role) VALUES (?,?)", (event_id, role))
        db.execute(
            "UPDATE media_fetch SET state='fetched', attempts=attempts+1, detail=NULL WHERE seq=?", (seq,)
        )


# --- the byte budget ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexedFile:
    """One file of the store as the index sees it (several events may share it)."""

    path: str
    size: int
    evidence: bool
    newest: str  # the latest stored_at of its rows: a file is as young as its youngest use


def indexed_bytes(db: sqlite3.Connection) -> int:
    """Bytes of the files the index knows (each file once)."""
    (n,) = db.execute(
        "SELECT COALESCE(SUM(size), 0) FROM (SELECT path, MAX(size) AS size FROM media_index GROUP BY path)"
    ).fetchone()
    return int(n)


def eviction_order(db: sqlite3.Connection, limit: int) -> list[IndexedFile]:
    """Files in the order the budget deletes them: routine before evidence, oldest first."""
    rows = db.execute(
        "SELECT path, MAX(size), MAX(evidence), MAX(stored_at) AS newest FROM media_index"
        " GROUP BY path ORDER BY MAX(evidence), newest LIMIT ?",
        (limit,),
    ).fetchall()
    return [IndexedFile(path, int(size), bool(evidence), newest) for path, size, evidence, newest in rows]


def forget_paths(db: sqlite3.Connection, paths: Sequence[str]) -> int:
    """Drop the index rows (and queued announcements) of deleted files; returns index rows dropped."""
    if not paths:
        return 0
    with transaction(db):
        gone = db.execute(
            "SELECT event_id, role FROM media_index WHERE path IN (SELECT value FROM json_each(?))",
            (_json_list(paths),),
        ).fetchall()
        db.executemany("DELETE FROM media_index WHERE event_id=? AND role=?", gone)
        db.executemany("DELETE FROM media_manifest WHERE event_id=? AND role=?", gone)
        db.executemany("DELETE FROM media_proactive WHERE event_id=? AND role=?", gone)
        # a fetched row whose file is gone says nothing any more (``event_media`` would claim "fetched")
        db.executemany("DELETE FROM media_fetch WHERE event_id=? AND role=? AND state='fetched'", gone)
    return len(gone)


def forget_fetches(db: sqlite3.Connection, queued_before: datetime) -> int:
    """Forget fetch rows queued before the media retention cutoff (their files would be purged by now)."""
    with transaction(db):
        return db.execute(
            "DELETE FROM media_fetch WHERE queued_at < ?", (queued_before.isoformat(),)
        ).rowcount


def _json_list(values: Sequence[str]) -> str:
    return json.dumps(list(values))


# --- the catalog the evidence service reads --------------------------------------------------------------


def _item(row: tuple[object, ...]) -> MediaItem:
    event_id, role, _path, sha256, size, content_type, occurred_at = row[:7]
    return MediaItem(
        event_id=str(event_id),
        role=_role(str(role)),
        sha256=str(sha256),
        size=int(str(size)),
        content_type=str(content_type),
        occurred_at=datetime.fromisoformat(str(occurred_at)),
    )


def _role(role: str) -> MediaRole:
    roles: dict[str, MediaRole] = {
        "face": "face",
        "scene": "scene",
        "plate": "plate",
        "trajectory": "trajectory",
        "clip": "clip",
        "snapshot": "snapshot",
    }
    return roles[role]


_ITEM_COLUMNS = "i.event_id, i.role, i.path, i.sha256, i.size, i.content_type, i.occurred_at"


class MediaCatalog:
    """``EvidenceCatalog`` over the outbox file's reader thread (every call runs in that thread)."""

    def __init__(self, thread: SqliteThread, media_dir: Path) -> None:
        self._thread = thread
        self._dir = media_dir

    def _stored(self, row: tuple[object, ...]) -> StoredMedia:
        return StoredMedia(_item(row), self._dir / str(row[2]))

    async def event_media(self, event_id: str) -> EventMedia | None:
        """The event's files and the state of its device fetches; None when none are known."""
        return await self._thread.call(lambda db: self._event_media(db, event_id))

    def _event_media(self, db: sqlite3.Connection, event_id: str) -> EventMedia | None:
        stored = db.execute(
            f"SELECT {_ITEM_COLUMNS}, i.kind, i.device_id, i.dialect, i.severity FROM media_index i"  # noqa: S608 - constant
            " WHERE i.event_id=? ORDER BY i.role",
            (event_id,),
        ).fetchall()
        fetches = db.execute(
            "SELECT role, state, detail, kind, device_id, dialect, severity, occurred_at FROM media_fetch"
            " WHERE event_id=? ORDER BY role",
            (event_id,),
        ).fetchall()
        if not stored and not fetches:
            return None
        head = (*stored[0][7:11], stored[0][6]) if stored else fetches[0][3:8]
        kind, device_id, dialect, severity, occurred_at = head
        return EventMedia(
            event_id=event_id,
            kind=EventKind(kind),
            device_id=device_id,
            dialect=dialect,
            severity=Severity(severity),
            occurred_at=datetime.fromisoformat(occurred_at),
            stored=tuple(self._stored(row) for row in stored),
            fetches=tuple(
                DeviceFetch(
                    role=_role(role), state=FetchState(state), detail=detail if state == "failed" else None
                )
                for role, state, detail, *_ in fetches
            ),
        )

    async def window_media(
        self, device_id: str, since: datetime, until: datetime, limit: int
    ) -> Sequence[EventMedia]:
        """One device's events in ``[since, until)`` with their files, oldest first, at most ``limit``."""
        return await self._thread.call(lambda db: self._window(db, device_id, since, until, limit))

    def _window(
        self, db: sqlite3.Connection, device_id: str, since: datetime, until: datetime, limit: int
    ) -> list[EventMedia]:
        # occurred_at is stored as the event's ISO text, which sorts as time only within one offset:
        # compare parsed times, on the rows the (device_id, occurred_at) index narrows to a day either side
        # events whose files are all still being fetched count too (``fetching`` tells the requester)
        rows = db.execute(
            "SELECT event_id, occurred_at FROM media_index WHERE device_id=?1 AND occurred_at >= ?2"
            " AND occurred_at < ?3 UNION SELECT event_id, occurred_at FROM media_fetch WHERE device_id=?1"
            " AND occurred_at >= ?2 AND occurred_at < ?3",
            (device_id, _day_before(since), _day_after(until)),
        ).fetchall()
        inside = sorted(
            (datetime.fromisoformat(at), event_id)
            for event_id, at in rows
            if since <= datetime.fromisoformat(at) < until
        )
        found = [self._event_media(db, event_id) for _, event_id in inside[:limit]]
        return [media for media in found if media is not None]

    async def proactive_pending(self, limit: int) -> Sequence[Outgoing]:
        """Critical alarms' fetched snapshot/trajectory files not sent yet, oldest first."""
        return await self._thread.call(lambda db: self._outgoing(db, "media_proactive", limit))

    async def proactive_sent(self, keys: Sequence[int]) -> None:
        """Those went up."""
        done = list(keys)
        await self._thread.call(lambda db: _delete_keys(db, "media_proactive", done))

    async def manifest_pending(self, limit: int) -> Sequence[Outgoing]:
        """Fetched files not announced yet, oldest first."""
        return await self._thread.call(lambda db: self._outgoing(db, "media_manifest", limit))

    async def manifest_sent(self, keys: Sequence[int]) -> None:
        """Those were announced."""
        done = list(keys)
        await self._thread.call(lambda db: _delete_keys(db, "media_manifest", done))

    def _outgoing(self, db: sqlite3.Connection, table: str, limit: int) -> list[Outgoing]:
        rows = db.execute(
            f"SELECT q.seq, {_ITEM_COLUMNS} FROM {table} q JOIN media_index i"  # noqa: S608 - constant names
            " ON i.event_id = q.event_id AND i.role = q.role ORDER BY q.seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [Outgoing(key=int(row[0]), media=self._stored(row[1:])) for row in rows]


def _delete_keys(db: sqlite3.Connection, table: str, keys: list[int]) -> None:
    with transaction(db):
        db.executemany(f"DELETE FROM {table} WHERE seq=?", [(k,) for k in keys])  # noqa: S608 - constant names


def _day_before(at: datetime) -> str:
    return datetime.fromtimestamp(at.timestamp() - 86400, at.tzinfo).isoformat()[:10]


def _day_after(at: datetime) -> str:
    return datetime.fromtimestamp(at.timestamp() + 2 * 86400, at.tzinfo).isoformat()[:10]
