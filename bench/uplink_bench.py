"""Uplink and district benchmarks (issue 3), each against a baseline or target measured in the same run.

    .venv/bin/python bench/uplink_bench.py                      # all, writes docs/benchmarks.md
    .venv/bin/python bench/uplink_bench.py --only ingester --no-write

1. ingester: points/s from the district broker into InfluxDB 1.6.7 through the real ingester,
   against writing the same points straight into the same InfluxDB (target: at least 0.5x).
2. drain: a one-hour outage at 50 events/s (180,000 events in the outbox) replayed through the
   real uplink, district broker and ingester (target: under one minute, never above the pace).
3. end-to-end: simulated devices -> gateway -> district broker -> ingester -> SQLite, events/s.
4. rss: gateway resident memory while the outbox buffers up to N events with the district away
   (target: flat within 20 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import machine, replace_section
from device_sims.broker import Mosquitto, free_port
from device_sims.canonical import shed_heartbeat
from device_sims.devices import build_sim
from device_sims.influx import InfluxServer
from device_sims.inventory import (
    COMPOUND_ID,
    DISTRICT_ID,
    sample_broker_accounts,
    sample_devices,
    write_sample_config,
)
from device_sims.runner import Runner
from device_sims.scenarios import burst
from district.config import load_district_config
from district.ingester import run_ingester
from foundation.events import Event
from gateway.config import GatewayConfig, load_config
from gateway.outbox import EventRow, Outbox, StoreEvents
from gateway.runtime import run_gateway
from uplink.protocol import encode_batch, event_topic
from uplink.stores import InfluxV1Store, InfluxV1StoreConfig

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def shed_event(n: int, device: int = 1) -> Event:
    at = T0 + timedelta(milliseconds=20 * n)
    device_id = f"360104000113400{device:05d}"
    return shed_heartbeat(COMPOUND_ID, device_id, str(n), at)


def district_toml(path: Path, broker_port: int, store: str, dead: Path) -> Path:
    path.write_text(
        f'district_id = "{DISTRICT_ID}"\n[broker]\nhost = "127.0.0.1"\nport = {broker_port}\n'
        f'[ingest]\nname = "bench"\ndead_letter_path = "{dead}"\nhttp_port = 0\n[store]\n{store}\n',
        encoding="utf-8",
    )
    return path


async def influx_count(store: InfluxV1Store) -> int:
    results = await store.query('SELECT COUNT("event_id") FROM "ebike_shed"')
    series = results[0].get("series") or [{"values": [[0, 0]]}]
    return int(series[0]["values"][0][1])


async def wait(predicate: Callable[[], object], limit_s: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + limit_s
    while not await predicate():  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise RuntimeError("benchmark condition not reached")
        await asyncio.sleep(interval)


async def bench_ingester(count: int) -> dict[str, float]:
    events = [shed_event(n, device=n % 40) for n in range(count)]
    with tempfile.TemporaryDirectory(prefix="cgw-bench-") as tmp:
        work = Path(tmp)
        with InfluxServer(work / "influx") as influx, Mosquitto(work / "broker") as broker:
            # baseline: the same points written straight into InfluxDB, batches of 5,000
            direct = InfluxV1StoreConfig(url=influx.url, database="direct")
            async with InfluxV1Store(direct) as store:
                t0 = time.perf_counter()
                for start in range(0, count, 5000):
                    await store.write(events[start : start + 5000])
                direct_s = time.perf_counter() - t0
            # the ingester: the uplink batches are queued at the broker first, then drained
            config = load_district_config(
                district_toml(
                    work / "d.toml",
                    broker.port,
                    f'type = "influx_v1"\nurl = "{influx.url}"\ndatabase = "ingested"',
                    work / "dead.db",
                )
            )
            ready = asyncio.Event()
            task = asyncio.create_task(run_ingester(config, ready=ready))
            await ready.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            topic = event_topic("cgw/v1", DISTRICT_ID, COMPOUND_ID, "ebike_shed")
            async with aiomqtt.Client(
                "127.0.0.1", broker.port, identifier="bench-pub", max_inflight_messages=50
            ) as client:
                for start in range(0, count, 200):
                    body = encode_batch(
                        DISTRICT_ID,
                        COMPOUND_ID,
                        [e.model_dump_json().encode() for e in events[start : start + 200]],
                    )
                    await client.publish(topic, body, qos=1)
            target = InfluxV1StoreConfig(url=influx.url, database="ingested", create_database=False)
            async with InfluxV1Store(target) as reader:
                ready = asyncio.Event()
                t0 = time.perf_counter()
                task = asyncio.create_task(run_ingester(config, ready=ready))

                async def done() -> bool:
                    return await influx_count(reader) >= count

                await wait(done, limit_s=600, interval=0.05)
                ingest_s = time.perf_counter() - t0
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return {"count": count, "direct_s": direct_s, "ingest_s": ingest_s}


def gateway_with_uplink(
    work: Path, device_port: int, district_port: int, uplink_extra: str = ""
) -> GatewayConfig:
    """The sample compound's config, uplinked to the district broker."""
    path = write_sample_config(
        work / "gateway.toml", state_dir=work / "state", http_port=free_port(), mqtt_port=device_port
    )
    with path.open("a", encoding="utf-8") as handle:
        handle.write(
            f'\n[uplink]\nmode = "mqtt"\n{uplink_extra}[uplink.broker]\nhost = "127.0.0.1"\nport = {district_port}\n'
        )
    return load_config(path)


