"""The GA/T 1400 link to the city: objects per second pushed, and how long a backlog takes to drain after an outage.

Everything runs for real on this machine: the city service (``run_city``, its queue file, its HTTP
client with digest) in this process, the VIID server double (``tests/viid_double``, validating every
object) in its own thread and event loop, so the two do not share a loop. The objects are vehicle
passes built by ``district/city/objects.py`` from events, as the ingesters queue them. The
``[city]`` settings are the shipped defaults (``batch_max`` 100, ``linger_s`` 0.2, ``retry_max_s``
60), except the timers that would make the run longer without measuring anything.

1. **throughput**: ``--objects`` passes queued before the service starts (a backlog); from the
   registration until the queue's backlog is 0.
2. **outage**: the service idle and registered, the city refuses connections for ``--outage-s``
   while passes keep coming at ``--rate`` per second; then the city is back: the time until the
   backlog is 0. It includes the wait before the first attempt after the city is back (the
   deliverer's and the session's backoff, jittered up to ``retry_max_s``) and, after an outage
   longer than ``keepalive_failures`` keepalives, the registration again. Every pass queued must be
   accepted by the double, none twice.

    .venv/bin/python bench/city_bench.py                          # 20000 objects, a 10-minute outage; writes docs/benchmarks.md
    .venv/bin/python bench/city_bench.py --objects 2000 --outage-s 30 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import machine, replace_section
from district.city.model import CityObject
from district.city.objects import DeviceForCity, event_objects
from district.city.queue import CityQueue
from district.city.service import run_city
from district.config import DistrictConfig, load_district_config
from tests.city_events import ZONE, vehicle_pass
from tests.viid_double import Credentials, Outage, ViidDouble, ViidDoubleConfig

PLATFORM = "36010400005030000001"
T = TypeVar("T")


class DoubleThread:
    """The VIID double in its own thread and event loop; ``run`` calls a coroutine of it there."""

    def __init__(self) -> None:
        self.double: ViidDouble | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="viid-double")

    async def _main(self) -> None:
        config = ViidDoubleConfig(
            clients={PLATFORM: Credentials(username="district", password="district-secret")},  # noqa: S106 - the double's test account
            keepalive_timeout_s=3600,
        )
        async with ViidDouble(config) as double:
            self.double, self._loop, self._stop = double, asyncio.get_running_loop(), asyncio.Event()
            self._started.set()
            await self._stop.wait()

    def __enter__(self) -> DoubleThread:
        self._thread.start()
        self._started.wait(30)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """``await work()`` in the double's loop."""
        assert self._loop is not None

        async def call() -> T:
            return await work()

        future: Future[T] = asyncio.run_coroutine_threadsafe(call(), self._loop)
        return await asyncio.wrap_future(future)


def config_file(workdir: Path, url: str) -> Path:
    """The district config: [city] at the double, the shipped defaults but for long timers."""
    path = workdir / "district.toml"
    path.write_text(
        f"""
district_id = "36010400005000000001"
[store]
type = "sqlite"
path = "{workdir / "events.db"}"
[api]
ops_db = "{workdir / "ops.db"}"
[city]
server_url = "{url}"
platform_id = "{PLATFORM}"
org_code = "360104000000"
username = "district"
password = "district-secret"
queue_path = "{workdir / "city-queue.db"}"
http_port = 0
[city.privacy]
devices = false
""",
        encoding="utf-8",
    )
    return path


def passes(first: int, count: int, city: DistrictConfig) -> list[CityObject]:
    """``count`` vehicle passes as the ingester queues them, one a second from a fixed start."""
    assert city.city is not None
    start = datetime(2026, 12, 1, tzinfo=UTC)
    objects: list[CityObject] = []
    for n in range(first, first + count):
        event = vehicle_pass(
            start + timedelta(seconds=n), plate=f"赣A{n % 100000:05d}", event_id=f"city-bench-{n:08d}"
        )
        objects += event_objects(event, city.city, ZONE)
    return objects


async def no_devices(_config: DistrictConfig) -> list[DeviceForCity]:
    return []


async def backlog(queue: CityQueue) -> int:
    return sum((await queue.counts()).backlog.values())


async def until_drained(queue: CityQueue) -> float:
    """Seconds until the backlog is 0 (polled every 50 ms)."""
    began = time.monotonic()
    while await backlog(queue):
        await asyncio.sleep(0.05)
    return time.monotonic() - began


async def bare_push(url: str, objects: list[CityObject], batch: int) -> float:
    """Seconds to POST ``objects`` to the double in batches, each answer read; every one must be accepted."""
    headers = {"User-Identify": PLATFORM, "Content-Type": "application/VIID+JSON;charset=UTF-8"}
    began = time.monotonic()
    async with aiohttp.ClientSession(headers=headers) as session:
        for start in range(0, len(objects), batch):
            body = {
                "MotorVehicleListObject": {
                    "MotorVehicleObject": [o.body for o in objects[start : start + batch]]
                }
            }
            async with session.post(
                f"{url}/VIID/MotorVehicles", data=json.dumps(body, ensure_ascii=False)
            ) as answer:
                document = await answer.json(content_type=None)
            statuses = document["ResponseStatusListObject"]["ResponseStatusObject"]
            if {s["StatusCode"] for s in statuses} != {"0"}:
                raise SystemExit(f"the baseline's batch was refused: {statuses[:2]}")
    return time.monotonic() - began


