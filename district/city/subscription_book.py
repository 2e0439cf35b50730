"""The upper platform's subscriptions, kept durably: what each asks for, where it stands, how far it got.

One SQLite file next to the city queue (``subscriptions.db`` beside ``[city] queue_path``), written
by the city service (the subscriptions server and its notifier) and read by the operator API. Its
own file rather than a table in the queue: the queue is the ingesters' and the delivery's, with its
own schema and writers; a subscription only reads the queue (``CityQueue.objects_after``) and keeps
its cursor here.

A subscription's ``cursor`` is the queue seq it has been notified up to: it only moves when the
receiver accepted a notification (or past objects the subscription does not want). A new one starts
at the queue's first object queued at or after its BeginTime; one asking for the device directory
(3/4) is first sent each device's latest APE (``directories``), then follows the changes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path

from district.city.model import Category
from district.city.queue import open_read_only
from foundation.errors import GatewayError
from foundation.sqlite_thread import SqliteBacked, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    subscribe_id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    details TEXT NOT NULL,            -- the SubscribeDetail codes, comma-separated
    resource_class INTEGER NOT NULL,
    resources TEXT NOT NULL,          -- the ResourceURI ids, comma-separated ('' for the whole library)
    begin_at TEXT NOT NULL,           -- ISO 8601 with zone
    end_at TEXT NOT NULL,
    receive_addr TEXT NOT NULL,       -- the configured address it matched (never the subscriber's text)
    image_declare TEXT NOT NULL,      -- ResultImageDeclare ('' when not given)
    body TEXT NOT NULL,               -- the SubscribeObject as received
    state TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    notified INTEGER NOT NULL DEFAULT 0,  -- objects the receiver accepted
    last_notified_at TEXT,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- a new directory subscription (SubscribeDetail 3/4) is first sent each device's latest APE queued
-- up to ``upto`` (its starting cursor), ``after`` being how far that went; the row goes when done
CREATE TABLE IF NOT EXISTS directories (
    subscribe_id TEXT PRIMARY KEY, upto INTEGER NOT NULL, after INTEGER NOT NULL DEFAULT 0);
"""


class SubscriptionState(StrEnum):
    """Where a subscription stands (GA/T 1400 ``SubscribeStatus``: 0, 1, 2)."""

    ACTIVE = "active"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def code(self) -> int:
        """Its ``SubscribeStatus`` code."""
        return {"active": 0, "cancelled": 1, "expired": 2}[self.value]


DETAIL_CATEGORIES: dict[int, Category] = {
    3: Category.APE,  # 采集设备目录
    4: Category.APE,  # 采集设备状态 (the APE list carries IsOnline)
    12: Category.FACE,  # 自动采集的人脸信息
    13: Category.MOTOR_VEHICLE,  # 自动采集的车辆信息
}
"""The ``SubscribeDetail`` codes the district serves, and the queue's category for each."""


@dataclass(frozen=True)
class Subscription:
    """One subscription as kept."""

    subscribe_id: str
    title: str
    details: tuple[int, ...]
    resource_class: int
    resources: tuple[str, ...]
    begin_at: datetime
    end_at: datetime
    receive_addr: str
    image_declare: str
    body: dict[str, object]
    state: SubscriptionState
    cursor: int
    created_at: datetime
    updated_at: datetime
    notified: int = 0
    last_notified_at: datetime | None = None
    last_error: str | None = None

    @property
    def categories(self) -> frozenset[Category]:
        """The queue categories it asks for."""
        return frozenset(DETAIL_CATEGORIES[d] for d in self.details if d in DETAIL_CATEGORIES)


