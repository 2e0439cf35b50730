"""The durable queue of objects for the city: fed by the ingesters at commit, drained by the city service.

One SQLite file (``[city] queue_path``, WAL) shared by the processes of one host: each ingester adds
the objects of the events it has just stored, before it acknowledges them to the broker, so an event
the district holds is in the queue too (a redelivered event adds nothing: an object is unique by
category and source, and keeps the id it was given first). The city service takes due objects,
sends them, and settles each one by the city's answer; the API reads counts and the link state.

Each object is stored once, as built (its JSON body with its id), and sent as stored however often.
A face or vehicle object claims 41-character image ids (its ``SourceID`` and the ``ImageID`` of each
sub-image it carries); no two sources may claim one image id. ``event_objects`` derives the ids from
the event alone, so a clash means two events of one device in one second whose hashed serials meet:
the later one added is renumbered (``objects.renumbered``: its serials moved on by one, then two, ...)
until its ids are free, and is stored so. Every transaction is one short call in the file's thread;
several processes wait on each other's write lock (30 s) rather than fail.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from district.city.model import Category, CityObject, LinkState, ObjectResult, Outcome, QueuedObject
from district.city.objects import ObjectBuildError, image_ids, renumbered
from foundation.sqlite_thread import SqliteBacked, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, category TEXT NOT NULL, source TEXT NOT NULL,
    object_id TEXT NOT NULL, body TEXT NOT NULL, occurred_at TEXT NOT NULL, queued_at TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, due_at TEXT,
    reason TEXT, refused_at TEXT, accepted_at TEXT, UNIQUE (category, source));
CREATE INDEX IF NOT EXISTS objects_by_state ON objects (category, state, seq);
CREATE INDEX IF NOT EXISTS objects_pending_age ON objects (state, occurred_at);
CREATE INDEX IF NOT EXISTS objects_accepted ON objects (state, accepted_at);
CREATE INDEX IF NOT EXISTS objects_refused ON objects (refused_at) WHERE refused_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS image_ids (image_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS image_ids_by_seq ON image_ids (seq);
CREATE TABLE IF NOT EXISTS accepted_counts (category TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS link_state (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL);
"""

_PENDING = "pending"  # not yet accepted (refused ones included: ``due_at`` says when they go again)
_ACCEPTED = "accepted"  # StatusCode 0: never sent again
_PARKED = "parked"  # refused ``refused_max_attempts`` times: kept and shown, not sent
_SERIALS = 100_000  # the 5-digit serial of an image id
_PURGE_CHUNK = 2000  # rows deleted per transaction, so the ingesters' adds never wait long


def _iso(moment: datetime) -> str:
    # one fixed form (UTC, microseconds), so that the text order is the time order in SQL
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass(frozen=True)
class Refusal:
    """An object the city refused at its last attempt, with the city's reason."""

    seq: int
    category: Category
    object_id: str
    source: str
    attempts: int
    reason: str
    at: datetime
    parked: bool  # refused ``refused_max_attempts`` times: kept, shown, no longer sent


@dataclass(frozen=True)
class QueueCounts:
    """How much is waiting, refused and done, per category (``Category`` values as keys)."""

    backlog: dict[str, int]  # not accepted and not parked (includes refused objects waiting to retry)
    refused: dict[str, int]  # whose last answer was a refusal (parked included)
    parked: dict[str, int]
    accepted: dict[str, int]
    oldest_pending_at: datetime | None  # occurred_at of the oldest object in the backlog


_OBJECT_COLUMNS = "seq, attempts, category, object_id, source, body, occurred_at"


def _queued(row: Sequence[Any]) -> QueuedObject:
    seq, attempts, category, object_id, source, body, occurred_at = row
    return QueuedObject(
        seq=seq,
        attempts=attempts,
        obj=CityObject(
            category=Category(category),
            object_id=object_id,
            source=source,
            body=json.loads(body),
            occurred_at=datetime.fromisoformat(occurred_at),
        ),
    )


def _free_ids(db: sqlite3.Connection, obj: CityObject) -> CityObject:
    """``obj`` or its first renumbering whose image ids no other source claims."""
    for shift in range(_SERIALS):
        candidate = renumbered(obj, shift) if shift else obj
        claimed = image_ids(candidate)
        marks = ",".join("?" * len(claimed))
        taken = db.execute(
            f"SELECT 1 FROM image_ids WHERE image_id IN ({marks}) LIMIT 1",  # noqa: S608 - placeholders only
            claimed,
        ).fetchone()
        if taken is None:
            return candidate
    # 100 000 objects of one device in one second: not a district's traffic, a broken clock or id
    raise ObjectBuildError(f"no free image serial left for {obj.source} ({obj.object_id[:36]})")


