"""The district's evidence: content-addressed files, their SQLite index, and files being received.

Files live under ``media_dir`` by SHA-256 (``ab/cd/abcd...``), so one picture sent twice (proactively
and again on request, or for two events) is kept once. The index (its own SQLite file, WAL, one
thread) says which event and role each file is, who sent it, whether it was asked for and when it
arrived; what compounds say they hold (manifests and answers' items); and every operator request
with its state::

    pending -> waiting -> sending -> complete
       |          |          +-----> failed (a file did not match its SHA-256)
       +----------+--> refused | not_found | failed | expired

The index is also the queue between processes: the ``query`` CLI (in its own process) writes a
``pending`` request and the evidence desk inside ``compound-gateway api`` publishes what is not yet
published.

A file in transfer is placed chunk by chunk (by offset, so order and redelivery do not matter)
into a temporary file under ``media_dir/.partial``; once every byte is there its SHA-256 is checked
and only then is it moved to its content address. A mismatch is discarded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from foundation.errors import PayloadRejected
from foundation.sqlite_thread import SqliteBacked, transaction
from uplink.evidence import MAX_TRANSFER_BYTES, ChunkHeader, MediaItem

INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS media (
    sha256 TEXT NOT NULL, event_id TEXT NOT NULL, role TEXT NOT NULL, compound_id TEXT NOT NULL,
    size INTEGER NOT NULL, content_type TEXT NOT NULL, occurred_at TEXT, received_at TEXT NOT NULL,
    request_id TEXT, verified INTEGER NOT NULL, PRIMARY KEY (sha256, event_id, role));
CREATE INDEX IF NOT EXISTS media_by_event ON media (event_id);
CREATE INDEX IF NOT EXISTS media_by_received ON media (received_at);
CREATE TABLE IF NOT EXISTS manifest (
    event_id TEXT NOT NULL, role TEXT NOT NULL, sha256 TEXT NOT NULL, compound_id TEXT NOT NULL,
    size INTEGER NOT NULL, content_type TEXT NOT NULL, occurred_at TEXT, source TEXT NOT NULL,
    seen_at TEXT NOT NULL, PRIMARY KEY (event_id, role, sha256));
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, kind TEXT NOT NULL, event_id TEXT, device_id TEXT, since TEXT,
    until TEXT, roles TEXT NOT NULL, district_id TEXT NOT NULL, compound_id TEXT NOT NULL,
    operator TEXT NOT NULL, role TEXT NOT NULL, reason TEXT NOT NULL, created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL, state TEXT NOT NULL, rule TEXT, detail TEXT,
    items_expected INTEGER, updated_at TEXT NOT NULL, published_at TEXT);
CREATE INDEX IF NOT EXISTS requests_by_event ON requests (event_id);
CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state);
CREATE TABLE IF NOT EXISTS request_items (
    request_id TEXT NOT NULL, sha256 TEXT NOT NULL, event_id TEXT NOT NULL, role TEXT NOT NULL,
    received INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (request_id, sha256, event_id, role));
CREATE INDEX IF NOT EXISTS request_items_by_event ON request_items (event_id);
CREATE TABLE IF NOT EXISTS doomed_files (sha256 TEXT PRIMARY KEY);
"""


class RequestState(StrEnum):
    """Where an operator's request stands."""

    PENDING = "pending"  # written; not yet answered by the compound (it may be offline)
    WAITING = "waiting"  # the compound allowed it and is fetching the media from its device
    SENDING = "sending"  # the compound is sending the files it listed
    COMPLETE = "complete"  # every listed file arrived and matched its SHA-256
    REFUSED = "refused"  # the compound's policy said no (``rule`` names the rule)
    NOT_FOUND = "not_found"  # the compound has no such event or no media for it
    FAILED = "failed"  # the media could not be had, or a file did not match its SHA-256
    EXPIRED = "expired"  # no (complete) answer before the request's expiry


