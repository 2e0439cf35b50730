"""``compound-gateway city``: the daemon that keeps the district registered with the city and drains the queue.

One ``AsyncExitStack`` (the queue file, the HTTP client, the session that UnRegisters on a clean
stop, the health server) and one ``TaskGroup`` of named tasks: ``session`` (register, keepalive,
time), ``deliver[<Category>]`` per collection the privacy policy lets out, ``apes`` (the device list
every ``ape_refresh_s``), ``purge`` (accepted objects older than ``keep_days``; face crops older
than ``[retention] hit_crops_days``), ``subscriptions`` (with ``[city.subscriptions] enabled``:
``docs/city-subscriptions.md``), ``state`` (the
link's state saved to the queue file every few seconds for ``city status`` and the console) and,
under systemd, ``watchdog``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web

from district.city.apes import ApeRefresher, DeviceSource, devices_for_city
from district.city.config import CityConfig, FacePolicy
from district.city.delivery import Deliverer, DeliveryFigures
from district.city.model import Category, LinkState
from district.city.queue import CityQueue, QueueCounts
from district.city.session import CitySession, ViidClient, city_password
from district.city.subscriptions import serve_subscriptions
from district.config import DistrictConfig
from district.health_server import add_health_routes, ping_probe, serve
from foundation.cancellation import raise_if_cancelling
from foundation.errors import ConfigError
from foundation.events import utc_now
from foundation.health import Health, MetricFamilies
from foundation.systemd import sd_notify, watchdog, watchdog_interval

log = structlog.get_logger(__name__)

STATE_EVERY_S = 2.0
COUNTS_EVERY_S = 30.0
"""The saved state's queue counts are refreshed this often (a GROUP BY over the whole backlog, on the
queue's one SQLite thread); readers take live counts from the file themselves."""
"""How often the link state is saved for ``city status`` and the console."""

PURGE_EVERY_S = 3600.0
"""How often accepted objects older than ``keep_days`` are deleted."""


def categories_sent(city: CityConfig) -> list[Category]:
    """The collections the privacy policy lets out (a disabled one's backlog stays, unsent)."""
    sent: list[Category] = []
    if city.privacy.motor_vehicles:
        sent.append(Category.MOTOR_VEHICLE)
    if city.privacy.face_passes is not FacePolicy.OFF or city.privacy.watchlist_hits is not FacePolicy.OFF:
        sent.append(Category.FACE)
    if city.privacy.devices:
        sent.append(Category.APE)
    return sent


class CityService:
    """The parts of a running link, wired; ``run`` runs their tasks until cancelled."""

    def __init__(
        self,
        config: DistrictConfig,
        city: CityConfig,
        queue: CityQueue,
        session: CitySession,
        *,
        device_source: DeviceSource,
    ) -> None:
        self.config = config
        self.city = city
        self.queue = queue
        self.session = session
        self.figures = DeliveryFigures()
        self.deliverers = {
            category: Deliverer(category, queue, session, city, self.figures)
            for category in categories_sent(city)
        }
        self.apes = (
            ApeRefresher(config, queue, self._apes_added, source=device_source)
            if Category.APE in self.deliverers
            else None
        )
        self.purged = 0
        self._counts: QueueCounts | None = None
        self._counts_at = 0.0  # monotonic
        self.sending = asyncio.Event()
        """Set once the queue file matches ``[city.privacy]``: the deliverers send nothing before."""
        for deliverer in self.deliverers.values():
            deliverer.may_send = self.sending

    def _apes_added(self) -> None:
        self.deliverers[Category.APE].wake.set()

    async def link_state(self, *, fresh_counts: bool = True) -> LinkState:
        """The link as it stands: the session's view and the queue's counts (read now, or recently).

        Without ``fresh_counts`` the counts may be up to ``COUNTS_EVERY_S`` old.
        """
        now = time.monotonic()
        if fresh_counts or self._counts is None or now - self._counts_at >= COUNTS_EVERY_S:
            self._counts, self._counts_at = await self.queue.counts(), now
        counts = self._counts
        session = self.session
        return LinkState(
            registered=session.registered.is_set(),
            registered_at=session.registered_at,
            last_keepalive_at=session.last_keepalive_at,
            last_error=session.last_error,
            clock_skew_s=session.clock_skew_s,
            backlog=dict(counts.backlog),
            refused=dict(counts.refused),
            accepted_total=sum(counts.accepted.values()),
            updated_at=utc_now(),
        )

    async def save_state(self) -> None:
        """Save the link state now (for ``city status`` and the console)."""
        await self.queue.save_link_state(await self.link_state())

    async def write_state(self) -> None:
        """Save the link state every ``STATE_EVERY_S`` until cancelled."""
        while True:
            raise_if_cancelling()
            await self.queue.save_link_state(await self.link_state(fresh_counts=False))
            await asyncio.sleep(STATE_EVERY_S)

    async def apply_policy(self) -> None:
        """Make the queue file match ``[city.privacy]``, then let the deliverers send.

        A stricter policy applies to what was queued before it. Run after READY: on a big file it
        may take longer than the unit's start timeout.
        """
        deleted, stripped = await self.queue.apply_policy(self.city.privacy)
        if deleted or stripped:
            log.info("city_queue_policy_applied", deleted=deleted, stripped=stripped)
        self.sending.set()

    async def purge(self) -> None:
        """Delete accepted objects older than ``keep_days``, hourly, until cancelled."""
        while True:
            raise_if_cancelling()
            now = utc_now()
            self.purged += await self.queue.purge(
                now - timedelta(days=self.city.keep_days),
                # a face crop stays no longer in the queue than in the store
                strip_crops_before=now - timedelta(days=self.config.retention.hit_crops_days),
            )
            await asyncio.sleep(PURGE_EVERY_S)

    async def run(self, ready: asyncio.Event | None) -> None:
        """All tasks in one group; READY once they run (the city need not answer for the unit to start)."""
        async with asyncio.TaskGroup() as tg:
            if (interval := watchdog_interval()) is not None:
                # alive while the loop and the queue file's thread answer; a city outage is not cured
                # by a restart, so it does not stop the pings
                tg.create_task(
                    watchdog(
                        self.queue.link_state, interval, failures=(sqlite3.Error,), what="city queue file"
                    ),
                    name="watchdog",
                )
            tg.create_task(self.session.keep(), name="session")
            for category, deliverer in self.deliverers.items():
                tg.create_task(deliverer.run(), name=f"deliver[{category.value}]")
            if self.apes is not None:
                tg.create_task(self.apes.run(), name="apes")
            tg.create_task(self.purge(), name="purge")
            if self.city.subscriptions is not None and self.city.subscriptions.enabled:
                tg.create_task(serve_subscriptions(self.config, self.queue), name="subscriptions")
            tg.create_task(self.write_state(), name="state")
            tg.create_task(self.apply_policy(), name="policy")
            sd_notify("READY=1")
            log.info(
                "city_service_started",
                server=self.city.server_url,
                categories=[c.value for c in self.deliverers],
            )
            if ready is not None:
                ready.set()


