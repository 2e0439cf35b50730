"""Notifications to the upper platform: each active subscription's new queue objects, to its address.

For each active subscription inside its time window, the objects queued after its cursor
(``CityQueue.objects_after``) of the categories it asked for, captured inside its window and of its
resources, go in one ``SubscribeNotificationObject`` POSTed to ``/VIID/SubscribeNotifications`` at
the configured address the subscription matched. The queue already holds only what the privacy
policy lets leave the district; ``ResultImageDeclare`` may take more away (-1: no picture at all),
never add. The cursor moves only when the receiver answers StatusCode 0 for the notification;
otherwise the same batch (with the same NotificationID) is sent again after a jittered, capped
backoff. Redirects are never followed: the district calls the configured URL and nothing else.

A subscription to the device directory (3/4) is first sent each device's latest APE, whatever its
time, then the changes. Each round gives every subscription at most ``batches_per_round``
notifications (one catching up holds up no other; the next round follows at once), and reads the
subscription again before each one (a cancel or a renewal during a catch-up stops it). A receiver's
digest challenge is answered with the separate ``notify_username`` / ``notify_password``, never
the upper platform's own login (an http:// receiver could be a man in the middle choosing the
challenge to crack it); without them a challenge is a failure, logged. A database error ends
no round for good: it is logged, backed off, and the next round tries again.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import structlog
from yarl import URL

from district.city.config import CityConfig
from district.city.digest import authorization
from district.city.model import Category, QueuedObject
from district.city.queue import CityQueue
from district.city.subscription_book import Subscription, SubscriptionBook, SubscriptionState
from foundation.backoff import Backoff, BackoffConfig
from foundation.events import utc_now
from foundation.logging import worth_logging

log = structlog.get_logger(__name__)

VIID_JSON = "application/VIID+JSON;charset=UTF-8"
NOTIFICATIONS_PATH = "/VIID/SubscribeNotifications"

_LISTS: dict[Category, tuple[str, str]] = {
    Category.FACE: ("FaceObjectList", "FaceObject"),
    Category.MOTOR_VEHICLE: ("MotorVehicleObjectList", "MotorVehicleObject"),
    Category.APE: ("DeviceList", "APEObject"),
}


def viid_time(moment: datetime, zone: ZoneInfo) -> str:
    """``yyyyMMddHHmmss`` in the district's zone."""
    return moment.astimezone(zone).strftime("%Y%m%d%H%M%S")


def notification_url(receive_addr: str) -> str:
    """Where a notification goes: the address itself, or its ``/VIID/SubscribeNotifications`` if it is a root."""
    if receive_addr.rstrip("/").count("/") == 2:  # scheme://host[:port] and nothing more
        return receive_addr.rstrip("/") + NOTIFICATIONS_PATH
    return receive_addr


def with_images(body: dict[str, Any], declare: str) -> dict[str, Any]:
    """``body`` with only the pictures ``ResultImageDeclare`` asks for (-1: none; codes: those types)."""
    declare = declare.strip()
    if not declare or "SubImageList" not in body:
        return body
    kept = dict(body)
    if declare == "-1":
        del kept["SubImageList"]
        return kept
    types = {t.strip().lstrip("0") for t in declare.split(",")}
    images = (
        body["SubImageList"].get("SubImageInfoObject", []) if isinstance(body["SubImageList"], dict) else []
    )
    chosen = [i for i in images if str(i.get("Type", "")).lstrip("0") in types]
    if chosen:
        kept["SubImageList"] = {"SubImageInfoObject": chosen}
    else:
        del kept["SubImageList"]
    return kept