def _add(db: sqlite3.Connection, objects: Sequence[CityObject], now: str) -> int:
    added = 0
    with transaction(db):
        for obj in objects:
            known = db.execute(
                "SELECT 1 FROM objects WHERE category = ? AND source = ?", (obj.category.value, obj.source)
            ).fetchone()
            if known is not None:
                continue
            stored = _free_ids(db, obj) if image_ids(obj) else obj
            cursor = db.execute(
                "INSERT INTO objects (category, source, object_id, body, occurred_at, queued_at, state)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    stored.category.value,
                    stored.source,
                    stored.object_id,
                    json.dumps(stored.body, ensure_ascii=False, separators=(",", ":")),
                    _iso(stored.occurred_at),
                    now,
                    _PENDING,
                ),
            )
            db.executemany(
                "INSERT INTO image_ids (image_id, seq) VALUES (?, ?)",
                [(image_id, cursor.lastrowid) for image_id in image_ids(stored)],
            )
            added += 1
    return added


def _link_state_json(state: LinkState) -> str:
    def plain(value: object) -> object:
        return _iso(value) if isinstance(value, datetime) else value

    return json.dumps({key: plain(value) for key, value in asdict(state).items()}, ensure_ascii=False)


def _link_state_from(text: str) -> LinkState:
    document = json.loads(text)
    times = {"registered_at", "last_keepalive_at", "updated_at"}
    known = {f.name for f in fields(LinkState)}
    values: dict[str, Any] = {
        key: (_time(value) if key in times else value) for key, value in document.items() if key in known
    }
    return LinkState(**values)


