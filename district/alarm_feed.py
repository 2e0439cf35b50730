"""New alarms as they reach the store, for every console left open (one poller, many listeners).

The console's alarm queue updates without a reload (server-sent events). The API process does not
see the uplink; it sees the store. One ``AlarmFeed`` per process asks the store for the critical
events of a recent window every ``poll_s`` and hands each one it has not handed out before to every
listener whose scope includes its compound. The window is by time of occurrence and generous
(``window``), so an alarm that arrives late (a compound back from an outage) is still announced;
the ids already announced are remembered for as long as they can fall inside the window.

Listeners read from bounded queues. A listener that does not keep up (a stalled browser tab)
loses the oldest alarms of its queue and is told so (``missed``), so its page reloads the queue
instead of showing a silent gap; the poller never waits for a listener.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from district.query_backends import QueryBackend
from district.query_model import Selection
from foundation.cancellation import raise_if_cancelling
from foundation.events import Event, Severity, utc_now
from uplink.stores import StoreError

log = structlog.get_logger(__name__)

NS = 1_000_000_000
MAX_PER_POLL = 500  # alarms read per poll; a storm beyond it is announced over the next polls


@dataclass(eq=False)  # each listener is its own (kept in a set by identity)
class Listener:
    """One open console: its scope and its queue of alarms not yet sent to it."""

    compounds: frozenset[str] | None  # None: every compound of the district
    queue: asyncio.Queue[Event]
    missed: int = 0  # alarms dropped from a full queue since it last read

    def wants(self, event: Event) -> bool:
        """Whether the alarm is inside this console's scope."""
        return self.compounds is None or event.compound_id in self.compounds

    def offer(self, event: Event) -> None:
        """Queue the alarm; a full queue drops its oldest (overflow policy: newest alarms win)."""
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
                self.missed += 1
        self.queue.put_nowait(event)

    def take_missed(self) -> int:
        """How many alarms were dropped since the last call (the count starts again at zero)."""
        missed, self.missed = self.missed, 0
        return missed


@dataclass
class AlarmFeed:
    """Polls the store for new alarms and fans them out (see the module docstring)."""

    backend: QueryBackend
    district_id: str
    window: timedelta = timedelta(hours=24)
    poll_s: float = 1.0
    queue_size: int = 200
    clock: Callable[[], datetime] = utc_now
    listeners: set[Listener] = field(default_factory=set)
    announced: OrderedDict[str, int] = field(default_factory=OrderedDict)  # event id -> its time (ns)
    polls: int = 0
    failures: int = 0
    _primed: bool = False

    @contextlib.contextmanager
    def listen(self, compounds: frozenset[str] | None) -> Iterator[Listener]:
        """A listener for the block's duration (an SSE connection's lifetime)."""
        listener = Listener(compounds, asyncio.Queue(self.queue_size))
        self.listeners.add(listener)
        try:
            yield listener
        finally:
            self.listeners.discard(listener)

    async def run(self) -> None:
        """Poll until cancelled; a failing store is logged and tried again at the next poll."""
        while True:
            raise_if_cancelling()
            try:
                await self.poll_once()
            except StoreError as exc:
                self.failures += 1
                log.warning("alarm_feed_store_failed", error=str(exc), failures=self.failures)
            await asyncio.sleep(self.poll_s)

    async def poll_once(self) -> list[Event]:
        """One look at the store; the alarms announced by it (the first look only remembers)."""
        now = self.clock()
        start_ns = int((now - self.window).timestamp() * NS)
        selection = Selection(
            district_id=self.district_id,
            compounds=None,
            start_ns=start_ns,
            end_ns=int((now + timedelta(days=1)).timestamp() * NS),  # device clocks run ahead
            severity=Severity.CRITICAL.value,
        )
        events = await self.backend.find(selection, newest_first=True, limit=MAX_PER_POLL, cursor_ns=None)
        self.polls += 1
        fresh = [e for e in reversed(events) if e.event_id not in self.announced]  # oldest first
        for event in fresh:
            self.announced[event.event_id] = int(event.occurred_at.timestamp() * NS)
        self._forget_before(start_ns)
        if not self._primed:
            # what was in the store before this process started is the page's first load, not news
            self._primed = True
            return []
        for event in fresh:
            for listener in self.listeners:
                if listener.wants(event):
                    listener.offer(event)
        if fresh:
            log.info("alarm_feed_new", alarms=len(fresh), listeners=len(self.listeners))
        return fresh

    def _forget_before(self, start_ns: int) -> None:
        # an id whose alarm left the window cannot be read again: forget it (bounded memory)
        stale = [event_id for event_id, at in self.announced.items() if at < start_ns]
        for event_id in stale:
            del self.announced[event_id]
