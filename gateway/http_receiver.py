"""The HTTP receiver for push devices and IoT platforms.

``POST /push/<device id>`` for devices that post their own events (ISAPI-style), ``POST
/platform/<dialect>`` for vendor platforms that post for many devices. A push is answered only after
its events (or its dead letter) are committed: 200 with the event ids, 4xx with the specific reason,
503 when the outbox could not commit in time (the device may retry; re-sends are de-duplicated).

Every push first proves who sent it (``gateway/push_auth.py``), from its request line and headers,
before the body is read: without the path's device's (or platform's) credentials it is answered 401
with a challenge, counted and logged (sampled), and never reaches the intake. A signed platform
push is checked against its body once the body is read, and refused (401) before parsing if it
does not match.

Then each device (and each vendor platform) has its own rate limit, still before the body is read:
a push beyond it is answered 429 with ``Retry-After`` and counted, and is not kept (keeping a flood
would fill the disk the limit protects). Authentication comes first, so an unauthenticated flood
cannot use up a device's bucket. Failed attempts (wrong credentials, made-up device ids) spend one
bucket per remote address (``refused@<address>``); once it is empty the address gets 429 before its
credentials are even checked, which slows guessing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from adapters.base import RawMessage
from foundation.errors import OutboxError
from foundation.events import utc_now
from foundation.health import METRICS_CONTENT_TYPE, Health, MetricFamilies
from foundation.logging import worth_logging
from gateway.config import GatewayConfig
from gateway.intake import IntakeItem
from gateway.outbox import OutboxStats
from gateway.outbox_metrics import write_outbox_metrics
from gateway.pipeline import IntakePipeline
from gateway.push_auth import Admitted, PushAuthenticator, Refusal
from gateway.rate_limits import PeerRateLimiter

log = structlog.get_logger(__name__)

REJECTION_STATUS = {"unknown_device": 404, "unknown_dialect": 404, "payload_too_large": 413}
PIPELINE_KEY: web.AppKey[IntakePipeline] = web.AppKey("pipeline", IntakePipeline)
CONFIG_KEY: web.AppKey[GatewayConfig] = web.AppKey("config", GatewayConfig)
HEALTH_KEY: web.AppKey[Health] = web.AppKey("health", Health)
STATS_KEY: web.AppKey[Callable[[], Awaitable[OutboxStats]]] = web.AppKey("stats")
LIMITS_KEY: web.AppKey[PushLimits] = web.AppKey("limits")
AUTH_KEY: web.AppKey[PushAuthenticator] = web.AppKey("auth", PushAuthenticator)
VERDICT_KEY: web.RequestKey[Admitted | web.Response] = web.RequestKey("cgw_push_verdict")
"""Where a request keeps its authentication verdict (decided once, see ``_authenticate``)."""


class PushLimits:
    """Who may push how often: a bucket per device, per platform, and per address for unknown ids."""

    def __init__(self, config: GatewayConfig) -> None:
        http = config.http
        # refusals of per-address buckets (made-up ids, failed guesses) share one label: an address
        # per label would let whoever can reach the gateway grow /metrics without bound
        self.devices = PeerRateLimiter(
            http.device_rate_per_s,
            http.device_burst,
            counted_as=lambda peer: "unknown" if "@" in peer else peer,
        )
        self.platforms = PeerRateLimiter(http.platform_rate_per_s, http.platform_burst)
        self._known_devices = frozenset(device.id for device in config.devices)

    def admit(self, transport: str, target: str, remote: str | None) -> tuple[str, float | None]:
        """The peer a push counts against, and None or the seconds until it may push again."""
        if transport == "http_platform":
            return f"platform:{target}", self.platforms.admit(f"platform:{target}")
        peer = target if target in self._known_devices else f"unknown@{remote or '?'}"
        return peer, self.devices.admit(peer)

    def guesses_blocked(self, remote: str | None) -> tuple[str, float | None]:
        """The address's bucket of failed attempts, and None or the seconds until it may try again."""
        peer = f"refused@{remote or '?'}"
        return peer, self.devices.blocked(peer)

    def failed_attempt(self, remote: str | None) -> None:
        """One failed attempt of the address (wrong credentials, a made-up id)."""
        self.devices.spend(f"refused@{remote or '?'}")

    def write_metrics(self, families: MetricFamilies) -> None:
        """Refused pushes per peer (devices and platforms in one family)."""
        families.counter(
            "cgw_http_rate_limited_total",
            "pushes refused with 429 because the peer exceeded its rate",
            [
                ({"peer": peer}, n)
                for limiter in (self.devices, self.platforms)
                for peer, n in sorted(limiter.refused.items())
            ],
        )


