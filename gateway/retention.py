"""Bounded retention in the compound: pictures and outbox tombstones are forgotten on a schedule.

Pictures (face snapshots, plates, scenes) are personal data: they are deleted after
``[privacy] media_retention_days``. A delivered event leaves a tombstone (its id, no body) so
that a device's re-send is recognised as a duplicate; after ``[state] dedup_window_days`` the
tombstone goes too (a re-send later than that is sent up again, and the district store, keyed by
event id, keeps it once). Runs at start and then hourly; the media index rows of purged
pictures go with them.

The media store also has a byte budget (``[evidence] media_max_bytes``), checked every
``[evidence.fetch] budget_every_s`` by its own task (``run_budget``): over it, files are deleted
oldest first, every routine picture before any alarm evidence (fetched media of critical alarms),
and their index rows with them (docs/evidence.md, "Media byte budget").
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from foundation.cancellation import raise_if_cancelling
from foundation.events import utc_now
from foundation.health import MetricFamilies
from gateway.config import GatewayConfig
from gateway.outbox import OutboxReader

log = structlog.get_logger(__name__)

RETENTION_EVERY_S = 3600.0


class Retention:
    """The hourly purge of old pictures and tombstones, with its counters."""

    def __init__(self, config: GatewayConfig, reader: OutboxReader) -> None:
        self._config = config
        self._reader = reader
        self.media_purged = 0
        self.tombstones_purged = 0
        self.media_bytes = 0
        self.evicted: dict[str, int] = {"routine": 0, "evidence": 0}

    async def run(self) -> None:
        """Purge now and every hour until cancelled."""
        while True:
            raise_if_cancelling()
            await self.purge_once()
            await asyncio.sleep(RETENTION_EVERY_S)

    async def purge_once(self) -> None:
        """Delete what is past its retention period."""
        now = utc_now()
        media_cutoff = now - timedelta(days=self._config.privacy.media_retention_days)
        files = await self._reader.purge_media(media_cutoff)
        if files:
            self.media_purged += files
            log.info("media_purged", files=files, older_than=media_cutoff.isoformat())
        settled_cutoff = now - timedelta(days=self._config.state.dedup_window_days)
        tombstones = await self._reader.purge_tombstones(settled_cutoff)
        if tombstones:
            self.tombstones_purged += tombstones
            log.info("tombstones_purged", events=tombstones, settled_before=settled_cutoff.isoformat())

    async def run_budget(self) -> None:
        """Keep the media store under its byte budget, now and periodically, until cancelled."""
        while True:
            raise_if_cancelling()
            await self.enforce_budget()
            await asyncio.sleep(self._config.evidence.fetch.budget_every_s)

    async def enforce_budget(self) -> None:
        """Delete the oldest routine files, then the oldest evidence, until the store fits its budget."""
        limit = self._config.evidence.media_max_bytes
        used, evicted = await self._reader.evict_media(limit)
        self.media_bytes = used
        if not evicted:
            return
        routine = sum(1 for f in evicted if not f.evidence)
        self.evicted["routine"] += routine
        self.evicted["evidence"] += len(evicted) - routine
        log.warning(
            "media_evicted",
            routine_files=routine,
            evidence_files=len(evicted) - routine,
            freed_bytes=sum(f.size for f in evicted),
            media_bytes=used,
            budget=limit,
        )

    def write_metrics(self, families: MetricFamilies) -> None:
        """What was purged since start."""
        families.counter(
            "cgw_media_purged_total", "pictures deleted after the retention period", self.media_purged
        )
        families.counter(
            "cgw_outbox_tombstones_purged_total",
            "ids of delivered events forgotten after the de-duplication window",
            self.tombstones_purged,
        )
        families.gauge("cgw_media_bytes", "bytes of the indexed media files", self.media_bytes)
        families.counter(
            "cgw_media_evicted_total",
            "media files deleted to keep the store under its byte budget",
            [({"class": c}, float(n)) for c, n in sorted(self.evicted.items())],
        )
