"""A private Mosquitto for demos, tests and benchmarks, on its own port with deliberate queue limits.

Mosquitto's default ``max_queued_messages`` is 1000 per client: a persistent session whose client
is down loses everything past that, silently. Every broker we start sets the limits on purpose.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

COMPOUND_CONF = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "compound.conf"
"""The shipped compound (device) broker configuration."""


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes] | None, *, kill: bool = False, grace_s: float = 20) -> None:
    """SIGTERM (or SIGKILL) a child and reap it; SIGKILL if it does not exit within the grace time."""
    if process is None or process.poll() is not None:
        return
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def mosquitto_binary() -> str:
    """The mosquitto executable, or a clear error saying how to install it."""
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise RuntimeError(
            "mosquitto is not installed: run 'apt-get install mosquitto' (scripts/dev does this)"
        )
    return found


class Mosquitto:
    """A Mosquitto process bound to 127.0.0.1 on a private port."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        persistence: bool = True,
        max_queued: int | None = 1_000_000,
        sys_interval_s: int | None = None,
        shipped_compound: bool = False,
    ) -> None:
        """A broker in ``workdir``; ``max_queued`` None keeps Mosquitto's default queue (1000).

        ``sys_interval_s`` is how often it republishes ``$SYS`` (its default, 10 s, when None).
        ``shipped_compound`` runs the shipped compound broker configuration instead
        (``deploy/mosquitto/compound.conf``: its queue limits, persistence and ``$SYS`` interval as
        shipped), made runnable here: this port on the loopback, files under ``workdir``, and
        anonymous clients without the ACL (the ACL is tested in ``tests/test_compound_broker.py``);
        the other options are then ignored.
        """
        self.workdir = workdir
        self.port = port or free_port()
        self.persistence = persistence
        self.max_queued = max_queued
        self.sys_interval_s = sys_interval_s
        self.shipped_compound = shipped_compound
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        """Where the generated configuration lives."""
        return self.workdir / "mosquitto.conf"

    def _shipped_compound_lines(self) -> list[str]:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        text = COMPOUND_CONF.read_text(encoding="utf-8")
        for needle in ("listener 1883\n", "allow_anonymous false", "/var/lib/mosquitto/", "log_dest syslog"):
            if needle not in text:
                raise RuntimeError(f"{COMPOUND_CONF} changed: no {needle!r} to adapt for a local run")
        text = (
            text.replace("listener 1883\n", f"listener {self.port} 127.0.0.1\n")
            .replace("allow_anonymous false", "allow_anonymous true")
            .replace("/var/lib/mosquitto/", f"{data}/")
            .replace("log_dest syslog", f"log_dest file {self.workdir}/mosquitto.log")
        )
        return [line for line in text.splitlines() if not line.startswith(("password_file ", "acl_file "))]

    def start(self) -> Mosquitto:
        """Start and wait until the port accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = (
            self._shipped_compound_lines()
            if self.shipped_compound
            else [
                f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                f"persistence {'true' if self.persistence else 'false'}",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
                *(
                    [f"max_queued_messages {self.max_queued}", "max_queued_bytes 0"]
                    if self.max_queued
                    else []
                ),
                *([f"sys_interval {self.sys_interval_s}"] if self.sys_interval_s is not None else []),
                "max_inflight_messages 1000",
                "persistent_client_expiration 1d",
                f"log_dest file {self.workdir}/mosquitto.log",
                "log_type error",
                "log_type warning",
                "log_type notice",
            ]
        )
        # Started as root (containers, CI), Mosquitto drops to its own user, which cannot enter a
        # private (0700) work directory: it would run without its log and, silently, without
        # persistence. "user root" keeps it as it was started; it means nothing to a non-root start.
        lines.append("user root")
        self.config_path.write_text("\n".join(lines) + "\n")
        self._process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode}; see {self.workdir}/mosquitto.log"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within 10 s")

    def stop(self, *, kill: bool = False) -> None:
        """Stop (SIGTERM saves persistence; ``kill`` loses what was not yet saved)."""
        stop_process(self._process, kill=kill)
        self._process = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
