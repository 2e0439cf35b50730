"""Gateway and ingester daemons as child processes that fault tests can SIGKILL and restart.

Each daemon starts in a session (and process group) of its own, as a systemd unit runs in its own
control group, so a test can kill the daemon's main process alone or the whole group at once
(``KillMode=control-group``), and nothing of it outlives the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import psutil

from device_sims.broker import stop_process
from gateway.config import GatewayConfig


class DaemonProcess:
    """``python -m cli <command> --config FILE``, ready once its log shows ``ready_marker``."""

    def __init__(
        self,
        command: str,
        config_path: Path,
        log_path: Path,
        ready_marker: bytes,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = [sys.executable, "-m", "cli", command, "--config", str(config_path)]
        self.log_path = log_path
        self.ready_marker = ready_marker
        self.env = env  # None: this process's environment
        self.process: subprocess.Popen[bytes] | None = None

    def _markers(self) -> int:
        return self.log_path.read_bytes().count(self.ready_marker) if self.log_path.exists() else 0

    async def start(
        self, also_ready: Callable[[], Awaitable[bool]] | None = None, limit_s: float = 30
    ) -> float:
        """Start and wait until ready; returns the seconds it took."""
        started = time.monotonic()
        before = self._markers()
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=log, env=self.env, start_new_session=True
            )
        while True:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() - started < limit_s, f"{self.argv[3]} did not become ready"
            if self._markers() > before and (also_ready is None or await also_ready()):
                return time.monotonic() - started
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the main process alone: no cleanup, no flush, no goodbye; its children live on."""
        stop_process(self.process, kill=True)

    def kill_group(self) -> None:
        """SIGKILL the main process and every process it started, at the same instant (as systemd)."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM and wait; then SIGKILL whatever of the group is left (a stopped or orphaned child)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGCONT)  # a test may have paused part of it
        stop_process(self.process)
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


class GatewayProcess(DaemonProcess):
    """``compound-gateway run``: ready when pushes are accepted and the MQTT subscriptions exist."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        super().__init__("run", config_path, log_path, b"mqtt_intake_connected", env)

    def worker(self) -> psutil.Process:
        """The intake worker: the gateway's one multiprocessing child (not its resource tracker)."""
        assert self.process is not None
        children = psutil.Process(self.process.pid).children()
        workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 1, f"expected one intake worker, found {workers}"
        return workers[0]

    async def start_gateway(self, config: GatewayConfig) -> float:
        """Start and wait for /healthz as well as the MQTT intake."""

        async def http_up() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{config.http.port}/healthz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        return await self.start(http_up)


class IngesterProcess(DaemonProcess):
    """``compound-gateway ingest``: ready when subscribed."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        super().__init__("ingest", config_path, log_path, b"ingester_connected", env)