def wanted(subscription: Subscription, item: QueuedObject, *, directory: bool = False) -> bool:
    """Whether a queued object belongs to the subscription: its categories, window and resources.

    An APE is a device's state, built when it changed: any queued after the subscription's start
    is a change it wants whatever its build time, and with ``directory`` (the first round's list)
    so is each device's latest, however old.
    """
    obj = item.obj
    if obj.category not in subscription.categories:
        return False
    if obj.category is Category.APE:
        if not directory and obj.occurred_at > subscription.end_at:
            return False
    elif not subscription.begin_at <= obj.occurred_at <= subscription.end_at:
        return False
    match subscription.resource_class:
        case 1:  # devices: by the capturing device (an APE by its own id)
            return str(obj.body.get("DeviceID") or obj.body.get("ApeID")) in subscription.resources
        case 0:  # tollgates
            return str(obj.body.get("TollgateID")) in subscription.resources
        case _:  # the whole view library
            return True


@dataclass
class _Pending:
    last_seq: int
    notification_id: str


@dataclass(frozen=True)
class Delivery:
    """The receiver's verdict on one notification."""

    accepted: bool
    detail: str


class Notifier:
    """Sends the subscriptions' notifications; ``run`` forever, ``wake`` when subscriptions change."""

    def __init__(
        self,
        city: CityConfig,
        zone: ZoneInfo,
        *,
        queue: CityQueue,
        book: SubscriptionBook,
        session: aiohttp.ClientSession,
        credentials: tuple[str, str] | None,
        poll_s: float = 1.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if city.subscriptions is None:
            raise ValueError("no [city.subscriptions]")
        self._city = city
        self._subs = city.subscriptions
        self._zone = zone
        self._queue = queue
        self._book = book
        self._session = session
        self._credentials = credentials
        self._poll_s = poll_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._pending: dict[str, _Pending] = {}
        self._backoff: dict[str, Backoff] = {}
        self._not_before: dict[str, float] = {}
        self._db_backoff = Backoff(BackoffConfig(initial_s=city.retry_initial_s, max_s=city.retry_max_s))
        self.sent: Counter[str] = Counter()
        """Notifications by outcome: ``ok`` (the receiver accepted) or ``failed``."""
        self.db_errors = 0
        """Rounds ended by a database error (each logged sparsely, then backed off)."""

    def wake(self) -> None:
        """Look at the subscriptions now (one was created or cancelled)."""
        self._wake.set()

    async def run(self) -> None:
        """Notify forever: a round, then (unless work is left) until woken or ``poll_s`` has passed.

        A database error (a locked file, a full disk) ends the round, not the notifier: it is
        logged (sparsely) and the next round comes after a backoff.
        """
        while True:
            self._wake.clear()
            try:
                more = await self.round()
            except sqlite3.Error as exc:
                self.db_errors += 1
                delay = self._db_backoff.next_delay()
                if worth_logging(self.db_errors):
                    log.warning(
                        "city_notifier_db_error",
                        error=str(exc),
                        count=self.db_errors,
                        retry_s=round(delay, 3),
                    )
                await asyncio.sleep(delay)
                continue
            self._db_backoff.reset()
            if more:
                await asyncio.sleep(0)  # let the server answer between rounds
                continue
            try:
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def round(self) -> bool:
        """Expire and purge what ended, then bring each active subscription up to date, a bounded step each.

        True if some subscription has more to send now (the caller goes round again at once).
        """
        now = self._clock()
        for expired in await self._book.expire(now):
            log.info("city_subscription_expired", subscribe_id=expired)
        for purged in await self._book.purge_ended(now - timedelta(days=self._subs.ended_keep_days)):
            log.info("city_subscription_purged", subscribe_id=purged)
            for table in (self._pending, self._backoff, self._not_before):
                table.pop(purged, None)
        loop_now = asyncio.get_running_loop().time()
        more = False
        for subscription in await self._book.all([SubscriptionState.ACTIVE]):
            if subscription.begin_at > now or self._not_before.get(subscription.subscribe_id, 0) > loop_now:
                continue
            more |= await self._bring_up_to_date(subscription)
        return more

    async def _current(self, subscription: Subscription) -> bool:
        """Whether the subscription is still as read (not cancelled, expired or renewed meanwhile)."""
        now = await self._book.get(subscription.subscribe_id)
        return (
            now is not None
            and now.state is SubscriptionState.ACTIVE
            and now.updated_at == subscription.updated_at
            and now.end_at > self._clock()
        )

    async def _deliver(self, subscription: Subscription, chosen: list[QueuedObject], last_seq: int) -> bool:
        """Send one batch (if the subscription is still as read); whether the receiver accepted it."""
        if not await self._current(subscription):
            return False
        delivery = await self._send(subscription, chosen, last_seq)
        self.sent["ok" if delivery.accepted else "failed"] += 1
        if not delivery.accepted:
            await self._failed(subscription, delivery.detail)
            return False
        self._backoff.pop(subscription.subscribe_id, None)
        self._not_before.pop(subscription.subscribe_id, None)
        log.info(
            "city_notification_accepted",
            subscribe_id=subscription.subscribe_id,
            objects=len(chosen),
            last_seq=last_seq,
        )
        return True

    async def _bring_up_to_date(self, subscription: Subscription) -> bool:
        """At most ``batches_per_round`` notifications; True if there is more to send."""
        budget = self._subs.batches_per_round
        directory = await self._book.directory(subscription.subscribe_id)
        if directory is not None and not self._city.privacy.devices:
            # no device leaves the district ([city.privacy] devices = false): there is no directory
            await self._book.directory_done(subscription.subscribe_id)
            directory = None
        if directory is not None:
            upto, after = directory
            while True:
                batch = await self._queue.latest_apes(upto, after, self._city.batch_max)
                chosen = [item for item in batch if wanted(subscription, item, directory=True)]
                if not batch:
                    await self._book.directory_done(subscription.subscribe_id)
                    break
                if budget == 0:
                    return True
                if chosen:
                    budget -= 1
                    if not await self._deliver(subscription, chosen, -batch[-1].seq):
                        return False
                after = batch[-1].seq
                await self._book.directory_sent(subscription.subscribe_id, after, len(chosen), self._clock())
        cursor = subscription.cursor
        categories = subscription.categories
        if not self._city.privacy.devices:  # APEs queued before the policy changed stay here too
            categories -= {Category.APE}
        while True:
            batch = await self._queue.objects_after(cursor, categories, self._city.batch_max)
            if not batch:
                return False
            if budget == 0:
                return True
            budget -= 1
            chosen = [item for item in batch if wanted(subscription, item)]
            last_seq = batch[-1].seq
            if chosen and not await self._deliver(subscription, chosen, last_seq):
                return False
            await self._book.advance(subscription.subscribe_id, last_seq, len(chosen), self._clock())
            cursor = last_seq
            if len(batch) < self._city.batch_max:
                return False

    async def _failed(self, subscription: Subscription, detail: str) -> None:
        backoff = self._backoff.setdefault(
            subscription.subscribe_id,
            Backoff(BackoffConfig(initial_s=self._city.retry_initial_s, max_s=self._city.retry_max_s)),
        )
        delay = backoff.next_delay()
        self._not_before[subscription.subscribe_id] = asyncio.get_running_loop().time() + delay
        await self._book.failed(subscription.subscribe_id, detail)
        log.warning(
            "city_notification_failed", subscribe_id=subscription.subscribe_id, detail=detail, retry_s=delay
        )

    async def _notification_id(self, subscription: Subscription, last_seq: int) -> str:
        # a batch sent again (no answer, a refusal) keeps its NotificationID
        pending = self._pending.get(subscription.subscribe_id)
        if pending is not None and pending.last_seq == last_seq:
            return pending.notification_id
        seq = await self._book.next_notification_seq()
        notification_id = f"{self._city.org_code}04{viid_time(self._clock(), self._zone)}{seq:05d}"
        self._pending[subscription.subscribe_id] = _Pending(last_seq, notification_id)
        return notification_id

    def notification(
        self, subscription: Subscription, items: list[QueuedObject], notification_id: str
    ) -> dict[str, Any]:
        """The ``SubscribeNotificationListObject`` of one batch."""
        entry: dict[str, Any] = {
            "NotificationID": notification_id,
            "SubscribeID": subscription.subscribe_id,
            "Title": subscription.title,
            "TriggerTime": viid_time(self._clock(), self._zone),
            "InfoIDs": ",".join(item.obj.object_id for item in items),
            "ExecuteOperation": 1,
        }
        for category, (list_name, object_name) in _LISTS.items():
            bodies = [
                with_images(item.obj.body, subscription.image_declare)
                for item in items
                if item.obj.category is category
            ]
            if bodies:
                entry[list_name] = {object_name: bodies}
        return {"SubscribeNotificationListObject": {"SubscribeNotificationObject": [entry]}}

    async def _send(self, subscription: Subscription, items: list[QueuedObject], last_seq: int) -> Delivery:
        notification_id = await self._notification_id(subscription, last_seq)
        body = json.dumps(
            self.notification(subscription, items, notification_id), ensure_ascii=False
        ).encode()
        url = notification_url(subscription.receive_addr)
        target = URL(url).raw_path_qs
        headers = {
            "Content-Type": VIID_JSON,
            "User-Identify": self._city.platform_id,
            "Accept": "application/json",
        }
        timeout = aiohttp.ClientTimeout(total=self._city.request_timeout_s)
        try:
            for _ in range(2):  # the first may be challenged; the second answers the challenge
                async with self._session.post(
                    url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                ) as response:
                    text = await response.text(errors="replace")
                    if response.status == 401 and "Authorization" not in headers:
                        if self._credentials is None:
                            return Delivery(
                                False,
                                "401: the receiver asks for digest credentials and none are configured"
                                " ([city.subscriptions] notify_username, notify_password)",
                            )
                        answer = authorization(
                            response.headers.get("WWW-Authenticate", ""),
                            "POST",
                            target,
                            *self._credentials,
                        )
                        if answer is None:
                            return Delivery(False, "401 with a challenge we cannot answer")
                        headers["Authorization"] = answer
                        continue
                    return _verdict(response.status, text, notification_id)
            return Delivery(False, "401 after answering the challenge: wrong credentials")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Delivery(False, f"no answer: {type(exc).__name__}: {exc}")


def _verdict(status: int, text: str, notification_id: str) -> Delivery:
    """Accepted only on a 2xx whose ResponseStatusObject for the notification says StatusCode 0."""
    if not 200 <= status < 300:
        return Delivery(False, f"HTTP {status}: {text[:200]}")
    try:
        answer = json.loads(text)
    except ValueError:
        return Delivery(False, f"HTTP {status} without a JSON answer")
    statuses: list[Any] = []
    if isinstance(answer, dict):
        listed = answer.get("ResponseStatusListObject")
        if isinstance(listed, dict):
            found = listed.get("ResponseStatusObject", [])
            statuses = found if isinstance(found, list) else [found]
        elif isinstance(answer.get("ResponseStatusObject"), dict):
            statuses = [answer["ResponseStatusObject"]]
    statuses = [s for s in statuses if isinstance(s, dict)]
    mine = [s for s in statuses if s.get("Id") == notification_id]
    if not mine and len(statuses) == 1 and not statuses[0].get("Id"):
        mine = statuses  # one status naming no Id: it can only be about this notification
    if not mine:
        return Delivery(False, f"no ResponseStatusObject for notification {notification_id} in the answer")
    code = str(mine[0].get("StatusCode", ""))
    if code == "0":
        return Delivery(True, "accepted")
    return Delivery(False, f"refused: StatusCode {code} {mine[0].get('StatusString', '')}")
