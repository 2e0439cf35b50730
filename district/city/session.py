"""The district's session with the city's VIID server: every HTTP call, registration, keepalive, time.

``ViidClient`` is the port over aiohttp: the only place that speaks HTTP to the city. It sends what
GA/T 1400.4 asks of a lower platform (``User-Identify`` and the VIID JSON content type on every
call, HTTP digest answered with ``qop=auth``/MD5) and turns every aiohttp and socket error into the
``CityLinkError`` family, so the rest of the link only sees "no answer", "not registered" and
"refused".

Digest is aiohttp's ``DigestAuthMiddleware`` (RFC 7616), on Register only: the standard
authenticates Register with digest and every later call by ``User-Identify``. Each Register gets a
fresh middleware (per-request ``middlewares=``): it meets the city's challenge, answers it once with
that nonce, and no nonce outlives the Register (a city with one-time nonces would refuse a replay;
a 401 without a challenge leaves nothing stale behind; no ``nc`` state is shared between tasks). A
401 that survives the challenge, or a 401 to any other call, means the city does not know us (any
more), and the session registers again.

``CitySession`` keeps the registration: Register (digest), a Keepalive every ``keepalive_s``
(``keepalive_failures`` in a row, or any 401, and it registers again), the city's clock read every
``time_check_s`` (the skew is logged above ``max_clock_skew_s``), UnRegister on a clean stop.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from types import TracebackType
from typing import Self
from zoneinfo import ZoneInfo

import aiohttp
import structlog

from district.city.config import CityConfig
from district.city.model import Category
from foundation import strict_json
from foundation.backoff import Backoff, BackoffConfig
from foundation.cancellation import raise_if_cancelling
from foundation.credentials import credential_path
from foundation.errors import ConfigError, TransportError
from foundation.events import utc_now
from foundation.logging import worth_logging

log = structlog.get_logger(__name__)

VIID_CONTENT_TYPE = "application/VIID+JSON;charset=UTF-8"
"""The Content-Type real GA/T 1400 uploaders send (device-protocols.md §5.2)."""

MAX_ANSWER_BYTES = 8 * 1024 * 1024
"""Longest answer read from the city (a status list for 1000 objects is about 200 kB)."""

UNREGISTER_TIMEOUT_S = 5.0
"""A clean stop waits this long at most for the city to take the UnRegister."""

REGISTER = "/VIID/System/Register"
UNREGISTER = "/VIID/System/UnRegister"
KEEPALIVE = "/VIID/System/Keepalive"
TIME = "/VIID/System/Time"

JsonObject = dict[str, object]


class CityLinkError(TransportError):
    """A call to the city's VIID server did not succeed."""


class CityUnavailableError(CityLinkError):
    """No usable answer: connection refused or dropped, timeout, a 5xx, or an answer that is not JSON.

    Whatever was sent may or may not have arrived: objects are sent again, as they were.
    """


class CityUnauthorizedError(CityLinkError):
    """A 401 that a fresh digest nonce did not cure: the city does not know us; register again."""


class CityRefusedError(CityLinkError):
    """The city answered and said no: a 4xx other than 401, or a non-zero ``StatusCode``.

    Attributes:
        status: the HTTP status.
        document: the answer's JSON object, if it was one (a refused batch may still carry statuses).
    """

    def __init__(self, message: str, *, status: int, document: JsonObject | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.document = document


@dataclass(frozen=True)
class StatusAnswer:
    """One ``ResponseStatusObject``: the city's word on one object (or one system call)."""

    object_id: str
    status_code: str
    status_string: str

    @property
    def ok(self) -> bool:
        """``StatusCode`` 0: done."""
        return self.status_code == "0"

    @property
    def reason(self) -> str:
        """``"<StatusCode> <StatusString>"``, as a refusal is kept and shown."""
        return f"{self.status_code} {self.status_string}".strip()


def _text(value: object) -> str:
    # StatusCode appears as "0" and as 0 across servers; ids are strings
    if isinstance(value, bool) or value is None:
        return ""
    return str(value) if isinstance(value, str | int) else ""


def parse_statuses(document: object) -> list[StatusAnswer]:
    """The status objects of an answer: ``ResponseStatusListObject`` or a single ``ResponseStatusObject``.

    Both wrappers are accepted holding either one object or a list of them (servers differ); entries
    that are not objects are skipped. An answer with neither wrapper has no statuses.
    """
    if not isinstance(document, dict):
        return []
    holder: object = document.get("ResponseStatusListObject")
    entries: object
    if isinstance(holder, dict):
        entries = holder.get("ResponseStatusObject")
    else:
        entries = document.get("ResponseStatusObject")
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        return []
    return [
        StatusAnswer(
            object_id=_text(entry.get("Id")),
            status_code=_text(entry.get("StatusCode")),
            status_string=_text(entry.get("StatusString")),
        )
        for entry in entries
        if isinstance(entry, dict)
    ]


_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)


