"""The upper platform's subscriptions (``/VIID/Subscribes``), accepted from it alone, and their notifications.

An aiohttp server on ``[city.subscriptions] listen_host:listen_port`` takes

- ``POST /VIID/Subscribes`` (``SubscribeListObject`` or one ``SubscribeObject``): create (a known
  SubscribeID is renewed, its cursor kept; ``OperateType`` 1 cancels);
- ``PUT /VIID/Subscribes/{id}`` with ``OperateType`` 1: cancel (0: renew);
- ``DELETE /VIID/Subscribes?IDList=a,b``: cancel;

each answered with a ``ResponseStatusListObject`` (one ``ResponseStatusObject`` per subscription).
Only the configured upper platform gets in: ``User-Identify`` must be its ``upper_platform_id``
(anything else: 403, before any challenge), and the request must answer our digest challenge
(``district.city.digest``: signed one-time nonces; 503 while a flood has filled the used-nonce
table) with its user name and password. At most ``max_subscriptions`` are active (a further new
one is refused); a new one starts at the queue's first object queued at or after its BeginTime.

A subscription is checked field by field (ids, codes, times) and refused with a StatusString
saying what is wrong; above all, its ``ReceiveAddr`` must be one of ``receive_addresses``
(compared normalised: scheme and host case, default port, a trailing slash). The notifier then
calls the configured address it matched, never the subscriber's text, and follows no redirect: a
subscription cannot make the district call an arbitrary URL.

The city service runs it: ``async with SubscriptionService(config, queue) as subs: await subs.run()``
(or ``serve_subscriptions(config, queue)``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from types import TracebackType
from typing import Any, Self
from zoneinfo import ZoneInfo

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from district.city.config import CitySubscriptionsConfig
from district.city.digest import DigestGuard
from district.city.notifications import VIID_JSON, Notifier, viid_time
from district.city.queue import CityQueue
from district.city.subscription_book import (
    DETAIL_CATEGORIES,
    Subscription,
    SubscriptionBook,
    SubscriptionState,
    TooManySubscriptionsError,
    book_path,
)
from district.config import DistrictConfig
from foundation.credentials import credential_path
from foundation.errors import ConfigError
from foundation.events import utc_now
from foundation.health import MetricFamilies
from foundation.logging import worth_logging
from foundation.strict_json import loads as strict_loads

log = structlog.get_logger(__name__)

MAX_BODY = 1 << 20
"""The largest request body read (a subscription list is a few KiB)."""
MAX_SUBSCRIPTIONS = 100
"""Subscriptions in one request at most."""

OK, INVALID_OPERATION, INVALID_JSON_FORMAT, INVALID_JSON_CONTENT = "0", "4", "7", "8"
"""GA/T 1400 StatusCode values used here."""

_ID33 = re.compile(r"^[0-9]{12}03[0-9]{19}$")
_TIME14 = re.compile(r"^[0-9]{14}$")
_ID20 = re.compile(r"^[0-9]{20}$")
_IMAGE_DECLARE = re.compile(r"^(-1|[0-9]{1,3}(,[0-9]{1,3})*)$")


class SubscriptionRefusedError(ValueError):
    """A subscription (or request) that is refused: its StatusCode and a StatusString saying why."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def normalise_address(address: str) -> str | None:
    """An http(s) URL in one spelling (scheme and host lower case, port explicit, no trailing slash).

    None for anything that is not a plain absolute http(s) URL (user info, query or fragment
    included): such an address is never one of ours.
    """
    try:
        url = URL(address.strip())
    except (ValueError, TypeError):
        return None
    if (
        url.scheme.lower() not in {"http", "https"}
        or not url.host
        or url.user is not None
        or url.password is not None
        or url.raw_query_string
        or url.raw_fragment
    ):
        return None
    path = url.raw_path.rstrip("/")
    return f"{url.scheme.lower()}://{url.host.lower()}:{url.port}{path}"


def _text(obj: dict[str, Any], name: str, *, required: bool = True, default: str = "") -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise SubscriptionRefusedError(INVALID_JSON_CONTENT, f"{name} is missing")
        return default
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SubscriptionRefusedError(INVALID_JSON_CONTENT, f"{name} must be a string")
    return str(value).strip()