class CityQueue(SqliteBacked):
    """The queue file; open with ``async with``."""

    def __init__(self, path: Path, *, refused_retry_s: float = 300.0, refused_max_attempts: int = 10) -> None:
        super().__init__(path, SCHEMA, "city-queue")
        self._refused_retry = timedelta(seconds=refused_retry_s)
        self._refused_max_attempts = refused_max_attempts

    async def add(self, objects: Sequence[CityObject]) -> int:
        """Add objects not yet queued (unique by category and source); returns how many were new.

        One transaction for the batch: the objects of a round are all queued or none is (the
        ingester then leaves the round unacknowledged and gets it again).
        """
        if not objects:
            return 0
        now = _iso(datetime.now(UTC))
        return await self._file.call(lambda db: _add(db, objects, now))

    async def take(self, category: Category, limit: int, now: datetime) -> list[QueuedObject]:
        """Up to ``limit`` objects of ``category`` due at ``now``, oldest first.

        Due: never accepted, not parked, and (if refused) refused at least ``refused_retry_s`` ago.
        Taking does not lock: one city service drains a queue. Oldest is queue order (``seq``): a late
        backlog goes after what was queued before it arrived.
        """

        def read(db: sqlite3.Connection) -> list[QueuedObject]:
            rows = db.execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE category = ? AND state = ? AND (due_at IS NULL OR due_at <= ?)"  # noqa: S608 - constant columns
                " ORDER BY seq LIMIT ?",
                (category.value, _PENDING, _iso(now), limit),
            ).fetchall()
            return [_queued(row) for row in rows]

        return await self._file.call(read)

    async def settle(self, results: Sequence[ObjectResult], now: datetime) -> None:
        """Record the city's answer for each object, in one transaction.

        Accepted: done for good. Refused: the reason kept, attempts counted, due again after
        ``refused_retry_s``, parked after ``refused_max_attempts``. Unanswered: due again at once,
        the same object (same id) as before. ``attempts`` counts refusals (what the city judged); an
        unanswered send counts nothing. An answer for an object already accepted changes nothing.
        """
        at = _iso(now)
        retry_at = _iso(now + self._refused_retry)

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                for result in results:
                    if result.outcome is Outcome.ACCEPTED:
                        row = db.execute(
                            "UPDATE objects SET state = ?, accepted_at = ?, reason = NULL, refused_at = NULL"
                            " WHERE seq = ? AND state != ? RETURNING category",
                            (_ACCEPTED, at, result.seq, _ACCEPTED),
                        ).fetchone()
                        if row is not None:
                            db.execute(
                                "INSERT INTO accepted_counts (category, n) VALUES (?, 1)"
                                " ON CONFLICT (category) DO UPDATE SET n = n + 1",
                                (row[0],),
                            )
                    elif result.outcome is Outcome.REFUSED:
                        db.execute(
                            "UPDATE objects SET attempts = attempts + 1, reason = ?, refused_at = ?, due_at = ?,"
                            " state = CASE WHEN attempts + 1 >= ? THEN ? ELSE ? END"
                            " WHERE seq = ? AND state = ?",
                            (
                                result.reason or "refused",
                                at,
                                retry_at,
                                self._refused_max_attempts,
                                _PARKED,
                                _PENDING,
                                result.seq,
                                _PENDING,
                            ),
                        )
                    # unanswered: nothing to record; it stays due (never refused, or its retry time is past)

        await self._file.call(write)

    async def objects_after(
        self, seq: int, categories: Collection[Category], limit: int
    ) -> list[QueuedObject]:
        """Objects of ``categories`` queued after ``seq`` whatever their state (subscription cursors)."""
        if not categories:
            return []
        names = [category.value for category in categories]

        def read(db: sqlite3.Connection) -> list[QueuedObject]:
            rows = db.execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE seq > ?"  # noqa: S608 - constant columns, placeholders
                f" AND category IN ({','.join('?' * len(names))}) ORDER BY seq LIMIT ?",
                (seq, *names, limit),
            ).fetchall()
            return [_queued(row) for row in rows]

        return await self._file.call(read)

    async def counts(self) -> QueueCounts:
        """Backlog, refusals, parked and accepted per category.

        Accepted is what the queue still keeps (``purge`` takes the old ones away); it is a running
        tally, not a scan of a month of rows.
        """

        def read(db: sqlite3.Connection) -> QueueCounts:
            backlog: dict[str, int] = {}
            refused: dict[str, int] = {}
            parked: dict[str, int] = {}
            for category, state, total, with_reason in db.execute(
                "SELECT category, state, COUNT(*), COUNT(reason) FROM objects WHERE state IN (?, ?)"
                " GROUP BY category, state",
                (_PENDING, _PARKED),
            ):
                (backlog if state == _PENDING else parked)[category] = total
                if with_reason:
                    refused[category] = refused.get(category, 0) + with_reason
            accepted = dict(db.execute("SELECT category, n FROM accepted_counts WHERE n > 0").fetchall())
            oldest = db.execute(
                "SELECT MIN(occurred_at) FROM objects WHERE state = ?", (_PENDING,)
            ).fetchone()[0]
            return QueueCounts(
                backlog=backlog,
                refused=refused,
                parked=parked,
                accepted=accepted,
                oldest_pending_at=_time(oldest),
            )

        return await self._file.call(read)

    async def refusals(self, limit: int = 50) -> list[Refusal]:
        """The most recent refusals, newest first."""

        def read(db: sqlite3.Connection) -> list[Refusal]:
            rows = db.execute(
                "SELECT seq, category, object_id, source, attempts, reason, refused_at, state FROM objects"
                " WHERE refused_at IS NOT NULL ORDER BY refused_at DESC, seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [
                Refusal(
                    seq=seq,
                    category=Category(category),
                    object_id=object_id,
                    source=source,
                    attempts=attempts,
                    reason=reason,
                    at=datetime.fromisoformat(refused_at),
                    parked=state == _PARKED,
                )
                for seq, category, object_id, source, attempts, reason, refused_at, state in rows
            ]

        return await self._file.call(read)

    async def save_link_state(self, state: LinkState) -> None:
        """The city service's view of the link, for ``city status`` and the console."""
        text = _link_state_json(state)

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO link_state (id, state) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state",
                (text,),
            )

        await self._file.call(write)

    async def link_state(self) -> LinkState:
        """The last saved link state (an empty, unregistered one if the service never ran)."""
        row = await self._file.call(
            lambda db: db.execute("SELECT state FROM link_state WHERE id = 1").fetchone()
        )
        return _link_state_from(row[0]) if row else LinkState()

    async def purge(self, accepted_before: datetime) -> int:
        """Delete objects accepted before ``accepted_before``; returns how many.

        In chunks of a few thousand rows, one transaction each, so the ingesters' adds never wait
        long. Their image ids go with them: an event redelivered after its purge is queued again with
        the same ids (the city has them already and answers for them as it likes).
        """
        before = _iso(accepted_before)

        def chunk(db: sqlite3.Connection) -> int:
            with transaction(db):
                rows = db.execute(
                    "SELECT seq, category FROM objects WHERE state = ? AND accepted_at < ? LIMIT ?",
                    (_ACCEPTED, before, _PURGE_CHUNK),
                ).fetchall()
                if not rows:
                    return 0
                seqs = [(seq,) for seq, _ in rows]
                db.executemany("DELETE FROM image_ids WHERE seq = ?", seqs)
                db.executemany("DELETE FROM objects WHERE seq = ?", seqs)
                per_category: dict[str, int] = {}
                for _, category in rows:
                    per_category[category] = per_category.get(category, 0) + 1
                db.executemany(
                    "UPDATE accepted_counts SET n = n - ? WHERE category = ?",
                    [(n, category) for category, n in per_category.items()],
                )
                return len(rows)

        total = 0
        while deleted := await self._file.call(chunk):
            total += deleted
        return total
