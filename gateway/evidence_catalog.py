"""What the compound knows about its stored media, as the evidence service asks for it.

The outbox keeps a media index (every picture that arrived with an event, every file fetched from
a device, with the event's kind, device and time); the evidence service (requests from the district,
proactive alarm evidence, manifests) reads it only through ``EvidenceCatalog``. Media are files in
the content-addressed media store; ``path`` is where the bytes are now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from foundation.events import EventKind, Severity
from uplink.evidence import MediaItem, MediaRole


class FetchState(StrEnum):
    """Where a ``device:`` reference of an event stands."""

    PENDING = "pending"  # not fetched yet (queued, or retrying after a failure)
    FETCHED = "fetched"
    FAILED = "failed"  # gave up: attempts or age exhausted, too large, refused by the device


@dataclass(frozen=True)
class StoredMedia:
    """One file of one event that is in the media store."""

    item: MediaItem
    path: Path


@dataclass(frozen=True)
class DeviceFetch:
    """One ``device:`` reference of an event and where its fetch stands."""

    role: MediaRole
    state: FetchState
    detail: str | None = None  # why it failed


@dataclass(frozen=True)
class EventMedia:
    """Everything the compound holds, or is still fetching, for one event."""

    event_id: str
    kind: EventKind
    device_id: str
    dialect: str
    severity: Severity
    occurred_at: datetime
    stored: tuple[StoredMedia, ...]
    fetches: tuple[DeviceFetch, ...] = ()

    @property
    def fetching(self) -> bool:
        """Whether some of its device media may still arrive."""
        return any(f.state is FetchState.PENDING for f in self.fetches)


@dataclass(frozen=True)
class Outgoing:
    """A file queued to go up without a request (a critical alarm's snapshot) or announced."""

    key: int  # the queue row, for marking it done
    media: StoredMedia


class EvidenceCatalog(Protocol):
    """The media index, as the evidence service reads and marks it (all calls off the event loop)."""

    async def event_media(self, event_id: str) -> EventMedia | None:
        """The event's media, or None when the compound has no record of the event's media."""
        ...

    async def window_media(
        self, device_id: str, since: datetime, until: datetime, limit: int
    ) -> Sequence[EventMedia]:
        """Media of one device's events that occurred in ``[since, until)``, oldest first."""
        ...

    async def proactive_pending(self, limit: int) -> Sequence[Outgoing]:
        """Files to send up unasked (fetched snapshot/trajectory of critical alarms), oldest first."""
        ...

    async def proactive_sent(self, keys: Sequence[int]) -> None:
        """Those files went up (every chunk acknowledged by the broker)."""
        ...

    async def manifest_pending(self, limit: int) -> Sequence[Outgoing]:
        """Fetched device media not yet announced to the district, oldest first."""
        ...

    async def manifest_sent(self, keys: Sequence[int]) -> None:
        """Those files were announced (the manifest was acknowledged by the broker)."""
        ...