def _time(obj: dict[str, Any], name: str, zone: ZoneInfo) -> datetime:
    text = _text(obj, name)
    if not _TIME14.match(text):
        raise SubscriptionRefusedError(INVALID_JSON_CONTENT, f"{name} {text!r} is not yyyyMMddHHmmss")
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=zone)
    except ValueError:
        raise SubscriptionRefusedError(INVALID_JSON_CONTENT, f"{name} {text!r} is no date") from None


def parse_subscription(
    obj: object,
    settings: CitySubscriptionsConfig,
    *,
    platform_id: str,
    zone: ZoneInfo,
    now: datetime,
    subscribe_id: str | None = None,
) -> Subscription:
    """A ``SubscribeObject`` checked and read; ``SubscriptionRefusedError`` (with the StatusString) when it may not be kept."""
    if not isinstance(obj, dict):
        raise SubscriptionRefusedError(INVALID_JSON_CONTENT, "a SubscribeObject must be a JSON object")
    sid = subscribe_id or _text(obj, "SubscribeID")
    if not _ID33.match(sid):
        raise SubscriptionRefusedError(
            INVALID_JSON_CONTENT,
            f"SubscribeID {sid!r} is not 33 digits (organ code, 03, yyyyMMddHHmmss, 5-digit sequence)",
        )
    codes_text = _text(obj, "SubscribeDetail")
    try:
        details = tuple(sorted({int(c) for c in codes_text.split(",") if c.strip()}))
    except ValueError:
        raise SubscriptionRefusedError(
            INVALID_JSON_CONTENT, f"SubscribeDetail {codes_text!r} is not a list of codes"
        ) from None
    unserved = [d for d in details if d not in DETAIL_CATEGORIES]
    if not details or unserved:
        raise SubscriptionRefusedError(
            INVALID_OPERATION,
            f"SubscribeDetail {codes_text!r}: this platform serves 3, 4 (devices), 12 (faces) and 13"
            f" (motor vehicles) only{'' if not unserved else ', not ' + ','.join(map(str, unserved))}",
        )
    begin, end = _time(obj, "BeginTime", zone), _time(obj, "EndTime", zone)
    if end <= begin:
        raise SubscriptionRefusedError(INVALID_JSON_CONTENT, "EndTime is not after BeginTime")
    if end <= now:
        raise SubscriptionRefusedError(INVALID_OPERATION, "EndTime has passed")
    resource_class = _text(obj, "ResourceClass", required=False, default="4")
    resources = tuple(r.strip() for r in _text(obj, "ResourceURI", required=False).split(",") if r.strip())
    if resource_class not in {"0", "1", "4"}:
        raise SubscriptionRefusedError(
            INVALID_OPERATION,
            f"ResourceClass {resource_class}: subscriptions by tollgate (0), device (1) or view library (4) only",
        )
    if resource_class == "4":
        if any(r != platform_id for r in resources):
            raise SubscriptionRefusedError(
                INVALID_OPERATION, f"ResourceURI names another view library than {platform_id}"
            )
        resources = ()
    elif not resources or not all(_ID20.match(r) for r in resources):
        raise SubscriptionRefusedError(
            INVALID_JSON_CONTENT, "ResourceURI must list 20-digit tollgate or device ids"
        )
    image_declare = _text(obj, "ResultImageDeclare", required=False)
    if image_declare and not _IMAGE_DECLARE.match(image_declare):
        raise SubscriptionRefusedError(
            INVALID_JSON_CONTENT, f"ResultImageDeclare {image_declare!r} is not -1 or image types"
        )
    wanted_address = normalise_address(_text(obj, "ReceiveAddr"))
    configured = {normalise_address(a): a for a in settings.receive_addresses}
    if wanted_address is None or wanted_address not in configured:
        raise SubscriptionRefusedError(
            INVALID_OPERATION,
            "ReceiveAddr is not a notification address configured for the upper platform"
            " ([city.subscriptions] receive_addresses); nothing will be sent there",
        )
    title = _text(obj, "Title", required=False)[:256]
    return Subscription(
        subscribe_id=sid,
        title=title,
        details=details,
        resource_class=int(resource_class),
        resources=resources,
        begin_at=begin,
        end_at=end,
        receive_addr=configured[wanted_address],
        image_declare=image_declare,
        body=obj,
        state=SubscriptionState.ACTIVE,
        cursor=0,
        created_at=now,
        updated_at=now,
    )