OPEN_STATES = frozenset({RequestState.PENDING, RequestState.WAITING, RequestState.SENDING})
"""States a request can still leave; the others are final."""


@dataclass(frozen=True)
class RequestRecord:
    """One operator request as the index keeps it."""

    request_id: str
    kind: str  # "event" or "barrier_window"
    district_id: str
    compound_id: str
    operator: str
    role: str
    reason: str
    created_at: datetime
    expires_at: datetime
    state: RequestState = RequestState.PENDING
    event_id: str | None = None
    roles: tuple[str, ...] = ()
    device_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    rule: str | None = None
    detail: str | None = None
    items_expected: int | None = None
    items_received: int = 0
    published_at: datetime | None = None


@dataclass(frozen=True)
class MediaRecord:
    """One file the district holds for one event and role."""

    sha256: str
    event_id: str
    role: str
    compound_id: str
    size: int
    content_type: str
    occurred_at: datetime | None
    received_at: datetime
    request_id: str | None
    verified: bool


@dataclass(frozen=True)
class ManifestRecord:
    """A file a compound says it holds (``source``: ``manifest`` or the request id that listed it)."""

    event_id: str
    role: str
    sha256: str
    compound_id: str
    size: int
    content_type: str
    occurred_at: datetime | None
    source: str
    seen_at: datetime


_REQUEST_COLUMNS = (
    "request_id, kind, event_id, device_id, since, until, roles, district_id, compound_id, operator,"
    " role, reason, created_at, expires_at, state, rule, detail, items_expected, published_at"
)
_MEDIA_COLUMNS = (
    "sha256, event_id, role, compound_id, size, content_type, occurred_at, received_at, request_id, verified"
)


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _request_from_row(row: Sequence[Any], received: int) -> RequestRecord:
    (rid, kind, event_id, device_id, since, until, roles, district, compound, operator, role, reason) = row[
        :12
    ]
    (created, expires, state, rule, detail, expected, published) = row[12:19]
    return RequestRecord(
        request_id=rid,
        kind=kind,
        district_id=district,
        compound_id=compound,
        operator=operator,
        role=role,
        reason=reason,
        created_at=datetime.fromisoformat(created),
        expires_at=datetime.fromisoformat(expires),
        state=RequestState(state),
        event_id=event_id,
        roles=tuple(json.loads(roles)),
        device_id=device_id,
        since=_time(since),
        until=_time(until),
        rule=rule,
        detail=detail,
        items_expected=expected,
        items_received=received,
        published_at=_time(published),
    )


def _media_from_row(row: Sequence[Any]) -> MediaRecord:
    sha, event_id, role, compound, size, content_type, occurred, received, rid, verified = row
    return MediaRecord(
        sha,
        event_id,
        role,
        compound,
        size,
        content_type,
        _time(occurred),
        _time(received) or datetime.min,
        rid,
        bool(verified),
    )


def _received(db: sqlite3.Connection, request_id: str) -> int:
    row = db.execute(
        "SELECT COUNT(*) FROM request_items WHERE request_id = ? AND received = 1", (request_id,)
    ).fetchone()
    return int(row[0])


def _read_request(db: sqlite3.Connection, request_id: str) -> RequestRecord | None:
    row = db.execute(
        f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE request_id = ?",  # noqa: S608 - constant columns
        (request_id,),
    ).fetchone()
    return _request_from_row(row, _received(db, request_id)) if row else None


def _complete_if_done(db: sqlite3.Connection, request_id: str, now: datetime) -> None:
    # a sending request is complete once every file it listed is here and verified
    row = db.execute(
        "SELECT state, items_expected FROM requests WHERE request_id = ?", (request_id,)
    ).fetchone()
    if row is None or row[0] != RequestState.SENDING.value:
        return
    if _received(db, request_id) >= (row[1] or 0):
        db.execute(
            "UPDATE requests SET state = ?, updated_at = ? WHERE request_id = ?",
            (RequestState.COMPLETE.value, now.isoformat(), request_id),
        )


