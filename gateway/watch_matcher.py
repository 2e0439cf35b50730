"""Matching inside the compound: gate pictures and plates against the district's watch lists.

The outbox queues the work (what of an event to look at: ``gateway/watch_subjects.py``) in the same
transaction as each face-gate or vehicle event, so nothing is missed across a crash and the device
was acknowledged long before any picture is looked at. This task takes the queue in order:

* plates are looked up in memory (a dictionary per loaded plate list);
* face pictures go to a process pool sized by ``[faces] workers`` (detection and 128-d embeddings
  with face_recognition), a bounded batch at a time, so the event loop never runs them; the
  resulting embeddings are matched against every face list with one matrix product per list, in a
  thread;
* a hit becomes a critical ``watchlist_hit`` / ``vehicle_watch_hit`` event, committed through the
  intake pipeline like any event, with a deterministic id (source event, list, subject): work
  redone after a crash produces the same id and the outbox keeps one.

The picture backlog is bounded (``[faces] max_backlog``): when analysis falls behind, the oldest
queued pictures are dropped and counted (``pictures_shed``) -- their events are already stored and
on their way; only the matching is given up. Nothing from a picture leaves the compound except the
cropped face of a hit, and only when ``send_hit_snapshot`` allows.
"""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime

import structlog

from adapters.base import MediaBlob, RawMessage
from foundation.cancellation import raise_if_cancelling
from foundation.events import (
    Direction,
    Event,
    EventKind,
    MediaRef,
    Provenance,
    Severity,
    VehicleWatchHitPayload,
    WatchlistHitPayload,
    utc_now,
)
from foundation.faces import FoundFace, PictureError, analyse_file, crop_face, warm_up
from foundation.health import MetricFamilies
from foundation.identity import event_id
from gateway.config import GatewayConfig
from gateway.intake import IntakeItem
from gateway.outbox import OutboxReader, WatchItem
from gateway.pipeline import IntakePipeline
from gateway.watch_subjects import FACE_WORK, PICTURE_BACKLOG_COUNTER, PLATE_WORK
from gateway.watchlists import FaceHit, PlateHit, WatchListRegistry

log = structlog.get_logger(__name__)

BATCH = 16
IDLE_POLL_S = 0.2
HIT_DIALECT = "watchlist"


@dataclass
class MatcherStats:
    """Counters for /metrics."""

    pictures_analysed: int = 0
    pictures_skipped: int = 0  # no face list loaded
    pictures_unreadable: int = 0
    pictures_shed: int = 0
    faces_found: int = 0
    face_hits: int = 0
    plates_checked: int = 0
    plate_hits: int = 0
    analysis_seconds: float = 0.0


