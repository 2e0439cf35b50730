"""Delivery of one collection (MotorVehicles, Faces, APEs): batches from the queue, outcomes back into it.

A deliverer takes the due objects of its category (at most ``batch_max``, waiting ``linger_s`` for a
batch to fill), POSTs them as ``{"<Category>ListObject": {"<Category>Object": [...]}}`` and reads
the city's ``ResponseStatusListObject``: each status is matched to its object by ``Id``. StatusCode
0 settles the object as accepted (never sent again); any other code as refused, with
``"<StatusCode> <StatusString>"`` as the reason (the queue sends it again after ``refused_retry_s``
and parks it after ``refused_max_attempts``); an object the answer does not name is unanswered, and
refused ("not named in the city's answer") after ``STRIKES`` such answers.

A lost answer (connection dropped, timeout, 5xx) leaves the whole batch unanswered: it is sent again
later exactly as queued, with the same ids, so the city can tell a re-send from a new object. A 401
hands the session back to the keeper (register again) and the batch waits for it.

One object the city chokes on must not block its collection: see ``Deliverer`` (batches halved down
to the culprit, which alone takes a refusal; never during an outage).
"""

from __future__ import annotations

import asyncio
import time
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
    whole = whole_request_refusal(batch, answers)
    if whole is not None:
        return [ObjectResult(queued.seq, Outcome.REFUSED, whole) for queued in batch]
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


def whole_request_refusal(batch: Sequence[QueuedObject], answers: Sequence[StatusAnswer]) -> str | None:
    """The reason when the statuses name none of the batch's objects and all say no, else None."""
    batch_ids = {queued.obj.object_id for queued in batch}
    if answers and not batch_ids & {a.object_id for a in answers} and not any(a.ok for a in answers):
        return answers[0].reason or "refused"
    return None


class Round(Enum):
    """How a delivery round went: what the deliverer does next."""

    IDLE = "idle"  # nothing due: wait for a wake-up or the next poll
    DONE = "done"  # every object answered: go on at once
    SPLIT = "split"  # the batch refused as a whole: go on at once with a smaller one
    FAILED = "failed"  # no answer, or some objects unanswered: back off first


STRIKES = 3
"""Rounds a batch may fail (no answer while the city answers other calls), or an object go unnamed,
before the deliverer acts: halves its batch, or settles a batch of one (an unnamed object) refused."""

NO_ANSWER = "no answer"
"""The reason of an object refused because every batch holding it, down to itself alone, went unanswered."""

NOT_NAMED = "not named in the city's answer"
"""The reason of an object refused because ``STRIKES`` answered rounds in a row did not name it."""