class EvidenceIndex(SqliteBacked):
    """The evidence index: media, manifests and requests (one SQLite file, one thread)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, INDEX_SCHEMA, "evidence-index")

    # ---- requests ------------------------------------------------------------------------

    async def create_request(self, record: RequestRecord) -> None:
        """Write a new pending request (the desk publishes it)."""
        values = (
            record.request_id,
            record.kind,
            record.event_id,
            record.device_id,
            _iso(record.since),
            _iso(record.until),
            json.dumps(list(record.roles)),
            record.district_id,
            record.compound_id,
            record.operator,
            record.role,
            record.reason,
            record.created_at.isoformat(),
            record.expires_at.isoformat(),
            record.state.value,
            None,
            None,
            None,
            None,
        )

        def insert(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute(
                    f"INSERT INTO requests ({_REQUEST_COLUMNS}, updated_at) VALUES ({','.join('?' * 20)})",  # noqa: S608 - constant
                    (*values, record.created_at.isoformat()),
                )

        await self._file.call(insert)

    async def request(self, request_id: str) -> RequestRecord | None:
        """One request, or None."""
        return await self._file.call(lambda db: _read_request(db, request_id))

    async def unpublished(self, now: datetime) -> list[RequestRecord]:
        """Pending requests not yet published and not yet expired, oldest first."""

        def read(db: sqlite3.Connection) -> list[RequestRecord]:
            rows = db.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE state = 'pending' AND published_at IS NULL"  # noqa: S608 - constant
                " AND expires_at > ? ORDER BY created_at LIMIT 100",
                (now.isoformat(),),
            ).fetchall()
            return [_request_from_row(row, 0) for row in rows]

        return await self._file.call(read)

    async def mark_published(self, request_id: str, at: datetime) -> None:
        """The request reached the broker."""

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute(
                    "UPDATE requests SET published_at = ? WHERE request_id = ?", (at.isoformat(), request_id)
                )

        await self._file.call(write)

    async def requests_for_event(self, event_id: str) -> list[RequestRecord]:
        """Requests for an event, and barrier-window requests whose answers listed it; newest first."""

        def read(db: sqlite3.Connection) -> list[RequestRecord]:
            rows = db.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE event_id = ? OR request_id IN"  # noqa: S608 - constant
                " (SELECT request_id FROM request_items WHERE event_id = ?) ORDER BY created_at DESC LIMIT 200",
                (event_id, event_id),
            ).fetchall()
            return [_request_from_row(row, _received(db, row[0])) for row in rows]

        return await self._file.call(read)

    async def apply_answer(
        self,
        request_id: str,
        state: RequestState,
        *,
        rule: str | None,
        detail: str | None,
        items: Sequence[MediaItem],
        compound_id: str,
        now: datetime,
    ) -> RequestRecord | None:
        """Apply a compound's answer to an open request; a final request stays as it is.

        ``sending`` records the listed files (and marks those already held as received), and is
        ``complete`` at once when nothing is missing. Returns the request as it now stands.
        """

        def write(db: sqlite3.Connection) -> RequestRecord | None:
            with transaction(db):
                current = _read_request(db, request_id)
                if current is None or current.state not in OPEN_STATES:
                    return current
                expected = current.items_expected
                if state is RequestState.SENDING:
                    _insert_manifest(db, items, compound_id, request_id, now)
                    for item in items:
                        held = db.execute(
                            "SELECT 1 FROM media WHERE sha256 = ? AND event_id = ? AND role = ? AND verified = 1",
                            (item.sha256, item.event_id, item.role),
                        ).fetchone()
                        db.execute(
                            "INSERT INTO request_items (request_id, sha256, event_id, role, received)"
                            " VALUES (?,?,?,?,?) ON CONFLICT DO UPDATE SET received = MAX(received, excluded.received)",
                            (request_id, item.sha256, item.event_id, item.role, 1 if held else 0),
                        )
                    expected = db.execute(
                        "SELECT COUNT(*) FROM request_items WHERE request_id = ?", (request_id,)
                    ).fetchone()[0]
                db.execute(
                    "UPDATE requests SET state = ?, rule = ?, detail = ?, items_expected = ?, updated_at = ?"
                    " WHERE request_id = ?",
                    (state.value, rule, detail, expected, now.isoformat(), request_id),
                )
                _complete_if_done(db, request_id, now)
                return _read_request(db, request_id)

        return await self._file.call(write)

    async def fail_request(self, request_id: str, detail: str, now: datetime) -> None:
        """An open request failed (a file did not match its SHA-256, the broker refused it)."""

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute(
                    "UPDATE requests SET state = 'failed', detail = ?, updated_at = ?"
                    " WHERE request_id = ? AND state IN ('pending', 'waiting', 'sending')",
                    (detail[:256], now.isoformat(), request_id),
                )

        await self._file.call(write)

    async def expire_requests(self, now: datetime, sending_grace: timedelta) -> int:
        """Expire open requests past their expiry (a ``sending`` one gets ``sending_grace`` more)."""

        def write(db: sqlite3.Connection) -> int:
            with transaction(db):
                cursor = db.execute(
                    "UPDATE requests SET state = 'expired', updated_at = ?,"
                    " detail = COALESCE(detail, 'no complete answer before the request expired')"
                    " WHERE (state IN ('pending', 'waiting') AND expires_at <= ?)"
                    " OR (state = 'sending' AND expires_at <= ?)",
                    (now.isoformat(), now.isoformat(), (now - sending_grace).isoformat()),
                )
                return cursor.rowcount

        return await self._file.call(write)

    async def state_counts(self) -> dict[str, int]:
        """Requests by state."""

        def read(db: sqlite3.Connection) -> dict[str, int]:
            return dict(db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state").fetchall())

        return await self._file.call(read)

    # ---- media and manifests -------------------------------------------------------------

    async def record_manifest(
        self, items: Sequence[MediaItem], compound_id: str, source: str, now: datetime
    ) -> None:
        """Keep what a compound says it holds."""

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                _insert_manifest(db, items, compound_id, source, now)

        await self._file.call(write)

    async def holds(self, item: MediaItem) -> bool:
        """Whether a verified file of this event and role with this SHA-256 is already indexed."""

        def read(db: sqlite3.Connection) -> bool:
            return (
                db.execute(
                    "SELECT 1 FROM media WHERE sha256 = ? AND event_id = ? AND role = ? AND verified = 1",
                    (item.sha256, item.event_id, item.role),
                ).fetchone()
                is not None
            )

        return await self._file.call(read)

    async def add_media(
        self, item: MediaItem, compound_id: str, request_id: str | None, now: datetime
    ) -> RequestRecord | None:
        """Index a verified file (idempotent) and count it for its request; returns that request."""

        def write(db: sqlite3.Connection) -> RequestRecord | None:
            with transaction(db):
                db.execute(
                    f"INSERT INTO media ({_MEDIA_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,1)"  # noqa: S608 - constant
                    " ON CONFLICT DO NOTHING",
                    (
                        item.sha256,
                        item.event_id,
                        item.role,
                        compound_id,
                        item.size,
                        item.content_type,
                        _iso(item.occurred_at),
                        now.isoformat(),
                        request_id,
                    ),
                )
                if request_id is None:
                    return None
                db.execute(
                    "UPDATE request_items SET received = 1 WHERE request_id = ? AND sha256 = ? AND event_id = ?"
                    " AND role = ?",
                    (request_id, item.sha256, item.event_id, item.role),
                )
                _complete_if_done(db, request_id, now)
                return _read_request(db, request_id)

        return await self._file.call(write)

    async def media_for_event(self, event_id: str) -> list[MediaRecord]:
        """The files the district holds for an event."""

        def read(db: sqlite3.Connection) -> list[MediaRecord]:
            rows = db.execute(
                f"SELECT {_MEDIA_COLUMNS} FROM media WHERE event_id = ? ORDER BY role, sha256",  # noqa: S608 - constant
                (event_id,),
            ).fetchall()
            return [_media_from_row(row) for row in rows]

        return await self._file.call(read)

    async def manifest_for_event(self, event_id: str) -> list[ManifestRecord]:
        """What compounds said they hold for an event."""

        def read(db: sqlite3.Connection) -> list[ManifestRecord]:
            rows = db.execute(
                "SELECT event_id, role, sha256, compound_id, size, content_type, occurred_at, source, seen_at"
                " FROM manifest WHERE event_id = ? ORDER BY role, sha256",
                (event_id,),
            ).fetchall()
            return [
                ManifestRecord(e, r, s, c, n, t, _time(o), src, datetime.fromisoformat(seen))
                for e, r, s, c, n, t, o, src, seen in rows
            ]

        return await self._file.call(read)

    async def event_compound(self, event_id: str) -> str | None:
        """The compound the index has seen an event's evidence from, if any."""

        def read(db: sqlite3.Connection) -> str | None:
            for sql in (
                "SELECT compound_id FROM media WHERE event_id = ? LIMIT 1",
                "SELECT compound_id FROM manifest WHERE event_id = ? LIMIT 1",
                "SELECT compound_id FROM requests WHERE event_id = ? LIMIT 1",
            ):
                row = db.execute(sql, (event_id,)).fetchone()
                if row:
                    return str(row[0])
            return None

        return await self._file.call(read)

    # ---- retention -----------------------------------------------------------------------

    async def purge_candidates(self, cutoff: datetime) -> list[str]:
        """Events with media received before ``cutoff`` (the caller says which are confirmed alarms)."""

        def read(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT DISTINCT event_id FROM media WHERE received_at < ?", (cutoff.isoformat(),)
            ).fetchall()
            return [str(r[0]) for r in rows]

        return await self._file.call(read)

    async def purge(
        self, media_cutoff: datetime, confirmed_cutoff: datetime, confirmed: frozenset[str]
    ) -> tuple[dict[str, int], list[str], int]:
        """Delete expired media rows: (rows by class, SHA-256s no row refers to any more, requests deleted).

        The SHA-256s include those of earlier passes whose files were not removed yet; call
        ``files_removed`` once they are.

        Media of ``confirmed`` events go at ``confirmed_cutoff``, the rest at ``media_cutoff``;
        manifests and final requests older than ``media_cutoff`` go too.
        """

        def write(db: sqlite3.Connection) -> tuple[dict[str, int], list[str], int]:
            with transaction(db):
                db.execute("CREATE TEMP TABLE IF NOT EXISTS kept_events (event_id TEXT PRIMARY KEY)")
                db.execute("DELETE FROM kept_events")
                db.executemany("INSERT OR IGNORE INTO kept_events VALUES (?)", [(e,) for e in confirmed])
                doomed = db.execute(
                    "SELECT sha256, event_id, role, event_id IN (SELECT event_id FROM kept_events) FROM media"
                    " WHERE (received_at < ? AND event_id NOT IN (SELECT event_id FROM kept_events))"
                    " OR (received_at < ? AND event_id IN (SELECT event_id FROM kept_events))",
                    (media_cutoff.isoformat(), confirmed_cutoff.isoformat()),
                ).fetchall()
                rows = {"media": 0, "confirmed_alarm": 0}
                shas: set[str] = set()
                for sha, event_id, role, kept in doomed:
                    db.execute(
                        "DELETE FROM media WHERE sha256 = ? AND event_id = ? AND role = ?",
                        (sha, event_id, role),
                    )
                    rows["confirmed_alarm" if kept else "media"] += 1
                    shas.add(sha)
                # files whose rows are gone, kept in the index until they are removed from disk
                # (``files_removed``): a failure or a crash after this commit retries them on the
                # next pass instead of leaving them past their retention; one referenced again
                # (the same picture sent anew) is no orphan any more
                db.executemany("INSERT OR IGNORE INTO doomed_files VALUES (?)", [(sha,) for sha in shas])
                db.execute("DELETE FROM doomed_files WHERE sha256 IN (SELECT sha256 FROM media)")
                orphans = [str(r[0]) for r in db.execute("SELECT sha256 FROM doomed_files ORDER BY sha256")]
                db.execute("DELETE FROM manifest WHERE seen_at < ?", (media_cutoff.isoformat(),))
                requests = db.execute(
                    "DELETE FROM requests WHERE created_at < ? AND state NOT IN ('pending', 'waiting', 'sending')",
                    (media_cutoff.isoformat(),),
                ).rowcount
                db.execute(
                    "DELETE FROM request_items WHERE request_id NOT IN (SELECT request_id FROM requests)"
                )
                return rows, orphans, requests

        return await self._file.call(write)

    async def files_removed(self, shas: Sequence[str]) -> None:
        """The orphans ``purge`` returned are gone from disk."""
        done = [(sha,) for sha in shas]

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.executemany("DELETE FROM doomed_files WHERE sha256 = ?", done)

        await self._file.call(write)


