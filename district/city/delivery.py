"""Delivery of one collection (MotorVehicles, Faces, APEs): batches from the queue, outcomes back into it.

A deliverer takes the due objects of its category (at most ``batch_max``, waiting ``linger_s`` for a
batch to fill), POSTs them as ``{"<Category>ListObject": {"<Category>Object": [...]}}`` and reads
the city's ``ResponseStatusListObject``: each status is matched to its object by ``Id``. StatusCode
0 settles the object as accepted (never sent again); any other code as refused, with
``"<StatusCode> <StatusString>"`` as the reason (the queue sends it again after ``refused_retry_s``
and parks it after ``refused_max_attempts``); an object the answer does not name is unanswered.

A lost answer (connection dropped, timeout, 5xx) leaves the whole batch unanswered: it is sent again
later exactly as queued, with the same ids, so the city can tell a re-send from a new object. A 401
hands the session back to the keeper (register again) and the batch waits for it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

import structlog

from district.city.config import CityConfig
from district.city.model import Category, ObjectResult, Outcome, QueuedObject
from district.city.queue import CityQueue
from district.city.session import (
    CityLinkError,
    CityRefusedError,
    CitySession,
    CityUnauthorizedError,
    StatusAnswer,
)
from foundation.backoff import Backoff, BackoffConfig
from foundation.cancellation import raise_if_cancelling
from foundation.events import utc_now
from foundation.logging import worth_logging

log = structlog.get_logger(__name__)

IDLE_POLL_S = 1.0
"""An idle deliverer looks at the queue this often (the ingesters feed it from other processes)."""


@dataclass
class DeliveryFigures:
    """What the deliverers counted, per category (``Category`` values as keys)."""

    accepted: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    unanswered: Counter[str] = field(default_factory=Counter)
    batches: Counter[str] = field(default_factory=Counter)


def match_answers(batch: Sequence[QueuedObject], answers: Sequence[StatusAnswer]) -> list[ObjectResult]:
    """Each object's outcome, by the ``Id`` of its status: accepted (0), refused (other), or unanswered.

    A status naming no object of the batch is ignored; an object named twice takes its first status.
    An answer whose statuses name none of the objects and all say no (a single
    ``ResponseStatusObject`` for the whole request, e.g. an envelope the city cannot read) refuses
    every object with its reason: unanswered, the batch would be sent again and again, and block
    the objects behind it.
    """
    by_id: dict[str, StatusAnswer] = {}
    for answer in answers:
        by_id.setdefault(answer.object_id, answer)
    batch_ids = {queued.obj.object_id for queued in batch}
    if answers and not batch_ids & by_id.keys() and not any(answer.ok for answer in answers):
        reason = answers[0].reason or "refused"
        return [ObjectResult(queued.seq, Outcome.REFUSED, reason) for queued in batch]
    results: list[ObjectResult] = []
    for queued in batch:
        found = by_id.get(queued.obj.object_id)
        if found is None:
            results.append(ObjectResult(queued.seq, Outcome.UNANSWERED, "the city's answer did not name it"))
        elif found.ok:
            results.append(ObjectResult(queued.seq, Outcome.ACCEPTED))
        else:
            results.append(ObjectResult(queued.seq, Outcome.REFUSED, found.reason or "refused"))
    return results


class Round(Enum):
    """How a delivery round went: what the deliverer does next."""

    IDLE = "idle"  # nothing due: wait for a wake-up or the next poll
    DONE = "done"  # every object answered: go on at once
    FAILED = "failed"  # no answer, or some objects unanswered: back off first


class Deliverer:
    """Drains one category of the queue to the city while the session is registered."""

    def __init__(
        self,
        category: Category,
        queue: CityQueue,
        session: CitySession,
        city: CityConfig,
        figures: DeliveryFigures,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.category = category
        self._queue = queue
        self._session = session
        self._city = city
        self._figures = figures
        self._clock = clock
        self.wake = asyncio.Event()
        """Set when the queue has new objects of this category (from this process)."""

    async def run(self) -> None:
        """Deliver until cancelled; back off (jittered, capped) after a round without a full answer."""
        backoff = Backoff(
            BackoffConfig(
                initial_s=self._city.retry_initial_s,
                max_s=max(self._city.retry_max_s, self._city.retry_initial_s),
            )
        )
        while True:
            raise_if_cancelling()
            await self._session.registered.wait()
            match await self.deliver_once():
                case Round.IDLE:
                    await self._idle()
                case Round.DONE:
                    backoff.reset()
                case Round.FAILED:
                    await asyncio.sleep(backoff.next_delay())

    async def _idle(self) -> None:
        try:
            async with asyncio.timeout(max(self._city.linger_s, IDLE_POLL_S)):
                await self.wake.wait()
        except TimeoutError:
            pass
        self.wake.clear()

    async def deliver_once(self) -> Round:
        """Take one batch, send it, settle every object of it by the city's answer."""
        limit = self._city.batch_max
        batch = await self._queue.take(self.category, limit, self._clock())
        if not batch:
            return Round.IDLE
        if len(batch) < limit and self._city.linger_s > 0:
            # let a burst fill the batch (taking does not lock: the same objects come back, and more)
            await asyncio.sleep(self._city.linger_s)
            batch = await self._queue.take(self.category, limit, self._clock()) or batch
        name = self.category.value
        self._figures.batches[name] += 1
        try:
            answers = await self._session.post(self.category, [queued.obj.body for queued in batch])
        except CityRefusedError as exc:
            # refused as a whole, without a word per object (e.g. 400 or 404): each one is refused
            results = [ObjectResult(q.seq, Outcome.REFUSED, str(exc)[:300]) for q in batch]
        except CityLinkError as exc:
            results = [ObjectResult(q.seq, Outcome.UNANSWERED, str(exc)[:300]) for q in batch]
            await self._queue.settle(results, self._clock())
            self._figures.unanswered[name] += len(batch)
            failures = self._figures.unanswered[name]
            if not isinstance(exc, CityUnauthorizedError) and worth_logging(failures, first=3, every=50):
                log.warning("city_batch_unanswered", category=name, objects=len(batch), error=str(exc))
            return Round.FAILED
        else:
            results = match_answers(batch, answers)
        await self._queue.settle(results, self._clock())
        outcomes = Counter(r.outcome for r in results)
        self._figures.accepted[name] += outcomes[Outcome.ACCEPTED]
        self._figures.refused[name] += outcomes[Outcome.REFUSED]
        self._figures.unanswered[name] += outcomes[Outcome.UNANSWERED]
        if outcomes[Outcome.REFUSED]:
            first = next(r for r in results if r.outcome is Outcome.REFUSED)
            log.info(
                "city_objects_refused",
                category=name,
                objects=outcomes[Outcome.REFUSED],
                first_reason=first.reason,
            )
        if outcomes[Outcome.UNANSWERED]:
            log.warning("city_objects_unanswered", category=name, objects=outcomes[Outcome.UNANSWERED])
            return Round.FAILED
        return Round.DONE