def _zone_of(name: object, default: ZoneInfo) -> timezone | ZoneInfo:
    """``TimeZone`` of a time answer ("UTC+8", "+08:00", "Asia/Shanghai"); the district's zone otherwise."""
    if not isinstance(name, str) or not name.strip():
        return default
    match = _OFFSET.match(name.strip())
    if match:
        sign = -1 if match[1] == "-" else 1
        try:
            return timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3] or 0)))
        except ValueError:
            # "UTC+24": an offset no clock has; guessing a zone would report a false skew
            raise CityUnavailableError(f"the time answer's TimeZone {name!r} is no offset") from None
    try:
        return ZoneInfo(name.strip())
    except (ValueError, KeyError, OSError):
        return default


def parse_system_time(document: object, zone: ZoneInfo) -> datetime:
    """The city's clock from a ``GET /VIID/System/Time`` answer.

    ``SystemTimeObject`` (or a top-level ``SystemTime``, as one device client reads it) with
    ``LocalTime`` either ``yyyyMMddHHmmss`` in its ``TimeZone`` (the district's zone when absent) or
    epoch milliseconds (string or number): both occur (device-protocols.md §5.2).

    Raises:
        CityUnavailableError: the answer holds no time we can read.
    """
    holder = None
    if isinstance(document, dict):
        holder = document.get("SystemTimeObject", document.get("SystemTime"))
    if not isinstance(holder, dict):
        raise CityUnavailableError("the time answer holds no SystemTimeObject")
    local = holder.get("LocalTime")
    try:
        if isinstance(local, int | float) and not isinstance(local, bool):
            return datetime.fromtimestamp(local / 1000, UTC)
        if isinstance(local, str) and local.isascii() and local.isdigit():
            if len(local) == 14:
                naive = datetime.strptime(local, "%Y%m%d%H%M%S")
                return naive.replace(tzinfo=_zone_of(holder.get("TimeZone"), zone))
            if len(local) == 13:
                return datetime.fromtimestamp(int(local) / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        # an impossible date, or epoch ms past what a datetime holds (10**20, NaN, inf): no time;
        # left to escape, it would end the keeper and with it the service
        raise CityUnavailableError(f"the time answer's LocalTime {local!r} is no time") from None
    raise CityUnavailableError(
        f"the time answer's LocalTime {local!r} is neither yyyyMMddHHmmss nor epoch ms"
    )


def city_password(city: CityConfig) -> str:
    """The digest password: from the config, or from the systemd credential it names."""
    if city.password is not None:
        return city.password.get_secret_value()
    if city.password_credential is None:  # the config validator makes this impossible
        raise ConfigError("[city] needs password or password_credential")
    path = credential_path(
        city.password_credential,
        "the city platform's digest password",
        f"/etc/compound-district/credentials/{city.password_credential}",
    )
    return path.read_text(encoding="utf-8").rstrip("\r\n")


class ViidClient:
    """HTTP to the city's VIID server: JSON in, JSON out, our errors only. Open with ``async with``."""

    def __init__(self, city: CityConfig, password: str) -> None:
        self._city = city
        self._base = city.server_url.rstrip("/")
        self._login = city.username or city.platform_id
        self._password = password
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._city.request_timeout_s),
            headers={"User-Identify": self._city.platform_id, "Accept": "application/json"},
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self, method: str, path: str, body: Mapping[str, object] | None = None, *, digest: bool = False
    ) -> JsonObject:
        """One request; the answer's JSON object (empty for an empty 2xx body).

        ``digest``: answer the city's digest challenge (Register), with a middleware of its own.

        Raises:
            CityUnavailableError: no answer, a 5xx/408/429, or a 2xx that is not a JSON object.
            CityUnauthorizedError: 401 after the digest retry.
            CityRefusedError: any other status (the answer's JSON attached when it has one).
        """
        if self._session is None:
            raise CityUnavailableError("the VIID client is not open")
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = VIID_CONTENT_TYPE
        url = self._base + path
        # a fresh middleware per Register: no nonce (and no nc count) survives it or is shared
        middlewares = (aiohttp.DigestAuthMiddleware(self._login, self._password),) if digest else ()
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, allow_redirects=False, middlewares=middlewares
            ) as response:
                raw = await _read_answer(response)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CityUnavailableError(f"{method} {path}: {exc or type(exc).__name__}") from None
        if raw is None:
            raise CityUnavailableError(f"{method} {path}: an answer over {MAX_ANSWER_BYTES} bytes")
        document = _json_object(raw)
        if status == 401:
            raise CityUnauthorizedError(f"{method} {path}: 401 (the city does not know us)")
        if status >= 500 or status in {408, 429}:
            raise CityUnavailableError(f"{method} {path}: HTTP {status}")
        if status >= 300:
            said = "; ".join(s.reason for s in parse_statuses(document)) or raw[:200].decode(
                "utf-8", "replace"
            )
            raise CityRefusedError(
                f"{method} {path}: HTTP {status} {said}".strip(), status=status, document=document
            )
        if document is None:
            if raw.strip():
                raise CityUnavailableError(f"{method} {path}: HTTP {status} with an answer that is not JSON")
            return {}
        return document


