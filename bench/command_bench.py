"""How soon a command moves a device: from the district's order to the barrier's relay, and the read-back.

Everything runs for real on this machine: the district's Mosquitto, the compound's Mosquitto (the
sample accounts and ACL), the gateway as its own process (``python -m cli run``) and the simulated
LPR camera (``VzLprSim``) on the compound broker with its own account, its barrier moving at once.
Each round the district orders the barrier open, then closed (so every command moves it):

- **actuation**: seconds from the order's publish on the district broker until the camera drove its
  relay (the simulator's clock, the same machine's);
- **verified**: seconds until the compound's ``verified`` report (the state read back) reached the
  district broker.

Baseline, same run: one bare QoS 1 hop through each broker (a publish to a subscriber and nothing
else), summed: what the two brokers cost without the gateway. Target (issue 16): actuation under
1 s at p99.

    .venv/bin/python bench/command_bench.py                 # 40 commands, writes docs/benchmarks.md
    .venv/bin/python bench/command_bench.py --commands 10 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiomqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import machine, replace_section
from device_sims.broker import Mosquitto, free_port
from device_sims.devices import VzLprSim
from device_sims.inventory import DISTRICT_ID, compound_id, sample_broker_accounts, write_sample_config
from foundation.commands import CommandAction
from foundation.events import utc_now
from gateway.config import load_config
from tests.processes import GatewayProcess
from tests.test_commands import camera, camera_online
from uplink.commands import CommandOrder, CommandState, decode_report, encode_json, order_topic, report_filter
from uplink.protocol import DEFAULT_PREFIX

BARRIER = "36010400011210000002"  # the sample compound's barrier camera
COMPOUND = compound_id(1)
ROUND_LIMIT_S = 30


def gateway_config(workdir: Path, device_port: int, district_port: int) -> Path:
    """The sample compound with an uplink to the district broker; limits high enough for the bench."""
    path = write_sample_config(
        workdir / "gateway.toml", state_dir=workdir / "state", http_port=free_port(), mqtt_port=device_port
    )
    with path.open("a", encoding="utf-8") as handle:
        handle.write(
            "\n[commands]\nper_device_per_minute = 600\nper_compound_per_minute = 6000\npoll_s = 0.05\n"
            f'\n[uplink]\nmode = "mqtt"\n[uplink.broker]\nhost = "127.0.0.1"\nport = {district_port}\n'
        )
    return path


def timed(sim: VzLprSim, actuated: list[float]) -> None:
    """Record the moment the simulated relay is driven."""
    original = sim.answer_command

    def answer(body: bytes) -> bytes:
        before = sim.commands_executed
        reply = original(body)
        if sim.commands_executed > before:
            actuated.append(time.perf_counter())
        return reply

    sim.answer_command = answer  # type: ignore[method-assign]


async def bare_hop(port: int, rounds: int) -> list[float]:
    """Seconds of one QoS 1 publish to a subscriber on the broker at ``port``, ``rounds`` times."""
    seconds: list[float] = []
    async with (
        aiomqtt.Client("127.0.0.1", port, identifier="bench-sub") as sub,
        aiomqtt.Client("127.0.0.1", port, identifier="bench-pub") as pub,
    ):
        await sub.subscribe("bench/hop", qos=1)
        for _ in range(rounds):
            start = time.perf_counter()
            await pub.publish("bench/hop", b"x" * 300, qos=1)
            async with asyncio.timeout(ROUND_LIMIT_S):
                async for _ in sub.messages:
                    break
            seconds.append(time.perf_counter() - start)
    return seconds


@contextlib.asynccontextmanager
async def desk(port: int) -> AsyncIterator[tuple[aiomqtt.Client, dict[str, float]]]:
    """The district's side: publishes orders, notes when each verified report arrives."""
    verified: dict[str, float] = {}
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-desk") as client:
        await client.subscribe(report_filter(DEFAULT_PREFIX), qos=1)

        async def read() -> None:
            async for message in client.messages:
                report = decode_report(bytes(message.payload))
                if report.state is CommandState.VERIFIED:
                    verified.setdefault(report.command_id, time.perf_counter())

        task = asyncio.create_task(read(), name="bench-desk")
        try:
            yield client, verified
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def run(commands: int) -> dict[str, list[float]]:
    """The measured seconds: actuation, verified, and the bare two-broker baseline."""
    with tempfile.TemporaryDirectory(prefix="cgw-command-bench-") as tmp:
        workdir = Path(tmp)
        device_broker = Mosquitto(workdir / "device-broker", accounts=sample_broker_accounts()).start()
        district_broker = Mosquitto(workdir / "district-broker").start()
        try:
            config_path = gateway_config(workdir, device_broker.port, district_broker.port)
            config = load_config(config_path)
            sim = camera()
            actuated: list[float] = []
            timed(sim, actuated)
            gateway = GatewayProcess(config_path, workdir / "gateway.log")
            await gateway.start_gateway(config)
            results: dict[str, list[float]] = {"actuation": [], "verified": []}
            try:
                async with (
                    camera_online(device_broker, sim),
                    desk(district_broker.port) as (client, verified),
                ):
                    await asyncio.sleep(1.0)  # the gateway's uplink subscribes after its start
                    for number in range(commands):
                        action = (
                            CommandAction.BARRIER_OPEN if number % 2 == 0 else CommandAction.BARRIER_CLOSE
                        )
                        now = utc_now()
                        order = CommandOrder(
                            command_id=f"bench-{number}",
                            device_id=BARRIER,
                            action=action,
                            issued_by="bench",
                            role="operator",
                            reason="command bench",
                            issued_at=now,
                            expires_at=now + timedelta(minutes=1),
                        )
                        moved = len(actuated)
                        start = time.perf_counter()
                        await client.publish(
                            order_topic(DEFAULT_PREFIX, DISTRICT_ID, COMPOUND), encode_json(order), qos=1
                        )
                        async with asyncio.timeout(ROUND_LIMIT_S):
                            while order.command_id not in verified:
                                await asyncio.sleep(0.002)
                        if len(actuated) != moved + 1:
                            raise RuntimeError(
                                f"{order.command_id}: the relay moved {len(actuated) - moved} times"
                            )
                        results["actuation"].append(actuated[-1] - start)
                        results["verified"].append(verified[order.command_id] - start)
            finally:
                gateway.stop()
            district_hop = await bare_hop(district_broker.port, commands)
            results["baseline"] = district_hop
            return results
        finally:
            device_broker.stop()
            district_broker.stop()