async def bench(objects: int, outage_s: float, rate: float) -> dict[str, float]:
    """Both phases; the figures for the report."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="city-bench-") as tmp, DoubleThread() as threads:
        double = threads.double
        assert double is not None
        workdir = Path(tmp)
        config = load_district_config(config_file(workdir, double.url))
        assert config.city is not None
        async with CityQueue(config.city.queue_path) as queue:
            backlog_objects = passes(0, objects, config)
            await queue.add(backlog_objects)
            ready = asyncio.Event()
            service = asyncio.create_task(run_city(config, ready=ready, device_source=no_devices))
            try:
                while not double.registrations:
                    await asyncio.sleep(0.01)
                figures["throughput_s"] = await until_drained(queue)
                figures["objects"] = len(backlog_objects)
                figures["objects_per_s"] = len(backlog_objects) / figures["throughput_s"]
                # the outage
                await threads.run(lambda: double.set_outage(Outage.REFUSE_CONNECTIONS))
                began, fed = time.monotonic(), 0
                next_id = objects
                while time.monotonic() - began < outage_s:
                    due = int((time.monotonic() - began) * rate) - fed
                    if due > 0:
                        await queue.add(passes(next_id, due, config))
                        next_id += due
                        fed += due
                    await asyncio.sleep(0.1)
                figures["outage_backlog"] = await backlog(queue)
                registrations = len(double.registrations)
                await threads.run(double.restore)
                figures["drain_s"] = await until_drained(queue)
                figures["registered_again"] = len(double.registrations) - registrations
                # baseline, same run, same double: the same number of objects POSTed straight to it
                # in batches of batch_max by a bare client (no queue, no settling, no digest)
                bare = passes(next_id, objects, config)
                figures["bare_s"] = await bare_push(double.url, bare, config.city.batch_max)
                figures["bare_per_s"] = len(bare) / figures["bare_s"]
            finally:
                service.cancel()
                await asyncio.gather(service, return_exceptions=True)
            counts = await queue.counts()
        queued = objects + fed
        accepted = len(double.accepted["MotorVehicle"]) - objects  # less the baseline's
        figures["ratio"] = figures["objects_per_s"] / figures["bare_per_s"]
        if accepted != queued or sum(counts.accepted.values()) != queued or double.resends or double.refusals:
            raise SystemExit(
                f"lost or doubled: queued {queued}, the double accepted {accepted}, resends"
                f" {sum(double.resends.values())}, refusals {len(double.refusals)}"
            )
        figures["queued"] = queued
    return figures


def report(figures: dict[str, float], objects: int, outage_s: float, rate: float) -> list[str]:
    return [
        "## The link to the city: GA/T 1400 push and drain after an outage (issue 17)",
        "",
        f"Command: `.venv/bin/python bench/city_bench.py --objects {objects} --outage-s {outage_s:g}"
        f" --rate {rate:g}`, run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine()}. The city service in one process with the VIID double (tests/viid_double,"
        " validating every object) in its own thread and event loop; `[city]` defaults (batch_max 100,"
        " linger_s 0.2, retry_max_s 60); MotorVehicle objects from vehicle-pass events, no pictures.",
        "",
        "| what | figure |",
        "|---|---:|",
        f"| backlog of {int(figures['objects'])} objects pushed (registration -> backlog 0) |"
        f" {figures['throughput_s']:.1f} s, **{figures['objects_per_s']:.0f} objects/s** |",
        f"| baseline, same run: as many objects POSTed straight to the double by a bare client, batches of"
        f" 100, no queue | {figures['bare_s']:.1f} s, {figures['bare_per_s']:.0f} objects/s |",
        f"| the service against the bare client | **{figures['ratio']:.2f}x** |",
        f"| city down {outage_s:g} s (connections refused), passes queued meanwhile at {rate:g}/s |"
        f" backlog {int(figures['outage_backlog'])} |",
        f"| city back -> backlog 0 (the first retry waits out its jittered backoff, at most retry_max_s 60 s;"
        f" registrations again: {int(figures['registered_again'])}) | **{figures['drain_s']:.1f} s** |",
        f"| every object queued accepted by the double, none twice | {int(figures['queued'])} of {int(figures['queued'])} |",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=20_000, help="the backlog of the throughput phase")
    parser.add_argument("--outage-s", type=float, default=600.0, help="how long the city is down")
    parser.add_argument("--rate", type=float, default=20.0, help="passes a second queued during the outage")
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/benchmarks.md")
    args = parser.parse_args()
    figures = asyncio.run(bench(args.objects, args.outage_s, args.rate))
    lines = report(figures, args.objects, args.outage_s, args.rate)
    print("\n".join(lines))
    if not args.no_write:
        replace_section(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