async def _read_answer(response: aiohttp.ClientResponse) -> bytes | None:
    """The whole body, or None past ``MAX_ANSWER_BYTES`` (``read(n)`` alone may stop at a chunk's end)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(raw: bytes) -> JsonObject | None:
    if not raw.strip():
        return None
    try:
        document = strict_json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _system_status(document: JsonObject, what: str) -> None:
    """A system call's ``ResponseStatusObject`` must say 0 (an answer without one counts as done)."""
    for answer in parse_statuses(document):
        if not answer.ok:
            raise CityRefusedError(f"{what}: {answer.reason}", status=200, document=document)


class CitySession:
    """The registration with the city, kept up by ``keep``; the calls that need it go through ``post``.

    ``registered`` is set while the city knows us; deliverers wait on it. A 401 anywhere (``post``
    or the keeper's own calls) clears it and wakes the keeper, which registers again.
    """

    def __init__(self, city: CityConfig, client: ViidClient, zone: ZoneInfo) -> None:
        self._city = city
        self._client = client
        self._zone = zone
        self.registered = asyncio.Event()
        self._lost = asyncio.Event()
        self.registered_at: datetime | None = None
        self.last_keepalive_at: datetime | None = None
        self.last_error: str | None = None
        self.clock_skew_s: float | None = None
        self.registrations = 0
        """Successful registrations so far: also the registration's generation (a late 401 names its own)."""
        self.requests_failed = 0
        self.answered_at: float | None = None
        """When (monotonic) the city last answered any call readably (a refusal is an answer too).

        The deliverers tell an object the city chokes on from an outage by it: while other calls
        are answered, a batch that never is holds a culprit."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.unregister()

    # ---- calls -----------------------------------------------------------------------------

    async def post(self, category: Category, bodies: list[dict[str, object]]) -> list[StatusAnswer]:
        """POST one batch to the category's collection; the city's per-object statuses.

        A refused batch (4xx) whose answer still lists statuses returns them; one without raises
        ``CityRefusedError``. A 401 marks the session lost (the keeper registers again) and raises.
        """
        name = category.value
        document = {f"{name}ListObject": {f"{name}Object": bodies}}
        generation = self.registrations
        try:
            answer = await self._client.call("POST", category.resource, document)
        except CityUnauthorizedError as exc:
            self.requests_failed += 1
            # a 401 to a request sent before we registered again speaks of the old registration
            if self.registrations == generation:
                self.lose(str(exc))
            raise
        except CityRefusedError as exc:
            self.requests_failed += 1
            self.answered_at = time.monotonic()
            statuses = parse_statuses(exc.document)
            if statuses:
                return statuses
            raise
        except CityLinkError:
            self.requests_failed += 1
            raise
        self.answered_at = time.monotonic()
        return parse_statuses(answer)

    async def register(self) -> None:
        """``POST /VIID/System/Register`` with digest; on success the session is registered."""
        answer = await self._call(
            "POST", REGISTER, {"RegisterObject": {"DeviceID": self._city.platform_id}}, digest=True
        )
        _system_status(answer, "Register")
        self.registered_at = utc_now()
        self.registrations += 1
        self.last_error = None
        self._lost.clear()
        self.registered.set()
        log.info("city_registered", platform_id=self._city.platform_id, registrations=self.registrations)

    async def keepalive(self) -> None:
        """``POST /VIID/System/Keepalive``."""
        answer = await self._call(
            "POST", KEEPALIVE, {"KeepaliveObject": {"DeviceID": self._city.platform_id}}
        )
        _system_status(answer, "Keepalive")
        self.last_keepalive_at = utc_now()

    async def check_time(self) -> float:
        """Read the city's clock; the skew (theirs minus ours, seconds) is kept, and logged when too large.

        Ours is taken halfway through the request, so the round trip does not count as skew (a
        14-character time is whole seconds: the skew is known to half a second).
        """
        sent = time.monotonic()
        before = utc_now()
        answer = await self._call("GET", TIME)
        ours = before + timedelta(seconds=(time.monotonic() - sent) / 2)
        theirs = parse_system_time(answer, self._zone)
        skew = (theirs - ours).total_seconds()
        self.clock_skew_s = skew
        if abs(skew) > self._city.max_clock_skew_s:
            log.warning(
                "city_clock_skew",
                skew_s=round(skew, 1),
                max_s=self._city.max_clock_skew_s,
                city_time=str(theirs),
            )
        return skew

    async def unregister(self) -> None:
        """``POST /VIID/System/UnRegister`` if registered (a clean stop); failures are only logged."""
        if not self.registered.is_set():
            return
        self.registered.clear()
        try:
            async with asyncio.timeout(UNREGISTER_TIMEOUT_S):
                await self._client.call(
                    "POST", UNREGISTER, {"UnRegisterObject": {"DeviceID": self._city.platform_id}}
                )
        except (CityLinkError, TimeoutError) as exc:
            log.warning("city_unregister_failed", error=str(exc))
        else:
            log.info("city_unregistered", platform_id=self._city.platform_id)

    def lose(self, why: str) -> None:
        """The city no longer knows us (a 401, or keepalives failing): register again."""
        if self.registered.is_set():
            log.warning("city_registration_lost", reason=why)
        self.last_error = why
        self.registered.clear()
        self._lost.set()

    async def _call(
        self, method: str, path: str, body: Mapping[str, object] | None = None, *, digest: bool = False
    ) -> JsonObject:
        try:
            answer = await self._client.call(method, path, body, digest=digest)
        except CityLinkError:
            self.requests_failed += 1
            raise
        self.answered_at = time.monotonic()
        return answer

    # ---- the keeper ------------------------------------------------------------------------

    async def keep(self) -> None:
        """Register, keep alive, read the clock; register again when lost. Runs until cancelled."""
        city = self._city
        backoff = Backoff(
            BackoffConfig(initial_s=city.retry_initial_s, max_s=max(city.retry_max_s, city.retry_initial_s))
        )
        timers = _Timers()
        while True:
            raise_if_cancelling()
            if not self.registered.is_set():
                await self._register_until_done(backoff)
                timers = _Timers(keepalive=time.monotonic() + city.keepalive_s, clock=time.monotonic())
            if time.monotonic() >= timers.clock:
                await self._read_clock(timers)
                if not self.registered.is_set():
                    continue
            wait = max(0.0, min(timers.keepalive, timers.clock) - time.monotonic())
            try:
                async with asyncio.timeout(wait):
                    await self._lost.wait()
            except TimeoutError:
                pass
            if self._lost.is_set() or time.monotonic() < timers.keepalive:
                continue  # lost (a deliverer got a 401): register again; else the clock is due
            timers.keepalive = time.monotonic() + city.keepalive_s
            await self._keep_alive(timers)

    async def _register_until_done(self, backoff: Backoff) -> None:
        attempts = 0
        while True:
            raise_if_cancelling()
            try:
                await self.register()
            except CityLinkError as exc:
                attempts += 1
                self.last_error = f"register: {exc}"
                delay = backoff.next_delay()
                if worth_logging(attempts, first=3, every=20):
                    log.warning(
                        "city_register_failed", error=str(exc), retry_in_s=round(delay, 2), count=attempts
                    )
                await asyncio.sleep(delay)
            else:
                backoff.reset()
                return

    async def _read_clock(self, timers: _Timers) -> None:
        timers.clock = time.monotonic() + self._city.time_check_s
        try:
            await self.check_time()
        except CityUnauthorizedError as exc:
            self.lose(f"time: {exc}")
        except CityLinkError as exc:
            log.warning("city_time_check_failed", error=str(exc))
            # try again with the next keepalive rather than in an hour
            timers.clock = time.monotonic() + min(self._city.time_check_s, self._city.keepalive_s)

    async def _keep_alive(self, timers: _Timers) -> None:
        try:
            await self.keepalive()
        except CityUnauthorizedError as exc:
            self.lose(f"keepalive: {exc}")
        except CityLinkError as exc:
            timers.failures += 1
            self.last_error = f"keepalive: {exc}"
            log.warning(
                "city_keepalive_failed",
                error=str(exc),
                failures=timers.failures,
                of=self._city.keepalive_failures,
            )
            if timers.failures >= self._city.keepalive_failures:
                self.lose(f"{timers.failures} keepalives failed in a row: {exc}")
        else:
            timers.failures = 0


@dataclass
class _Timers:
    """When the keeper's next keepalive and clock reading are due (monotonic), and failures in a row."""

    keepalive: float = 0.0
    clock: float = 0.0
    failures: int = 0