def subscriptions_password(settings: CitySubscriptionsConfig) -> str:
    """The upper platform's digest password (from the config or its systemd credential)."""
    if settings.password is not None:
        return settings.password.get_secret_value()
    if settings.password_credential is None:  # the config's validator makes this unreachable
        raise ConfigError("[city.subscriptions]: set password or password_credential")
    path = credential_path(
        settings.password_credential, "the upper platform's digest password", "/etc/compound-gateway"
    )
    return path.read_text(encoding="utf-8").strip()


def notify_credentials(settings: CitySubscriptionsConfig) -> tuple[str, str] | None:
    """(user name, password) for receivers' digest challenges, or None when none are configured.

    Never the upper platform's own login: that one only ever checks the upper platform's answers.
    """
    if settings.notify_username is None:
        return None
    if settings.notify_password is not None:
        return settings.notify_username, settings.notify_password.get_secret_value()
    if settings.notify_password_credential is None:  # the config's validator makes this unreachable
        raise ConfigError("[city.subscriptions]: set notify_password or notify_password_credential")
    path = credential_path(
        settings.notify_password_credential,
        "the notification receivers' digest password",
        "/etc/compound-gateway",
    )
    return settings.notify_username, path.read_text(encoding="utf-8").strip()


class SubscriptionService:
    """The subscriptions server and its notifier, on the city queue; open with ``async with``, then ``run``.

    The caller runs it only when ``[city.subscriptions] enabled`` (else ``ConfigError``).

    ``session``: the HTTP client notifications go out on (default: one of its own).
    ``poll_s``: how often the queue is looked at for new objects.
    """

    def __init__(
        self,
        config: DistrictConfig,
        queue: CityQueue,
        *,
        session: aiohttp.ClientSession | None = None,
        poll_s: float = 1.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if config.city is None or config.city.subscriptions is None:
            raise ConfigError("no [city.subscriptions] in the district config")
        if not config.city.subscriptions.enabled:
            raise ConfigError("[city.subscriptions] enabled = false: the subscriptions endpoint is off")
        self._city = config.city
        self._settings = config.city.subscriptions
        self._zone = ZoneInfo(config.api.timezone)
        self._queue = queue
        self._clock = clock
        self._poll_s = poll_s
        self._given_session = session
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.book = SubscriptionBook(book_path(config.city.queue_path))
        password = subscriptions_password(self._settings)
        self._notify_credentials = notify_credentials(self._settings)
        self._guard = DigestGuard(config.city.platform_id, self._settings.username, password)
        self._notifier: Notifier | None = None
        self.refused: dict[str, int] = {}
        """Requests refused at the door, by reason (wrong platform, digest reasons)."""

    async def __aenter__(self) -> Self:
        await self.book.__aenter__()
        try:
            self._session = self._given_session or aiohttp.ClientSession()
            self._notifier = Notifier(
                self._city,
                self._zone,
                queue=self._queue,
                book=self.book,
                session=self._session,
                credentials=self._notify_credentials,
                poll_s=self._poll_s,
                clock=self._clock,
            )
            app = web.Application(client_max_size=MAX_BODY, middlewares=[self._door])
            app.router.add_post("/VIID/Subscribes", self._create)
            app.router.add_put("/VIID/Subscribes/{subscribe_id}", self._put)
            app.router.add_delete("/VIID/Subscribes", self._delete)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            host, port = self._settings.listen_host, self._settings.listen_port
            try:
                await web.TCPSite(self._runner, host, port, reuse_address=True).start()
            except OSError as exc:
                raise ConfigError(
                    f"[city.subscriptions]: cannot listen on {host}:{port} ({exc.strerror or exc})"
                ) from exc
            log.info("city_subscriptions_listening", host=host, port=port)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None and self._given_session is None:
            await self._session.close()
        self._session = None
        await self.book.__aexit__(None, None, None)

    @property
    def notifier(self) -> Notifier:
        """The notifier (tests run its rounds themselves)."""
        if self._notifier is None:
            raise RuntimeError("the subscription service is not open")
        return self._notifier

    async def run(self) -> None:
        """Send notifications until cancelled (the server answers meanwhile)."""
        await self.notifier.run()

    async def write_metrics(self, families: MetricFamilies) -> None:
        """Requests refused at the door by reason; subscriptions by state; notifications sent and failed."""
        families.counter(
            "cgw_city_subscription_requests_refused_total",
            "requests to /VIID/Subscribes refused before they were read (wrong platform, digest)",
            [({"reason": reason}, n) for reason, n in sorted(self.refused.items())],
        )
        states = Counter(s.state.value for s in await self.book.all())
        families.gauge(
            "cgw_city_subscriptions",
            "the upper platform's subscriptions by state",
            [({"state": state.value}, states.get(state.value, 0)) for state in SubscriptionState],
        )
        families.counter(
            "cgw_city_notifications_total",
            "notifications the receivers accepted (ok) or did not (failed)",
            [({"outcome": o}, n) for o, n in sorted(self.notifier.sent.items())],
        )

    # -- the door ------------------------------------------------------------------------------

    def _status(self, request: web.Request, sid: str, code: str, text: str) -> dict[str, Any]:
        return {
            "Id": sid,
            "RequestURL": request.path,
            "StatusCode": code,
            "StatusString": text,
            "LocalTime": viid_time(self._clock(), self._zone),
        }

    def _answer(self, statuses: list[dict[str, Any]], status: int = 200, **headers: str) -> web.Response:
        body = {"ResponseStatusListObject": {"ResponseStatusObject": statuses}}
        return web.Response(
            body=_dumps(body).encode(), status=status, headers={**headers, "Content-Type": VIID_JSON}
        )

    def _refuse(self, reason: str, remote: str | None) -> None:
        count = self.refused[reason] = self.refused.get(reason, 0) + 1
        # every digest client's first request is unauthenticated, and a nonce used up is routine
        if reason not in {"no_credentials", "stale_nonce"} and worth_logging(count):
            log.warning("city_subscription_refused", reason=reason, remote=remote, count=count)

    @web.middleware
    async def _door(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        identity = request.headers.get("User-Identify", "")
        if identity != self._settings.upper_platform_id:
            self._refuse("unknown_platform", request.remote)
            text = "User-Identify is not the configured upper platform"
            return self._answer([self._status(request, identity[:40], INVALID_OPERATION, text)], 403)
        reason = self._guard.check(request.method, request.raw_path, request.headers.get("Authorization"))
        if reason == "busy":
            self._refuse(reason, request.remote)
            text = "too many requests: try again in a few minutes"
            return self._answer(
                [self._status(request, identity, INVALID_OPERATION, text)], 503, **{"Retry-After": "60"}
            )
        if reason is not None:
            self._refuse(reason, request.remote)
            challenge = self._guard.challenge(stale=reason == "stale_nonce")
            status = self._status(request, identity, INVALID_OPERATION, f"unauthorised: {reason}")
            return self._answer([status], 401, **{"WWW-Authenticate": challenge})
        return await handler(request)

    # -- the routes ----------------------------------------------------------------------------

    async def _json(self, request: web.Request) -> Any:
        try:
            return strict_loads(await request.read())
        except ValueError as exc:
            raise SubscriptionRefusedError(INVALID_JSON_FORMAT, f"the body is not JSON: {exc}") from None

    async def _create(self, request: web.Request) -> web.Response:
        try:
            objects = _subscribe_objects(await self._json(request))
        except SubscriptionRefusedError as refused:
            return self._answer([self._status(request, "", refused.code, refused.text)], 400)
        return self._answer([await self._keep(request, obj) for obj in objects])

    async def _keep(self, request: web.Request, obj: Any, subscribe_id: str | None = None) -> dict[str, Any]:
        """Create, renew or cancel one subscription; its ResponseStatusObject."""
        raw_id = subscribe_id or (str(obj.get("SubscribeID", "")) if isinstance(obj, dict) else "")
        if isinstance(obj, dict) and str(obj.get("OperateType", "0")) == "1":
            return await self._cancel(request, raw_id)
        now = self._clock()
        try:
            subscription = parse_subscription(
                obj,
                self._settings,
                platform_id=self._city.platform_id,
                zone=self._zone,
                now=now,
                subscribe_id=subscribe_id,
            )
        except SubscriptionRefusedError as refused:
            log.warning("city_subscription_invalid", subscribe_id=raw_id[:40], reason=refused.text)
            return self._status(request, raw_id[:40], refused.code, refused.text)
        # a new one starts at BeginTime, not at the queue's first object (a renewal keeps its cursor)
        start = await self._queue.first_seq_at_or_after(subscription.begin_at)
        subscription = dataclasses.replace(subscription, cursor=start - 1)
        try:
            new = await self.book.put(subscription, max_active=self._settings.max_subscriptions)
        except TooManySubscriptionsError as refused:
            log.warning(
                "city_subscription_invalid", subscribe_id=subscription.subscribe_id, reason=str(refused)
            )
            return self._status(request, subscription.subscribe_id, INVALID_OPERATION, str(refused))
        log.info(
            "city_subscription_created" if new else "city_subscription_renewed",
            subscribe_id=subscription.subscribe_id,
            details=subscription.details,
            receive_addr=subscription.receive_addr,
        )
        self.notifier.wake()
        return self._status(request, subscription.subscribe_id, OK, "订阅成功")

    async def _cancel(self, request: web.Request, subscribe_id: str) -> dict[str, Any]:
        if await self.book.cancel(subscribe_id, self._clock()):
            log.info("city_subscription_cancelled", subscribe_id=subscribe_id)
            self.notifier.wake()
            return self._status(request, subscribe_id, OK, "取消订阅成功")
        return self._status(request, subscribe_id[:40], INVALID_OPERATION, "no such subscription")

    async def _put(self, request: web.Request) -> web.Response:
        subscribe_id = request.match_info["subscribe_id"]
        try:
            body = await self._json(request)
        except SubscriptionRefusedError as refused:
            return self._answer([self._status(request, subscribe_id[:40], refused.code, refused.text)], 400)
        obj = body.get("SubscribeObject", body) if isinstance(body, dict) else body
        return self._answer([await self._keep(request, obj, subscribe_id)])

    async def _delete(self, request: web.Request) -> web.Response:
        ids = [i.strip() for i in request.query.get("IDList", "").split(",") if i.strip()]
        if not ids or len(ids) > MAX_SUBSCRIPTIONS:
            status = self._status(
                request, "", INVALID_OPERATION, f"IDList must name 1 to {MAX_SUBSCRIPTIONS} ids"
            )
            return self._answer([status], 400)
        return self._answer([await self._cancel(request, i) for i in ids])


def _subscribe_objects(body: object) -> list[Any]:
    """The SubscribeObjects of a POST body (a SubscribeListObject, or one SubscribeObject)."""
    if not isinstance(body, dict):
        raise SubscriptionRefusedError(
            INVALID_JSON_CONTENT, "expected SubscribeListObject or SubscribeObject"
        )
    if isinstance(body.get("SubscribeListObject"), dict):
        objects = body["SubscribeListObject"].get("SubscribeObject")
    else:
        objects = body.get("SubscribeObject")
    objects = [objects] if isinstance(objects, dict) else objects
    if not isinstance(objects, list) or not objects:
        raise SubscriptionRefusedError(INVALID_JSON_CONTENT, "no SubscribeObject in SubscribeListObject")
    if len(objects) > MAX_SUBSCRIPTIONS:
        raise SubscriptionRefusedError(
            INVALID_OPERATION, f"more than {MAX_SUBSCRIPTIONS} subscriptions in one request"
        )
    return objects


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


async def serve_subscriptions(config: DistrictConfig, queue: CityQueue) -> None:
    """Accept the upper platform's subscriptions and send their notifications until cancelled."""
    async with SubscriptionService(config, queue) as service:
        await service.run()
