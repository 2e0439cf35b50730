"""Cancellation that a library swallowed is put back; outcomes nobody waits for are retrieved.

A timeout racing an external cancel can come out of a library (aiohttp's and asyncio's timeouts,
aiomqtt's publish) as ``TimeoutError`` instead of ``CancelledError``; a retry loop that handles
timeouts would then go round again in a task that was asked to stop, and shutdown would hang.
Loops call ``raise_if_cancelling`` before each round.
"""

from __future__ import annotations

import asyncio
from typing import Any


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` when the current task has a cancellation request pending."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def consume_result(future: asyncio.Future[Any]) -> None:
    """Done-callback for outcomes nobody waits for any more: retrieve them so none is reported twice."""
    if not future.cancelled():
        future.exception()
