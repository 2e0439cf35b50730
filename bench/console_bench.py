"""The console on a generated month of a 200-compound district (issue 15): page loads and alarm-to-screen.

The month is ``bench.query_bench``'s (same generator, same seed), written into InfluxDB 1.6.7 (the
ingester's points, then the roll-ups built as a first start builds them: ``ensure_rollups``) and
into an embedded SQLite store (``SqliteStore.write``, its triggers keeping roll-ups and summary).
Not through the broker and an ingester: that path's throughput is ``bench/query_bench.py``'s
subject, and it would take most of the 15 minutes this run may take. The alarms below do take it.

Then, per store, ``serve_api`` (the operator API and console, with its alarm feed) on a real port:

- server time: ``GET /console/overview`` (and the statistics page, once it is in
  ``district.console.registry.PAGES``) with a signed-in session, timed by an HTTP client to the last
  byte. Baseline: the same HTML served by a bare aiohttp handler on a real port.
- browser time: headless Chromium opens the page; Navigation Timing gives ``responseEnd -
  requestStart`` (server and transfer) and ``loadEventEnd - startTime`` (the whole load). Baseline:
  the bare handler's copy of the page.
- the queries behind the pages through ``OperatorService.handle``: the overview, and the counts a
  statistics page asks for (daily per kind over this month and over a year, alarm outcomes), each
  on the roll-ups and summaries and on raw events (baseline, ratio; answers checked equal).
- alarm-to-screen: a critical event published as an uplink batch on the broker, taken by a real
  ingester process into the store, polled by the alarm feed, pushed over SSE into the open alarm
  queue of the browser. A ``MutationObserver`` in the page stamps the row's arrival
  (``Date.now()``, the same machine's clock as the publisher's). Baseline: the ingester's receipt
  (the event is stored).

Writes its section of ``docs/benchmarks.md`` (``--no-write`` to skip).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import aiomqtt
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import machine, replace_section
from bench.query_bench import PREFIX, Month, compound, event_dict, month_days
from device_sims.broker import Mosquitto, free_port
from device_sims.influx import InfluxServer
from device_sims.inventory import DISTRICT_ID
from district.config import DistrictConfig, load_district_config
from district.console import registry as console_registry
from district.operations import OperationsDb
from district.operator_cli import serve_api
from district.operator_service import Caller, OperatorService
from district.query_backends import InfluxQueries, QueryBackend, SqliteQueries, influx_rollups
from district.query_model import Role
from foundation.errors import StoreUnavailableError
from foundation.events import Event
from foundation.logging import configure_logging
from tests.console_browser import log_in_to, start_browser
from uplink.lineprotocol import to_lines
from uplink.protocol import decode_receipt, encode_batch, event_topic
from uplink.stores import InfluxV1Store, InfluxV1StoreConfig, SqliteStore, SqliteStoreConfig, StoreError

ZONE = "Asia/Shanghai"
WRITE_BATCH = 5000  # events per store write while the month is written (the ingester's order of size)
NAVIGATION = """
const n = performance.getEntriesByType('navigation')[0];
return n && n.loadEventEnd > 0 ? [n.responseEnd - n.requestStart, n.loadEventEnd - n.startTime] : null;
"""
OBSERVER = """
window.__seen = {};
new MutationObserver((changes) => {
  const at = Date.now();
  for (const change of changes) for (const node of change.addedNodes) {
    if (node.nodeType !== 1) continue;
    const rows = node.matches('tr[data-event]') ? [node] : node.querySelectorAll('tr[data-event]');
    for (const row of rows) if (!(row.dataset.event in window.__seen)) window.__seen[row.dataset.event] = at;
  }
}).observe(document.body, {childList: true, subtree: true});
return true;
"""


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of the values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


@dataclass
class Figure:
    """One measured thing and its baseline, in milliseconds."""

    store: str
    name: str
    values: list[float]
    baseline: list[float] = field(default_factory=list)
    baseline_name: str = ""
    note: str = ""

    def row(self) -> str:
        p50, p99 = pct(self.values, 0.5), pct(self.values, 0.99)
        if self.baseline:
            b50, b99 = pct(self.baseline, 0.5), pct(self.baseline, 0.99)
            base = f"{self.baseline_name}: {b50:,.0f} / {b99:,.0f}"
            ratio = f"{p50 / b50:,.2f}x" if b50 else "-"
        else:
            base, ratio = self.note or "-", "-"
        verdict = "yes" if p99 < 1000 else "**no**"
        return (
            f"| {self.store} | {self.name} | {len(self.values)} | {p50:,.0f} | {p99:,.0f} | {verdict}"
            f" | {base} | {ratio} |"
        )


def write_config(work: Path, name: str, store: str, broker_port: int) -> Path:
    """A district config for one store: its own API port, operations database and ingester name."""
    path = work / f"{name}.toml"
    path.write_text(
        f'district_id = "{DISTRICT_ID}"\n[broker]\nhost = "127.0.0.1"\nport = {broker_port}\n'
        f'[ingest]\nname = "bench-{name}"\ngroup = "bench-{name}"\ndead_letter_path = "{work}/{name}-dead.db"\nhttp_port = 0\n'
        f'[api]\nops_db = "{work}/{name}-ops.db"\nport = {free_port()}\ndevice_silent_after_s = 21600\n'
        f'timezone = "{ZONE}"\nmax_range_days = 366\n'
        f"[evidence]\nenabled = false\n{store}\n",
        encoding="utf-8",
    )
    return path


@contextlib.contextmanager
def ingester(config_path: Path, log_path: Path) -> Iterator[None]:
    """A real ingester process for the block."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "ingest", "--config", str(config_path)], stdout=log, stderr=log
        )
        try:
            time.sleep(2)
            yield
        except BaseException:
            print(log_path.read_text(encoding="utf-8", errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            process.terminate()
            process.wait(30)


async def write_stores(
    month: Month, influx: InfluxV1StoreConfig, sqlite: SqliteStoreConfig
) -> dict[str, float]:
    """The month into both stores, a compound-day at a time; then InfluxDB's first roll-up backfill.

    InfluxDB gets the points as the ingester writes them (``to_lines``) but without the recount a
    late write triggers (every event of a generated month is late); its roll-ups are then built
    the way a first start builds them (``ensure_rollups``, timed). SQLite gets the store's own
    write (its triggers keep the roll-ups and the device summary in the same transaction).
    """
    timing = {"events": 0.0}
    t_start = time.perf_counter()
    async with InfluxV1Store(influx) as v1, SqliteStore(sqlite) as store:
        # both stores write while the next compound-days are generated (influxd is its own
        # process, SQLite runs in its thread): a few writes in flight, never more
        pending: set[asyncio.Future[Any]] = set()
        batch: list[Event] = []

        async def influx_write(lines: bytes) -> None:
            # a busy influxd (compacting while it takes a month) may answer late: try again
            for attempt in range(5):
                try:
                    await v1.write_lines(lines)
                except StoreError as exc:
                    if not exc.retryable or attempt == 4:
                        raise
                    await asyncio.sleep(2)
                else:
                    return

        for day, c, raw in month_days(month):
            batch += [Event.model_validate(e) for e in raw]
            last = c == month.compounds - 1 and day + timedelta(days=1) >= month.end
            if batch and (len(batch) >= WRITE_BATCH or last):
                timing["events"] += len(batch)
                pending.add(asyncio.ensure_future(influx_write(to_lines(batch))))
                pending.add(asyncio.ensure_future(store.write(batch)))
                batch = []
                if len(pending) >= 4:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
            if c == month.compounds - 1:
                print(f"  {day:%m-%d}: {int(timing['events']):,} events", flush=True)
        for task in asyncio.as_completed(pending):
            await task
        timing["write_s"] = time.perf_counter() - t_start
        t0 = time.perf_counter()
        await v1.ensure_rollups(400, alter=False)
        timing["influx_backfill_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        await store.rebuild_summaries()
        timing["sqlite_rebuild_s"] = time.perf_counter() - t0
    return timing


@contextlib.asynccontextmanager
async def running_api(config: DistrictConfig) -> AsyncIterator[str]:
    """``serve_api`` in this loop; its base URL."""
    ready = asyncio.Event()
    task = asyncio.create_task(serve_api(config, ready=ready), name="operator-api")
    try:
        async with asyncio.timeout(60):
            await ready.wait()
        yield f"http://127.0.0.1:{config.api.port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def bare_server(html: bytes) -> AsyncIterator[str]:
    """A bare aiohttp handler on a real port answering one page's bytes (the HTTP floor)."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=html, content_type="text/html", charset="utf-8")

    app = web.Application()
    app.router.add_get("/page", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/page"
    finally:
        await runner.cleanup()


async def http_times(url: str, cookie: str | None, repeat: int) -> tuple[list[float], bytes]:
    """Milliseconds of ``repeat`` GETs to the last byte; the last body."""
    headers = {"Cookie": f"cgw_console={cookie}"} if cookie else {}
    times, body = [], b""
    async with aiohttp.ClientSession() as http:
        for _ in range(repeat):
            t0 = time.perf_counter()
            async with http.get(url, headers=headers, allow_redirects=False) as response:
                body = await response.read()
                assert response.status == 200, (url, response.status)
            times.append((time.perf_counter() - t0) * 1000)
    return times, body


def browser_times(driver: Any, url: str, repeat: int) -> tuple[list[float], list[float]]:
    """Navigation Timing of ``repeat`` loads: (responseEnd - requestStart, loadEventEnd - startTime)."""
    server, load = [], []
    for _ in range(repeat):
        driver.get(url)
        deadline = time.monotonic() + 60
        while (timing := driver.execute_script(NAVIGATION)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}: no navigation timing")
            time.sleep(0.01)
        server.append(float(timing[0]))
        load.append(float(timing[1]))
    return server, load


async def service_times(
    service: OperatorService,
    token: str,
    action: str,
    params: dict[str, Any],
    repeat: int,
    *,
    warm: bool = True,
) -> tuple[list[float], Any]:
    """Milliseconds of ``repeat`` calls through ``OperatorService.handle``; the last answer.

    ``warm``: one call first, not timed (caches, the roll-ups' readiness checks).
    """
    if warm:
        await service.handle(token, action, params, Caller("cli", "bench"))
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        answer = await service.handle(token, action, params, Caller("cli", "bench"))
        times.append((time.perf_counter() - t0) * 1000)
        result = answer.result
    return times, result


async def login(url: str, token: str) -> str:
    """A console session id for the token."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/console/login", data={"token": token}, allow_redirects=False) as response,
    ):
        cookie = response.cookies.get("cgw_console")
        assert response.status == 303, response.status
        assert cookie is not None
        return cookie.value


async def alarm_to_screen(
    url: str, token: str, broker_port: int, month: Month, count: int
) -> tuple[list[float], list[float]]:
    """Critical events published one by one: (ms until the browser's queue shows each, ms until stored)."""
    rng = random.Random(15)
    driver = await asyncio.to_thread(start_browser)
    stored_at: dict[str, float] = {}
    try:
        await asyncio.to_thread(log_in_to, driver, url, token, "/alarms")
        await asyncio.sleep(3)  # the queue's first load and its event stream
        await asyncio.to_thread(driver.execute_script, OBSERVER)
        screen, stored = [], []
        async with (
            aiomqtt.Client("127.0.0.1", broker_port, identifier="console-bench-receipts") as receipts,
            aiomqtt.Client("127.0.0.1", broker_port, identifier="console-bench-compound") as client,
        ):
            await receipts.subscribe(f"{PREFIX}/+/+/receipt/#", qos=1)

            async def note_receipts() -> None:
                async for message in receipts.messages:
                    for event_id in decode_receipt(bytes(message.payload)):
                        stored_at.setdefault(str(event_id), time.time() * 1000)

            watcher = asyncio.create_task(note_receipts(), name="receipts")
            try:
                for i in range(count):
                    c = rng.randrange(month.compounds)
                    at = datetime.now(UTC)
                    event = event_dict(
                        rng,
                        c,
                        5,
                        at,
                        {"kind": "thrown_object", "building": "7幢", "start_floor": 9, "confidence": 0.8},
                        severity="critical",
                    )
                    body = json.dumps(event, ensure_ascii=False).encode()
                    topic = event_topic(PREFIX, DISTRICT_ID, compound(c), "thrown_object")
                    sent = time.time() * 1000
                    await client.publish(topic, encode_batch(DISTRICT_ID, compound(c), [body]), qos=1)
                    deadline = time.monotonic() + 60
                    while (
                        seen := await asyncio.to_thread(
                            driver.execute_script, "return window.__seen[arguments[0]];", event["event_id"]
                        )
                    ) is None:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"alarm {i} never reached the screen")
                        await asyncio.sleep(0.02)
                    screen.append(float(seen) - sent)
                    if event["event_id"] in stored_at:
                        stored.append(stored_at[event["event_id"]] - sent)
                    await asyncio.sleep(rng.uniform(0.2, 1.2))  # alarms not in step with the feed's polls
            finally:
                watcher.cancel()
        return screen, stored
    finally:
        await asyncio.to_thread(driver.quit)


def _stats_params(now: datetime) -> dict[str, dict[str, Any]]:
    zone = ZoneInfo(ZONE)
    local = now.astimezone(zone)
    month_start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    tomorrow = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    year_start = tomorrow - timedelta(days=365)
    return {
        "counts per day and kind, this month": {
            "action": "counts",
            "start": month_start.isoformat(),
            "end": tomorrow.isoformat(),
            "interval": "day",
            "group_by": ["kind"],
        },
        "counts per day and kind, a year": {
            "action": "counts",
            "start": year_start.isoformat(),
            "end": tomorrow.isoformat(),
            "interval": "day",
            "group_by": ["kind"],
        },
        "counts per day, compound and kind, 30 days": {
            "action": "counts",
            "start": (tomorrow - timedelta(days=30)).isoformat(),
            "end": tomorrow.isoformat(),
            "interval": "day",
            "group_by": ["compound", "kind"],
        },
        "alarm outcomes per month, a year (critical)": {
            "action": "alarm_counts",
            "start": year_start.isoformat(),
            "end": tomorrow.isoformat(),
            "interval": "month",
        },
    }


async def measure_store(
    label: str,
    config: DistrictConfig,
    fast: OperatorService,
    slow: OperatorService,
    token: str,
    args: argparse.Namespace,
    broker_port: int,
    month: Month,
) -> list[Figure]:
    """Every figure of one store: queries, pages over HTTP and in the browser, alarm-to-screen."""
    figures: list[Figure] = []
    now = datetime.now(UTC)
    # the queries behind the pages, on roll-ups and summaries against raw events (answers equal)
    queries = {"overview (the page's one action)": {"action": "overview"}} | _stats_params(now)
    for name, spec in queries.items():
        params = {k: v for k, v in spec.items() if k != "action"}
        fast_ms, fast_answer = await service_times(fast, token, spec["action"], params, args.repeat)
        try:  # raw events: seconds to minutes each on SQLite; two tell the order of size
            slow_ms, slow_answer = await service_times(slow, token, spec["action"], params, 2, warm=False)
        except StoreUnavailableError:  # longer than [api] timeout_s: the service gives up
            figures.append(
                Figure(
                    label,
                    f"query: {name}",
                    fast_ms,
                    note=f"raw events: over {config.api.timeout_s:.0f} s, refused",
                )
            )
        else:
            assert fast_answer == slow_answer, f"{label} {name}: roll-ups and raw events differ"
            figures.append(Figure(label, f"query: {name}", fast_ms, slow_ms, "raw events"))
        print(f"  {figures[-1].row()}", flush=True)
    pages = ["overview"]
    if "statistics" in console_registry.PAGES:
        pages.append("statistics")
    else:
        print("  (no statistics page in district.console.registry.PAGES yet: its page load is skipped)")
    async with running_api(config) as url:
        session = await login(url, token)
        for page in pages:
            path = console_registry.PAGES[page].path
            server_ms, html = await http_times(f"{url}/console{path}", session, args.repeat)
            async with bare_server(html) as bare:
                bare_ms, _ = await http_times(bare, None, args.repeat)
                driver = await asyncio.to_thread(start_browser)
                try:
                    await asyncio.to_thread(log_in_to, driver, url, token, path)
                    b_server, b_load = await asyncio.to_thread(
                        browser_times, driver, f"{url}/console{path}", args.repeat
                    )
                    bare_server_ms, bare_load = await asyncio.to_thread(
                        browser_times, driver, bare, args.repeat
                    )
                finally:
                    await asyncio.to_thread(driver.quit)
            size = f"({len(html) / 1024:,.0f} KiB)"
            figures += [
                Figure(
                    label, f"{page} page, server time over HTTP {size}", server_ms, bare_ms, "bare handler"
                ),
                Figure(
                    label,
                    f"{page} page in Chromium, responseEnd - requestStart",
                    b_server,
                    bare_server_ms,
                    "bare handler",
                ),
                Figure(
                    label,
                    f"{page} page in Chromium, loadEventEnd - startTime",
                    b_load,
                    bare_load,
                    "bare handler",
                ),
            ]
            for f in figures[-3:]:
                print(f"  {f.row()}", flush=True)
        screen, stored = await alarm_to_screen(url, token, broker_port, month, args.alarms)
        figures.append(
            Figure(
                label,
                "alarm-to-screen: published -> row in the open queue",
                screen,
                stored,
                "stored (receipt)",
            )
        )
        print(f"  {figures[-1].row()}", flush=True)
    return figures


@contextlib.asynccontextmanager
async def services(
    config: DistrictConfig, token_out: list[str]
) -> AsyncIterator[tuple[OperatorService, OperatorService]]:
    """The service on the store's roll-ups and summaries, and the same on raw events only."""
    async with OperationsDb(config.api.ops_db) as ops:
        token_out.append(await ops.create_token("bench", Role.OPERATOR, DISTRICT_ID, (), "bench"))
        store_config = config.store
        if isinstance(store_config, SqliteStoreConfig):
            async with SqliteStore(store_config) as sqlite:
                fast: QueryBackend = SqliteQueries(sqlite)
                slow: QueryBackend = SqliteQueries(sqlite, use_rollups=False)
                yield OperatorService(config, fast, ops), OperatorService(config, slow, ops)
        else:
            assert isinstance(store_config, InfluxV1StoreConfig)
            async with InfluxV1Store(store_config) as v1:

                async def run_v1(query: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
                    return await v1.query(query, method="POST", params=params, epoch="ns")

                fast = InfluxQueries(run_v1, v1.ping, influx_rollups(store_config))
                slow = InfluxQueries(run_v1, v1.ping)
                yield OperatorService(config, fast, ops), OperatorService(config, slow, ops)


async def run(args: argparse.Namespace) -> tuple[Month, dict[str, float], list[Figure]]:
    now = datetime.now(UTC).replace(microsecond=0)
    month = Month(
        args.compounds,
        args.per_day,
        (now - timedelta(days=args.days)).replace(hour=0, minute=0, second=0),
        now,
    )
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="cgw-cbench-") as tmp:
        work = Path(tmp)
        with InfluxServer(work / "influx") as influx, Mosquitto(work / "broker") as broker:
            influx_path = write_config(
                work,
                "influx",
                f'[store]\ntype = "influx_v1"\nurl = "{influx.url}"\ndatabase = "district"\ntimeout_s = 60',
                broker.port,
            )
            sqlite_path = write_config(
                work, "sqlite", f'[store]\ntype = "sqlite"\npath = "{work}/district.db"', broker.port
            )
            influx_store, sqlite_store = (load_district_config(p).store for p in (influx_path, sqlite_path))
            assert isinstance(influx_store, InfluxV1StoreConfig)
            assert isinstance(sqlite_store, SqliteStoreConfig)
            timing = await write_stores(month, influx_store, sqlite_store)
            print(f"written: {timing}", flush=True)
            stores = {"influx": ("InfluxDB 1.6.7", influx_path), "sqlite": ("SQLite", sqlite_path)}
            for label, path in (stores[name] for name in args.stores):
                config = load_district_config(path)
                with ingester(path, work / f"ingester-{label[:6]}.log"):
                    token: list[str] = []
                    async with services(config, token) as (fast, slow):
                        figures += await measure_store(
                            label, config, fast, slow, token[0], args, broker.port, month
                        )
    return month, timing, figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--compounds", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--per-day", type=int, default=300, help="gate and barrier events per compound and day"
    )
    parser.add_argument("--repeat", type=int, default=20, help="loads of each page and calls of each query")
    parser.add_argument("--alarms", type=int, default=30)
    parser.add_argument("--stores", nargs="+", default=["influx", "sqlite"], choices=["influx", "sqlite"])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    configure_logging("console", level=logging.WARNING)
    t0 = time.perf_counter()
    month, timing, figures = asyncio.run(run(args))
    lines = [
        "## The console on a month of a 200-compound district (issue 15)",
        "",
        f"Command: `.venv/bin/python bench/console_bench.py --compounds {args.compounds} --days {args.days}"
        f" --per-day {args.per_day} --repeat {args.repeat} --alarms {args.alarms}`,"
        f" run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {time.perf_counter() - t0:.0f} s in all.",
        f"Machine: {machine()}. Servers: Mosquitto 2.0.11, InfluxDB 1.6.7 (Debian), Chromium (headless)"
        " through Selenium, all private instances on this machine.",
        "",
        f"Data: `bench/query_bench.py`'s month: {month.compounds} compounds x 8 devices, {args.days} days"
        f" ending now, {int(timing['events']):,} events, written a compound-day at a time into both"
        f" stores together ({timing['write_s']:.0f} s): InfluxDB as the ingester's points, then its"
        f" roll-ups built as a first start builds them (hourly counts and device days:"
        f" {timing['influx_backfill_s']:.0f} s); SQLite through the store's own write, its triggers"
        f" keeping the roll-ups and the device summary (`ingest --backfill-rollups`' rebuild of them"
        f" afterwards: {timing['sqlite_rebuild_s']:.0f} s). District zone {ZONE}.",
        "",
        "Milliseconds, p50 / p99 (nearest rank). Queries: through `OperatorService.handle` (token, scope,"
        " store, decoding, audit), on roll-ups and summaries against the same service on raw events"
        " (answers checked equal). Pages: `serve_api` on a real port with a signed-in session, against a"
        " bare aiohttp handler answering the same bytes. Alarm-to-screen: publish on the broker -> row"
        " in the browser's open queue, against publish -> the ingester's receipt.",
        "",
        "| store | what | n | p50 | p99 | p99 < 1 s | baseline p50 / p99 | p50 / baseline p50 |",
        "|---|---|---:|---:|---:|---|---|---:|",
        *[f.row() for f in figures],
        "",
    ]
    if "statistics" not in console_registry.PAGES:
        lines += ["The statistics page was not in the console yet: only its queries were measured.", ""]
    print("\n".join(lines))
    if not args.no_write:
        replace_section(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
