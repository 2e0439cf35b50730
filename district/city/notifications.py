"""Notifications to the upper platform: each active subscription's new queue objects, to its address.

For each active subscription inside its time window, the objects queued after its cursor
(``CityQueue.objects_after``) of the categories it asked for, captured inside its window and of its
resources, go in one ``SubscribeNotificationObject`` POSTed to ``/VIID/SubscribeNotifications`` at
the configured address the subscription matched. The queue already holds only what the privacy
policy lets leave the district; ``ResultImageDeclare`` may take more away (-1: no picture at all),
never add. The cursor moves only when the receiver answers StatusCode 0 for the notification;
otherwise the same batch (with the same NotificationID) is sent again after a jittered, capped
backoff. Redirects are never followed: the district calls the configured URL and nothing else.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
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


def wanted(subscription: Subscription, item: QueuedObject) -> bool:
    """Whether a queued object belongs to the subscription: its categories, window and resources."""
    obj = item.obj
    if obj.category not in subscription.categories:
        return False
    if not subscription.begin_at <= obj.occurred_at <= subscription.end_at:
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
        password: str,
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
        self._password = password
        self._poll_s = poll_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._pending: dict[str, _Pending] = {}
        self._backoff: dict[str, Backoff] = {}
        self._not_before: dict[str, float] = {}
        self.sent: Counter[str] = Counter()
        """Notifications by outcome: ``ok`` (the receiver accepted) or ``failed``."""

    def wake(self) -> None:
        """Look at the subscriptions now (one was created or cancelled)."""
        self._wake.set()

    async def run(self) -> None:
        """Notify forever: a round, then until woken or ``poll_s`` has passed."""
        while True:
            await self.round()
            self._wake.clear()
            try:
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def round(self) -> None:
        """Expire what ended, then bring each active subscription up to date (as far as it is let)."""
        now = self._clock()
        for expired in await self._book.expire(now):
            log.info("city_subscription_expired", subscribe_id=expired)
        loop_now = asyncio.get_running_loop().time()
        for subscription in await self._book.all([SubscriptionState.ACTIVE]):
            if subscription.begin_at > now or self._not_before.get(subscription.subscribe_id, 0) > loop_now:
                continue
            await self._bring_up_to_date(subscription)

    async def _bring_up_to_date(self, subscription: Subscription) -> None:
        cursor = subscription.cursor
        while True:
            batch = await self._queue.objects_after(cursor, subscription.categories, self._city.batch_max)
            if not batch:
                return
            chosen = [item for item in batch if wanted(subscription, item)]
            last_seq = batch[-1].seq
            if chosen:
                delivery = await self._send(subscription, chosen, last_seq)
                self.sent["ok" if delivery.accepted else "failed"] += 1
                if not delivery.accepted:
                    await self._failed(subscription, delivery.detail)
                    return
                self._backoff.pop(subscription.subscribe_id, None)
                self._not_before.pop(subscription.subscribe_id, None)
                log.info(
                    "city_notification_accepted",
                    subscribe_id=subscription.subscribe_id,
                    objects=len(chosen),
                    last_seq=last_seq,
                )
            await self._book.advance(subscription.subscribe_id, last_seq, len(chosen), self._clock())
            cursor = last_seq
            if len(batch) < self._city.batch_max:
                return

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
                        answer = authorization(
                            response.headers.get("WWW-Authenticate", ""),
                            "POST",
                            target,
                            self._subs.username,
                            self._password,
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
    mine = [s for s in statuses if s.get("Id") == notification_id] or statuses[:1]
    if not mine:
        return Delivery(False, "no ResponseStatusObject in the answer")
    code = str(mine[0].get("StatusCode", ""))
    if code == "0":
        return Delivery(True, "accepted")
    return Delivery(False, f"refused: StatusCode {code} {mine[0].get('StatusString', '')}")
