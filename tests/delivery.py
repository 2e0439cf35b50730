"""What the district's delivery tests compare, and the hooks that show a fault landed mid-flight.

The guarantee, end to end: the set of event ids the devices saw acknowledged (the gateway answered
200 / the device broker answered PUBACK; ``device_sims.demo.expected_event_ids`` maps those
messages to ids) equals the set of event ids in the district store, exactly -- none missing, none
extra. It is checked once nothing is in flight any more (``wait_settled``): the gateway's outbox
holds no pending or unconfirmed event, so every event it committed has the district's receipt.

Duplicates are counted only where they can exist:

* InfluxDB: the raw number of points against the distinct event ids. A point is identified by its
  measurement, tag set and time, and the time derives from the event id
  (``uplink.lineprotocol.point_time_ns``), so a re-delivered event overwrites its own point: a
  duplicate shows here only if that identity breaks (the ``influx_dedup_off`` fault switch).
* The uplink: ``UplinkObserver`` counts each event id's deliveries on the district broker. At-least
  once allows copies there (a receipt lost, a kill before the PUBACK); they are reported, and every
  one of them must still be stored exactly once.
* Not the embedded SQLite store: ``event_id`` is its primary key, a duplicate cannot exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import aiomqtt

from device_sims.broker import Mosquitto
from district.config import DistrictConfig
from gateway.config import GatewayConfig
from tests.metrics import scrape, value
from uplink.stores import InfluxV1Store, InfluxV1StoreConfig, SqliteStoreConfig


async def stored_ids(store: object) -> list[str]:
    """Every event id in a store (its config), one per row or point (InfluxDB: raw, with copies)."""
    if isinstance(store, InfluxV1StoreConfig):
        async with InfluxV1Store(store.model_copy(update={"create_database": False})) as reader:
            values: list[str] = []
            for result in await reader.query('SELECT "event_id" FROM /.*/'):
                for series in result.get("series", []):
                    values += [row[1] for row in series["values"]]
            return values
    assert isinstance(store, SqliteStoreConfig), f"no reader for {type(store).__name__}"
    return sqlite_ids(store.path)


def sqlite_ids(path: Path) -> list[str]:
    """The event ids in an embedded store; none until its file and its table exist (the store creates both)."""
    if not path.exists():
        return []
    try:
        with sqlite3.connect(path) as db:
            return [row[0] for row in db.execute("SELECT event_id FROM events")]
    except sqlite3.OperationalError:  # the file is there, its table not yet
        return []


def outbox_states(config: GatewayConfig) -> Counter[str]:
    """How many events the gateway's outbox holds per state (read-only; the gateway may be running)."""
    path = config.state.dir / "outbox.db"
    if not path.exists():
        return Counter()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        return Counter(dict(db.execute("SELECT state, COUNT(*) FROM events GROUP BY state").fetchall()))


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` at the deadline (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout} s"
        await asyncio.sleep(0.1)


async def wait_settled(
    config: GatewayConfig, expected: set[str], store: DistrictConfig | object, timeout: float = 120
) -> list[str]:
    """Wait until the gateway's outbox has nothing pending or unconfirmed; the store's ids then.

    ``store`` is the district's config or (for the gateway's direct mode) a store config.

    Every event the gateway committed then has the district's receipt, which the ingester sends
    only after the store confirmed the write: nothing more is on its way.
    """

    async def settled() -> bool:
        states = outbox_states(config)
        return states["pending"] == 0 and states["sent"] == 0 and states["delivered"] >= len(expected)

    await wait_for(settled, "the gateway's outbox confirmed by the district", timeout)
    return await stored_ids(store.store if isinstance(store, DistrictConfig) else store)


class NotExactError(AssertionError):
    """The stored set is not the acknowledged set (the teeth tests expect exactly this failure)."""


def assert_exactly(expected: set[str], stored: list[str], where: str) -> None:
    """The acknowledged set equals the stored set; each event stored once (raw rows == distinct ids)."""
    distinct = set(stored)
    missing, extra = expected - distinct, distinct - expected
    copies = len(stored) - len(distinct)
    if missing or extra or copies:
        raise NotExactError(
            f"{where}: {len(expected)} acknowledged, {len(distinct)} stored: {len(missing)} missing"
            f" (e.g. {sorted(missing)[:3]}), {len(extra)} extra (e.g. {sorted(extra)[:3]}),"
            f" {copies} stored more than once"
        )


class IngesterMetrics:
    """An ingester's /metrics, read as the fault tests' hooks."""

    def __init__(self, district: DistrictConfig) -> None:
        self.url = f"http://127.0.0.1:{district.ingest.http_port}/metrics"

    async def read(self) -> dict[str, float]:
        """Events stored, messages received / unacknowledged, whether store writes fail."""
        text, _ = await scrape(self.url)
        return {
            "stored": value(text, "cgw_ingest_events_stored_total"),
            "received": value(text, "cgw_ingest_messages_received_total"),
            "unacked": value(text, "cgw_ingest_messages_unacked"),
            "failing": value(text, "cgw_ingest_store_failing"),
        }

    async def wait(
        self, condition: Callable[[dict[str, float]], bool], what: str, timeout: float = 60
    ) -> dict[str, float]:
        """Scrape until ``condition`` holds; the figures of that scrape."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):  # aiohttp's connection errors: not listening yet
                figures = await self.read()
                if condition(figures):
                    return figures
            assert time.monotonic() < deadline, f"ingester {self.url}: {what} not seen within {timeout} s"
            await asyncio.sleep(0.05)


class UplinkObserver:
    """A plain (not shared) subscriber to the uplink topics: how often each event id was delivered.

    It keeps a persistent session and reconnects, so a broker restarted with its persistence misses
    nothing; a broker restarted without session state drops what was published while the observer
    was away, and the counts are then lower bounds.
    """

    def __init__(self, broker: Mosquitto, prefix: str = "cgw/v1") -> None:
        self._broker = broker
        self._filter = f"{prefix}/+/+/+"
        self.deliveries: Counter[str] = Counter()
        self.messages = 0
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._observe(), name="uplink-observer")
        async with asyncio.timeout(10):
            await self._subscribed.wait()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _observe(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self._broker.port, identifier="uplink-observer", clean_session=False
                ) as client:
                    await client.subscribe(self._filter, qos=1)
                    self._subscribed.set()
                    async for message in client.messages:
                        self._count(str(message.topic), message.payload)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    def _count(self, topic: str, payload: object) -> None:
        if topic.endswith("/status") or not isinstance(payload, bytes):
            return
        self.messages += 1
        for event in json.loads(payload)["events"]:
            self.deliveries[event["event_id"]] += 1

    @property
    def copies(self) -> int:
        """Deliveries beyond the first, over all event ids."""
        return sum(self.deliveries.values()) - len(self.deliveries)

    async def wait_for(self, ids: set[str], timeout: float = 30) -> None:
        """Until every id in ``ids`` has been seen on the uplink."""

        async def seen() -> bool:
            return ids <= self.deliveries.keys()

        await wait_for(seen, "the uplink observer saw every acknowledged event", timeout)

    def report(self, where: str) -> str:
        """One line for the test's output: messages, events, copies."""
        twice = sum(1 for n in self.deliveries.values() if n > 1)
        return (
            f"{where}: uplink carried {self.messages} messages, {len(self.deliveries)} events,"
            f" {self.copies} extra copies ({twice} events delivered more than once)"
        )