def percentile(values: list[float], share: float) -> float:
    """The value below which ``share`` of the values lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def write(results: dict[str, list[float]], commands: int) -> list[str]:
    """The docs section's lines."""

    def row(name: str, what: str) -> str:
        values = results[name]
        return (
            f"| {what} | {statistics.median(values) * 1000:.1f} | {percentile(values, 0.99) * 1000:.1f} |"
            f" {max(values) * 1000:.1f} |"
        )

    ratio = statistics.median(results["actuation"]) / statistics.median(results["baseline"])
    return [
        "## Commands to devices (issue 16)",
        "",
        f"Command: `.venv/bin/python bench/command_bench.py --commands {commands}`, run {utc_now():%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine()}.",
        "",
        "| path | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
        row("actuation", "district order (published on the district broker) -> the barrier's relay driven"),
        row(
            "verified", "district order -> the compound's `verified` report (state read back) at the district"
        ),
        row("baseline", "baseline: one bare QoS 1 hop through the district broker"),
        "",
        f"Actuation p50 / bare hop p50: **{ratio:.1f}x**. Target: actuation under 1 s at p99.",
    ]


def main() -> int:
    """Run and report (and write the section of docs/benchmarks.md unless ``--no-write``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--commands", type=int, default=40)
    parser.add_argument(
        "--write", action=argparse.BooleanOptionalAction, default=True, help="update docs/benchmarks.md"
    )
    args = parser.parse_args()
    results = asyncio.run(run(args.commands))
    lines = write(results, args.commands)
    print("\n".join(lines))
    if args.write:
        replace_section(lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
