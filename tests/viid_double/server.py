"""The city platform (upper VIID) as a test double: an aiohttp server on 127.0.0.1.

Written from the GA/T 1400 text collected in the protocol reference (§5, §6), never from our client.
It imports nothing of the product (``tests/test_architecture.py`` checks that).

Protocol it speaks (§5.1-5.2):

* ``POST /VIID/System/Register`` with HTTP digest (RFC 7616, MD5, qop=auth): the first call gets 401
  and a challenge; a nonce answers one request only (a replay gets 401), and expires after
  ``nonce_lifetime_s`` (a correct answer with an expired nonce gets 401 with ``stale=true``).
* every other call carries ``User-Identify: <DeviceID>`` of a registered client, else 401. A client
  whose last keepalive (or registration) is older than ``keepalive_timeout_s`` is dropped.
* ``POST /VIID/System/Keepalive``, ``POST /VIID/System/UnRegister``, ``GET /VIID/System/Time``.
* ``POST /VIID/MotorVehicles``, ``/VIID/Faces``, ``/VIID/APEs``, ``/VIID/SubscribeNotifications``:
  every object checked (``validation.py``), one ``ResponseStatusObject`` per object in a
  ``ResponseStatusListObject``.

Its clock: ``monotonic()`` (nonce ages, keepalive ages) is the real monotonic clock plus whatever
``advance()`` added, so tests age nonces and registrations without sleeping; the wall clock it shows
(``LocalTime``, UTC+8) is the real one plus ``clock_offset``.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import re
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from tests.viid_double import validation
from tests.viid_double.upper import (
    LowerPlatform,
    UpperAnswer,
    call_lower,
    new_subscribe_id,
    parse_digest,
    subscribe_object,
)
from tests.viid_double.validation import Obj

UTC8 = timedelta(hours=8)

# GA/T 1400.4 ResponseStatusObject.StatusCode (the reference does not list them; these are the
# standard's: 0 正常, 1 其他未知错误, 2 设备忙, 4 无效操作, 7 JSON格式无效, 8 JSON内容无效)
OK = "0"
OTHER_ERROR = "1"
BUSY = "2"
INVALID_OPERATION = "4"
INVALID_JSON_FORMAT = "7"
INVALID_JSON_CONTENT = "8"


class Credentials(BaseModel):
    """One lower platform allowed to register: its digest username and password."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    username: str
    password: str


class ViidDoubleConfig(BaseModel):
    """How the double behaves; every field has a default a test can override."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    server_id: str = Field(default="33010000005030000001", description="our VIIDServerID (a 503 id)")
    realm: str = "city-viid"
    clients: dict[str, Credentials] = Field(
        default_factory=lambda: {
            "33010600015030000001": Credentials(username="district", password="district-secret")
        },
        description="DeviceID of each lower platform -> its digest credentials",
    )
    nonce_lifetime_s: float = 60.0
    keepalive_timeout_s: float = 180.0
    opaque: str | None = None  # sent in challenges when set; then it must come back
    deployment_rules: bool = False  # also apply the §5.10 city validator's rules
    known_subscriptions_only: bool = False  # refuse notifications for ids subscribe() did not create
    # real platforms answer application/VIID+JSON or application/json; a client must take both
    answer_content_type: str = "application/VIID+JSON"


class Outage(enum.Enum):
    """What the double does instead of answering (``set_outage``)."""

    REFUSE_CONNECTIONS = "refuse_connections"  # not listening; open connections closed
    HTTP_503 = "http_503"  # every request answered 503, nothing processed
    LOST_ANSWER = "lost_answer"  # the request is processed and recorded, then the connection dropped


class Poison(enum.Enum):
    """What the double does to any batch holding a poisoned id (``poison``): nothing in it is accepted."""

    HTTP_503 = "http_503"  # the batch is answered 503
    DROP = "drop"  # the connection is dropped without an answer
    REFUSE_BATCH = "refuse_batch"  # 400 with one ResponseStatusObject naming no object (the whole batch)
    UNNAMED = "unnamed"  # the batch is processed, but the answer holds no status for (and keeps not) this id


@dataclass(frozen=True)
class Registration:
    """A successful register (digest checked)."""

    client_id: str
    username: str
    at: datetime  # UTC, wall clock


@dataclass(frozen=True)
class Post:
    """Every request that reached a handler (a re-send shows up as a second Post with the same ids)."""

    method: str
    path: str
    client_id: str | None  # User-Identify as sent
    status: int  # the HTTP status answered (or that would have been, for a lost answer)
    object_ids: tuple[str, ...]
    body: Any
    outage: Outage | None  # HTTP_503 / LOST_ANSWER when that switch shaped the answer
    content_type: str  # the request's Content-Type header as sent ("" if none)
    authorization: str = ""  # the request's Authorization header as sent ("" if none)
    poisoned: bool = False  # a ``poison()`` switch shaped the answer


@dataclass(frozen=True)
class Refusal:
    """One object (or a whole request when ``object_id`` is None) answered with a non-zero StatusCode."""

    path: str
    category: str
    object_id: str | None
    status_code: str
    reason: str


@dataclass
class RefusalRule:
    """``refuse()``'s rule: refuse each matching object ``times`` times, then accept it."""

    matches: Callable[[str, str, Obj], bool]  # (category, id, object)
    times: int
    status_code: str
    reason: str
    seen: Counter[str] = field(default_factory=Counter)

    def take(self, category: str, object_id: str, obj: Obj) -> bool:
        """True (and count it) when this object is to be refused now."""
        if not self.matches(category, object_id, obj) or self.seen[object_id] >= self.times:
            return False
        self.seen[object_id] += 1
        return True


