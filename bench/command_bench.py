"""How soon a command moves a device: from the district's order to the barrier's relay, and the read-back.

Everything runs for real on this machine: the district's Mosquitto, the compound's Mosquitto (the
sample accounts and ACL), the gateway as its own process (``python -m cli run``) and the simulated
LPR camera (``VzLprSim``) on the compound broker with its own account, its barrier moving at once.
The operator API with its command desk runs in this process too. Three paths, each ``--commands``
times (the barrier alternately opened and closed, so every command moves it):

- **api**: from the operator's ``POST /api/v1/commands`` (token, reason, scope, audit, the command
  book) through the desk, the district broker and the gateway until the camera drove its relay
  (the simulator's clock, the same machine's), and until the compound's ``verified`` report (the
  state read back) reached the district broker;
- **broker**: the same from an order published straight on the district broker (the desk bypassed);
- **rule**: from the shed sensor's fire report on the compound broker until the simulated siren
  sounded, by the compound's local rule ``shed fire -> siren_on`` (intake, the rule, the command
  service with its ledger and read-back), with no district involved.

Baseline, same run: one bare QoS 1 hop through each broker (a publish to a subscriber and nothing
else), summed: what the two brokers cost without the gateway. Target (issue 16): actuation under
1 s at p99.

    .venv/bin/python bench/command_bench.py                 # 40 commands a path, writes docs/benchmarks.md
    .venv/bin/python bench/command_bench.py --commands 10 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import operator
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import aiohttp
import aiomqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import machine, replace_section
from device_sims.broker import Mosquitto, free_port
from device_sims.devices import MqttPublish, SirenSim, build_sim
from device_sims.inventory import (
    DISTRICT_ID,
    compound_id,
    sample_broker_accounts,
    sample_devices,
    write_sample_config,
)
from foundation.commands import CommandAction
from foundation.events import utc_now
from gateway.config import load_config
from tests.command_orders import BARRIER
from tests.conftest import device_client
from tests.processes import GatewayProcess
from tests.test_command_desk import district_config, district_up
from tests.test_commands import camera, camera_online
from tests.test_local_rules import shed_report
from uplink.commands import CommandOrder, CommandState, decode_report, encode_json, order_topic, report_filter
from uplink.protocol import DEFAULT_PREFIX

COMPOUND = compound_id(1)
SHED = "36010400011340000001"  # shed-mqtt, ref 860812045678901
SIREN = "36010400011350000001"  # siren-mqtt
ROUND_LIMIT_S = 30
RULE = f"""
[[rules]]
name = "shed-fire-siren"
[rules.match]
kind = "ebike_shed"
devices = ["{SHED}"]
[[rules.match.conditions]]
field = "condition"
equals = "fire_alarm"
[[rules.actions]]
type = "command"
device = "{SIREN}"
action = "siren_on"
"""


def gateway_config(workdir: Path, device_port: int, district_port: int) -> Path:
    """The sample compound with an uplink to the district broker, the shed rule, limits high enough."""
    path = write_sample_config(
        workdir / "gateway.toml", state_dir=workdir / "state", http_port=free_port(), mqtt_port=device_port
    )
    with path.open("a", encoding="utf-8") as handle:
        handle.write(
            "\n[commands]\nper_device_per_minute = 600\nper_compound_per_minute = 6000\npoll_s = 0.05\n"
            f'\n[uplink]\nmode = "mqtt"\n[uplink.broker]\nhost = "127.0.0.1"\nport = {district_port}\n' + RULE
        )
    return path


def timed(
    answer: Callable[[bytes], bytes], executed: Callable[[], int], moments: list[float]
) -> Callable[[bytes], bytes]:
    """``answer`` that records the moment a command was executed (``executed()`` went up)."""

    def wrapped(body: bytes) -> bytes:
        before = executed()
        reply = answer(body)
        if executed() > before:
            moments.append(time.perf_counter())
        return reply

    return wrapped


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
async def observer(port: int) -> AsyncIterator[tuple[aiomqtt.Client, dict[str, float]]]:
    """A client on the district broker: publishes orders, notes when each verified report arrives."""
    verified: dict[str, float] = {}
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-observer") as client:
        await client.subscribe(report_filter(DEFAULT_PREFIX), qos=1)

        async def read() -> None:
            async for message in client.messages:
                report = decode_report(bytes(message.payload))
                if report.state is CommandState.VERIFIED:
                    verified.setdefault(report.command_id, time.perf_counter())

        task = asyncio.create_task(read(), name="bench-observer")
        try:
            yield client, verified
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def until(check: Callable[[], bool]) -> None:
    """Poll ``check`` every 2 ms (a round's limit)."""
    async with asyncio.timeout(ROUND_LIMIT_S):
        while not check():
            await asyncio.sleep(0.002)


async def run(commands: int) -> dict[str, list[float]]:
    """The measured seconds by path, and the bare broker hop."""
    with tempfile.TemporaryDirectory(prefix="cgw-command-bench-") as tmp:
        workdir = Path(tmp)
        device_broker = Mosquitto(workdir / "device-broker", accounts=sample_broker_accounts()).start()
        district_broker = Mosquitto(workdir / "district-broker").start()
        try:
            config_path = gateway_config(workdir, device_broker.port, district_broker.port)
            config = load_config(config_path)
            barrier, moved = camera(), []  # type: ignore[var-annotated]
            barrier.answer_command = timed(barrier.answer_command, lambda: barrier.commands_executed, moved)  # type: ignore[method-assign,assignment]
            siren = build_sim(next(d for d in sample_devices() if d.id == SIREN))
            assert isinstance(siren, SirenSim)
            sounded: list[float] = []
            handle = siren.handle

            def siren_handle(message: MqttPublish) -> MqttPublish | None:
                before = siren.commands_executed
                answer = handle(message)
                if siren.commands_executed > before:
                    sounded.append(time.perf_counter())
                return answer

            siren.handle = siren_handle  # type: ignore[method-assign]
            district = district_config(
                workdir / "district",
                district_broker,
                "per_token_per_minute = 10000\nper_compound_per_minute = 10000\n",
            )
            gateway = GatewayProcess(config_path, workdir / "gateway.log")
            await gateway.start_gateway(config)
            results: dict[str, list[float]] = {
                name: [] for name in ("api", "api_verified", "broker", "broker_verified", "rule")
            }
            try:
                async with (
                    district_up(district) as api,
                    camera_online(device_broker, barrier),
                    camera_online(device_broker, siren),
                    observer(district_broker.port) as (client, verified),
                    aiohttp.ClientSession() as http,
                ):
                    await asyncio.sleep(2.0)  # the gateway's uplink subscribes after its start
                    headers = {"Authorization": f"Bearer {api.tokens['operator']}"}
                    for number in range(commands):
                        action = (
                            CommandAction.BARRIER_OPEN if number % 2 == 0 else CommandAction.BARRIER_CLOSE
                        )
                        command_id, before = f"bench-api-{number}", len(moved)
                        start = time.perf_counter()
                        body = {
                            "device": BARRIER,
                            "action": action.value,
                            "reason": "command bench",
                            "command_id": command_id,
                        }
                        async with http.post(
                            f"{api.url}/api/v1/commands", json=body, headers=headers
                        ) as response:
                            if response.status != 200:
                                raise RuntimeError(f"{command_id}: {response.status} {await response.text()}")
                        await until(functools.partial(operator.contains, verified, command_id))
                        if len(moved) != before + 1:
                            raise RuntimeError(f"{command_id}: the relay moved {len(moved) - before} times")
                        results["api"].append(moved[-1] - start)
                        results["api_verified"].append(verified[command_id] - start)
                    for number in range(commands):
                        action = (
                            CommandAction.BARRIER_OPEN if number % 2 == 0 else CommandAction.BARRIER_CLOSE
                        )
                        now = utc_now()
                        order = CommandOrder(
                            command_id=f"bench-broker-{number}",
                            device_id=BARRIER,
                            action=action,
                            issued_by="bench",
                            role="operator",
                            reason="command bench",
                            issued_at=now,
                            expires_at=now + timedelta(minutes=1),
                        )
                        before = len(moved)
                        start = time.perf_counter()
                        await client.publish(
                            order_topic(DEFAULT_PREFIX, DISTRICT_ID, COMPOUND), encode_json(order), qos=1
                        )
                        await until(functools.partial(operator.contains, verified, order.command_id))
                        if len(moved) != before + 1:
                            raise RuntimeError(
                                f"{order.command_id}: the relay moved {len(moved) - before} times"
                            )
                        results["broker"].append(moved[-1] - start)
                        results["broker_verified"].append(verified[order.command_id] - start)
                    shed = next(d for d in sample_devices() if d.id == SHED)
                    async with device_client(device_broker.port, shed) as sensor:
                        for number in range(commands):
                            siren.mode = "idle"  # between rounds: silence it by hand (no command)
                            before = len(sounded)
                            start = time.perf_counter()
                            await sensor.publish("shed/860812045678901/up", fire_report(1000 + number), qos=1)
                            await until(functools.partial(_longer, sounded, before))
                            results["rule"].append(sounded[before] - start)
                            # let the command's read-back see it sounding before the next round
                            # silences it by hand (else the read-back fails and holds the device)
                            await asyncio.sleep(0.5)
            finally:
                gateway.stop()
            results["baseline"] = await bare_hop(district_broker.port, commands)
            return results
        finally:
            device_broker.stop()
            district_broker.stop()


def fire_report(seq: int) -> bytes:
    """The shed sensor's fire report (alert bit 0), built as the rules' tests build it."""
    return shed_report(seq, alert=1)


def _longer(values: list[float], than: int) -> bool:
    return len(values) > than


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

    base = statistics.median(results["baseline"])
    return [
        "## Commands to devices (issue 16)",
        "",
        f"Command: `.venv/bin/python bench/command_bench.py --commands {commands}`, run {utc_now():%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine()}. Mosquitto 2.0.11 (Debian), private instances; the gateway as its own process.",
        "",
        f"{commands} commands a path, one at a time:",
        "",
        "| path | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
        row(
            "api",
            "district command (`POST /api/v1/commands`, desk, district broker, gateway) -> the barrier's relay driven",
        ),
        row(
            "api_verified",
            "district command -> the compound's `verified` report (state read back) at the district broker",
        ),
        row("broker", "order published straight on the district broker (desk bypassed) -> relay driven"),
        row("broker_verified", "order on the district broker -> `verified` report back"),
        row(
            "rule",
            "local rule: the shed sensor's fire report -> the siren sounding (`siren_on` through the command service)",
        ),
        row("baseline", "baseline: one bare QoS 1 hop through the district broker"),
        "",
        f"Ratios of p50 to the bare hop's p50 ({base * 1000:.1f} ms): district command -> actuation"
        f" **{statistics.median(results['api']) / base:.1f}x**, local rule -> actuation"
        f" **{statistics.median(results['rule']) / base:.1f}x**. Target (issue 16): under 1 s at p99 for both.",
        "The `verified` rows include the read-back (`poll_s` 0.05 in this run; the simulated barrier moves at once).",
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
