"""What authenticating HTTP pushes costs the gateway: CPU per push with digest, basic and none.

The same pushes (face-gate passages of the two Hikvision access terminals, multipart with a picture,
from the simulator) are posted to the gateway (``python -m cli run``, its own process) three times
in one run, each against a fresh gateway and state directory:

- ``digest``: the terminals authenticate with HTTP digest (aiohttp's client middleware, one per
  device, nonce reused with a rising count as a camera does: one challenge round trip per device);
- ``basic``: the terminals are configured for basic authentication;
- ``none`` (the baseline): ``[trust] lan_trusted = true`` and no secrets, no Authorization header.

CPU per push is the gateway's process tree (gateway and intake worker) user + system time while the
pushes are posted, over the pushes acknowledged.

    .venv/bin/python bench/push_auth_bench.py              # 4000 pushes each, writes docs/benchmarks.md
    .venv/bin/python bench/push_auth_bench.py --count 500 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import machine, process_tree_cpu, replace_section
from device_sims.broker import Mosquitto, free_port
from device_sims.devices import HttpPost, SimDevice, build_sim
from device_sims.inventory import sample_broker_accounts, sample_devices, write_sample_config
from device_sims.runner import Runner
from device_sims.scenarios import build
from gateway.config import GatewayConfig, load_config
from gateway.device_secrets import load_device_secrets, write_device_secrets
from tests.processes import GatewayProcess

MODES = ("none", "digest", "basic")
TERMINALS = "hik-isapi-acs"


def configure(path: Path, mode: str, mqtt_port: int) -> Path:
    """The sample compound's config, changed for ``mode`` (see the module docstring)."""
    write_sample_config(path, state_dir=path.parent / "state", http_port=free_port(), mqtt_port=mqtt_port)
    text = path.read_text(encoding="utf-8")
    if mode == "none":
        # a trusted LAN, and the terminals without secrets (the MQTT side keeps its accounts)
        text = text.replace("[trust]\n", "[trust]\nlan_trusted = true\n", 1)
        config = load_config_text(path, text)
        secrets = load_device_secrets(config)
        terminals = {d.id for d in config.devices if d.dialect == TERMINALS}
        devices = {k: v for k, v in secrets.devices.items() if k not in terminals}
        assert config.trust.secrets_file is not None
        write_device_secrets(config.trust.secrets_file, replace(secrets, devices=devices))
    elif mode == "basic":
        text = text.replace(f'dialect = "{TERMINALS}"\n', f'dialect = "{TERMINALS}"\npush_auth = "basic"\n')
    path.write_text(text, encoding="utf-8")
    return path


def load_config_text(path: Path, text: str) -> GatewayConfig:
    path.write_text(text, encoding="utf-8")
    return load_config(path)


async def measure(mode: str, count: int, work: Path, broker: Mosquitto) -> tuple[float, int, int]:
    """(CPU seconds, pushes acknowledged, pushes refused) for ``count`` pushes in ``mode``."""
    path = configure(work / mode / "gateway.toml", mode, broker.port)
    config = load_config(path)
    gateway = GatewayProcess(path, work / mode / "gateway.log")
    await gateway.start_gateway(config)
    try:
        terminals = [
            build_sim(SimDevice(d.id, d.dialect, d.ref, "basic" if mode == "basic" else "digest"))
            for d in sample_devices()
            if d.dialect == TERMINALS
        ]
        steps = [
            # the baseline's terminals send no Authorization header at all
            replace(step, message=replace(step.message, credentials=None)) if mode == "none" else step
            for step in build("morning-rush", terminals, 7, count * 2)
            if isinstance(step.message, HttpPost)
        ][:count]
        assert gateway.process is not None
        process = psutil.Process(gateway.process.pid)
        runner = Runner(f"http://127.0.0.1:{config.http.port}", "127.0.0.1", broker.port, workers=8)
        before = process_tree_cpu(process)
        report = await runner.run(steps)
        return process_tree_cpu(process) - before, len(report.acked), report.unauthorized
    finally:
        gateway.stop()


async def main_async(args: argparse.Namespace) -> list[str]:
    results: dict[str, tuple[float, int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="cgw-push-auth-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        with Mosquitto(work / "broker", accounts=sample_broker_accounts()) as broker:
            for mode in MODES:
                print(f"-- {mode}: {args.count} pushes ...", flush=True)
                results[mode] = await measure(mode, args.count, work, broker)
    base_cpu, base_acked, _ = results["none"]
    base = base_cpu / max(base_acked, 1) * 1e6
    rows = [
        "| authentication | pushes acknowledged | refused (401) | gateway CPU s | CPU µs/push | vs none |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, (cpu, acked, refused) in results.items():
        per = cpu / max(acked, 1) * 1e6
        rows.append(f"| {mode} | {acked:,} | {refused:,} | {cpu:.2f} | {per:.0f} | {per / base:.2f}x |")
    return [
        "## HTTP push authentication cost (issue 13)",
        "",
        f"Command: `.venv/bin/python bench/push_auth_bench.py --count {args.count}`, run"
        f" {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average before the run {args.load_before:.2f}.",
        f"Machine: {machine()}.",
        "",
        f"Load: {args.count:,} face-gate passages (multipart with a picture) of the sample compound's two"
        " Hikvision access terminals, posted by the simulator with 8 concurrent connections to the"
        " gateway (its own process, intake worker on), once per authentication mode, each against a"
        " fresh gateway; the baseline `none` is a trusted LAN without secrets. Digest: one middleware"
        " per terminal, the nonce reused with a rising count (one challenge per terminal and nonce"
        " lifetime). CPU: the gateway's process tree while the pushes were posted, over the pushes"
        " acknowledged.",
        "",
        *rows,
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument(
        "--write", action=argparse.BooleanOptionalAction, default=True, help="update docs/benchmarks.md"
    )
    args = parser.parse_args()
    args.load_before = os.getloadavg()[0]
    started = time.monotonic()
    lines = asyncio.run(main_async(args))
    print("\n".join(lines), flush=True)
    print(f"({time.monotonic() - started:.0f} s)")
    if args.write:
        replace_section(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
