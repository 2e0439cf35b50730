"""The durable queue of objects for the city: fed by the ingesters at commit, drained by the city service.

One SQLite file (``[city] queue_path``, WAL) shared by the processes of one host: each ingester adds
the objects of the events it has just stored, before it acknowledges them to the broker, so an event
the district holds is in the queue too (a redelivered event adds nothing: an object is unique by
category and source, and keeps the id it was given first). The city service takes due objects,
sends them, and settles each one by the city's answer; the API reads counts and the link state.

SKELETON: the signatures are the contract between the parts; the bodies are being written.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from district.city.model import Category, CityObject, LinkState, ObjectResult, QueuedObject
from foundation.sqlite_thread import SqliteBacked


@dataclass(frozen=True)
class Refusal:
    """An object the city refused at its last attempt, with the city's reason."""

    seq: int
    category: Category
    object_id: str
    source: str
    attempts: int
    reason: str
    at: datetime
    parked: bool  # refused ``refused_max_attempts`` times: kept, shown, no longer sent


@dataclass(frozen=True)
class QueueCounts:
    """How much is waiting, refused and done, per category (``Category`` values as keys)."""

    backlog: dict[str, int]  # not accepted and not parked (includes refused objects waiting to retry)
    refused: dict[str, int]  # whose last answer was a refusal (parked included)
    parked: dict[str, int]
    accepted: dict[str, int]
    oldest_pending_at: datetime | None  # occurred_at of the oldest object in the backlog


class CityQueue(SqliteBacked):
    """The queue file; open with ``async with``."""

    def __init__(self, path: Path, *, refused_retry_s: float = 300.0, refused_max_attempts: int = 10) -> None:
        raise NotImplementedError

    async def add(self, objects: Sequence[CityObject]) -> int:
        """Add objects not yet queued (unique by category and source); returns how many were new."""
        raise NotImplementedError

    async def take(self, category: Category, limit: int, now: datetime) -> list[QueuedObject]:
        """Up to ``limit`` objects of ``category`` due at ``now``, oldest first.

        Due: never accepted, not parked, and (if refused) refused at least ``refused_retry_s`` ago.
        Taking does not lock: one city service drains a queue.
        """
        raise NotImplementedError

    async def settle(self, results: Sequence[ObjectResult], now: datetime) -> None:
        """Record the city's answer for each object, in one transaction.

        Accepted: done for good. Refused: the reason kept, attempts counted, due again after
        ``refused_retry_s``, parked after ``refused_max_attempts``. Unanswered: due again at once,
        the same object (same id) as before.
        """
        raise NotImplementedError

    async def objects_after(
        self, seq: int, categories: Collection[Category], limit: int
    ) -> list[QueuedObject]:
        """Objects of ``categories`` queued after ``seq`` whatever their state (subscription cursors)."""
        raise NotImplementedError

    async def counts(self) -> QueueCounts:
        """Backlog, refusals, parked and accepted per category."""
        raise NotImplementedError

    async def refusals(self, limit: int = 50) -> list[Refusal]:
        """The most recent refusals, newest first."""
        raise NotImplementedError

    async def save_link_state(self, state: LinkState) -> None:
        """The city service's view of the link, for ``city status`` and the console."""
        raise NotImplementedError

    async def link_state(self) -> LinkState:
        """The last saved link state (an empty, unregistered one if the service never ran)."""
        raise NotImplementedError

    async def purge(self, accepted_before: datetime) -> int:
        """Delete objects accepted before ``accepted_before``; returns how many."""
        raise NotImplementedError