async def bench_drain(rate_per_s: int, hours: float) -> dict[str, float]:
    count = int(rate_per_s * 3600 * hours)
    with tempfile.TemporaryDirectory(prefix="cgw-bench-") as tmp:
        work = Path(tmp)
        with (
            Mosquitto(work / "devices", accounts=sample_broker_accounts()) as devices,
            Mosquitto(work / "district") as district,
        ):
            config = gateway_with_uplink(work, devices.port, district.port)
            assert config.uplink is not None
            pace = config.uplink.replay_rate
            # the backlog of the outage, already in the outbox
            with Outbox(config.state.dir / "outbox.db", max_bytes=config.state.outbox_max_bytes) as box:
                for start in range(0, count, 5000):
                    rows = [
                        EventRow.from_event(shed_event(n, device=n % 40))
                        for n in range(start, min(count, start + 5000))
                    ]
                    box.commit([StoreEvents(rows)])
            store_path = work / "district.db"
            district_config = load_district_config(
                district_toml(
                    work / "d.toml",
                    district.port,
                    f'type = "sqlite"\npath = "{store_path}"',
                    work / "dead.db",
                )
            )
            ready_i, ready_g = asyncio.Event(), asyncio.Event()
            ingester = asyncio.create_task(run_ingester(district_config, ready=ready_i))
            await ready_i.wait()
            t0 = time.perf_counter()
            gateway = asyncio.create_task(run_gateway(config, ready=ready_g))
            samples: list[tuple[float, int]] = []  # (seconds, events the uplink has sent so far)
            outbox_db = config.state.dir / "outbox.db"

            async def drained() -> bool:
                with sqlite3.connect(outbox_db) as db:
                    sent = int(
                        db.execute("SELECT COUNT(*) FROM events WHERE state != 'pending'").fetchone()[0]
                    )
                samples.append((time.perf_counter() - t0, sent))
                if not store_path.exists():
                    return False
                with sqlite3.connect(store_path) as db:
                    return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0]) >= count

            await wait(drained, limit_s=600, interval=0.25)
            drain_s = time.perf_counter() - t0
            for task in (gateway, ingester):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    # the highest rate over any 2-second window of the samples
    peak = 0.0
    for i, (t_a, n_a) in enumerate(samples):
        for t_b, n_b in samples[i + 1 :]:
            if t_b - t_a >= 2.0:
                peak = max(peak, (n_b - n_a) / (t_b - t_a))
                break
    return {"count": count, "drain_s": drain_s, "pace": pace, "peak_rate": peak}


