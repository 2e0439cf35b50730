"""The APE list (采集设备) for the city: the district's devices with their online status, queued as objects.

``devices_for_city`` is the one place that knows where the device list comes from. Until the
district has a device registry it is the operator ``devices`` query (devices that reported within
``[api] inventory_lookback_days``, online by their last report or their silence); with the registry,
only that function changes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import cast
from zoneinfo import ZoneInfo

import structlog

from district.city.model import CityObject
from district.city.objects import DeviceForCity, ape_object
from district.city.queue import CityQueue
from district.config import DistrictConfig
from district.operations import OperationsDb, Principal
from district.queries.context import QueryContext
from district.queries.devices import DevicesRequest, devices
from district.query_backends import open_query_backend
from district.query_model import Role
from foundation.cancellation import raise_if_cancelling
from foundation.errors import GatewayError
from foundation.events import utc_now

log = structlog.get_logger(__name__)

CITY_PRINCIPAL = "city-link"
"""The name the city service's device-list reading runs under (it holds no token)."""


async def devices_for_city(config: DistrictConfig) -> list[DeviceForCity]:
    """Every device of the district with its online status, as the APE list needs it.

    Today: the ``devices`` query over the store (a device that never reported is not listed). The
    query reads neither tokens nor the audit log, so it runs without the operations database.
    """
    zone = ZoneInfo(config.api.timezone)
    principal = Principal(name=CITY_PRINCIPAL, role=Role.VIEWER, district_id=config.district_id)
    async with open_query_backend(config.store) as backend:
        context = QueryContext(
            principal=principal,
            backend=backend,
            # the devices query never touches the operations database (tokens, audit): none is opened
            operations=cast("OperationsDb", None),
            config=config,
            registry={c.id: c for c in config.compounds},
            zone=zone,
            clock=utc_now,
        )
        report = await devices(context, DevicesRequest())
    return [
        DeviceForCity(
            device_id=row.device_id,
            compound_id=row.compound_id,
            name=row.device_id,  # the store knows no device names; the registry will
            kind=row.dialect,  # nor kinds: the dialect says what the device is
            dialect=row.dialect,
            place=None,
            online=row.status == "online",
        )
        for row in report.devices
    ]


DeviceSource = Callable[[DistrictConfig], Awaitable[list[DeviceForCity]]]


class ApeRefresher:
    """Queues the APE list at start and every ``ape_refresh_s``; the queue keeps one object per state."""

    def __init__(
        self,
        config: DistrictConfig,
        queue: CityQueue,
        on_added: Callable[[], None],
        *,
        source: DeviceSource = devices_for_city,
    ) -> None:
        if config.city is None:
            raise ValueError("no [city] section")
        self._config = config
        self._city = config.city
        self._queue = queue
        self._on_added = on_added
        self._source = source
        self._zone = ZoneInfo(config.api.timezone)
        self.refreshes = 0
        self.last_added = 0

    async def refresh(self) -> int:
        """Read the devices once and queue their APE objects; how many states were new."""
        listed = await self._source(self._config)
        objects: list[CityObject] = [ape_object(device, self._city, self._zone) for device in listed]
        added = await self._queue.add(objects)
        self.refreshes += 1
        self.last_added = added
        if added:
            self._on_added()
        log.info("city_apes_refreshed", devices=len(listed), new_states=added)
        return added

    async def run(self) -> None:
        """Refresh until cancelled; a store that does not answer is retried at the next refresh."""
        while True:
            raise_if_cancelling()
            try:
                await self.refresh()
            except (GatewayError, sqlite3.OperationalError) as exc:  # the store's errors are ours
                log.warning("city_apes_refresh_failed", error=str(exc))
            await asyncio.sleep(self._city.ape_refresh_s)
