"""A private Mosquitto for demos, tests and benchmarks, on its own port with deliberate queue limits.

Mosquitto's default ``max_queued_messages`` is 1000 per client: a persistent session whose client
is down loses everything past that, silently. Every broker we start sets the limits on purpose.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from foundation.durable_files import write_atomically
from gateway.broker_accounts import BrokerAccounts

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


def local_compound_conf(port: int, files_dir: Path, data_dir: Path, log_dest: str) -> str:
    """The shipped compound broker configuration made runnable here, and nothing else changed.

    Its listener moves to ``port`` on the loopback, its password file and ACL to ``files_dir``, its
    persistence to ``data_dir``, its log to ``log_dest`` (a Mosquitto ``log_dest`` value).
    """
    text = COMPOUND_CONF.read_text(encoding="utf-8")
    for needle in ("listener 1883\n", "/etc/mosquitto/compound/", "/var/lib/mosquitto/", "log_dest syslog"):
        if needle not in text:
            raise RuntimeError(f"{COMPOUND_CONF} changed: no {needle!r} to adapt for a local run")
    return (
        text.replace("listener 1883\n", f"listener {port} 127.0.0.1\n")
        .replace("/etc/mosquitto/compound/", f"{files_dir}/")
        .replace("/var/lib/mosquitto/", f"{data_dir}/")
        .replace("log_dest syslog", f"log_dest {log_dest}")
    )


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
        accounts: BrokerAccounts | None = None,
    ) -> None:
        """A broker in ``workdir``; ``max_queued`` None keeps Mosquitto's default queue (1000).

        ``sys_interval_s`` is how often it republishes ``$SYS`` (its default, 10 s, when None).
        ``shipped_compound`` runs the shipped compound broker configuration instead
        (``deploy/mosquitto/compound.conf``: its queue limits, persistence and ``$SYS`` interval as
        shipped), made runnable here: this port on the loopback, files under ``workdir``, with the
        password file and ACL of ``accounts`` (required then: the shipped file refuses anonymous
        clients); the other options are then ignored.

        ``accounts`` (``gateway/broker_accounts.py``): only these logins connect, each to its own
        topics and to its own session (``use_username_as_clientid``: the client id a client sends is
        replaced by its user name, so one connection per account), as on a deployed compound broker;
        None: anonymous clients may do anything, with any client id (a transport test's broker, or
        the district's).
        """
        if shipped_compound and accounts is None:
            raise ValueError("shipped_compound runs the shipped file's authentication: pass accounts")
        self.workdir = workdir
        self.port = port or free_port()
        self.persistence = persistence
        self.max_queued = max_queued
        self.sys_interval_s = sys_interval_s
        self.shipped_compound = shipped_compound
        self.accounts = accounts
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        """Where the generated configuration lives."""
        return self.workdir / "mosquitto.conf"

    def _shipped_compound_lines(self) -> list[str]:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        text = local_compound_conf(self.port, self.workdir, data, f"file {self.workdir}/mosquitto.log")
        self._write_accounts()
        # "Reloading config." is an information line: admit() waits for it
        return [*text.splitlines(), "log_type information"]

    def _account_lines(self) -> list[str]:
        if self.accounts is None:
            return ["allow_anonymous true"]
        self._write_accounts()
        return [
            "allow_anonymous false",
            f"password_file {self.workdir}/passwd",
            f"acl_file {self.workdir}/acl",
            # as deploy/mosquitto/compound.conf: no account takes over another's session by its client id
            "use_username_as_clientid true",
            "log_type information",  # "Reloading config.": admit() waits for it
        ]

    def _write_accounts(self) -> None:
        assert self.accounts is not None  # noqa: S101 - callers check
        write_atomically(self.workdir / "passwd", self.accounts.passwd_text().encode())
        write_atomically(self.workdir / "acl", self.accounts.acl_text().encode())

    def admit(self, accounts: BrokerAccounts) -> None:
        """Replace the accounts and make the running broker re-read them (SIGHUP), as an installer would.

        Mosquitto re-reads its password file and ACL on SIGHUP (for tests with other inventories
        than the sample's). Returns once the log shows the reload.
        """
        if self.accounts is None:
            raise ValueError("this broker admits anonymous clients: start it with accounts to change them")
        self.accounts = accounts
        self._write_accounts()
        if self._process is not None and self._process.poll() is None:
            log = self.workdir / "mosquitto.log"
            before = (
                log.read_text(encoding="utf-8", errors="replace").count("Reloading config")
                if log.exists()
                else 0
            )
            os.kill(self._process.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
                if text.count("Reloading config") > before:
                    # the line is logged just before the same loop pass re-reads both files
                    time.sleep(0.1)
                    return
                time.sleep(0.02)
            raise RuntimeError(f"mosquitto did not log a reload within 10 s; see {log}")

    def start(self) -> Mosquitto:
        """Start and wait until the port accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = (
            self._shipped_compound_lines()
            if self.shipped_compound
            else [
                f"listener {self.port} 127.0.0.1",
                *self._account_lines(),
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
