"""A private InfluxDB 1.x server (Debian's influxd) for tests, demos and benchmarks."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from device_sims.broker import free_port, stop_process


def influxd_binary() -> str:
    """The influxd executable, or a clear error saying how to install it."""
    found = shutil.which("influxd") or ("/usr/bin/influxd" if Path("/usr/bin/influxd").exists() else None)
    if found is None:
        raise RuntimeError("influxd is not installed: run 'apt-get install influxdb' (scripts/dev does this)")
    return found


class InfluxServer:
    """influxd bound to 127.0.0.1 on private ports, data in ``workdir``."""

    def __init__(self, workdir: Path, port: int | None = None, retention_check: str | None = None) -> None:
        self.workdir = workdir
        # e.g. "1s": expired shard groups are dropped that often (off by default: tests own their data)
        self.retention_check = retention_check
        self.port = port or free_port()
        self.rpc_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> InfluxServer:
        """Start and wait until /ping answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "influxdb.conf"
        retention = (
            f'enabled = true\n  check-interval = "{self.retention_check}"'
            if self.retention_check
            else "enabled = false"
        )
        config.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{self.workdir}/meta"
[data]
  dir = "{self.workdir}/data"
  wal-dir = "{self.workdir}/wal"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = false
  log-enabled = false
[retention]
  {retention}
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"""
        )
        log = (self.workdir / "influxd.log").open("ab")
        with log:
            self._process = subprocess.Popen(
                [influxd_binary(), "-config", str(config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"influxd exited with {self._process.returncode}; see {self.workdir}/influxd.log"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=0.5) as response:  # noqa: S310 - our own loopback URL
                    if response.status == 204:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"influxd did not answer on port {self.port} within 30 s")

    def pause(self) -> None:
        """SIGSTOP: the server takes connections (the kernel's backlog) but answers nothing."""
        if self._process is None:
            raise RuntimeError("influxd is not running")
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``: requests that waited are handled now."""
        if self._process is None:
            raise RuntimeError("influxd is not running")
        self._process.send_signal(signal.SIGCONT)

    def stop(self, *, kill: bool = False) -> None:
        """Stop (SIGTERM) or kill (a paused server is resumed first, so that SIGTERM can land)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)
        stop_process(self._process, kill=kill)
        self._process = None

    def __enter__(self) -> InfluxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
