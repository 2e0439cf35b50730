"""The intake worker process: it does not outlive a SIGKILLed gateway, and a dead one is replaced."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
import pytest

from adapters.base import RawMessage
from device_sims.broker import Mosquitto
from foundation.errors import OutboxError
from gateway.config import load_config
from gateway.intake import IntakeItem
from gateway.pipeline import IntakePipeline
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


async def test_batch_submitted_to_a_dead_worker_fails_cleanly_and_the_worker_is_replaced(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A batch handed over after the worker died, before its replacement, is refused, not a crash.

    A submission to a dead worker must come back as a failed batch; with the process pool it
    raised at once, which escaped ``start`` and ended the HTTP batcher (and with it the gateway).
    Checked to fail (process pool: by removing its ``except BrokenProcessPool``; socket-pair worker:
    by removing the dead-worker check in ``_ProcessWorker._request``, when an AttributeError escapes).
    """
    config = load_config(sample_config(tmp_path, mosquitto.port))
    item = IntakeItem("mqtt", RawMessage(b"{}", topic="nobody/x/y"), 1024)
    async with IntakePipeline(config, b"k" * 32) as pipeline:
        assert len(await pipeline.process([item])) == 1
        [worker] = [c for c in psutil.Process().children() if "spawn_main" in " ".join(c.cmdline())]
        worker.kill()
        deadline = time.monotonic() + 10
        while not pipeline._worker.dead:  # type: ignore[union-attr]  # noticed: the next submit fails at once
            assert time.monotonic() < deadline, "the pipeline never noticed its dead worker"
            await asyncio.sleep(0.02)
        with pytest.raises(OutboxError, match="worker died"):
            await pipeline.process([item])
        assert pipeline.workers_replaced == 1
        assert pipeline.batches_lost == 1
        assert len(await pipeline.process([item])) == 1  # the replacement commits
        assert pipeline.batches_in_flight == 0
