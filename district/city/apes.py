"""The APE list (采集设备) for the city: the district's registered devices with their online status.

``devices_for_city`` is the one place that knows where the device list comes from: the district's
device registry (what each gateway says it has, ``district/device_registry.py``) with the
``devices`` query's online rule (``registry_with_status``). A configured device that never reported
goes up as offline; a device removed from its gateway's config is no longer listed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from zoneinfo import ZoneInfo

import structlog

from district.city.model import CityObject
from district.city.objects import DeviceForCity, ape_object
from district.city.queue import CityQueue
from district.config import DistrictConfig
from district.queries.devices import registry_with_status
from foundation.cancellation import raise_if_cancelling
from foundation.errors import GatewayError

log = structlog.get_logger(__name__)


async def devices_for_city(config: DistrictConfig) -> list[DeviceForCity]:
    """Every registered device of the district with its online status, as the APE list needs it."""
    return await registry_with_status(config)


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
