"""Scale-out (issue 12): 1, 2 and 4 ingesters sharing one subscription, events/s each and in total.

    .venv/bin/python bench/scaleout_bench.py                    # both stores, writes docs/benchmarks.md
    .venv/bin/python bench/scaleout_bench.py --count 50000 --stores influx_v1 --no-write

For every store (InfluxDB 1.6.7 through ``influx_v1``, the embedded SQLite store) and every number
of ingesters k, in one session, so that each k has a 1-ingester baseline measured minutes apart:

1. a fresh private Mosquitto (in memory), a fresh database (InfluxDB) or file (SQLite);
2. k ingesters (``compound-gateway ingest``, separate processes as systemd runs them, one group:
   the shared subscription ``$share/<group>/cgw/v1/+/+/+``);
3. the uplink batches as gateways publish them (200 events a batch, QoS 1, 20 compounds' topics),
   sent by one client as fast as it can (its seconds are reported: far below the drain's);
4. the k ingesters store them all in the one store. Measured: the seconds from the first batch
   until every event is stored (the sum of the ingesters' ``cgw_ingest_events_stored_total``,
   polled every 0.1 s); per ingester its share, its events/s over its own active time and its CPU
   seconds; the CPU seconds of Mosquitto and influxd meanwhile. The store is then counted: exactly
   ``count`` distinct events, or the run fails.

``--mode burst`` (the default) has every ingester connected and idle before the first batch, so
the start-up of k Python processes (a CPU second or more each) does not overlap the work being
measured. ``--mode backlog`` is the recovery case: the k sessions register, leave, the batches are
queued for them, and the ingesters start against the backlog; the clock starts at the first one's
connect and includes the others' start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import aiomqtt
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import machine, replace_section
from device_sims.broker import Mosquitto, free_port, stop_process
from device_sims.canonical import shed_heartbeat
from device_sims.influx import InfluxServer
from device_sims.inventory import DISTRICT_ID
from uplink.protocol import encode_batch, event_topic
from uplink.stores import InfluxV1Store, InfluxV1StoreConfig

HEADING = "## Scale-out: ingesters sharing one subscription (issue 12)"
BATCH_EVENTS = 200  # the gateway's default [uplink] batch_max_events
COMPOUNDS = 20
T0 = datetime(2026, 6, 1, tzinfo=UTC)
POLL_S = 0.1
STORES = ("influx_v1", "sqlite")


def uplink_batches(count: int) -> list[tuple[str, bytes]]:
    """``count`` e-bike shed events of 20 compounds as (topic, body) uplink batches of 200."""
    per_compound: dict[str, list[bytes]] = {}
    for n in range(count):
        compound = f"360104000121600001{n % COMPOUNDS:02d}"
        device = f"{compound[:14]}{n % 997:06d}"
        at = T0 + timedelta(milliseconds=20 * n)
        event = shed_heartbeat(compound, device, str(n), at, scope="bench-scaleout")
        per_compound.setdefault(compound, []).append(event.model_dump_json().encode())
    batches = []
    for compound, bodies in per_compound.items():
        topic = event_topic("cgw/v1", DISTRICT_ID, compound, "ebike_shed")
        for start in range(0, len(bodies), BATCH_EVENTS):
            batches.append((topic, encode_batch(DISTRICT_ID, compound, bodies[start : start + BATCH_EVENTS])))
    return batches


@dataclass
class Ingester:
    """One ``compound-gateway ingest`` process of a run."""

    name: str
    config: Path
    http_port: int
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    startup_cpu_s: float = 0.0  # CPU of a start that only connected (imports, connect, stop)
    connected_at: float | None = None  # wall clock, from its log line
    cpu_at_end_s: float = 0.0
    stored: int = 0
    last_change: float = 0.0

    def start(self, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli", "ingest", "--config", str(self.config)],
                stdout=out,
                stderr=out,
                cwd=ROOT,
            )

    def connected(self) -> float | None:
        """When the log says it subscribed (wall clock seconds), or None yet."""
        assert self.log is not None
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"ingester {self.name} exited: {self.log.read_text(encoding='utf-8')[-2000:]}")
        for line in self.log.read_text(encoding="utf-8").splitlines():
            if '"ingester_connected"' in line:
                return datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
        return None

    def cpu_s(self) -> float:
        assert self.process is not None
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


@dataclass
class Run:
    """What one (store, k) drain measured."""

    store: str
    ingesters: int
    count: int
    seconds: float
    per_ingester: list[tuple[int, float, float]]  # events, active seconds, drain CPU seconds
    broker_cpu_s: float
    store_cpu_s: float | None
    load_before: float
    publish_s: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def server_pid(server: Mosquitto | InfluxServer) -> int:
    process = server._process
    assert process is not None
    return process.pid


def process_cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def stored_count(session: aiohttp.ClientSession, port: int) -> tuple[int | None, float]:
    """The ingester's ``cgw_ingest_events_stored_total`` and when it answered (None: not yet up, or busy).

    An ingester's HTTP server shares its event loop with the decoding of a round of messages, so
    under load an answer can take seconds; the time is taken when the answer arrives.
    """
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None, time.time()
    for line in text.splitlines():
        if line.startswith("cgw_ingest_events_stored_total "):
            return int(float(line.split()[1])), time.time()
    return None, time.time()


async def wait_connected(ingesters: list[Ingester], limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        pending = [i for i in ingesters if i.connected_at is None]
        for ingester in pending:
            ingester.connected_at = ingester.connected()
        if all(i.connected_at is not None for i in ingesters):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("ingesters did not connect")
        await asyncio.sleep(POLL_S)


async def publish(port: int, batches: list[tuple[str, bytes]]) -> float:
    """Publish every batch (QoS 1, 50 in flight) as fast as one client can; the seconds it took."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-gateways", max_inflight_messages=50
    ) as client:
        t0 = time.perf_counter()
        for topic, body in batches:
            await client.publish(topic, body, qos=1)
        return time.perf_counter() - t0


