"""CPU per event of the gateway under a steady MQTT load (issue 12): the intake path, durably, end to end.

50 simulated shed sensors publish QoS 1 heartbeats at a steady total rate (2,000 ev/s by default) to a
private Mosquitto (the compound broker); the gateway runs as a subprocess (faces disabled, default
outbox: WAL, ``synchronous=FULL``) and forwards over its MQTT uplink to a second Mosquitto (the district
broker, no ingester; receipts off, so an event is settled at the district broker's PUBACK). After a
warm-up, the user + system CPU seconds of the gateway's whole process tree (psutil) over the window
are divided by the events it committed in the window. A subscriber on the district broker measures
device -> district broker latency (publish time, which the report carries in ``ts``, to arrival).

Other load on the machine changes the batch sizes (printed: events per batch handed to the worker,
from ``cgw_intake_batches_total``), and with them the CPU per event of a gateway that batches only
what happens to be queued: compare runs alternated with the code being compared, in one period.

    .venv/bin/python bench/intake_cpu_bench.py                       # 2,000 ev/s, 5 s warm-up, 20 s window
    .venv/bin/python bench/intake_cpu_bench.py --repo /work/other-checkout --rounds 3
    .venv/bin/python bench/intake_cpu_bench.py --profile /tmp/prof   # py-spy raw profiles per process
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_sims.broker import Mosquitto, free_port, stop_process
from device_sims.devices import CST, MqttPublish, ShedSim, SimDevice
from device_sims.inventory import COMPOUND_ID, DISTRICT_ID


@dataclass
class Round:
    rate_offered: float
    events: int
    seconds: float
    cpu_seconds: float
    gateway_cpu: float
    worker_cpu: float
    system_cpu: float
    latencies_ms: list[float]
    backlog_end: int
    batches: float

    @property
    def us_per_event(self) -> float:
        return self.cpu_seconds / max(1, self.events) * 1e6

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def device_id(n: int) -> str:
    return f"3601040001134{n:07d}"


def imei(n: int) -> str:
    return f"8608120456{n:05d}"


def write_config(path: Path, *, state: Path, mqtt_port: int, district_port: int, devices: int) -> Path:
    lines = [
        "[compound]",
        f'district_id = "{DISTRICT_ID}"',
        f'compound_id = "{COMPOUND_ID}"',
        'name = "bench"',
        "[state]",
        f'dir = "{state}"',
        "[http]",
        'host = "127.0.0.1"',
        f"port = {free_port()}",
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {mqtt_port}",
        "device_rate_per_s = 100000.0",
        "[faces]",
        "enabled = false",
        # open private brokers, no secrets: this measures the intake; authentication's cost is
        # bench/sustained_bench.py --auth-baseline (checkouts before issue 13 have no [trust])
        "[trust]",
        "lan_trusted = true",
        "[uplink]",
        'mode = "mqtt"',
        "receipts = false",
        "[uplink.broker]",
        'host = "127.0.0.1"',
        f"port = {district_port}",
        "",
    ]
    for n in range(1, devices + 1):
        lines += [
            "[[devices]]",
            f'id = "{device_id(n)}"',
            f'name = "shed {n}"',
            'dialect = "shed-mqtt"',
            f'ref = "{imei(n)}"',
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def tree_cpu(process: psutil.Process) -> tuple[float, float, float]:
    """(gateway process, its children, system time of all) user + system seconds."""
    main = process.cpu_times()
    children = 0.0
    system = main.system
    for child in process.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        children += times.user + times.system
        system += times.system
    return main.user + main.system, children, system


def batches(config: Path) -> float:
    """The gateway's ``cgw_intake_batches_total`` (NaN if it has none)."""
    port = next(
        int(line.split("=")[1]) for line in config.read_text().splitlines() if line.startswith("port =")
    )
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith("cgw_intake_batches_total"):
            return float(line.split()[-1])
    return float("nan")


def committed(db: Path) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        (value,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        return int(value)


class Devices:
    """The simulated sensors: one paho connection each, publishing QoS 1 at a steady total rate."""

    def __init__(self, port: int, count: int, rate: float) -> None:
        self.rate = rate
        self.sims = [
            ShedSim(SimDevice(id=device_id(n), dialect="shed-mqtt", ref=imei(n))) for n in range(1, count + 1)
        ]
        self.clients: list[paho.Client] = []
        for n in range(count):
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"shed-{n}", protocol=paho.MQTTv311)
            client.max_inflight_messages_set(1000)
            client.max_queued_messages_set(0)
            client.connect("127.0.0.1", port)
            client.loop_start()
            self.clients.append(client)
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="devices", daemon=True)
        self._rng = random.Random(1)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for client in self.clients:
            client.loop_stop()
            client.disconnect()

    def _run(self) -> None:
        t0 = time.monotonic()
        tick = 0.005
        while not self._stop.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            while self.sent < due:
                i = self.sent % len(self.sims)
                message = self.sims[i].routine(datetime.now(CST), self._rng)
                assert isinstance(message, MqttPublish)
                self.clients[i].publish(message.topic, message.payload, qos=1)
                self.sent += 1
            time.sleep(tick)


