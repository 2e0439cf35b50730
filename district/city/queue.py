"""The durable queue of objects for the city: fed by the ingesters at commit, drained by the city service.

One SQLite file (``[city] queue_path``, WAL) shared by the processes of one host: each ingester adds
the objects of the events it has just stored, before it acknowledges them to the broker, so an event
the district holds is in the queue too (a redelivered event adds nothing: an object is unique by
category and source, and keeps the id it was given first). The city service takes due objects,
sends them, and settles each one by the city's answer; the API reads counts and the link state.

Each object is stored once, as built (its JSON body with its id and the kind of what it was built
from), and sent as stored however often, with two exceptions for privacy: what the ``[city.privacy]``
in force withholds is deleted, and what it allows as a record only loses its images
(``apply_policy``, and the same check at ``take`` and ``objects_after``); a Face's crop is stripped
once older than ``[retention] hit_crops_days`` (``purge``).
A face or vehicle object claims 41-character image ids (its ``SourceID`` and the ``ImageID`` of each
sub-image it carries); no two sources may claim one image id. ``event_objects`` derives the ids from
the event alone, so a clash means two events of one device in one second whose hashed serials meet:
the later one added is renumbered (``objects.renumbered``: its serials moved on by one, then two, ...)
until its ids are free, and is stored so.

An APE object's source names the device's state (``device:<id>@<hash>``), and a device may go
back to a state it had (online, offline, online again): an APE is added when its source differs
from the latest APE queued for the same ``ApeID``, so each change is queued once, in order, and
the same state again is not. Deleted and rewritten rows are overwritten on disk (``secure_delete``):
a face crop stripped or purged is gone from the file, not only from the table. Every transaction is one short call in the file's thread;
several processes wait on each other's write lock (30 s) rather than fail.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Self

import structlog

from district.city.config import CityPrivacyConfig
from district.city.model import Category, CityObject, LinkState, ObjectResult, Outcome, QueuedObject
from district.city.objects import KINDS, ObjectBuildError, image_ids, policy_kinds, renumbered, under_policy
from foundation.sqlite_thread import SqliteBacked, transaction
from foundation.sqlite_thread import sortable_time as _iso
from foundation.sqlite_thread import time_from_text as _time

log = structlog.get_logger(__name__)

SCHEMA = """
PRAGMA secure_delete = ON;
CREATE TABLE IF NOT EXISTS objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, category TEXT NOT NULL, source TEXT NOT NULL,
    object_id TEXT NOT NULL, body TEXT NOT NULL, occurred_at TEXT NOT NULL, queued_at TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, due_at TEXT,
    reason TEXT, refused_at TEXT, accepted_at TEXT, kind TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS objects_by_source ON objects (category, source) WHERE category != 'APE';
CREATE INDEX IF NOT EXISTS objects_ape_states ON objects (object_id, seq) WHERE category = 'APE';
CREATE INDEX IF NOT EXISTS objects_by_state ON objects (category, state, seq);
CREATE INDEX IF NOT EXISTS objects_pending_age ON objects (state, occurred_at);
CREATE INDEX IF NOT EXISTS objects_accepted ON objects (state, accepted_at);
CREATE INDEX IF NOT EXISTS objects_refused ON objects (refused_at) WHERE refused_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS objects_counts ON objects (state, category, refused_at);
CREATE INDEX IF NOT EXISTS objects_crops ON objects (occurred_at)
    WHERE category = 'Face' AND instr(body, '"SubImageList"') > 0;