def store_toml(store: str, work: Path, influx_url: str | None, tag: str) -> str:
    if store == "influx_v1":
        return f'type = "influx_v1"\nurl = "{influx_url}"\ndatabase = "{tag}"'
    return f'type = "sqlite"\npath = "{work / (tag + ".db")}"'


async def count_in_store(store: str, work: Path, influx_url: str | None, tag: str) -> int:
    if store == "influx_v1":
        assert influx_url is not None
        config = InfluxV1StoreConfig(url=influx_url, database=tag, create_database=False)
        async with InfluxV1Store(config) as reader:
            results = await reader.query('SELECT COUNT("event_id") FROM "ebike_shed"')
        series = results[0].get("series") or [{"values": [[0, 0]]}]
        return int(series[0]["values"][0][1])
    with sqlite3.connect(work / (tag + ".db")) as db:
        return int(db.execute("SELECT COUNT(DISTINCT event_id) FROM events").fetchone()[0])


async def drain(
    mode: str,
    store: str,
    k: int,
    batches: list[tuple[str, bytes]],
    count: int,
    work: Path,
    influx: InfluxServer | None,
    tag: str,
) -> Run:
    """One measurement: k ingesters drain ``batches`` queued for their group into one store."""
    run_dir = work / tag
    run_dir.mkdir()
    influx_url = influx.url if influx is not None else None
    with Mosquitto(run_dir / "broker", persistence=False) as broker:
        ingesters = []
        for i in range(k):
            port = free_port()
            config = run_dir / f"ingester-{i}.toml"
            config.write_text(
                f'district_id = "{DISTRICT_ID}"\nlog_format = "json"\n'
                f'[broker]\nhost = "127.0.0.1"\nport = {broker.port}\n'
                f'[ingest]\nname = "{tag}-{i}"\ngroup = "{tag}"\n'
                f'dead_letter_path = "{run_dir / f"dead-{i}.db"}"\nhttp_port = {port}\n'
                f"[store]\n{store_toml(store, work, influx_url, tag)}\n",
                encoding="utf-8",
            )
            ingesters.append(Ingester(f"{tag}-{i}", config, port))
        publish_s = 0.0
        if mode == "backlog":
            # register the k sessions on the shared subscription and leave: the broker queues for them
            for ingester in ingesters:
                ingester.start(run_dir / f"{ingester.name}.register.log")
            await wait_connected(ingesters)
            for ingester in ingesters:
                ingester.startup_cpu_s = ingester.cpu_s()
                ingester.stop()
                ingester.connected_at = None
            publish_s = await publish(broker.port, batches)
        load_before = os.getloadavg()[0]
        # benchmarks may read private attributes (SLF001 is off here): the servers' pids, for their CPU
        broker_pid = server_pid(broker)
        store_pid = server_pid(influx) if influx is not None and store == "influx_v1" else None
        for ingester in ingesters:
            ingester.start(run_dir / f"{ingester.name}.log")
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
                if mode == "burst":
                    # every ingester connected and idle (its start-up done) before the first batch
                    await wait_connected(ingesters)
                    for ingester in ingesters:
                        ingester.startup_cpu_s = ingester.cpu_s()
                cpu0 = (process_cpu_s(broker_pid), process_cpu_s(store_pid) if store_pid else 0.0)
                started = time.time()
                if mode == "burst":
                    publish_s = await publish(broker.port, batches)
                deadline = time.monotonic() + 900
                while True:
                    answers = await asyncio.gather(*(stored_count(session, i.http_port) for i in ingesters))
                    for ingester, (stored, at) in zip(ingesters, answers, strict=True):
                        if ingester.connected_at is None:
                            ingester.connected_at = ingester.connected()
                        if stored is not None and stored != ingester.stored:
                            ingester.stored, ingester.last_change = stored, at
                    if sum(i.stored for i in ingesters) >= count:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{tag}: {sum(i.stored for i in ingesters)} of {count} stored")
                    await asyncio.sleep(POLL_S)
            for ingester in ingesters:
                ingester.cpu_at_end_s = ingester.cpu_s()
            cpu1 = (process_cpu_s(broker_pid), process_cpu_s(store_pid) if store_pid else 0.0)
        finally:
            for ingester in ingesters:
                ingester.stop()
    in_store = await count_in_store(store, work, influx_url, tag)
    if in_store != count:
        raise RuntimeError(f"{tag}: the store holds {in_store} events, {count} were published")
    if mode == "backlog":  # the clock starts when the first ingester is back
        started = min(i.connected_at or started for i in ingesters)
    finished = max(i.last_change for i in ingesters)
    return Run(
        store=store,
        ingesters=k,
        count=count,
        seconds=finished - started,
        per_ingester=[
            (
                i.stored,
                i.last_change - max(started, i.connected_at or started),
                i.cpu_at_end_s - i.startup_cpu_s,
            )
            for i in ingesters
        ],
        broker_cpu_s=cpu1[0] - cpu0[0],
        store_cpu_s=cpu1[1] - cpu0[1] if store_pid else None,
        load_before=load_before,
        publish_s=publish_s,
    )