class District:
    """A subscriber on the district broker: latency from the report's own time to arrival here."""

    def __init__(self, port: int) -> None:
        self.latencies_ms: list[float] = []
        self.recording = False
        self.events = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="district-watch")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("cgw/#", qos=0)
        self.client.loop_start()

    def _on_message(self, _client: object, _userdata: object, message: paho.MQTTMessage) -> None:
        now = time.time()
        try:
            doc = json.loads(message.payload)
        except ValueError:
            return
        for event in doc.get("events", ()) if isinstance(doc, dict) else ():
            self.events += 1
            if self.recording:
                at = datetime.fromisoformat(event["occurred_at"]).timestamp()
                self.latencies_ms.append((now - at) * 1000)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def one_round(
    repo: Path,
    rate: float,
    devices: int,
    warmup: float,
    window: float,
    keep: Path | None,
    profile: Path | None,
) -> Round:
    with tempfile.TemporaryDirectory(prefix="cgw-cpu-") as tmp:
        work = keep or Path(tmp)
        with (
            Mosquitto(work / "compound-broker") as broker,
            Mosquitto(work / "district-broker") as district_broker,
        ):
            config = write_config(
                work / "gateway.toml",
                state=work / "state",
                mqtt_port=broker.port,
                district_port=district_broker.port,
                devices=devices,
            )
            log = work / "gateway.log"
            python = repo / ".venv" / "bin" / "python"
            env = dict(os.environ, PYTHONPATH=str(repo))
            with log.open("ab") as handle:
                process = subprocess.Popen(
                    [
                        str(python if python.exists() else sys.executable),
                        "-m",
                        "cli",
                        "run",
                        "--config",
                        str(config),
                    ],
                    stdout=handle,
                    stderr=handle,
                    cwd=repo,
                    env=env,
                )
            try:
                deadline = time.monotonic() + 120
                while (
                    b"mqtt_intake_connected" not in log.read_bytes()
                    or b"uplink_connected" not in log.read_bytes()
                ):
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"gateway did not start: {log.read_text()[-3000:]}")
                    time.sleep(0.05)
                watch = District(district_broker.port)
                sims = Devices(broker.port, devices, rate)
                sims.start()
                time.sleep(warmup)
                ps = psutil.Process(process.pid)
                db = work / "state" / "outbox.db"
                n0 = committed(db)
                b0 = batches(config)
                main0, kids0, sys0 = tree_cpu(ps)
                t0 = time.monotonic()
                watch.recording = True
                spies = []
                if profile is not None:
                    targets = [("gateway", ps.pid)] + [
                        (f"child{i}", c.pid) for i, c in enumerate(ps.children())
                    ]
                    for name, pid in targets:
                        command = ["record", "--rate", "100", "--format", "raw", "--nonblocking"]
                        command += ["--duration", str(int(window)), "--pid", str(pid)]
                        command += ["-o", str(profile / f"{name}.txt")]
                        spies.append(
                            subprocess.Popen(
                                [str(Path(sys.executable).parent / "py-spy"), *command],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                            )
                        )
                time.sleep(window)
                watch.recording = False
                main1, kids1, sys1 = tree_cpu(ps)
                seconds = time.monotonic() - t0
                n1 = committed(db)
                b1 = batches(config)
                backlog = sims.sent - n1
                sims.stop()
                watch.stop()
                for spy in spies:
                    spy.wait()
                return Round(
                    rate_offered=rate,
                    events=n1 - n0,
                    seconds=seconds,
                    cpu_seconds=(main1 - main0) + (kids1 - kids0),
                    gateway_cpu=main1 - main0,
                    worker_cpu=kids1 - kids0,
                    system_cpu=sys1 - sys0,
                    latencies_ms=watch.latencies_ms,
                    backlog_end=backlog,
                    batches=b1 - b0,
                )
            finally:
                stop_process(process)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose gateway to run")
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second offered in total")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy (raw format) of each process into this directory"
    )
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (logs, outbox)")
    args = parser.parse_args()
    results = []
    for _ in range(args.rounds):
        r = one_round(
            args.repo.resolve(), args.rate, args.devices, args.warmup, args.window, args.keep, args.profile
        )
        results.append(r)
        print(
            f"{args.repo}: offered {r.rate_offered:.0f}/s committed {r.events / r.seconds:.0f}/s"
            f" cpu {r.us_per_event:.0f} us/event (gateway {r.gateway_cpu / max(1, r.events) * 1e6:.0f},"
            f" worker {r.worker_cpu / max(1, r.events) * 1e6:.0f}; kernel {r.system_cpu / max(1, r.events) * 1e6:.0f}) cores {r.cpu_seconds / r.seconds:.2f}"
            f" latency p50 {r.percentile(0.5):.0f} ms p99 {r.percentile(0.99):.0f} ms"
            f" backlog at end {r.backlog_end} events/batch {r.events / r.batches:.1f}",
            flush=True,
        )
    if len(results) > 1:
        print(f"median cpu {statistics.median(r.us_per_event for r in results):.0f} us/event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
