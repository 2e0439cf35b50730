"""Supervision of long-lived connections and loops: restart with jittered, capped backoff, never give up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

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


async def until_first_ends(*work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` side by side until one ends; cancel the rest; raise what ended it.

    For a supervised session's parallel loops (publish and receive) instead of a ``TaskGroup``:
    on Python 3.11 a group whose task fails while the group waits to exit leaves a cancellation
    request on the caller's task (it never calls ``uncancel``), so ``supervise``'s
    ``raise_if_cancelling`` ended the session for good at its first disconnect instead of
    reconnecting. A loop that returns raises ``TransportError``.
    """
    tasks = [asyncio.create_task(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # waits without raising the tasks' CancelledError (a cancel of this task still raises)
        await asyncio.wait(tasks)
    for task in done:
        if not task.cancelled() and (exc := task.exception()) is not None:
            raise exc
    raise TransportError("a session loop ended")