class TooManySubscriptionsError(GatewayError):
    """A new subscription past ``max_subscriptions`` active ones."""


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _row(row: sqlite3.Row) -> Subscription:
    return Subscription(
        subscribe_id=row["subscribe_id"],
        title=row["title"],
        details=tuple(int(d) for d in row["details"].split(",") if d),
        resource_class=row["resource_class"],
        resources=tuple(r for r in row["resources"].split(",") if r),
        begin_at=datetime.fromisoformat(row["begin_at"]),
        end_at=datetime.fromisoformat(row["end_at"]),
        receive_addr=row["receive_addr"],
        image_declare=row["image_declare"],
        body=json.loads(row["body"]),
        state=SubscriptionState(row["state"]),
        cursor=row["cursor"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        notified=row["notified"],
        last_notified_at=_dt(row["last_notified_at"]),
        last_error=row["last_error"],
    )


def book_path(queue_path: Path) -> Path:
    """Where the subscriptions of a city queue are kept: beside it."""
    return queue_path.with_name("subscriptions.db")


class SubscriptionBook(SqliteBacked):
    """The subscriptions file; open with ``async with``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA, "city-subscriptions")

    async def put(self, subscription: Subscription, *, max_active: int | None = None) -> bool:
        """Create a subscription, or renew one of the same id (its cursor kept); True if it is new.

        A new one (or a cancelled or expired one made active again) past ``max_active`` active
        subscriptions raises ``TooManySubscriptionsError``. A new one asking for APEs is first sent
        the directory (each device's latest APE up to its cursor).
        """

        def write(db: sqlite3.Connection) -> bool:
            with transaction(db):
                known = db.execute(
                    "SELECT state FROM subscriptions WHERE subscribe_id = ?", (subscription.subscribe_id,)
                ).fetchone()
                if max_active is not None and (known is None or known[0] != SubscriptionState.ACTIVE.value):
                    (active,) = db.execute(
                        "SELECT COUNT(*) FROM subscriptions WHERE state = ?",
                        (SubscriptionState.ACTIVE.value,),
                    ).fetchone()
                    if active >= max_active:
                        raise TooManySubscriptionsError(
                            f"{active} subscriptions are active, the most allowed"
                            " ([city.subscriptions] max_subscriptions); cancel one first"
                        )
                if known is None and Category.APE in subscription.categories:
                    db.execute(
                        "INSERT OR REPLACE INTO directories (subscribe_id, upto) VALUES (?, ?)",
                        (subscription.subscribe_id, subscription.cursor),
                    )
                db.execute(
                    "INSERT INTO subscriptions (subscribe_id, title, details, resource_class, resources,"
                    " begin_at, end_at, receive_addr, image_declare, body, state, cursor, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (subscribe_id) DO UPDATE SET title = excluded.title,"
                    " details = excluded.details, resource_class = excluded.resource_class,"
                    " resources = excluded.resources, begin_at = excluded.begin_at,"
                    " end_at = excluded.end_at, receive_addr = excluded.receive_addr,"
                    " image_declare = excluded.image_declare, body = excluded.body,"
                    " state = excluded.state, updated_at = excluded.updated_at",
                    (
                        subscription.subscribe_id,
                        subscription.title,
                        ",".join(str(d) for d in subscription.details),
                        subscription.resource_class,
                        ",".join(subscription.resources),
                        subscription.begin_at.isoformat(),
                        subscription.end_at.isoformat(),
                        subscription.receive_addr,
                        subscription.image_declare,
                        json.dumps(subscription.body, ensure_ascii=False),
                        subscription.state.value,
                        subscription.cursor,
                        subscription.created_at.isoformat(),
                        subscription.updated_at.isoformat(),
                    ),
                )
                return known is None

        return await self._file.call(write)

    async def cancel(self, subscribe_id: str, now: datetime) -> bool:
        """Cancel a subscription; False if there is no such subscription."""

        def write(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE subscriptions SET state = ?, updated_at = ? WHERE subscribe_id = ?",
                (SubscriptionState.CANCELLED.value, now.isoformat(), subscribe_id),
            )
            return cursor.rowcount > 0

        return await self._file.call(write)

    async def expire(self, now: datetime) -> list[str]:
        """Mark active subscriptions whose EndTime has passed as expired; returns their ids."""

        def write(db: sqlite3.Connection) -> list[str]:
            with transaction(db):
                ids = [
                    r[0]
                    for r in db.execute(
                        "SELECT subscribe_id, end_at FROM subscriptions WHERE state = ?",
                        (SubscriptionState.ACTIVE.value,),
                    )
                    if datetime.fromisoformat(r[1]) <= now
                ]
                db.executemany(
                    "UPDATE subscriptions SET state = ?, updated_at = ? WHERE subscribe_id = ?",
                    [(SubscriptionState.EXPIRED.value, now.isoformat(), i) for i in ids],
                )
                return ids

        return await self._file.call(write)

    async def all(self, states: Sequence[SubscriptionState] | None = None) -> list[Subscription]:
        """Subscriptions (of ``states``, default every one), newest first."""
        return await self._file.call(partial(_all_subscriptions, states=states))

    async def get(self, subscribe_id: str) -> Subscription | None:
        """One subscription, or None."""
        return next((s for s in await self.all() if s.subscribe_id == subscribe_id), None)

    async def advance(self, subscribe_id: str, cursor: int, notified: int, now: datetime) -> None:
        """The receiver accepted (or the subscription skipped) everything up to ``cursor``."""

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE subscriptions SET cursor = MAX(cursor, ?), notified = notified + ?,"
                " last_notified_at = CASE WHEN ? > 0 THEN ? ELSE last_notified_at END, last_error = NULL"
                " WHERE subscribe_id = ?",
                (cursor, notified, notified, now.isoformat(), subscribe_id),
            )

        await self._file.call(write)

    async def failed(self, subscribe_id: str, error: str) -> None:
        """Keep why the last notification did not go through."""

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE subscriptions SET last_error = ? WHERE subscribe_id = ?", (error[:500], subscribe_id)
            )

        await self._file.call(write)

    async def directory(self, subscribe_id: str) -> tuple[int, int] | None:
        """(upto, after) of a directory still to send to the subscription, or None."""

        def read(db: sqlite3.Connection) -> tuple[int, int] | None:
            row = db.execute(
                "SELECT upto, after FROM directories WHERE subscribe_id = ?", (subscribe_id,)
            ).fetchone()
            return None if row is None else (row[0], row[1])

        return await self._file.call(read)

    async def directory_sent(self, subscribe_id: str, after: int, notified: int, now: datetime) -> None:
        """The receiver accepted the directory up to seq ``after`` (the row goes once it is all sent)."""

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute(
                    "UPDATE directories SET after = MAX(after, ?) WHERE subscribe_id = ?",
                    (after, subscribe_id),
                )
                db.execute(
                    "UPDATE subscriptions SET notified = notified + ?, last_error = NULL,"
                    " last_notified_at = CASE WHEN ? > 0 THEN ? ELSE last_notified_at END"
                    " WHERE subscribe_id = ?",
                    (notified, notified, now.isoformat(), subscribe_id),
                )

        await self._file.call(write)

    async def directory_done(self, subscribe_id: str) -> None:
        """The whole directory went: the subscription follows the changes from here."""

        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM directories WHERE subscribe_id = ?", (subscribe_id,))

        await self._file.call(write)

    async def purge_ended(self, before: datetime) -> list[str]:
        """Delete cancelled and expired subscriptions that ended before ``before``; returns their ids."""

        def write(db: sqlite3.Connection) -> list[str]:
            with transaction(db):
                ids = [
                    r[0]
                    for r in db.execute(
                        "SELECT subscribe_id, updated_at FROM subscriptions WHERE state != ?",
                        (SubscriptionState.ACTIVE.value,),
                    )
                    if datetime.fromisoformat(r[1]) < before
                ]
                db.executemany("DELETE FROM subscriptions WHERE subscribe_id = ?", [(i,) for i in ids])
                db.executemany("DELETE FROM directories WHERE subscribe_id = ?", [(i,) for i in ids])
                return ids

        return await self._file.call(write)

    async def next_notification_seq(self) -> int:
        """A number for the next NotificationID (1..99999, then round again), durable across restarts."""

        def write(db: sqlite3.Connection) -> int:
            with transaction(db):
                row = db.execute("SELECT value FROM meta WHERE key = 'notification_seq'").fetchone()
                value = (row[0] if row else 0) % 99999 + 1
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('notification_seq', ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (value,),
                )
                return value

        return await self._file.call(write)


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC (what the file keeps)."""
    return moment.astimezone(UTC)


def _all_subscriptions(
    db: sqlite3.Connection, states: Sequence[SubscriptionState] | None
) -> list[Subscription]:
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute("SELECT * FROM subscriptions ORDER BY created_at DESC").fetchall()
    finally:
        db.row_factory = None
    found = [_row(r) for r in rows]
    return [s for s in found if states is None or s.state in states]


async def read_subscriptions(path: Path) -> list[Subscription]:
    """Every subscription in the book at ``path``, newest first, read-only (``queue.open_read_only``).

    For the operator API, which may read the city's files but not write them; none if no book exists.
    """

    def read() -> list[Subscription]:
        if not path.exists():
            return []
        db = open_read_only(path)
        try:
            return _all_subscriptions(db, None)
        finally:
            db.close()

    return await asyncio.to_thread(read)
