"""Gateway and ingester daemons as child processes that fault tests can SIGKILL and restart."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

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
        """SIGKILL: no cleanup, no flush, no goodbye."""
        stop_process(self.process, kill=True)

    def stop(self) -> None:
        """SIGTERM and wait."""
        stop_process(self.process)


class GatewayProcess(DaemonProcess):
    """``compound-gateway run``: ready when pushes are accepted and the MQTT subscriptions exist."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        super().__init__("run", config_path, log_path, b"mqtt_intake_connected", env)

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
