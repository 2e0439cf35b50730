"""``/healthz``, ``/readyz`` and ``/metrics`` of the district's daemons: the ingester and the operator API.

They answer as the gateway's do: ``/healthz`` says the process answers (the event loop runs);
``/readyz`` says whether what the daemon needs answers, 200 or 503 with JSON naming each check and
what is wrong; ``/metrics`` is the Prometheus exposition of the daemon's ``Health``.

The ingester has no other HTTP side, so ``serve_ingester_health`` runs a small server for it
(``[ingest] http_host``/``http_port``); the operator API adds the routes to its own application.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol

import structlog
from aiohttp import web

from district.config import IngestConfig
from foundation.errors import ConfigError
from foundation.health import METRICS_CONTENT_TYPE, Health, MetricFamilies
from uplink.stores import EventStore, StoreError

log = structlog.get_logger(__name__)

READY_TIMEOUT_S = 5.0
"""Longest a readiness check may take before it counts as not answering."""

INGESTER_TRANSPORT = "ingester"
"""The transport name the ingester's supervisor reports (``cgw_transport_up{transport="ingester"}``)."""

Probe = Callable[[], Awaitable[str | None]]
"""A readiness check: None while fine, else what is wrong (one line, no secrets)."""

HEALTH_KEY = web.AppKey("health", Health)
PROBES_KEY: web.AppKey[Mapping[str, Probe]] = web.AppKey("readiness_probes")


def ping_probe(ping: Callable[[], Awaitable[None]], *errors: type[Exception]) -> Probe:
    """A probe that calls ``ping`` and reports the listed errors as not ready."""

    async def probe() -> str | None:
        try:
            await ping()
        except errors as exc:
            return str(exc) or type(exc).__name__
        return None

    return probe


def add_health_routes(app: web.Application, health: Health, probes: Mapping[str, Probe]) -> None:
    """Add ``/healthz``, ``/readyz`` (ready when every probe is fine) and ``/metrics`` to ``app``."""
    app[HEALTH_KEY] = health
    app[PROBES_KEY] = probes
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)


async def _healthz(_: web.Request) -> web.Response:
    # Alive: the event loop answers. (systemd's watchdog covers a loop that stops answering.)
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    for name, probe in request.app[PROBES_KEY].items():
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                problem = await probe()
        except TimeoutError:
            problem = f"no answer within {READY_TIMEOUT_S:g} s"
        checks[name] = problem or "ok"
    ready = all(state == "ok" for state in checks.values())
    health = request.app[HEALTH_KEY]
    transports = {name: {"up": s.up, "since": s.since} for name, s in health.transports.items()}
    return web.json_response(
        {"ready": ready, "checks": checks, "transports": transports}, status=200 if ready else 503
    )


async def _metrics(request: web.Request) -> web.Response:
    body = await request.app[HEALTH_KEY].scrape()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


@contextlib.asynccontextmanager
async def serve(app: web.Application, host: str, port: int, what: str) -> AsyncIterator[None]:
    """Serve ``app`` for the block; a port that cannot be had is a ``ConfigError`` naming the setting."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except OSError as exc:
            raise ConfigError(
                f"{what}: cannot listen on {host}:{port} ({exc.strerror or exc}); give each daemon on"
                " this host its own port, or 0 for none"
            ) from exc
        log.info("health_server_started", what=what, host=host, port=port)
        yield
    finally:
        await runner.cleanup()


class IngestFigures(Protocol):
    """What an ingester counts (``district.ingester.Ingester``)."""

    events_written: int
    messages_acked: int
    messages_received: int
    messages_unacked: int
    receipts_sent: int
    receipts_refused: int
    store_write_failures: int
    store_failing: bool
    events_purged: int
    rejected: Counter[str]


def expose_ingester(health: Health, figures: IngestFigures) -> None:
    """The ingester's counters as metrics."""
    health.expose(
        "cgw_ingest_messages_total",
        "uplink messages acknowledged (their events stored or dead-lettered)",
        lambda: figures.messages_acked,
    )
    health.expose(
        "cgw_ingest_messages_received_total",
        "uplink messages taken into a round (a redelivered message counts again)",
        lambda: figures.messages_received,
    )
    health.expose(
        "cgw_ingest_events_stored_total",
        "events the store confirmed (a re-sent event counts again; the store keeps one copy)",
        lambda: figures.events_written,
    )
    health.expose(
        "cgw_ingest_receipts_sent_total",
        "receipt messages sent to the compounds",
        lambda: figures.receipts_sent,
    )
    health.expose(
        "cgw_ingest_receipts_refused_total",
        "receipt messages the district broker refused (MQTT v5 reason code), e.g. by its ACL",
        lambda: figures.receipts_refused,
    )
    health.expose(
        "cgw_ingest_store_write_failures_total",
        "store writes that failed and were retried",
        lambda: figures.store_write_failures,
    )

    health.expose(
        "cgw_district_events_purged_total",
        "events this ingester deleted from the embedded (SQLite) store as older than [retention]"
        " events_days (InfluxDB drops expired shards itself and does not say how many points)",
        lambda: figures.events_purged,
    )

    def write(families: MetricFamilies) -> None:
        families.gauge(
            "cgw_ingest_messages_unacked",
            "uplink messages taken into a round on this connection and not yet acknowledged"
            " (being decoded or stored)",
            float(figures.messages_unacked),
        )
        families.gauge(
            "cgw_ingest_store_failing",
            "1 while store writes fail (and are retried)",
            float(figures.store_failing),
        )
        families.counter(
            "cgw_ingest_dead_letters_total",
            "uplink messages or events refused and kept as dead letters, by reason",
            [({"reason": reason}, n) for reason, n in sorted(figures.rejected.items())],
        )

    health.writers.append(write)


@contextlib.asynccontextmanager
async def serve_ingester_health(
    config: IngestConfig, health: Health, figures: IngestFigures, store: EventStore
) -> AsyncIterator[None]:
    """The ingester's health server for the block (none when ``http_port`` is 0).

    Ready while connected to the district broker, the store answers its ping, and writes to it are
    not failing (a store that answers pings but refuses writes, e.g. revoked credentials, is not
    ready).
    """
    expose_ingester(health, figures)
    if config.http_port == 0:
        yield
        return

    async def broker() -> str | None:
        return None if health.up(INGESTER_TRANSPORT) else "not connected to the district broker"

    async def writes() -> str | None:
        return "store writes fail and are being retried" if figures.store_failing else None

    app = web.Application()
    probes = {"district_broker": broker, "store": ping_probe(store.ping, StoreError), "store_writes": writes}
    add_health_routes(app, health, probes)
    async with serve(app, config.http_host, config.http_port, "[ingest] http_port"):
        yield


class OperatorFigures(Protocol):
    """What the operator service counts and how it is checked (``OperatorService``)."""

    requests: Counter[tuple[str, str]]

    async def ping_operations(self) -> None:
        """The operations database answers."""
        ...

    async def ping_store(self) -> None:
        """The store answers."""
        ...


def add_operator_api_health(app: web.Application, health: Health, service: OperatorFigures) -> None:
    """The operator API's health routes: ready while its operations database and the store answer."""
    health.writers.append(
        lambda families: families.counter(
            "cgw_api_requests_total",
            "operator requests answered, by action and outcome (ok or the error code)",
            [({"action": a, "outcome": o}, n) for (a, o), n in sorted(service.requests.items())],
        )
    )
    probes = {
        "ops_db": ping_probe(service.ping_operations, sqlite3.Error, OSError),
        "store": ping_probe(service.ping_store, StoreError),
    }
    add_health_routes(app, health, probes)