class Deliverer:
    """Drains one category of the queue to the city while the session is registered.

    An object the city chokes on must not hold up the collection behind it (the queue hands out
    objects in order). While the city answers other calls, a batch that fails ``STRIKES`` rounds
    is halved, down to the culprit alone, which is then settled refused ("no answer": the queue's
    retry and park rules apply). A batch refused as a whole (a 4xx, or one status naming no object)
    is halved at once, counting nothing against its objects; only a batch of one takes the refusal.
    During an outage (nothing answered since the failures began) nothing is refused: the batch waits.
    """

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
        self._limit = city.batch_max
        self._failed_rounds = 0  # failed rounds in a row (reset by an answered round)
        self._strikes = 0  # failed rounds while the city answered other calls
        self._failing_since: float | None = None  # monotonic: the first failure of the streak
        self._unnamed: Counter[int] = Counter()  # seq -> answered rounds that did not name it
        self.wake = asyncio.Event()
        """Set when the queue has new objects of this category (from this process)."""
        self.may_send = asyncio.Event()
        """Set once the queue is ready to send from (the service sets it after applying the privacy policy)."""
        self.may_send.set()

    @property
    def limit(self) -> int:
        """The batch size now: ``batch_max``, or less while a culprit is being looked for."""
        return self._limit

    async def run(self) -> None:
        """Deliver until cancelled; back off (jittered, capped) after a round without a full answer."""
        backoff = Backoff(
            BackoffConfig(
                initial_s=self._city.retry_initial_s,
                max_s=max(self._city.retry_max_s, self._city.retry_initial_s),
            )
        )
        await self.may_send.wait()
        while True:
            raise_if_cancelling()
            await self._session.registered.wait()
            match await self.deliver_once():
                case Round.IDLE:
                    await self._idle()
                case Round.DONE:
                    backoff.reset()
                case Round.SPLIT:
                    pass
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
        limit = self._limit
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
            # refused as a whole, without a word per object (e.g. 400, 404, 413)
            return await self._refused_whole(batch, str(exc)[:300])
        except CityUnauthorizedError as exc:
            # the keeper registers again; the batch waits for it (no strike: the city is not choking)
            self._figures.unanswered[name] += len(batch)
            self._log_unanswered(len(batch), exc, quiet=True)
            return Round.FAILED
        except CityLinkError as exc:
            return await self._unanswered(batch, exc)
        whole = whole_request_refusal(batch, answers)
        if whole is not None:
            return await self._refused_whole(batch, whole)
        return await self._answered(batch, match_answers(batch, answers))

    async def _answered(self, batch: Sequence[QueuedObject], results: list[ObjectResult]) -> Round:
        name = self.category.value
        self._limit = self._city.batch_max
        self._failed_rounds = self._strikes = 0
        self._failing_since = None
        settled: list[ObjectResult] = []
        for result in results:
            if result.outcome is not Outcome.UNANSWERED:
                self._unnamed.pop(result.seq, None)
                settled.append(result)
                continue
            self._unnamed[result.seq] += 1
            if self._unnamed[result.seq] >= STRIKES:
                self._unnamed.pop(result.seq)
                settled.append(ObjectResult(result.seq, Outcome.REFUSED, NOT_NAMED))
            else:
                settled.append(result)
        await self._queue.settle(settled, self._clock())
        outcomes = Counter(r.outcome for r in settled)
        self._figures.accepted[name] += outcomes[Outcome.ACCEPTED]
        self._figures.refused[name] += outcomes[Outcome.REFUSED]
        self._figures.unanswered[name] += outcomes[Outcome.UNANSWERED]
        if outcomes[Outcome.REFUSED]:
            first = next(r for r in settled if r.outcome is Outcome.REFUSED)
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

    async def _refused_whole(self, batch: Sequence[QueuedObject], reason: str) -> Round:
        """A refusal naming no object: halve and send again; only a batch of one takes it."""
        if len(batch) > 1:
            self._limit = max(1, len(batch) // 2)
            log.info(
                "city_batch_refused_whole", category=self.category.value, objects=len(batch), reason=reason
            )
            return Round.SPLIT
        return await self._answered(batch, [ObjectResult(batch[0].seq, Outcome.REFUSED, reason)])

    async def _unanswered(self, batch: Sequence[QueuedObject], exc: CityLinkError) -> Round:
        """No usable answer: sent again as it was; while the city answers other calls, a strike."""
        name = self.category.value
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        self._failed_rounds += 1
        answered_at = self._session.answered_at
        if answered_at is not None and answered_at > self._failing_since:
            self._strikes += 1
        results = [ObjectResult(q.seq, Outcome.UNANSWERED, str(exc)[:300]) for q in batch]
        if self._strikes >= STRIKES:
            # the city answers other calls but never this batch: something in it makes it choke
            self._strikes = 0
            self._failing_since = now  # the next strikes need fresh answers to other calls
            if len(batch) == 1:
                log.warning("city_object_never_answered", category=name, seq=batch[0].seq, error=str(exc))
                self._failed_rounds = 0
                return await self._answered(batch, [ObjectResult(batch[0].seq, Outcome.REFUSED, NO_ANSWER)])
            self._limit = max(1, len(batch) // 2)
            log.info("city_batch_split", category=name, objects=len(batch), limit=self._limit)
        await self._queue.settle(results, self._clock())
        self._figures.unanswered[name] += len(batch)
        self._log_unanswered(len(batch), exc, quiet=False)
        return Round.FAILED

    def _log_unanswered(self, objects: int, exc: CityLinkError, *, quiet: bool) -> None:
        if not quiet and worth_logging(self._failed_rounds, first=3, every=50):
            log.warning(
                "city_batch_unanswered",
                category=self.category.value,
                objects=objects,
                error=str(exc),
                rounds_in_a_row=self._failed_rounds,
            )