def build_app(
    config: GatewayConfig,
    pipeline: IntakePipeline,
    health: Health,
    stats: Callable[[], Awaitable[OutboxStats]],
    authenticator: PushAuthenticator,
) -> web.Application:
    """The aiohttp application (body size limited by config, so oversized pushes never load)."""
    app = web.Application(client_max_size=config.http.max_body_bytes)
    app[PIPELINE_KEY] = pipeline
    app[CONFIG_KEY] = config
    app[HEALTH_KEY] = health
    app[STATS_KEY] = stats
    app[LIMITS_KEY] = limits = PushLimits(config)
    health.writers.append(limits.write_metrics)
    app[AUTH_KEY] = authenticator
    health.writers.append(authenticator.write_metrics)

    async def outbox_metrics(families: MetricFamilies) -> None:
        write_outbox_metrics(families, await stats(), utc_now())

    health.gatherers.append(outbox_metrics)
    app.router.add_post("/push/{device_id}", _push, expect_handler=_expect_authenticated)
    app.router.add_post("/platform/{dialect}", _platform, expect_handler=_expect_authenticated)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def _read(request: web.Request) -> bytes | None:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return None


async def _push(request: web.Request) -> web.Response:
    return await _receive(request, "http_device", request.match_info["device_id"])


async def _platform(request: web.Request) -> web.Response:
    return await _receive(request, "http_platform", request.match_info["dialect"])


async def _receive(
    request: web.Request, transport: Literal["http_device", "http_platform"], target: str
) -> web.Response:
    pipeline = request.app[PIPELINE_KEY]
    http = request.app[CONFIG_KEY].http
    limits = request.app[LIMITS_KEY]
    authenticator = request.app[AUTH_KEY]
    verdict = _authenticate(request, transport, target)
    if isinstance(verdict, web.Response):
        return verdict
    if verdict.signature is None:
        peer, retry_after = limits.admit(transport, target, request.remote)
        if retry_after is not None:
            return _rate_limited(limits, transport, peer, retry_after)
        body = await _read(request)
    else:
        # a signed push is only authenticated with its body: read it (bounded) before the platform's
        # bucket is spent, so pushes with a bad signature cannot use it up
        body = await _read(request)
        if body is None:  # unverifiable, so not even its dead letter is kept; counted like a bad one
            if authenticator.unverifiable(verdict, request.remote).is_guess:
                limits.failed_attempt(request.remote)
            return web.json_response(
                {"error": "payload_too_large", "detail": f"more than {http.max_body_bytes} bytes"}, status=413
            )
        if (refusal := authenticator.check_body(verdict, body, request.remote)) is not None:
            return _unauthorized(limits, refusal, request.remote)
        peer, retry_after = limits.admit(transport, target, request.remote)
        if retry_after is not None:
            return _rate_limited(limits, transport, peer, retry_after)
    if body is None:
        item = IntakeItem(
            transport,
            RawMessage(b""),
            http.max_body_bytes,
            target,
            oversized=True,
            declared_size=request.content_length,
        )
    else:
        raw = RawMessage(body, content_type=request.headers.get("Content-Type"))
        item = IntakeItem(transport, raw, http.max_body_bytes, target=target)
    try:
        async with asyncio.timeout(http.commit_timeout_s):
            result = await pipeline.submit_one(item)
    except (TimeoutError, OutboxError) as exc:
        log.error("push_not_committed", target=target, error=str(exc) or "commit timeout")
        return web.json_response({"error": "not_committed", "detail": "try again"}, status=503)
    if result.rejection is not None:
        rejection = result.rejection
        return web.json_response(
            {
                "error": rejection.reason,
                "field": rejection.field,
                "detail": rejection.detail,
                "device": result.device,
            },
            status=REJECTION_STATUS.get(rejection.reason, 400),
        )
    return web.json_response(
        {"stored": list(result.stored), "duplicates": list(result.duplicates), "shed": list(result.shed)}
    )


