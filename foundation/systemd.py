"""sd_notify without a dependency: READY, STOPPING and WATCHDOG datagrams to $NOTIFY_SOCKET; the watchdog loop."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


def sd_notify(state: str) -> bool:
    """Send one notification; returns False when not running under systemd (no socket)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def watchdog_interval() -> float | None:
    """Half of systemd's ``WatchdogSec`` (``$WATCHDOG_USEC``) in seconds, or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    return int(usec) / 2_000_000 if usec else None


async def watchdog(
    alive: Callable[[], Awaitable[object]],
    interval: float,
    *,
    failures: tuple[type[Exception], ...],
    what: str,
) -> None:
    """Send ``WATCHDOG=1`` every ``interval`` while ``alive()`` answers within it.

    ``alive`` checks what a restart would cure (the event loop, a worker thread or process); a blocked
    loop or a hung worker stops the pings, and systemd restarts the daemon. ``failures`` are the
    errors that count as "not alive" (anything else is a bug and propagates).
    """
    while True:
        try:
            async with asyncio.timeout(interval):
                await alive()
        except TimeoutError:
            log.warning("watchdog_skipped", reason=f"{what} did not answer in time")
        except failures as exc:
            log.warning("watchdog_skipped", reason=f"{what} failed: {exc}")
        else:
            sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)