CREATE TABLE IF NOT EXISTS image_ids (image_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS image_ids_by_seq ON image_ids (seq);
CREATE TABLE IF NOT EXISTS accepted_counts (category TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS link_state (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL);
"""

_PENDING = "pending"  # not yet accepted (refused ones included: ``due_at`` says when they go again)
_ACCEPTED = "accepted"  # StatusCode 0: never sent again
_PARKED = "parked"  # refused ``refused_max_attempts`` times: kept and shown, not sent
_SUPERSEDED = "superseded"  # an APE state not accepted when a newer one was queued: never sent
_SERIALS = 100_000  # the 5-digit serial of an image id
_ADD_CHUNK = 500  # objects added per transaction (about 25 ms)
_PURGE_CHUNK = 2000  # rows deleted per transaction, so the ingesters' adds never wait long


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


_OBJECT_COLUMNS = "seq, attempts, category, object_id, source, body, occurred_at, kind"


def _queued(row: Sequence[Any]) -> QueuedObject:
    seq, attempts, category, object_id, source, body, occurred_at, kind = row
    return QueuedObject(
        seq=seq,
        attempts=attempts,
        obj=CityObject(
            category=Category(category),
            object_id=object_id,
            source=source,
            body=json.loads(body),
            occurred_at=datetime.fromisoformat(occurred_at),
            kind=kind,
        ),
    )


def _body_json(body: dict[str, object]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


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


def _known(db: sqlite3.Connection, obj: CityObject) -> bool:
    if obj.category is Category.APE:
        latest = db.execute(
            "SELECT source FROM objects WHERE category = 'APE' AND object_id = ? ORDER BY seq DESC LIMIT 1",
            (obj.object_id,),
        ).fetchone()
        return latest is not None and latest[0] == obj.source
    # "category != 'APE'" lets SQLite use the partial unique index
    known = db.execute(
        "SELECT 1 FROM objects WHERE category = ? AND source = ? AND category != 'APE'",
        (obj.category.value, obj.source),
    ).fetchone()
    return known is not None


def _add(db: sqlite3.Connection, *, objects: Sequence[CityObject], now: str) -> int:
    added = 0
    with transaction(db):
        for obj in objects:
            if _known(db, obj):
                continue
            stored = _free_ids(db, obj) if image_ids(obj) else obj
            if obj.category is Category.APE:
                # an older state the city refused (or never answered) must not follow the newer one
                # up and overwrite it there: only the latest state of an APE is sent
                db.execute(
                    "UPDATE objects SET state = ?, due_at = NULL WHERE category = 'APE' AND object_id = ?"
                    " AND state IN (?, ?)",
                    (_SUPERSEDED, obj.object_id, _PENDING, _PARKED),
                )
            cursor = db.execute(
                "INSERT INTO objects (category, source, object_id, body, occurred_at, queued_at, state, kind)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (
                    stored.category.value,
                    stored.source,
                    stored.object_id,
                    _body_json(stored.body),
                    _iso(stored.occurred_at),
                    now,
                    _PENDING,
                    stored.kind,
                ),
            )
            db.executemany(
                "INSERT INTO image_ids (image_id, seq) VALUES (?, ?)",
                [(image_id, cursor.lastrowid) for image_id in image_ids(stored)],
            )
            added += 1
    return added


def _migrate(db: sqlite3.Connection) -> None:
    """A queue file from before ``kind`` was kept gets the column, derived from what each row is.

    A MotorVehicle is a vehicle pass, an APE a device, a Face with a crop a watch-list hit (a pass
    never has one); a Face without a crop is taken for a face pass, the stricter reading where a
    policy withholds passes but not hits.
    """
    columns = {row[1] for row in db.execute("PRAGMA table_info(objects)")}
    if "kind" not in columns:
        with transaction(db):
            db.execute("ALTER TABLE objects ADD COLUMN kind TEXT NOT NULL DEFAULT ''")
            db.execute(
                "UPDATE objects SET kind = CASE"
                " WHEN category = 'MotorVehicle' THEN 'vehicle_pass' WHEN category = 'APE' THEN 'device'"
                " WHEN instr(body, '\"SubImageList\"') > 0 THEN 'watchlist_hit' ELSE 'face_access' END"
            )
    db.execute("CREATE INDEX IF NOT EXISTS objects_by_kind ON objects (kind, seq)")


def _drop(db: sqlite3.Connection, seqs: Sequence[int]) -> None:
    """Delete rows with their image ids (in the caller's transaction); accepted ones leave the tally."""
    for seq in seqs:
        db.execute("DELETE FROM image_ids WHERE seq = ?", (seq,))
        row = db.execute("DELETE FROM objects WHERE seq = ? RETURNING state, category", (seq,)).fetchone()
        if row is not None and row[0] == _ACCEPTED:
            db.execute("UPDATE accepted_counts SET n = n - 1 WHERE category = ?", (row[1],))


def _enforce(
    db: sqlite3.Connection, queued: Sequence[QueuedObject], privacy: CityPrivacyConfig, *, write: bool
) -> tuple[list[QueuedObject], int, int]:
    """``queued`` as ``privacy`` lets them leave now: withheld ones left out, images stripped.

    With ``write``, the file is made to match in one transaction (withheld rows deleted, stripped
    bodies stored), so what the policy no longer allows does not stay on disk either. Returns
    what is kept, and how many were withheld and stripped.
    """
    kept: list[QueuedObject] = []
    dropped: list[int] = []
    stripped: list[tuple[str, int]] = []
    for item in queued:
        allowed = under_policy(item.obj, privacy)
        if allowed is None:
            dropped.append(item.seq)
            continue
        if allowed is item.obj:
            kept.append(item)
            continue
        stripped.append((_body_json(allowed.body), item.seq))
        kept.append(QueuedObject(seq=item.seq, attempts=item.attempts, obj=allowed))
    if write and (dropped or stripped):
        with transaction(db):
            _drop(db, dropped)
            db.executemany("UPDATE objects SET body = ? WHERE seq = ?", stripped)
    return kept, len(dropped), len(stripped)


def _counts(db: sqlite3.Connection) -> QueueCounts:
    backlog: dict[str, int] = {}
    refused: dict[str, int] = {}
    parked: dict[str, int] = {}
    # each from an index alone: an outage's backlog may be a million rows
    for category, state, total in db.execute(
        "SELECT category, state, COUNT(*) FROM objects WHERE state IN (?, ?) GROUP BY category, state",
        (_PENDING, _PARKED),
    ):
        (backlog if state == _PENDING else parked)[category] = total
    for category, total in db.execute(
        "SELECT category, COUNT(*) FROM objects WHERE refused_at IS NOT NULL AND state IN (?, ?)"
        " GROUP BY category",
        (_PENDING, _PARKED),
    ):
        refused[category] = total
    accepted = dict(db.execute("SELECT category, n FROM accepted_counts WHERE n > 0").fetchall())
    oldest = db.execute("SELECT MIN(occurred_at) FROM objects WHERE state = ?", (_PENDING,)).fetchone()[0]
    return QueueCounts(
        backlog=backlog,
        refused=refused,
        parked=parked,
        accepted=accepted,
        oldest_pending_at=_time(oldest),
    )


def _refusals(db: sqlite3.Connection, limit: int) -> list[Refusal]:
    # a superseded APE state's refusal is history: the newer state is what the city gets
    rows = db.execute(
        "SELECT seq, category, object_id, source, attempts, reason, refused_at, state FROM objects"
        " WHERE refused_at IS NOT NULL AND state IN (?, ?) ORDER BY refused_at DESC, seq DESC LIMIT ?",
        (_PENDING, _PARKED, limit),
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


def _saved_link_state(db: sqlite3.Connection) -> LinkState:
    row = db.execute("SELECT state FROM link_state WHERE id = 1").fetchone()
    return _link_state_from(row[0]) if row else LinkState()


@dataclass(frozen=True)
class QueueStatus:
    """What ``read_status`` finds in a queue file."""

    link: LinkState
    counts: QueueCounts
    refusals: list[Refusal]


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to a city file that exists (see ``read_status``); blocking: call it in a thread."""
    uri = path.absolute().as_uri()
    wal = path.with_name(path.name + "-wal")
    return sqlite3.connect(
        f"{uri}?mode=ro" if wal.exists() else f"{uri}?mode=ro&immutable=1", uri=True, timeout=30
    )


async def read_status(path: Path, refusal_limit: int) -> QueueStatus | None:
    """The link state, counts and latest refusals of the queue at ``path``; ``None`` if there is none.

    For readers that may not write (the operator API): the file is opened read-only (SQLite URI
    ``mode=ro``), never created, its schema never run. When no writer has it open (no ``-wal``
    beside it: the last writer to close checkpoints and removes it) it is read as ``immutable``, so
    that no ``-wal``/``-shm`` is made either (a reader that may not write the directory could not);
    a writer opening it during that read may make the read fail, which the caller reports.
    """

    def read() -> QueueStatus | None:
        if not path.exists():
            return None
        db = open_read_only(path)
        try:
            return QueueStatus(
                link=_saved_link_state(db), counts=_counts(db), refusals=_refusals(db, refusal_limit)
            )
        finally:
            db.close()

    return await asyncio.to_thread(read)


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
    """The queue file; open with ``async with``.

    ``privacy`` is the ``[city.privacy]`` in force: ``take`` and ``objects_after`` hand out only
    what it allows now, whatever policy an object was built under (a stricter policy applies to
    what was queued before it; the default is the default policy). ``apply_policy`` makes the file
    itself match it.
    """

    def __init__(
        self,
        path: Path,
        *,
        refused_retry_s: float = 300.0,
        refused_max_attempts: int = 10,
        privacy: CityPrivacyConfig | None = None,
    ) -> None:
        super().__init__(path, SCHEMA, "city-queue")
        self._refused_retry = timedelta(seconds=refused_retry_s)
        self._refused_max_attempts = refused_max_attempts
        self._privacy = privacy if privacy is not None else CityPrivacyConfig()

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        await self._file.call(_migrate)
        return self

    async def add(self, objects: Sequence[CityObject]) -> int:
        """Add objects not yet queued (unique by category and source); returns how many were new.

        An APE is new when its source differs from the latest one queued for its ``ApeID``.

        In transactions of at most a few hundred objects, so that the other writers (the other
        ingesters, the service settling) never wait long for the lock. An add that fails halfway
        leaves the first chunks queued: the ingester does not acknowledge the round, gets it again
        and the queued ones add nothing the second time.
        """
        added = 0
        for start in range(0, len(objects), _ADD_CHUNK):
            chunk = objects[start : start + _ADD_CHUNK]
            now = _iso(datetime.now(UTC))
            added += await self._file.call(partial(_add, objects=chunk, now=now))
        return added

    async def take(self, category: Category, limit: int, now: datetime) -> list[QueuedObject]:
        """Up to ``limit`` objects of ``category`` due at ``now``, oldest first.

        Due: never accepted, not parked, and (if refused) refused at least ``refused_retry_s`` ago.
        Taking does not lock: one city service drains a queue. Oldest is queue order (``seq``): a late
        backlog goes after what was queued before it arrived. Judged by the queue's ``privacy``: an
        object it withholds is deleted (never sent), one it allows as a record only loses its
        images in the file too (an ingester with an older config may still queue them).
        """
        privacy = self._privacy

        def read(db: sqlite3.Connection) -> list[QueuedObject]:
            taken: list[QueuedObject] = []
            after = 0
            while len(taken) < limit:
                rows = db.execute(
                    f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE category = ? AND state = ? AND seq > ?"  # noqa: S608 - constant columns
                    " AND (due_at IS NULL OR due_at <= ?) ORDER BY seq LIMIT ?",
                    (category.value, _PENDING, after, _iso(now), limit - len(taken)),
                ).fetchall()
                if not rows:
                    break
                page = [_queued(row) for row in rows]
                taken += _enforce(db, page, privacy, write=True)[0]
                after = page[-1].seq
            return taken

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
        """Objects of ``categories`` queued after ``seq`` whatever their state (subscription cursors).

        Only what the queue's ``privacy`` allows now: a withheld object is skipped (the next ones
        fill its place), a record-only one comes without its images.
        """
        if not categories:
            return []
        names = [category.value for category in categories]
        privacy = self._privacy

        def read(db: sqlite3.Connection) -> list[QueuedObject]:
            found: list[QueuedObject] = []
            after = seq
            while len(found) < limit:
                rows = db.execute(
                    f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE seq > ?"  # noqa: S608 - constant columns, placeholders
                    f" AND category IN ({','.join('?' * len(names))}) ORDER BY seq LIMIT ?",
                    (after, *names, limit - len(found)),
                ).fetchall()
                if not rows:
                    break
                page = [_queued(row) for row in rows]
                found += _enforce(db, page, privacy, write=False)[0]
                after = page[-1].seq
            return found

        return await self._file.call(read)

    async def apply_policy(self, privacy: CityPrivacyConfig) -> tuple[int, int]:
        """Make the file match ``privacy``: returns (objects deleted, objects stripped of images).

        Run by the ingester and the city service when they open the queue: an object a stricter
        policy withholds is deleted whatever its state (pending, parked or accepted), one it allows
        as a record only loses its ``SubImageList``; nothing of either leaves afterwards by ``take``
        or ``objects_after``. In chunks of a few thousand rows, one transaction each; only rows of
        the kinds the policy restricts are read.
        """
        withheld, records_only = policy_kinds(privacy)
        withheld_names = sorted(withheld)
        stripped_names = sorted(records_only)
        known = sorted(KINDS)
        where = (
            f"(kind IN ({','.join('?' * len(withheld_names))})"
            f" OR kind NOT IN ({','.join('?' * len(known))})"
            f" OR (kind IN ({','.join('?' * len(stripped_names))}) AND instr(body, '\"SubImageList\"') > 0))"
        )

        def chunk(db: sqlite3.Connection, after: int) -> tuple[int, int, int]:
            rows = db.execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE seq > ? AND {where} ORDER BY seq LIMIT ?",  # noqa: S608 - constant text, placeholders
                (after, *withheld_names, *known, *stripped_names, _PURGE_CHUNK),
            ).fetchall()
            if not rows:
                return after, 0, 0
            page = [_queued(row) for row in rows]
            _, gone, changed = _enforce(db, page, privacy, write=True)
            return page[-1].seq, gone, changed

        deleted = stripped = 0
        after = 0
        while True:
            last, gone, changed = await self._file.call(partial(chunk, after=after))
            if last == after:
                return deleted, stripped
            deleted, stripped, after = deleted + gone, stripped + changed, last

    async def counts(self) -> QueueCounts:
        """Backlog, refusals, parked and accepted per category.

        Accepted is what the queue still keeps (``purge`` takes the old ones away); it is a running
        tally, not a scan of a month of rows.
        """
        return await self._file.call(_counts)

    async def refusals(self, limit: int = 50) -> list[Refusal]:
        """The most recent refusals of objects still to be sent or parked, newest first."""
        return await self._file.call(partial(_refusals, limit=limit))

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
        return await self._file.call(_saved_link_state)

    async def purge(self, accepted_before: datetime, strip_crops_before: datetime | None = None) -> int:
        """Delete objects accepted before ``accepted_before``; returns how many.

        With ``strip_crops_before`` (now minus ``[retention] hit_crops_days``), every Face that
        occurred before it loses its ``SubImageList`` whatever its state: a face crop stays in the
        queue no longer than in the store, also when the city never took it (pending, parked).
        In chunks of a few thousand rows, one transaction each, so the ingesters' adds never wait
        long. Their image ids go with them: an event redelivered after its purge is queued again with
        the same ids (the city has them already and answers for them as it likes).
        """
        before = _iso(accepted_before)

        def chunk(db: sqlite3.Connection) -> int:
            with transaction(db):
                # a device's latest APE stays however old: it is the device's current state, which
                # a new directory subscription is sent first (``latest_apes``)
                rows = db.execute(
                    "SELECT seq, category FROM objects WHERE state = ? AND accepted_at < ? AND NOT ("
                    " category = 'APE' AND seq = (SELECT MAX(seq) FROM objects AS later"
                    " WHERE later.category = 'APE' AND later.object_id = objects.object_id)) LIMIT ?",
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
        if strip_crops_before is not None:
            stripped = 0
            while changed := await self._file.call(partial(_strip_crops, before=_iso(strip_crops_before))):
                stripped += changed
            if stripped:
                log.info("city_queue_crops_stripped", count=stripped, cutoff=_iso(strip_crops_before))
        return total

    async def first_seq_at_or_after(self, moment: datetime) -> int:
        """The first seq queued at or after ``moment`` (or past the last one): where a new subscription starts.

        A binary search over seq (queue order is time order), a few dozen index reads, not a scan.
        """
        at = _iso(moment)

        def read(db: sqlite3.Connection) -> int:
            def first_from(seq: int) -> tuple[int, str]:
                # the first seq at or after ``seq`` (one exists: ``top`` does), and its queue time
                row = db.execute(
                    "SELECT seq, queued_at FROM objects WHERE seq >= ? ORDER BY seq LIMIT 1", (seq,)
                ).fetchone()
                return row[0], row[1]

            (top,) = db.execute("SELECT MAX(seq) FROM objects").fetchone()
            if top is None:
                return 1
            if first_from(top)[1] < at:
                return int(top) + 1
            low, high = 1, top  # the smallest x whose first seq from x was queued at or after ``at``
            while low < high:
                middle = (low + high) // 2
                if first_from(middle)[1] >= at:
                    high = middle
                else:
                    low = middle + 1
            return first_from(low)[0]

        return await self._file.call(read)

    async def latest_apes(self, upto: int, after: int, limit: int) -> list[QueuedObject]:
        """Each device's latest APE queued at or before ``upto`` (whatever its state), after ``after``, by seq."""
        privacy = self._privacy

        def read(db: sqlite3.Connection) -> list[QueuedObject]:
            rows = db.execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE category = 'APE' AND seq > ? AND seq <= ?"  # noqa: S608 - constant columns
                " AND seq = (SELECT MAX(seq) FROM objects AS later WHERE later.category = 'APE'"
                " AND later.object_id = objects.object_id AND later.seq <= ?) ORDER BY seq LIMIT ?",
                (after, upto, upto, limit),
            ).fetchall()
            # only what the privacy policy allows now (``devices = false`` withholds every APE)
            return _enforce(db, [_queued(row) for row in rows], privacy, write=False)[0]

        return await self._file.call(read)


def _strip_crops(db: sqlite3.Connection, before: str) -> int:
    with transaction(db):
        # the same condition as the partial index objects_crops, so that it is used
        rows = db.execute(
            "SELECT seq, body FROM objects WHERE category = 'Face' AND instr(body, '\"SubImageList\"') > 0"
            " AND occurred_at < ? LIMIT ?",
            (before, _PURGE_CHUNK),
        ).fetchall()
        for seq, text in rows:
            body = json.loads(text)
            body.pop("SubImageList", None)
            db.execute("UPDATE objects SET body = ? WHERE seq = ?", (_body_json(body), seq))
        return len(rows)