def _authenticate(
    request: web.Request, transport: Literal["http_device", "http_platform"], target: str
) -> Admitted | web.Response:
    """Who sent the push (before its body is read), or the answer that refuses it.

    Decided once per request: the ``Expect: 100-continue`` handler decides before the client sends
    the body, and the push handler then takes the same verdict (checking twice would use a digest
    count twice and refuse the second as a replay).
    """
    if VERDICT_KEY in request:
        return request[VERDICT_KEY]
    limits = request.app[LIMITS_KEY]
    verdict: Admitted | web.Response
    guesser, retry_after = limits.guesses_blocked(request.remote)
    if retry_after is not None:
        verdict = _rate_limited(limits, "http_device", guesser, retry_after)
    else:
        checked = request.app[AUTH_KEY].check(
            transport, target, request.remote, request.raw_path, request.headers
        )
        verdict = _unauthorized(limits, checked, request.remote) if isinstance(checked, Refusal) else checked
    request[VERDICT_KEY] = verdict
    return verdict


async def _expect_authenticated(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: authenticate first, so a refused client never sends its body.

    aiohttp's default handler answers 100 Continue at once, before any handler runs.
    """
    transport: Literal["http_device", "http_platform"] = (
        "http_platform" if "dialect" in request.match_info else "http_device"
    )
    target = request.match_info.get("dialect") or request.match_info["device_id"]
    verdict = _authenticate(request, transport, target)
    if isinstance(verdict, web.Response):
        return verdict
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {request.headers.get(hdrs.EXPECT)}")
    if request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


def _unauthorized(limits: PushLimits, refusal: Refusal, remote: str | None) -> web.Response:
    if refusal.is_guess:
        limits.failed_attempt(remote)
    response = web.json_response({"error": "unauthorized", "reason": refusal.answer}, status=401)
    for challenge in refusal.challenges:
        response.headers.add("WWW-Authenticate", challenge)
    return response


def _rate_limited(limits: PushLimits, transport: str, peer: str, retry_after: float) -> web.Response:
    limiter = limits.platforms if transport == "http_platform" else limits.devices
    count = limiter.refused[limiter.counted_as(peer)]
    if worth_logging(count, first=3, every=1000):
        log.warning("push_rate_limited", peer=peer, rate_per_s=limiter.rate, burst=limiter.burst, count=count)
    return web.json_response(
        {
            "error": "rate_limited",
            "device": peer,
            "detail": f"more than {limiter.rate:g} pushes/s (burst {limiter.burst}); retry later",
        },
        status=429,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


async def _healthz(_: web.Request) -> web.Response:
    # Alive: the event loop answers. (systemd's watchdog covers a loop that stops answering.)
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    # Ready: the intake worker answers and the outbox can be read; transports are reported, but a
    # broker outage does not make the gateway unready (it keeps accepting and buffering).
    health = request.app[HEALTH_KEY]
    transports = {name: {"up": s.up, "since": s.since} for name, s in health.transports.items()}
    try:
        async with asyncio.timeout(5):
            await request.app[PIPELINE_KEY].ping()
            stats = await request.app[STATS_KEY]()
    except (TimeoutError, OutboxError) as exc:
        return web.json_response(
            {"ready": False, "reason": str(exc) or "timeout", "transports": transports}, status=503
        )
    return web.json_response({"ready": True, "pending": stats.pending, "transports": transports})


async def _metrics(request: web.Request) -> web.Response:
    body = await request.app[HEALTH_KEY].scrape()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
