"""Local rule latency: a shed sensor's fire report -> the rule's MQTT action on the compound broker.

The gateway runs as deployed (``python -m cli run``, its own process, intake worker on) against a
private Mosquitto with the generated accounts and ACL. One rule (``shed-fire``, no debounce, no
cooldown) publishes to ``siren/shed-1/set`` for every fire report of the shed sensor. The sensor
publishes ``--count`` fire reports at ``--rate`` per second (QoS 1, with its own account); a
watcher subscribed to the siren topic notes when each action arrives. Latency per report: from
the sensor's publish call to the watcher's receipt, both in this process (one clock). It covers the
intake (batch linger, parse, commit with fsync), the rules' wake-up and outbox read, the commit
of the ``rule_fired`` event (a second fsync), the action queue and the publish.

    .venv/bin/python bench/rules_bench.py                 # 400 reports at 10/s, writes docs/benchmarks.md
    .venv/bin/python bench/rules_bench.py --count 50 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import machine, replace_section
from device_sims.broker import Mosquitto, free_port
from device_sims.inventory import sample_device_secrets, sample_devices, write_sample_config
from gateway.broker_accounts import AclRule, BrokerAccounts, build_broker_accounts
from gateway.config import load_config
from tests.processes import GatewayProcess

SHED = "36010400011340000001"
SHED_TOPIC = "shed/860812045678901/up"
WATCHER, WATCHER_SECRET = "bench-watcher", "bench-watcher-secret-0123"
RULE = f"""
[[rules]]
name = "shed-fire"
[rules.match]
kind = "ebike_shed"
devices = ["{SHED}"]
[[rules.match.conditions]]
field = "condition"
equals = "fire_alarm"
[[rules.actions]]
type = "mqtt"
topic = "siren/shed-1/set"
payload = "{{{{ event.occurred_at }}}}"
"""
BASE_TS_MS = 1_780_000_000_000


def report(seq: int) -> bytes:
    """A shed fire report whose time (and so the action's payload) names ``seq``."""
    return json.dumps(
        {
            "imei": "860812045678901",
            "seq": seq,
            "ts": BASE_TS_MS + seq * 1000,
            "type": "alarm",
            "alert": 1,
            "devCode": 0,
            "smoke": 55.4,
            "temp": 40.0,
            "battPct": 72,
            "volt": 3.03,
            "rsrp": -89,
        }
    ).encode()


def seq_of(payload: bytes) -> int:
    """The report number an action's payload (the trigger's occurred_at) names."""
    at = datetime.fromisoformat(payload.decode().replace("Z", "+00:00"))
    return round((at.timestamp() * 1000 - BASE_TS_MS) / 1000)


async def measure(count: int, rate: float, work: Path) -> tuple[list[float], int]:
    """Latencies in seconds of the actions that arrived, and how many reports were published."""
    port = free_port()
    path = write_sample_config(
        work / "gateway.toml", state_dir=work / "state", http_port=free_port(), mqtt_port=port
    )
    path.write_text(path.read_text(encoding="utf-8") + RULE, encoding="utf-8")
    config = load_config(path)
    accounts = build_broker_accounts(config, sample_device_secrets())
    accounts = BrokerAccounts(
        {**accounts.passwords, WATCHER: SecretStr(WATCHER_SECRET)},
        (*accounts.rules, AclRule(WATCHER, "read", "siren/#")),
        accounts.owners,
    )
    broker = Mosquitto(work / "broker", port, accounts=accounts).start()
    gateway = GatewayProcess(path, work / "gateway.log")
    [shed] = [d for d in sample_devices() if d.id == SHED]
    sent: dict[int, float] = {}
    latencies: list[float] = []
    try:
        await gateway.start_gateway(config)
        async with (
            aiomqtt.Client(
                "127.0.0.1", port, username=WATCHER, password=WATCHER_SECRET, identifier=WATCHER
            ) as watch,
            aiomqtt.Client(
                "127.0.0.1", port, username=shed.username, password=shed.secret, identifier="bench-shed"
            ) as device,
        ):
            await watch.subscribe("siren/#", qos=1)

            async def receive() -> None:
                async for message in watch.messages:
                    arrived = time.perf_counter()
                    seq = seq_of(bytes(message.payload))
                    if seq in sent:
                        latencies.append(arrived - sent[seq])
                    if len(latencies) == count:
                        return

            receiver = asyncio.create_task(receive())
            for seq in range(1, count + 1):
                sent[seq] = time.perf_counter()
                await device.publish(SHED_TOPIC, report(seq), qos=1)
                await asyncio.sleep(1 / rate)
            try:
                async with asyncio.timeout(30):
                    await receiver
            except TimeoutError:
                receiver.cancel()
    finally:
        gateway.stop()
        broker.stop()
    return latencies, len(sent)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--rate", type=float, default=10.0, help="fire reports per second")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="cgw-rules-bench-") as tmp:
        latencies, published = asyncio.run(measure(args.count, args.rate, Path(tmp)))
    ms = [1000 * v for v in latencies]
    lines = [
        "## Local rule -> action latency (issue 16)",
        "",
        f"Command: `.venv/bin/python bench/rules_bench.py --count {args.count} --rate {args.rate:g}`, run"
        f" {started:%Y-%m-%d %H:%M} UTC, load average before the run {load:.2f}.",
        f"Machine: {machine()}.",
        "",
        "Load: the sample compound's gateway as deployed (its own process, intake worker on) and a private"
        " Mosquitto with the generated accounts and ACL; one rule (shed fire -> MQTT publish to the siren's"
        f" topic, no debounce, no cooldown); the shed sensor publishes {published} fire reports at"
        f" {args.rate:g}/s (QoS 1). Latency: the sensor's publish call to the siren topic's message at a"
        " subscriber (one clock): intake (linger, parse, commit), the rules' outbox read, the rule_fired"
        " commit, the action queue, the publish.",
        "",
        "| reports | actions arrived | p50 ms | p90 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {published} | {len(ms)} | {percentile(ms, 50):.1f} | {percentile(ms, 90):.1f} |"
        f" {percentile(ms, 99):.1f} | {max(ms):.1f} |"
        if ms
        else f"| {published} | 0 | - | - | - | - |",
        "",
        "A siren behind the command plumbing adds the device's own round trip (and the read-back"
        " settle time) to this.",
    ]
    print("\n".join(lines))
    if not args.no_write:
        replace_section(lines)
    return 0 if len(ms) == published else 1


if __name__ == "__main__":
    sys.exit(main())
