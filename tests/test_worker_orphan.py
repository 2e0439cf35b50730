"""The intake worker process does not outlive a SIGKILLed gateway."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil

from device_sims.broker import Mosquitto
from gateway.config import load_config
from tests.conftest import sample_config
from tests.processes import GatewayProcess


async def test_worker_exits_when_the_gateway_is_killed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Kill -9 of the gateway takes its intake worker down within seconds (no orphan holds the outbox)."""
    config_path = sample_config(tmp_path, mosquitto.port)
    gateway = GatewayProcess(config_path, tmp_path / "gateway.log")
    await gateway.start_gateway(load_config(config_path))
    assert gateway.process is not None
    children = psutil.Process(gateway.process.pid).children(recursive=True)
    workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
    assert workers, "the gateway runs its intake worker as a child process"
    gateway.kill()
    deadline = time.monotonic() + 10
    while any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers):
        assert time.monotonic() < deadline, "the intake worker outlived its gateway"
        await asyncio.sleep(0.1)
