"""Supervision of long-lived connections and loops: restart with jittered, capped backoff, never give up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from foundation.backoff import Backoff
from foundation.cancellation import raise_if_cancelling
from foundation.errors import TransportError
from foundation.health import Health

log = structlog.get_logger(__name__)


async def supervise(
    name: str,
    run_once: Callable[[Callable[[], None]], Awaitable[None]],
    backoff: Backoff,
    up: asyncio.Event | None = None,
    health: Health | None = None,
) -> None:
    """Keep one transport connected: reconnect with jittered, capped backoff; never give up.

    Transport failures are expected and logged once per outage; anything else is a bug, logged with
    its traceback and retried after the same backoff, so one broken transport never stops the rest.
    """
    connected_before = False

    def connected() -> None:
        nonlocal connected_before
        connected_before = True
        backoff.reset()
        if up is not None:
            up.set()
        if health is not None:
            health.mark(name, up=True)

    with structlog.contextvars.bound_contextvars(transport=name):
        while True:
            raise_if_cancelling()
            try:
                await run_once(connected)
                reason = "connection ended"
            except TransportError as exc:
                reason = str(exc)
            except Exception:
                log.exception("transport_crashed")
                reason = "crashed"
            delay = backoff.next_delay()
            if health is not None:
                health.mark(name, up=False)
            if connected_before:
                log.warning("transport_down", reason=reason, retry_in_s=round(delay, 2))
            else:
                log.info("transport_connect_failed", reason=reason, retry_in_s=round(delay, 2))
            connected_before = False
            await asyncio.sleep(delay)


def run_forever(run: Callable[[], Awaitable[None]]) -> Callable[[Callable[[], None]], Awaitable[None]]:
    """A task that needs no connection, in the shape ``supervise`` restarts."""

    async def once(connected: Callable[[], None]) -> None:
        connected()
        await run()

    return once