def _insert_manifest(
    db: sqlite3.Connection, items: Sequence[MediaItem], compound_id: str, source: str, now: datetime
) -> None:
    db.executemany(
        "INSERT INTO manifest (event_id, role, sha256, compound_id, size, content_type, occurred_at, source,"
        " seen_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET seen_at = excluded.seen_at",
        [
            (
                i.event_id,
                i.role,
                i.sha256,
                compound_id,
                i.size,
                i.content_type,
                _iso(i.occurred_at),
                source,
                now.isoformat(),
            )
            for i in items
        ],
    )


# ---- files ---------------------------------------------------------------------------------------


class MediaFiles:
    """Content-addressed files under one directory (all disk work off the event loop)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.partial = root / ".partial"

    def path(self, sha256: str) -> Path:
        """Where the file with this SHA-256 is (or would be) kept."""
        return self.root / sha256[:2] / sha256[2:4] / sha256

    async def exists(self, sha256: str) -> bool:
        """Whether the file is on disk."""
        return await asyncio.to_thread(self.path(sha256).is_file)

    async def remove(self, shas: Sequence[str]) -> int:
        """Delete files; returns how many were there."""

        def unlink() -> int:
            gone = 0
            for sha in shas:
                try:
                    self.path(sha).unlink()
                    gone += 1
                except FileNotFoundError:
                    pass
            return gone

        return await asyncio.to_thread(unlink)


@dataclass(frozen=True)
class EvidenceAccess:
    """What operator actions use of the evidence: the index, the files, the request lifetime.

    ``new_request`` is set when a request is written in this process, so the desk publishes it
    at once (requests written by another process are found by the desk's poll).
    """

    index: EvidenceIndex
    files: MediaFiles
    request_ttl_s: int
    new_request: asyncio.Event = field(default_factory=asyncio.Event)


# ---- transfers -----------------------------------------------------------------------------------


class ChunkOutcome(StrEnum):
    """What one chunk did."""

    PARTIAL = "partial"  # placed; more to come
    VERIFIED = "verified"  # the last one: the file matched its SHA-256 and is kept
    HASH_MISMATCH = "hash_mismatch"  # the last one: the file did not match and was discarded


@dataclass
class Transfer:
    """One file being received."""

    compound_id: str
    request_id: str | None
    item: MediaItem
    count: int
    path: Path
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (offset, length)
    last_seen: float = field(default_factory=time.monotonic)

    def complete(self) -> bool:
        """Every chunk is here and together they cover the file exactly."""
        if len(self.spans) != self.count:
            return False
        position = 0
        for offset, length in sorted(self.spans.values()):
            if offset != position:
                return False
            position += length
        return position == self.item.size


class Transfers:
    """Files being received: placed by offset into temporary files, checked, then kept or discarded.

    At most ``max_transfers`` at once and ``MAX_TRANSFER_BYTES`` each; chunks of one file may come
    in any order and more than once.
    """

    def __init__(self, files: MediaFiles, max_transfers: int) -> None:
        self._files = files
        self._max = max_transfers
        self.active: dict[str, Transfer] = {}

    @staticmethod
    def key(compound_id: str, header: ChunkHeader) -> str:
        """One transfer per sender, request, file, event and role."""
        item = header.item
        return f"{compound_id}/{header.request_id or '-'}/{item.sha256}/{item.event_id}/{item.role}"

    async def receive(
        self, compound_id: str, header: ChunkHeader, data: bytes
    ) -> tuple[ChunkOutcome, Transfer]:
        """Place one chunk; on the last one check the whole and keep or discard it.

        Raises ``PayloadRejected`` for a chunk that contradicts its transfer or one too many transfers.
        """
        key = self.key(compound_id, header)
        transfer = self.active.get(key)
        if transfer is None:
            if len(self.active) >= self._max:
                raise PayloadRejected("too_many_transfers", f"{self._max} files are being received already")
            if header.item.size > MAX_TRANSFER_BYTES:
                raise PayloadRejected("transfer_too_large", f"{header.item.size} bytes", field="item.size")
            name = hashlib.sha256(key.encode()).hexdigest()
            transfer = Transfer(
                compound_id, header.request_id, header.item, header.count, self._files.partial / name
            )
            await asyncio.to_thread(_create_sparse, transfer.path)
            self.active[key] = transfer
        if header.count != transfer.count or header.item != transfer.item:
            raise PayloadRejected(
                "bad_chunk", "the chunk's count or item differs from its transfer's", field="count"
            )
        span = (header.offset, len(data))
        if transfer.spans.get(header.index, span) != span:
            raise PayloadRejected(
                "bad_chunk", f"chunk {header.index} came again at another place", field="offset"
            )
        transfer.last_seen = time.monotonic()
        await asyncio.to_thread(_place, transfer.path, header.offset, data)
        transfer.spans[header.index] = span
        if not transfer.complete():
            return ChunkOutcome.PARTIAL, transfer
        del self.active[key]
        kept = await asyncio.to_thread(
            _verify_and_keep, transfer.path, transfer.item.sha256, self._files.path(transfer.item.sha256)
        )
        return (ChunkOutcome.VERIFIED if kept else ChunkOutcome.HASH_MISMATCH), transfer

    async def drop_stale(self, older_than_s: float) -> list[Transfer]:
        """Discard transfers without a chunk for ``older_than_s``; returns them."""
        cutoff = time.monotonic() - older_than_s
        stale = [key for key, t in self.active.items() if t.last_seen < cutoff]
        dropped = [self.active.pop(key) for key in stale]
        await asyncio.to_thread(_unlink_all, [t.path for t in dropped])
        return dropped

    async def clear_leftovers(self) -> None:
        """Delete partial files left by an earlier process (their chunk records died with it)."""
        await asyncio.to_thread(_clear_dir, self._files.partial)


def _create_sparse(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _place(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def _verify_and_keep(partial: Path, sha256: str, final: Path) -> bool:
    digest = hashlib.sha256()
    with partial.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, final)  # same file system: the file appears whole or not at all
    return True


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _clear_dir(directory: Path) -> None:
    if directory.is_dir():
        for path in directory.iterdir():
            path.unlink(missing_ok=True)
