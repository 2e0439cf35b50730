"""What every district event store is: the port, and how a failed write is classified."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Literal, Protocol, Self

from foundation.errors import UplinkError
from foundation.events import Event, EventKind, WatchlistHitPayload
from uplink.lineprotocol import EPOCH

HIT_CROP_KIND = EventKind.WATCHLIST_HIT
"""The one kind whose body carries a picture: ``WatchlistHitPayload.snapshot_jpeg_b64``, the matched
face cropped (a vehicle watch hit carries none)."""
HIT_CROP_FIELD = "snapshot_jpeg_b64"

HIT_CROPS_BATCH_MAX = 100
"""Most hit crops stripped in one transaction or write: a crop is up to 256 KiB of base64, so a batch
of ``batch_rows`` (sized for plain events of a few KiB) would rewrite too much at once (the SQLite
write lock, an InfluxDB answer held in memory)."""


class StoreError(UplinkError):
    """A write was not confirmed."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


@dataclass(frozen=True)
class RetentionRules:
    """What a store's retention pass enforces: the district's ``[retention]``, in the store's terms."""

    events_days: int
    hit_crops_days: int
    batch_rows: int
    alter_policy: bool = False
    rollup_days: int = 400
    """Hourly roll-ups (event counts) are kept this long: longer than events, they hold counts only."""

    def cutoff_ns(self, days: int, now: datetime) -> int:
        """The point time (``uplink.lineprotocol.point_time_ns``) ``days`` before ``now``: older is expired."""
        return (now - timedelta(days=days) - EPOCH) // timedelta(microseconds=1) * 1000


class RetentionTally(Protocol):
    """Where a store counts its retention work, added to as each batch is committed.

    A pass that fails halfway has still done (and counted) its committed batches.
    """

    events_purged: int
    hit_crops_purged: int


@dataclass
class RetentionCounts:
    """A plain ``RetentionTally`` (tools and tests; the ingester counts on itself)."""

    events_purged: int = 0
    hit_crops_purged: int = 0


@dataclass(frozen=True)
class RetentionPolicyCheck:
    """What ``InfluxV1Store.ensure_retention`` found and did.

    ``action``: ``created`` (new policy, made the database default), ``altered`` (duration changed),
    ``matches`` (already the wanted duration), ``differs`` (left as it is), ``missing`` (no policy
    named and the database has no default policy).
    """

    policy: str | None
    action: Literal["created", "altered", "matches", "differs", "missing"]
    wanted: str
    found: str | None = None


@dataclass(frozen=True)
class RetentionPass:
    """What one ``EventStore.enforce_retention`` call reports beyond its counts.

    ``policy``: the store's own retention policy, as checked in this pass (InfluxDB 1.x checks it in
    the first pass that reaches the server, then no more); None when the pass did not check one.
    """

    policy: RetentionPolicyCheck | None = None
    rollups: RetentionPolicyCheck | None = None
    """InfluxDB 1.x: the roll-up retention policy, checked with ``policy``."""


class EventStore(Protocol):
    """Where the district keeps events."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def write(self, events: Sequence[Event]) -> None:
        """Store the events durably (idempotent); raise ``StoreError`` if not confirmed."""
        ...

    async def ping(self) -> None:
        """Check the store answers (readiness); raise ``StoreError`` if not."""
        ...

    async def enforce_retention(
        self, rules: RetentionRules, now: datetime, tally: RetentionTally
    ) -> RetentionPass:
        """Expire what ``rules`` say is too old at ``now``, as far as this store can; idempotent.

        Events older than ``events_days`` go (deleted here, or by the store's own policy, which this
        checks); watch-list hits older than ``hit_crops_days`` lose their face crop
        (``payload.snapshot_jpeg_b64`` becomes null) and keep everything else. Each committed batch
        is added to ``tally`` at once; raises ``StoreError`` on failure (the caller retries).
        """
        ...


def without_hit_crop(body: str) -> str:
    """A stored watch-list hit's body with its face crop set to null and everything else kept.

    Re-serialized through the event model, so the body stays what the ingester writes
    (``Event.model_dump_json``); a body the model no longer accepts (an older schema) is edited as
    plain JSON instead, so that it cannot keep its crop.
    """
    try:
        event = Event.model_validate_json(body)
    except ValueError:
        document = json.loads(body)
        document["payload"][HIT_CROP_FIELD] = None
        return json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    payload = event.payload
    if not isinstance(payload, WatchlistHitPayload):
        raise TypeError(f"event {event.event_id} is a {event.kind.value}, not a {HIT_CROP_KIND.value}")
    stripped = payload.model_copy(update={HIT_CROP_FIELD: None})
    return event.model_copy(update={"payload": stripped}).model_dump_json()


def classify_http(status: int, text: str, where: str) -> StoreError:
    """A store server's HTTP error answer, as retryable (5xx, 429) or not (other 4xx)."""
    # 5xx and 429: the server may recover. 4xx: retrying the same write cannot help.
    retryable = status >= 500 or status == 429
    return StoreError(f"{where} answered {status}: {text[:300]}", retryable=retryable, status=status)