@dataclass
class _Client:
    registered_at: float  # our monotonic clock
    last_alive: float


@dataclass(frozen=True)
class _Collection:
    category: str
    list_key: str
    object_key: str
    id_field: str
    check: Callable[..., validation.Reasons]


COLLECTIONS = {
    "/VIID/MotorVehicles": _Collection(
        "MotorVehicle",
        "MotorVehicleListObject",
        "MotorVehicleObject",
        "MotorVehicleID",
        validation.motor_vehicle_reasons,
    ),
    "/VIID/Faces": _Collection("Face", "FaceListObject", "FaceObject", "FaceID", validation.face_reasons),
    "/VIID/APEs": _Collection("APE", "APEListObject", "APEObject", "ApeID", validation.ape_reasons),
}
NOTIFICATIONS = "/VIID/SubscribeNotifications"
OUTAGE_KEY = web.RequestKey("viid_outage", Outage)  # the outage a request met (recorded in its Post)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class ViidDouble:
    """The city VIID. ``async with ViidDouble(config) as city:`` listens on ``city.url``.

    Records (read them freely; all plain attributes):
      ``registrations``, ``unregistrations`` (client ids), ``keepalives`` (client id, UTC time),
      ``dropped`` (client ids dropped for lack of keepalives), ``auth_failures`` (path, reason),
      ``posts`` (every request, see ``Post``), ``accepted[category][id]`` (the object as last
      accepted; categories MotorVehicle, Face, APE), ``refusals`` (see ``Refusal``), ``resends``
      (id -> how many times an already accepted MotorVehicle/Face came again), ``ape_updates``
      (ApeID, object) for each APE sent again (an update, not a duplicate), ``notifications``
      (NotificationID -> notification), ``notified[category][id]`` (the objects inside them).

    Switches (see each method): ``refuse()`` / ``clear_refusals()``, ``poison()`` / ``cure()``,
    ``set_outage()`` / ``restore()``,
    ``advance()``, ``clock_offset``, ``drop_registration()``.
    """

    def __init__(self, config: ViidDoubleConfig | None = None) -> None:
        self.config = config or ViidDoubleConfig()
        self.clock_offset = timedelta()  # added to the wall clock the double shows (Time, LocalTime)
        self.registrations: list[Registration] = []
        self.unregistrations: list[str] = []
        self.keepalives: list[tuple[str, datetime]] = []
        self.dropped: list[str] = []
        self.auth_failures: list[tuple[str, str]] = []
        self.posts: list[Post] = []
        self.accepted: dict[str, dict[str, Obj]] = {c.category: {} for c in COLLECTIONS.values()}
        self.refusals: list[Refusal] = []
        self.resends: Counter[str] = Counter()
        self.ape_updates: list[tuple[str, Obj]] = []
        self.notifications: dict[str, Obj] = {}
        self.notified: dict[str, dict[str, Obj]] = {c: {} for _l, _o, c, _f in validation.NOTIFIED}
        self.subscriptions: dict[str, Obj] = {}  # SubscribeID -> the object subscribe() sent (see upper.py)
        self.cancelled: set[str] = set()  # SubscribeIDs cancel_subscription() cancelled
        self.rules: list[RefusalRule] = []
        self.poisoned: dict[str, Poison] = {}  # object id -> what a batch holding it meets (poison())
        self.outage: Outage | None = None
        self._outage_left: int | None = None
        self._outage_paths: frozenset[str] | None = None
        self._advanced = 0.0
        self._subscribe_seq = 0
        self._nonces: dict[str, float] = {}  # issued, not yet used -> issued at
        self._used_nonces: set[str] = set()
        self._clients: dict[str, _Client] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifetime -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        await self._listen()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop_listening()

    async def _listen(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_post("/VIID/System/Register", self._register)
        app.router.add_post("/VIID/System/Keepalive", self._keepalive)
        app.router.add_post("/VIID/System/UnRegister", self._unregister)
        app.router.add_get("/VIID/System/Time", self._time)
        for path in COLLECTIONS:
            app.router.add_post(path, self._collection)
        app.router.add_post(NOTIFICATIONS, self._notifications)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.port))  # port 0 the first time: a free one; then the same
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self.port = sock.getsockname()[1]
        self._runner = runner

    async def _stop_listening(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()  # closes the listening socket and every open connection

    # ---- switches -------------------------------------------------------------------------------

    def refuse(
        self,
        match: str | Iterable[str] | Callable[[str, str, Obj], bool],
        times: int = 1,
        *,
        status_code: str = BUSY,
        reason: str = "refused by the test",
    ) -> RefusalRule:
        """Refuse each matching object ``times`` times (a per-object non-zero StatusCode), then accept it.

        ``match`` is an id, a collection of ids, or a predicate ``(category, id, object) -> bool``.
        Applies to valid objects only (an invalid one is refused anyway) in collections and in
        notifications (there the id is the NotificationID). Returns the rule; ``rule.seen`` counts
        refusals per id. Rules stay until ``clear_refusals()``.
        """
        if callable(match):
            matches = match
        else:
            wanted = {match} if isinstance(match, str) else set(match)

            def matches(_category: str, object_id: str, _obj: Obj) -> bool:
                return object_id in wanted

        rule = RefusalRule(matches, times, status_code, reason)
        self.rules.append(rule)
        return rule

    async def set_outage(
        self, mode: Outage, *, requests: int | None = None, paths: Iterable[str] | None = None
    ) -> None:
        """Start an outage (until ``restore()``, or ``requests`` affected requests).

        For HTTP_503 and LOST_ANSWER, ``requests`` limits it to that many requests and ``paths`` to
        requests for those paths (e.g. ``{"/VIID/Faces"}``: keepalives are still answered).

        REFUSE_CONNECTIONS stops listening (connect() is refused) and closes open connections; the
        port is kept for ``restore()``. HTTP_503 answers every request 503 without looking at it.
        LOST_ANSWER processes and records each request as usual, then drops the connection without
        an answer (the client cannot know whether its objects arrived).
        """
        self.outage, self._outage_left = mode, requests
        self._outage_paths = None if paths is None else frozenset(paths)
        if mode is Outage.REFUSE_CONNECTIONS:
            await self._stop_listening()

    async def restore(self) -> None:
        """End any outage; listen again on the same port (``refuse()`` rules stay: ``clear_refusals()``)."""
        self.outage, self._outage_left, self._outage_paths = None, None, None
        if self._runner is None:
            await self._listen()

    def poison(self, object_ids: str | Iterable[str], mode: Poison = Poison.HTTP_503) -> None:
        """Answer any collection batch holding one of ``object_ids`` with ``mode``, every time, until ``cure()``.

        Nothing of such a batch is accepted, and no per-object status names the culprit: the
        client has to find it by sending smaller batches. The request is recorded (``Post.poisoned``).
        """
        for object_id in [object_ids] if isinstance(object_ids, str) else object_ids:
            self.poisoned[object_id] = mode

    def cure(self) -> None:
        """Forget every ``poison()`` switch."""
        self.poisoned.clear()

    def clear_refusals(self) -> None:
        """Forget every ``refuse()`` rule (each also ends by itself once it has refused ``times``)."""
        self.rules.clear()

    def advance(self, seconds: float) -> None:
        """Move the double's monotonic clock: nonces and keepalives age by ``seconds`` at once."""
        self._advanced += seconds

    def drop_registration(self, client_id: str) -> None:
        """Forget a client's registration now (its next call gets 401, so it must register again)."""
        if self._clients.pop(client_id, None) is not None:
            self.dropped.append(client_id)

    # ---- upper-platform role (§5.8) -------------------------------------------------------------

    async def subscribe(
        self,
        lower: LowerPlatform,
        *,
        resource_uri: str,
        detail: str = "12,13",
        receive_addr: str | None = None,
        **fields: Any,
    ) -> tuple[str, UpperAnswer]:
        """POST a new SubscribeObject to the lower platform's ``/VIID/Subscribes``; (SubscribeID, answer).

        ``receive_addr`` defaults to our own ``/VIID/SubscribeNotifications``; ``fields`` go to
        ``upper.subscribe_object`` (title, resource_class, report_interval, result_image_declare,
        days). The request carries ``User-Identify: <server_id>`` and answers a digest challenge.
        """
        self._subscribe_seq += 1
        subscribe_id = new_subscribe_id(self.now() + UTC8, self._subscribe_seq)
        obj = subscribe_object(
            subscribe_id,
            receive_addr=receive_addr or self.url + NOTIFICATIONS,
            resource_uri=resource_uri,
            now=self.now() + UTC8,
            detail=detail,
            **fields,
        )
        self.subscriptions[subscribe_id] = obj
        body = {"SubscribeListObject": {"SubscribeObject": [obj]}}
        answer = await call_lower(
            lower, "POST", "/VIID/Subscribes", identify=self.config.server_id, body=body
        )
        return subscribe_id, answer

    async def cancel_subscription(
        self, lower: LowerPlatform, subscribe_id: str, *, via: Literal["PUT", "DELETE"] = "PUT"
    ) -> UpperAnswer:
        """Cancel a subscription on the lower platform, by either form GA/T 1400.4 names.

        ``via="PUT"``: ``PUT /VIID/Subscribes/{id}`` with ``{"SubscribeObject": {...}}`` (the object as
        sent, OperateType 1, SubscribeStatus 1); ``via="DELETE"``: ``DELETE /VIID/Subscribes?IDList={id}``.
        """
        self.cancelled.add(subscribe_id)
        if via == "DELETE":
            return await call_lower(
                lower, "DELETE", f"/VIID/Subscribes?IDList={subscribe_id}", identify=self.config.server_id
            )
        obj = {
            **self.subscriptions.get(subscribe_id, {"SubscribeID": subscribe_id}),
            "OperateType": 1,
            "SubscribeStatus": 1,
        }
        return await call_lower(
            lower,
            "PUT",
            f"/VIID/Subscribes/{subscribe_id}",
            identify=self.config.server_id,
            body={"SubscribeObject": obj},
        )

    # ---- views ----------------------------------------------------------------------------------

    def monotonic(self) -> float:
        """The clock nonces and keepalives are aged by."""
        return time.monotonic() + self._advanced

    def now(self) -> datetime:
        """The double's wall clock (UTC, aware), including ``clock_offset``."""
        return datetime.now(UTC) + self.clock_offset

    def local_time(self) -> str:
        """``now()`` as the 14-char UTC+8 LocalTime the double answers with."""
        return (self.now() + UTC8).strftime("%Y%m%d%H%M%S")

    def is_registered(self, client_id: str) -> bool:
        """Registered, and its last keepalive is within the timeout (a stale one is dropped here)."""
        client = self._clients.get(client_id)
        if client is None:
            return False
        if self.monotonic() - client.last_alive > self.config.keepalive_timeout_s:
            self.drop_registration(client_id)
            return False
        return True

    def posts_to(self, path: str) -> list[Post]:
        """The recorded requests to one path."""
        return [p for p in self.posts if p.path == path]

    async def wait_for(self, condition: Callable[[ViidDouble], bool], timeout: float = 10.0) -> None:
        """Wait until ``condition(self)`` holds; re-checked after every request (TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: condition(self))

    # ---- request plumbing -----------------------------------------------------------------------

    def _status(self, object_id: str, path: str, code: str, text: str) -> Obj:
        return {
            "Id": object_id,
            "RequestURL": path,
            "StatusCode": code,
            "StatusString": text,
            "LocalTime": self.local_time(),
        }

    def _answer(self, status: Obj, http_status: int = 200) -> web.Response:
        return web.json_response(
            {"ResponseStatusObject": status}, status=http_status, content_type=self.config.answer_content_type
        )

    def _list_answer(self, statuses: list[Obj]) -> web.Response:
        body = {"ResponseStatusListObject": {"ResponseStatusObject": statuses}}
        return web.json_response(body, content_type=self.config.answer_content_type)

    def _record(
        self,
        request: web.Request,
        status: int,
        ids: Iterable[str] = (),
        body: Any = None,
        *,
        poisoned: bool = False,
    ) -> None:
        outage = request.get(OUTAGE_KEY)  # as the middleware saw it: a one-request outage is over by now
        identify = request.headers.get("User-Identify")
        content_type = request.headers.get("Content-Type", "")
        authorization = request.headers.get("Authorization", "")
        self.posts.append(
            Post(
                request.method,
                request.path,
                identify,
                status,
                tuple(ids),
                body,
                outage,
                content_type,
                authorization,
                poisoned,
            )
        )

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        mode = self.outage
        if self._outage_paths is not None and request.path not in self._outage_paths:
            mode = None
        elif self._outage_left is not None:
            self._outage_left -= 1
            if self._outage_left <= 0:
                self.outage, self._outage_left, self._outage_paths = None, None, None
        if mode is not None:
            request[OUTAGE_KEY] = mode
        try:
            if mode is Outage.HTTP_503:
                await request.read()
                self._record(request, 503)
                return web.Response(status=503, text="city platform unavailable (test outage)")
            response = await handler(request)
            if mode is Outage.LOST_ANSWER and request.transport is not None:
                request.transport.abort()  # aiohttp then finds the transport closed and writes nothing
            return response
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def _json(self, request: web.Request) -> Any:
        """The body as JSON, or None when it is not JSON (Content-Type is not checked: vendors vary)."""
        raw = await request.read()
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def _refuse_auth(
        self, request: web.Request, reason: str, *, challenge: bool = False, stale: bool = False
    ) -> web.Response:
        self.auth_failures.append((request.path, reason))
        self._record(request, 401)
        headers = {}
        if challenge:
            nonce = secrets.token_urlsafe(18)
            self._nonces[nonce] = self.monotonic()
            value = f'Digest realm="{self.config.realm}", qop="auth", algorithm=MD5, nonce="{nonce}"'
            if self.config.opaque is not None:
                value += f', opaque="{self.config.opaque}"'
            if stale:
                value += ", stale=true"
            headers["WWW-Authenticate"] = value
        status = self._status(
            request.headers.get("User-Identify", ""), request.path, INVALID_OPERATION, reason
        )
        return web.json_response(
            {"ResponseStatusObject": status},
            status=401,
            headers=headers,
            content_type=self.config.answer_content_type,
        )

    def _identified(self, request: web.Request) -> str | None:
        identify = request.headers.get("User-Identify", "")
        return identify if self.is_registered(identify) else None

    # ---- System ---------------------------------------------------------------------------------

    def _check_digest(self, request: web.Request, body: Any) -> tuple[str | None, str, bool]:
        """(client id or None, reason, stale) for a Register's Authorization header."""
        fields = parse_digest(request.headers.get("Authorization", ""))
        if not fields:
            return None, "no digest credentials", False
        nonce = fields.get("nonce", "")
        if nonce in self._used_nonces:
            return None, "nonce replayed", False
        issued = self._nonces.pop(nonce, None)
        if issued is None:
            return None, "unknown nonce", False
        self._used_nonces.add(nonce)  # one request per nonce, whatever the outcome
        found = [(cid, c) for cid, c in self.config.clients.items() if c.username == fields.get("username")]
        if not found:
            return None, "unknown username", False
        client_id, creds = found[0]
        if fields.get("realm") != self.config.realm or fields.get("uri") != request.path_qs:
            return None, "realm or uri does not match", False
        if fields.get("qop") != "auth" or fields.get("algorithm", "MD5").upper() != "MD5":
            return None, "qop must be auth and algorithm MD5", False
        if not re.fullmatch(r"[0-9a-fA-F]{8}", fields.get("nc", "")) or not fields.get("cnonce"):
            return None, "nc must be 8 hex digits and cnonce non-empty (qop=auth)", False
        if self.config.opaque is not None and fields.get("opaque") != self.config.opaque:
            return None, "opaque does not match", False
        ha1 = _md5(f"{creds.username}:{self.config.realm}:{creds.password}")
        ha2 = _md5(f"{request.method}:{fields['uri']}")
        expected = _md5(f"{ha1}:{nonce}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:auth:{ha2}")
        if not secrets.compare_digest(expected, fields.get("response", "")):
            return None, "wrong digest response", False
        if self.monotonic() - issued > self.config.nonce_lifetime_s:
            return None, "nonce expired", True
        device = body.get("RegisterObject", {}).get("DeviceID") if isinstance(body, dict) else None
        if device != client_id:
            return None, f"RegisterObject.DeviceID {device!r} is not this user's id", False
        return client_id, "", False

    async def _register(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        client_id, reason, stale = self._check_digest(request, body)
        if client_id is None:
            return self._refuse_auth(request, reason, challenge=True, stale=stale)
        now = self.monotonic()
        self._clients[client_id] = _Client(registered_at=now, last_alive=now)
        self.registrations.append(
            Registration(client_id, self.config.clients[client_id].username, self.now())
        )
        self._record(request, 200, [client_id], body)
        return self._answer(self._status(client_id, request.path, OK, "注册成功"))

    async def _system_call(
        self, request: web.Request, envelope: str
    ) -> tuple[str | None, web.Response | None]:
        """Common part of keepalive and unregister: identified, and the body's DeviceID is the caller."""
        body = await self._json(request)
        client_id = self._identified(request)
        if client_id is None:
            return None, self._refuse_auth(request, "User-Identify is not a registered client")
        device = body.get(envelope, {}).get("DeviceID") if isinstance(body, dict) else None
        if device != client_id:
            self._record(request, 400, body=body)
            text = f"{envelope}.DeviceID {device!r} is not the caller"
            return None, self._answer(self._status(client_id, request.path, INVALID_JSON_CONTENT, text), 400)
        self._record(request, 200, [client_id], body)
        return client_id, None

    async def _keepalive(self, request: web.Request) -> web.Response:
        client_id, refused = await self._system_call(request, "KeepaliveObject")
        if client_id is None:
            assert refused is not None
            return refused
        self._clients[client_id].last_alive = self.monotonic()
        self.keepalives.append((client_id, self.now()))
        return self._answer(self._status(client_id, request.path, OK, "保活成功"))

    async def _unregister(self, request: web.Request) -> web.Response:
        client_id, refused = await self._system_call(request, "UnRegisterObject")
        if client_id is None:
            assert refused is not None
            return refused
        del self._clients[client_id]
        self.unregistrations.append(client_id)
        return self._answer(self._status(client_id, request.path, OK, "注销成功"))

    async def _time(self, request: web.Request) -> web.Response:
        if self._identified(request) is None:
            return self._refuse_auth(request, "User-Identify is not a registered client")
        self._record(request, 200)
        body = {
            "SystemTimeObject": {
                "VIIDServerID": self.config.server_id,
                "TimeMode": "0",
                "LocalTime": self.local_time(),
                "TimeZone": "UTC+8",
            }
        }
        return web.json_response(body, content_type=self.config.answer_content_type)

    # ---- collections and notifications ----------------------------------------------------------

    def _items(self, body: Any, list_key: str, object_key: str) -> list[Any] | None:
        envelope = body.get(list_key) if isinstance(body, dict) else None
        items = envelope.get(object_key) if isinstance(envelope, dict) else None
        return items if isinstance(items, list) else None

    def _bad_envelope(
        self, request: web.Request, body: Any, category: str, list_key: str, object_key: str
    ) -> web.Response:
        code = INVALID_JSON_FORMAT if body is None else INVALID_JSON_CONTENT
        text = (
            "body is not JSON"
            if body is None
            else f"body must be {{{list_key!r}: {{{object_key!r}: [...]}}}}"
        )
        self.refusals.append(Refusal(request.path, category, None, code, text))
        self._record(request, 400, body=body)
        return self._answer(self._status("", request.path, code, text), 400)

    def _verdict(
        self, path: str, category: str, object_id: str, obj: Obj, reasons: list[str]
    ) -> tuple[str, str]:
        """(StatusCode, StatusString) for one object; records a refusal."""
        if reasons:
            code, text = INVALID_JSON_CONTENT, "; ".join(reasons)
        else:
            rule = next((r for r in self.rules if r.take(category, object_id, obj)), None)
            if rule is None:
                return OK, "成功"
            code, text = rule.status_code, rule.reason
        self.refusals.append(Refusal(path, category, object_id or None, code, text))
        return code, text

    async def _collection(self, request: web.Request) -> web.Response:
        spec = COLLECTIONS[request.path]
        body = await self._json(request)
        if self._identified(request) is None:
            return self._refuse_auth(request, "User-Identify is not a registered client")
        items = self._items(body, spec.list_key, spec.object_key)
        if items is None:
            return self._bad_envelope(request, body, spec.category, spec.list_key, spec.object_key)
        poisoned = self._poisoned(request, spec, items, body)
        if poisoned is not None:
            return poisoned
        statuses, ids = [], []
        for item in items:
            obj: Obj = item if isinstance(item, dict) else {}
            object_id = str(obj.get(spec.id_field, ""))
            ids.append(object_id)
            reasons = (
                spec.check(obj, deployment_rules=self.config.deployment_rules) if obj else ["not an object"]
            )
            if self.poisoned.get(object_id) is Poison.UNNAMED:
                continue  # not kept, not named: as if the city overlooked it
            code, text = self._verdict(request.path, spec.category, object_id, obj, reasons)
            if code == OK:
                self._accept(spec.category, object_id, obj)
            statuses.append(self._status(object_id, request.path, code, text))
        self._record(request, 200, ids, body)
        return self._list_answer(statuses)

    def _poisoned(
        self, request: web.Request, spec: _Collection, items: list[Any], body: Any
    ) -> web.Response | None:
        """The ``poison()`` answer for a batch holding a poisoned id, else None."""
        ids = [str(item.get(spec.id_field, "")) if isinstance(item, dict) else "" for item in items]
        mode = next(
            (self.poisoned[i] for i in ids if self.poisoned.get(i) not in {None, Poison.UNNAMED}), None
        )
        if mode is None:
            return None
        if mode is Poison.HTTP_503:
            self._record(request, 503, ids, body, poisoned=True)
            return web.Response(status=503, text="city platform unavailable (poisoned batch)")
        if mode is Poison.DROP:
            self._record(request, 0, ids, body, poisoned=True)
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never written: the transport is closed
        text = "the batch is refused (poisoned by the test)"
        self.refusals.append(Refusal(request.path, spec.category, None, INVALID_JSON_CONTENT, text))
        self._record(request, 400, ids, body, poisoned=True)
        return self._answer(self._status("", request.path, INVALID_JSON_CONTENT, text), 400)

    def _accept(self, category: str, object_id: str, obj: Obj) -> None:
        store = self.accepted[category]
        if object_id in store:
            if category == "APE":
                self.ape_updates.append((object_id, obj))
            else:
                self.resends[object_id] += 1
        store[object_id] = obj

    async def _notifications(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if self._identified(request) is None:
            return self._refuse_auth(request, "User-Identify is not a registered client")
        list_key, object_key = "SubscribeNotificationListObject", "SubscribeNotificationObject"
        items = self._items(body, list_key, object_key)
        if items is None:
            return self._bad_envelope(request, body, "Notification", list_key, object_key)
        statuses, ids = [], []
        for item in items:
            obj: Obj = item if isinstance(item, dict) else {}
            notification_id = str(obj.get("NotificationID", ""))
            ids.append(notification_id)
            reasons = (
                validation.notification_reasons(obj, deployment_rules=self.config.deployment_rules)
                if obj
                else ["not an object"]
            )
            subscription = self.subscriptions.get(str(obj.get("SubscribeID")))
            if self.config.known_subscriptions_only and (
                subscription is None or obj.get("SubscribeID") in self.cancelled
            ):
                reasons.append(
                    f"SubscribeID {obj.get('SubscribeID')!r} is not an active subscription of ours"
                )
            code, text = self._verdict(request.path, "Notification", notification_id, obj, reasons)
            if code == OK:
                if notification_id in self.notifications:
                    self.resends[notification_id] += 1
                self.notifications[notification_id] = obj
                for list_name, inner_key, category, _check in validation.NOTIFIED:
                    for inner in (obj.get(list_name) or {}).get(inner_key, []):
                        inner_id = inner.get(
                            {"Face": "FaceID", "MotorVehicle": "MotorVehicleID"}.get(category, "ApeID")
                        )
                        self.notified[category][str(inner_id)] = inner
            statuses.append(self._status(notification_id, request.path, code, text))
        self._record(request, 200, ids, body)
        return self._list_answer(statuses)