def expose_city(health: Health, service: CityService) -> None:
    """The link's figures as metrics (the backlog read from the queue at each scrape)."""
    session, figures = service.session, service.figures

    def write(families: MetricFamilies) -> None:
        families.gauge(
            "cgw_city_registered",
            "1 while registered with the city's VIID",
            float(session.registered.is_set()),
        )
        families.counter(
            "cgw_city_objects_accepted_total",
            "objects the city accepted (StatusCode 0), by category, since the start",
            [({"category": c.value}, figures.accepted[c.value]) for c in service.deliverers],
        )
        families.counter(
            "cgw_city_objects_refused_total",
            "object refusals (a non-zero StatusCode), by category, since the start; each retry counts",
            [({"category": c.value}, figures.refused[c.value]) for c in service.deliverers],
        )
        families.counter(
            "cgw_city_objects_unanswered_total",
            "objects sent without an answer for them (no answer, 5xx, 401, not named), since the start",
            [({"category": c.value}, figures.unanswered[c.value]) for c in service.deliverers],
        )
        families.counter(
            "cgw_city_requests_failed_total",
            "calls to the city that failed (no answer, 5xx, 401, refused), since the start",
            session.requests_failed,
        )
        families.counter("cgw_city_registrations_total", "successful registrations", session.registrations)
        families.gauge(
            "cgw_city_clock_skew_seconds",
            "the city's clock minus ours at the last time check",
            [] if session.clock_skew_s is None else session.clock_skew_s,
        )
        families.gauge(
            "cgw_city_last_keepalive_timestamp",
            "Unix time of the last keepalive the city accepted",
            [] if session.last_keepalive_at is None else session.last_keepalive_at.timestamp(),
        )

    async def gather(families: MetricFamilies) -> None:
        counts = await service.queue.counts()
        families.gauge(
            "cgw_city_backlog",
            "objects waiting for the city (refused ones waiting to retry included; parked not)",
            [({"category": c.value}, counts.backlog.get(c.value, 0)) for c in Category],
        )
        families.gauge(
            "cgw_city_parked",
            "objects refused refused_max_attempts times: kept and shown, no longer sent",
            [({"category": c.value}, counts.parked.get(c.value, 0)) for c in Category],
        )

    health.writers.append(write)
    health.gatherers.append(gather)


@contextlib.asynccontextmanager
async def serve_city_health(city: CityConfig, health: Health, service: CityService) -> AsyncIterator[None]:
    """``/healthz``, ``/readyz`` (registered, queue file answers) and ``/metrics``; none when ``http_port`` is 0."""
    expose_city(health, service)
    if city.http_port == 0:
        yield
        return

    async def registered() -> str | None:
        if service.session.registered.is_set():
            return None
        return f"not registered with the city: {service.session.last_error or 'registering'}"

    async def queue_answers() -> None:
        await service.queue.link_state()

    app = web.Application()
    probes = {"city": registered, "queue": ping_probe(queue_answers, sqlite3.Error, OSError)}
    add_health_routes(app, health, probes)
    async with serve(app, city.http_host, city.http_port, "[city] http_port"):
        yield


async def run_city(
    config: DistrictConfig,
    *,
    ready: asyncio.Event | None = None,
    device_source: DeviceSource = devices_for_city,
) -> None:
    """Run the city link until cancelled: registered, delivering, with its health server."""
    city = config.city
    if city is None:
        raise ConfigError("the district config has no [city] section: nothing to link to")
    if not city.enabled:
        raise ConfigError("[city] enabled = false: the city link is switched off in the config")
    password = city_password(city)
    zone = ZoneInfo(config.api.timezone)
    health = Health()
    async with AsyncExitStack() as stack:
        queue = await stack.enter_async_context(
            CityQueue(
                city.queue_path,
                refused_retry_s=city.refused_retry_s,
                refused_max_attempts=city.refused_max_attempts,
                privacy=city.privacy,
            )
        )
        client = await stack.enter_async_context(ViidClient(city, password))
        session = CitySession(city, client, zone)
        service = CityService(config, city, queue, session, device_source=device_source)
        # the last state is saved after the session's UnRegister (the stack unwinds last in, first out)
        stack.push_async_callback(service.save_state)
        await stack.enter_async_context(session)
        await stack.enter_async_context(serve_city_health(city, health, service))
        await service.run(ready)