async def bench(
    mode: str, stores: list[str], ks: list[int], count: int, rounds: int
) -> dict[str, list[dict[int, Run]]]:
    batches = uplink_batches(count)
    results: dict[str, list[dict[int, Run]]] = {store: [] for store in stores}
    with tempfile.TemporaryDirectory(prefix="cgw-scaleout-") as tmp:
        work = Path(tmp)
        with InfluxServer(work / "influx") if "influx_v1" in stores else contextlib.nullcontext() as influx:
            for r in range(rounds):
                for store in stores:
                    results[store].append({})
                    for k in ks:
                        run = await drain(
                            mode, store, k, batches, count, work, influx, f"s{store[:2]}r{r}k{k}"
                        )
                        results[store][r][k] = run
                        print(
                            f"  {store:>9} k={k} round {r + 1}: {run.rate:,.0f} events/s in {run.seconds:.1f} s;"
                            " each: "
                            + ", ".join(
                                f"{e:,} in {a:.1f} s ({e / a:,.0f}/s, {c:.1f} CPU s)"
                                for e, a, c in run.per_ingester
                            )
                            + f"; broker {run.broker_cpu_s:.1f} CPU s"
                            + (
                                f", influxd {run.store_cpu_s:.1f} CPU s"
                                if run.store_cpu_s is not None
                                else ""
                            )
                            + f"; load before {run.load_before:.1f}",
                            flush=True,
                        )
    return results