async def bench_end_to_end(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cgw-bench-") as tmp:
        work = Path(tmp)
        with (
            Mosquitto(work / "devices", accounts=sample_broker_accounts()) as devices,
            Mosquitto(work / "district") as district,
        ):
            config = gateway_with_uplink(work, devices.port, district.port, "batch_max_delay_ms = 50\n")
            store_path = work / "district.db"
            district_config = load_district_config(
                district_toml(
                    work / "d.toml",
                    district.port,
                    f'type = "sqlite"\npath = "{store_path}"',
                    work / "dead.db",
                )
            )
            sims = [build_sim(d) for d in sample_devices() if d.dialect != "hightoss-mqtt"]
            steps = burst(sims, random.Random(1), count)
            ready_i, ready_g = asyncio.Event(), asyncio.Event()
            ingester = asyncio.create_task(run_ingester(district_config, ready=ready_i))
            gateway = asyncio.create_task(run_gateway(config, ready=ready_g))
            await ready_i.wait()
            await ready_g.wait()
            t0 = time.perf_counter()
            runner = Runner(f"http://127.0.0.1:{config.http.port}", "127.0.0.1", devices.port, workers=16)
            report = await runner.run(steps)

            async def stored() -> bool:
                if not store_path.exists():
                    return False
                with sqlite3.connect(store_path) as db:
                    return (
                        int(
                            db.execute(
                                "SELECT COUNT(*) FROM events WHERE kind != 'device_status'"
                            ).fetchone()[0]
                        )
                        >= count
                    )

            await wait(stored, limit_s=600, interval=0.1)
            seconds = time.perf_counter() - t0
            for task in (gateway, ingester):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return {"count": count, "seconds": seconds, "acked": len(report.acked)}


def process_rss_mb(process: psutil.Process) -> float:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return total / 2**20


async def bench_rss(count: int) -> dict[str, object]:
    """The district is unreachable; devices keep sending; the gateway's RSS is sampled as the outbox grows."""
    with tempfile.TemporaryDirectory(prefix="cgw-bench-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "devices", accounts=sample_broker_accounts()) as devices:
            path = write_sample_config(
                work / "gateway.toml", state_dir=work / "state", http_port=free_port(), mqtt_port=devices.port
            )
            with path.open("a", encoding="utf-8") as handle:
                handle.write(
                    f'\n[uplink]\nmode = "mqtt"\n[uplink.broker]\nhost = "127.0.0.1"\nport = {free_port()}\n'
                )
            text = path.read_text().replace("[state]\n", "[state]\noutbox_max_bytes = 4294967296\n", 1)
            path.write_text(text)
            config = load_config(path)
            log = work / "gateway.log"
            with log.open("ab") as handle:
                process = subprocess.Popen(
                    [sys.executable, "-m", "cli", "run", "--config", str(path)],
                    stdout=handle,
                    stderr=handle,
                    cwd=ROOT,
                )
            try:
                while b"mqtt_intake_connected" not in log.read_bytes():
                    await asyncio.sleep(0.05)
                ps = psutil.Process(process.pid)
                sims = [
                    build_sim(d)
                    for d in sample_devices()
                    if d.dialect in {"shed-mqtt", "vz-lpr-mqtt", "uface-mqtt"}
                ]
                runner = Runner(f"http://127.0.0.1:{config.http.port}", "127.0.0.1", devices.port, workers=16)
                samples: list[tuple[int, float]] = []
                step = max(1, count // 10)
                rng = random.Random(3)
                db = config.state.dir / "outbox.db"
                for round_start in range(0, count, step):
                    await runner.run(burst(sims, rng, step, start=T0 + timedelta(seconds=round_start)))
                    with sqlite3.connect(db) as conn:
                        pending = int(
                            conn.execute("SELECT COUNT(*) FROM events WHERE state='pending'").fetchone()[0]
                        )
                    samples.append((pending, process_rss_mb(ps)))
                    print(f"  rss: {pending:>9} buffered, {samples[-1][1]:7.1f} MB", flush=True)
                deadline = time.monotonic() + 600
                while (
                    pending < count and time.monotonic() < deadline
                ):  # the gateway catches up with the devices
                    await asyncio.sleep(2)
                    with sqlite3.connect(db) as conn:
                        pending = int(
                            conn.execute("SELECT COUNT(*) FROM events WHERE state='pending'").fetchone()[0]
                        )
                samples.append((pending, process_rss_mb(ps)))
                print(f"  rss: {pending:>9} buffered, {samples[-1][1]:7.1f} MB (caught up)", flush=True)
            finally:
                process.terminate()
                process.wait()
    first_full = samples[0][1]
    return {"count": count, "samples": samples, "growth_mb": max(s[1] for s in samples) - first_full}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["ingester", "drain", "e2e", "rss"], action="append")
    parser.add_argument("--ingest-count", type=int, default=100_000)
    parser.add_argument("--e2e-count", type=int, default=20_000)
    parser.add_argument("--rss-count", type=int, default=1_000_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    chosen = set(args.only or ["ingester", "drain", "e2e", "rss"])
    lines = [
        "## Uplink and district (issue 3)",
        "",
        f"Command: `.venv/bin/python bench/uplink_bench.py` (`--ingest-count {args.ingest_count} --e2e-count {args.e2e_count}"
        f" --rss-count {args.rss_count}`), run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine()}. Servers: Mosquitto 2.0.11 and InfluxDB 1.6.7 (Debian), private instances.",
        "",
    ]
    if "ingester" in chosen:
        r = asyncio.run(bench_ingester(args.ingest_count))
        direct, ingest = r["count"] / r["direct_s"], r["count"] / r["ingest_s"]
        lines += [
            "**Ingester into InfluxDB** ({:,.0f} e-bike shed events, uplink batches of 200 queued at the broker, then drained):".format(
                r["count"]
            ),
            "",
            "| writer | seconds | points/s |",
            "|---|---:|---:|",
            f"| straight into InfluxDB /write, batches of 5,000 (baseline) | {r['direct_s']:.2f} | {direct:,.0f} |",
            f"| broker -> ingester (validate, write, receipts, acknowledge) | {r['ingest_s']:.2f} | {ingest:,.0f} |",
            "",
            f"Ratio: **{ingest / direct:.2f}x** (target ≥ 0.5x).",
            "",
        ]
        print("\n".join(lines[-8:]), flush=True)
    if "drain" in chosen:
        r = asyncio.run(bench_drain(50, 1.0))
        lines += [
            f"**Draining a one-hour outage at 50 events/s** ({r['count']:,.0f} events in the outbox) through the uplink,",
            "the district broker and the ingester into the SQLite store:",
            f"{r['drain_s']:.1f} s (target < 60 s), at a configured pace of {r['pace']:,.0f} routine events/s;"
            f" the uplink's highest send rate over any 2-second window: {r['peak_rate']:,.0f}/s"
            f" (the pace plus its burst of a tenth of a second bounds a 2-second window at {r['pace'] * 1.05:,.0f}/s).",
            "",
        ]
        print("\n".join(lines[-4:]), flush=True)
    if "e2e" in chosen:
        r = asyncio.run(bench_end_to_end(args.e2e_count))
        lines += [
            f"**End to end** ({r['count']:,.0f} events from simulated HTTP and MQTT devices through gateway, district broker"
            f" and ingester into SQLite): {r['seconds']:.1f} s, **{r['count'] / r['seconds']:,.0f} events/s**.",
            "",
        ]
        print("\n".join(lines[-2:]), flush=True)
    if "rss" in chosen:
        rss = asyncio.run(bench_rss(args.rss_count))
        samples = rss["samples"]
        assert isinstance(samples, list)
        lines += [
            f"**Gateway memory with the district away** (devices keep sending; outbox grows to {samples[-1][0]:,} events):",
            "RSS of the gateway and its intake worker, MB: "
            + ", ".join(f"{n // 1000:,}k: {mb:.0f}" for n, mb in samples)
            + f". Growth after the first sample: **{rss['growth_mb']:.1f} MB** (target: within 20 MB).",
            "",
        ]
        print("\n".join(lines[-3:]), flush=True)
    if args.only:
        print("(partial run: docs/benchmarks.md is only rewritten by a full run)")
    elif not args.no_write:
        replace_section(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