class WatchMatcher:
    """The matcher task (``run``) and what it reports."""

    def __init__(
        self,
        config: GatewayConfig,
        registry: WatchListRegistry,
        pipeline: IntakePipeline,
        reader: OutboxReader,
    ) -> None:
        self._config = config
        self._faces = config.faces
        self._registry = registry
        self._pipeline = pipeline
        self._reader = reader
        self._devices = {d.id: d for d in config.devices}
        self.stats = MatcherStats()
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn: the pool must not inherit the gateway's event loop, sockets or SQLite handles
        return ProcessPoolExecutor(
            max_workers=self._faces.workers, mp_context=multiprocessing.get_context("spawn")
        )

    async def run(self) -> None:
        """Take queued work until cancelled."""
        try:
            while True:
                raise_if_cancelling()
                shed = await self._reader.watch_shed(
                    self._faces.max_backlog, kind=FACE_WORK, counted_as=PICTURE_BACKLOG_COUNTER
                )
                if shed:
                    self.stats.pictures_shed += shed
                    log.warning("pictures_shed", count=shed, backlog=self._faces.max_backlog)
                items = await self._reader.watch_items(BATCH)
                if not items:
                    await asyncio.sleep(IDLE_POLL_S)
                    continue
                events = await self._handle(items)
                if events:
                    await self._commit(events)
                await self._reader.watch_done([item.seq for item in items])
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)

    async def _handle(self, items: Sequence[WatchItem]) -> list[tuple[Event, tuple[MediaBlob, ...]]]:
        lists = self._registry.loaded
        events: list[tuple[Event, tuple[MediaBlob, ...]]] = []
        faces = [item for item in items if item.kind == FACE_WORK]
        for item in items:
            if item.kind == PLATE_WORK:
                self.stats.plates_checked += 1
                events += [(self._plate_event(item, hit), ()) for hit in lists.match_plate(item.subject)]
        if faces and (not self._faces.enabled or not lists.faces):
            self.stats.pictures_skipped += len(faces)
        elif faces:
            events += await self._match_faces(faces)
        return events

    async def _analyse(self, items: Sequence[WatchItem]) -> list[list[FoundFace] | None]:
        if self._pool is None:
            self._pool = self._new_pool()
            await asyncio.get_running_loop().run_in_executor(self._pool, warm_up)
        loop = asyncio.get_running_loop()
        media = self._reader.media_dir
        started = loop.time()
        futures = [
            loop.run_in_executor(
                self._pool, analyse_file, media / item.subject, self._faces.model, self._faces.upsample
            )
            for item in items
        ]
        results: list[list[FoundFace] | None] = []
        for item, outcome in zip(items, await asyncio.gather(*futures, return_exceptions=True), strict=True):
            if isinstance(outcome, BrokenProcessPool):
                self._pool = None  # a worker died (out of memory, a crashing decoder): start afresh
                raise outcome
            if isinstance(outcome, PictureError | OSError):
                self.stats.pictures_unreadable += 1
                log.warning(
                    "picture_unreadable", device=item.device_id, event_id=item.event_id, error=str(outcome)
                )
                results.append(None)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results.append(outcome)
        self.stats.analysis_seconds += loop.time() - started
        return results

    async def _match_faces(self, items: Sequence[WatchItem]) -> list[tuple[Event, tuple[MediaBlob, ...]]]:
        try:
            analysed = await self._analyse(items)
        except BrokenProcessPool:
            log.error("face_pool_broken", pictures=len(items))
            self.stats.pictures_unreadable += len(items)
            return []
        lists = self._registry.loaded
        events: list[tuple[Event, tuple[MediaBlob, ...]]] = []
        for item, found in zip(items, analysed, strict=True):
            if found is None:
                continue
            self.stats.pictures_analysed += 1
            self.stats.faces_found += len(found)
            best: dict[tuple[str, str], tuple[FaceHit, FoundFace]] = {}
            for face in found:
                # matrix products over the lists: in a thread, so large lists never hold the loop
                for hit in await asyncio.to_thread(lists.match_face, face.vector()):
                    key = (hit.list_id, hit.subject_id)
                    if key not in best or hit.distance < best[key][0].distance:
                        best[key] = (hit, face)
            for hit, face in best.values():
                events.append(await self._face_event(item, hit, face))
        return events

    async def _face_event(
        self, item: WatchItem, hit: FaceHit, face: FoundFace
    ) -> tuple[Event, tuple[MediaBlob, ...]]:
        self.stats.face_hits += 1
        snapshot: MediaBlob | None = None
        if self._faces.send_hit_snapshot and self._pool is not None:
            picture = await asyncio.to_thread((self._reader.media_dir / item.subject).read_bytes)
            crop = await asyncio.get_running_loop().run_in_executor(self._pool, crop_face, picture, face.box)
            snapshot = MediaBlob(role="snapshot", content_type="image/jpeg", data=crop)
        payload = WatchlistHitPayload(
            list_id=hit.list_id,
            list_version=hit.list_version,
            person_ref=hit.subject_id,
            distance=hit.distance,
            threshold=hit.threshold,
            source_event_id=item.event_id,
            snapshot_jpeg_b64=base64.b64encode(snapshot.data).decode() if snapshot else None,
        )
        key = f"{item.event_id}|{hit.list_id}|{hit.subject_id}"
        event = self._event(
            item, EventKind.WATCHLIST_HIT, key, payload, (snapshot.ref(),) if snapshot else ()
        )
        log.warning(
            "watchlist_hit",
            list_id=hit.list_id,
            subject=hit.subject_id,
            device=item.device_id,
            distance=hit.distance,
        )
        return event, (snapshot,) if snapshot else ()

    def _plate_event(self, item: WatchItem, hit: PlateHit) -> Event:
        self.stats.plate_hits += 1
        payload = VehicleWatchHitPayload(
            list_id=hit.list_id,
            list_version=hit.list_version,
            plate=hit.plate,
            label=hit.label,
            direction=Direction(item.direction),
            source_event_id=item.event_id,
        )
        log.warning("vehicle_watch_hit", list_id=hit.list_id, device=item.device_id)
        return self._event(item, EventKind.VEHICLE_WATCH_HIT, f"{item.event_id}|{hit.list_id}", payload, ())

    def _event(
        self,
        item: WatchItem,
        kind: EventKind,
        key: str,
        payload: WatchlistHitPayload | VehicleWatchHitPayload,
        media: tuple[MediaRef, ...],
    ) -> Event:
        compound = self._config.compound
        device = self._devices.get(item.device_id)
        return Event(
            event_id=event_id(item.device_id, HIT_DIALECT, key),
            kind=kind,
            district_id=compound.district_id,
            compound_id=compound.compound_id,
            device_id=item.device_id,
            occurred_at=datetime.fromisoformat(item.occurred_at),
            received_at=utc_now(),
            severity=Severity.CRITICAL,
            source=Provenance(vendor="compound-gateway", dialect=HIT_DIALECT, event_code=payload.list_id),
            location=device.location if device else None,
            media=media,
            payload=payload,
        )

    async def _commit(self, events: list[tuple[Event, tuple[MediaBlob, ...]]]) -> None:
        items = [
            IntakeItem("internal", RawMessage(event.model_dump_json().encode()), 1 << 20, attachments=blobs)
            for event, blobs in events
        ]
        results = await self._pipeline.process(items)
        for result in results:
            if result.rejection is not None:  # our own event refused: a bug, kept as a dead letter
                log.error("hit_event_refused", reason=result.rejection.reason, detail=result.rejection.detail)

    def write_metrics(self, families: MetricFamilies) -> None:
        """Matcher counters and the loaded lists' versions."""
        s = self.stats
        for name, help_text, value in (
            ("cgw_faces_pictures_analysed_total", "face-gate pictures analysed", s.pictures_analysed),
            (
                "cgw_faces_pictures_skipped_total",
                "pictures not analysed: no face list loaded",
                s.pictures_skipped,
            ),
            (
                "cgw_faces_pictures_unreadable_total",
                "pictures that could not be decoded",
                s.pictures_unreadable,
            ),
            (
                "cgw_faces_pictures_shed_total",
                "pictures dropped because analysis fell behind",
                s.pictures_shed,
            ),
            ("cgw_faces_found_total", "faces detected", s.faces_found),
            ("cgw_watchlist_face_hits_total", "face watch-list hits", s.face_hits),
            ("cgw_watchlist_plates_checked_total", "plates looked up", s.plates_checked),
            ("cgw_watchlist_plate_hits_total", "plate watch-list hits", s.plate_hits),
            (
                "cgw_faces_analysis_seconds_total",
                "wall time spent waiting for the face pool",
                s.analysis_seconds,
            ),
            ("cgw_watchlist_rejected_total", "published lists refused", self._registry.rejected),
        ):
            families.counter(name, help_text, value)
        versions = sorted(self._registry.loaded.versions.items())
        families.gauge(
            "cgw_watchlist_version",
            "version of each loaded watch list",
            [
                ({"list_id": list_id, "kind": kind}, float(version))
                for list_id, (kind, version, _) in versions
            ],
        )
        families.gauge(
            "cgw_watchlist_entries",
            "subjects (face lists) or plates (plate lists) loaded",
            [({"list_id": list_id}, float(size)) for list_id, (_, _, size) in versions],
        )