NAMES = {"influx_v1": "InfluxDB 1.6.7 (`influx_v1`)", "sqlite": "the embedded SQLite store"}
SCALE_OUT_DOC = ROOT / "docs" / "scale-out.md"
BLOCK_BEGIN = (
    "<!-- scaleout_bench: generated by bench/scaleout_bench.py --write; edits here are overwritten -->"
)
BLOCK_END = "<!-- /scaleout_bench -->"


def chosen(rounds: list[dict[int, Run]], k: int) -> tuple[Run, float]:
    """The round with the median total rate for k, and the median of the rounds' ratios to k = 1."""
    runs = sorted((r[k] for r in rounds), key=lambda run: run.rate)
    return runs[len(runs) // 2], statistics.median(r[k].rate / r[1].rate for r in rounds)


def pipeline_cpu_share(run: Run) -> float:
    """CPU seconds of the ingesters, the broker and influxd over the drain, as a share of the machine."""
    used = sum(c for _, _, c in run.per_ingester) + run.broker_cpu_s + (run.store_cpu_s or 0.0)
    return used / (run.seconds * (os.cpu_count() or 1))


def busy_caveat(results: dict[str, list[dict[int, Run]]]) -> str | None:
    """A warning when the machine was running other work: then k processes win k shares of the CPU."""
    cores = os.cpu_count() or 1
    highest = max(run.load_before for rounds in results.values() for r in rounds for run in r.values())
    # the bench's own previous drain keeps the 1-minute load near the core count (it uses all of
    # them); only beyond that was something else running
    if highest <= cores * 1.5:
        return None
    return (
        f"**The machine was busy with other work** (load average up to {highest:.1f} on {cores} cores before a"
        " drain): each process gets a share of the CPU against the others, so k ingesters win up to k shares and"
        " the ratios overstate what more ingesters give on a machine of their own. Repeat on a quiet machine."
    )


def report(results: dict[str, list[dict[int, Run]]], args: argparse.Namespace) -> list[str]:
    publish = max(run.publish_s for rounds in results.values() for r in rounds for run in r.values())
    lines = [
        HEADING,
        "",
        f"Command: `.venv/bin/python bench/scaleout_bench.py --count {args.count} --rounds {args.rounds}"
        f" --ingesters {' '.join(map(str, args.ingesters))} --stores {' '.join(args.stores)} --mode {args.mode}`,"
        f" run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine()}. Mosquitto 2.0.11 (in memory) and InfluxDB 1.6.7, private instances on the same machine.",
        "",
        f"Workload: {args.count:,} e-bike shed events of {COMPOUNDS} compounds in uplink batches of {BATCH_EVENTS}"
        " (QoS 1, the compounds' topics) for the ingesters' shared subscription, stored by k `compound-gateway ingest`"
        " processes into one store. "
        + (
            "Mode `burst`: the ingesters are connected and idle, then one client publishes every batch as fast as it"
            f" can (it took {publish:.1f} s at most). Seconds: from the first batch until every event is stored."
            if args.mode == "burst"
            else "Mode `backlog`: the batches wait at the broker for the k sessions, then the ingesters start."
            " Seconds: from the first ingester's connect until every event is stored (the others' start-up included)."
        )
        + " Each ingester's events/s are over its own active time; CPU seconds are the drain's; CPU % is the"
        " ingesters', the broker's and influxd's CPU over the drain as a share of all cores. Afterwards the store"
        " holds exactly the published events (counted).",
        "",
    ]
    if (caveat := busy_caveat(results)) is not None:
        lines += [caveat, ""]
    for store, rounds in results.items():
        influx = store == "influx_v1"
        lines += [
            f"**Into {NAMES[store]}**"
            + (
                f" (median of {len(rounds)} rounds by total rate; the ratio is the median of each round's ratio)"
                if len(rounds) > 1
                else ""
            )
            + ":",
            "",
            "| ingesters | total events/s | vs 1 ingester | seconds | each ingester: events, events/s, CPU s |"
            f" broker CPU s | {'influxd CPU s | ' if influx else ''}CPU % | load avg before |",
            f"|---:|---:|---:|---:|---|---:|{'---:|' if influx else ''}---:|---:|",
        ]
        for k in sorted(rounds[0]):
            run, ratio = chosen(rounds, k)
            each = "; ".join(f"{e:,}, {e / a:,.0f}/s, {c:.1f}" for e, a, c in run.per_ingester)
            lines.append(
                f"| {k} | {run.rate:,.0f} | {ratio:.2f}x | {run.seconds:.1f} | {each} | {run.broker_cpu_s:.1f} |"
                + (f" {run.store_cpu_s:.1f} |" if run.store_cpu_s is not None else "")
                + f" {pipeline_cpu_share(run):.0%} | {run.load_before:.1f} |"
            )
        lines.append("")
    return lines


def scale_out_block(results: dict[str, list[dict[int, Run]]], args: argparse.Namespace) -> list[str]:
    """The measured table of docs/scale-out.md (between its markers)."""
    ks = sorted(next(iter(results.values()))[0])
    lines = [
        BLOCK_BEGIN,
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {os.cpu_count()} cores, ingesters, broker and store on the same"
        f' machine, {args.count:,} events (`docs/benchmarks.md`, "Scale-out"; mode `{args.mode}`):',
        "",
        "| store | " + " | ".join(f"{k} ingester{'s' if k > 1 else ''}" for k in ks) + " |",
        "|---|" + "---:|" * len(ks),
    ]
    for store, rounds in results.items():
        cells = []
        for k in ks:
            run, ratio = chosen(rounds, k)
            rates = [e / a for e, a, _ in run.per_ingester]
            each = f"{min(rates):,.0f}-{max(rates):,.0f}/s each" if k > 1 else ""
            cells.append(f"{run.rate:,.0f}/s" + (f" ({ratio:.2f}x; {each})" if k > 1 else ""))
        lines.append(f"| {NAMES[store]} | " + " | ".join(cells) + " |")
    if (caveat := busy_caveat(results)) is not None:
        lines += ["", caveat]
    return [*lines, BLOCK_END]


def replace_block(path: Path, block: list[str]) -> None:
    """Put ``block`` between the markers of ``path`` (which must have them)."""
    text = path.read_text(encoding="utf-8")
    start, end = text.find(BLOCK_BEGIN), text.find(BLOCK_END)
    if start < 0 or end < 0:
        raise SystemExit(
            f"{path}: the markers of the measured block are missing; add {BLOCK_BEGIN} ... {BLOCK_END}"
        )
    path.write_text(text[:start] + "\n".join(block) + text[end + len(BLOCK_END) :], encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200_000, help="events per drain")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every (store, k) this often")
    parser.add_argument("--ingesters", type=int, nargs="+", default=[1, 2, 4], help="the k to measure")
    parser.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    parser.add_argument(
        "--mode",
        choices=["burst", "backlog"],
        default="burst",
        help="burst: the ingesters are connected and idle when the batches arrive (default);"
        " backlog: the batches wait at the broker and the ingesters start against them (their start-up included)",
    )
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="put the results into docs/benchmarks.md (--no-write: print only)",
    )
    args = parser.parse_args()
    if 1 not in args.ingesters:
        parser.error("--ingesters must include 1: every figure is compared with one ingester of the same run")
    args.ingesters = sorted(set(args.ingesters))
    results = asyncio.run(bench(args.mode, args.stores, args.ingesters, args.count, args.rounds))
    lines = report(results, args)
    print("\n".join(lines))
    block = scale_out_block(results, args)
    print("\n".join(block))
    if args.write:
        replace_section(lines)
        replace_block(SCALE_OUT_DOC, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
