"""The media store's byte budget and age purge, on a real outbox file and real files.

Inline pictures are committed through ``Outbox.commit`` (as the intake does); device files go
through the fetch queue's own calls (``due_fetches`` / ``fetch_done``) with the file written to its
content-addressed path, as the fetcher leaves it.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.base import MediaBlob
from device_sims.broker import free_port
from device_sims.inventory import write_sample_config
from foundation.durable_files import write_atomically
from foundation.health import Health
from gateway.config import GatewayConfig, load_config
from gateway.outbox import EventRow, Outbox, OutboxReader, StoreEvents
from gateway.outbox.media_index import FetchedFile
from gateway.retention import Retention
from tests.metrics import value

CAMERA = "36010400011320000001"
GATE = "36010400011240000001"
FILE_BYTES = 400_000
BUDGET = 1024 * 1024  # the smallest budget the config allows


def gateway_config(tmp_path: Path) -> GatewayConfig:
    """The sample compound with a 1 MiB media budget."""
    path = write_sample_config(
        tmp_path / "gateway.toml", state_dir=tmp_path / "state", http_port=free_port(), mqtt_port=free_port()
    )
    path.write_text(
        path.read_text(encoding="utf-8") + f"\n[evidence]\nmedia_max_bytes = {BUDGET}\n", encoding="utf-8"
    )
    return load_config(path)


def _row(event_id: str, *, kind: str, severity: str, device: str, media: tuple[object, ...]) -> EventRow:
    at = datetime(2026, 6, 1, 8, 0, tzinfo=UTC).isoformat()
    return EventRow(
        event_id=event_id,
        kind=kind,
        severity=severity,
        alarm=severity == "critical",
        device_id=device,
        occurred_at=at,
        received_at=at,
        body=b"{}",
        dialect="test",
        media=media,  # type: ignore[arg-type]
    )


def _blob(name: str) -> MediaBlob:
    return MediaBlob("face", "image/jpeg", random.Random(name).randbytes(FILE_BYTES))


class Store:
    """An outbox with inline pictures and fetched device files, each named for the test."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.path = config.state.dir / "outbox.db"
        self.paths: dict[str, str] = {}  # name -> relative path in the media store

    def inline(self, name: str) -> None:
        """A routine face-gate event with its picture (indexed in the intake's transaction)."""
        blob = _blob(name)
        ref = blob.ref()
        row = _row(
            name,
            kind="face_access",
            severity="info",
            device=GATE,
            media=((ref.role, ref.ref, ref.content_type, ref.sha256, ref.size),),
        )
        with Outbox(self.path, max_bytes=10**9, fetch_devices={CAMERA}) as box:
            box.commit([StoreEvents([row], media=[blob])])
        self.paths[name] = blob.relative_path

    async def fetched(self, name: str, *, severity: str) -> None:
        """A thrown-object event whose snapshot was fetched from the camera."""
        row = _row(
            name,
            kind="thrown_object",
            severity=severity,
            device=CAMERA,
            media=(("snapshot", f"device:hat/{name}.jpg", None, None, None),),
        )
        with Outbox(self.path, max_bytes=10**9, fetch_devices={CAMERA}) as box:
            box.commit([StoreEvents([row])])
        data = random.Random(name).randbytes(FILE_BYTES)
        sha = hashlib.sha256(data).hexdigest()
        relative = f"{sha[:2]}/{sha}.jpg"
        write_atomically(self.config.state.dir / "media" / relative, data)
        async with OutboxReader(self.path, max_bytes=10**9) as reader:
            [job] = await reader.due_fetches(10, ())
            assert job.event_id == name
            await reader.fetch_done(job.seq, FetchedFile(relative, sha, len(data), "image/jpeg"))
        self.paths[name] = relative

    def on_disk(self) -> set[str]:
        """Names whose file is still in the media store."""
        media = self.config.state.dir / "media"
        return {n for n, p in self.paths.items() if (media / p).exists()}

    def indexed(self) -> set[str]:
        """Event ids with an index row."""
        with Outbox(self.path, max_bytes=10**9) as box:
            return {r[0] for r in box.db.execute("SELECT event_id FROM media_index")}

    def queued(self, table: str) -> set[str]:
        """Event ids in the manifest or proactive queue."""
        with Outbox(self.path, max_bytes=10**9) as box:
            return {r[0] for r in box.db.execute(f"SELECT event_id FROM {table}")}


async def test_budget_evicts_routine_before_evidence(tmp_path: Path) -> None:
    """Over budget, every routine file goes (oldest first) before the oldest evidence; rows follow.

    Six 400 kB files (2.4 MB) against 1 MiB, the two oldest of them evidence: the routine ones (two
    inline pictures and a fetched snapshot of a warning) go first, then the oldest evidence,
    leaving 800 kB.

    Broken on purpose: ordering the eviction by age alone (``ORDER BY newest`` without
    ``MAX(evidence)`` in ``eviction_order``) deletes ``e1`` and ``e2`` first and keeps ``f1`` (seen failing).
    """
    config = gateway_config(tmp_path)
    store = Store(config)
    await store.fetched("e1-critical-oldest", severity="critical")
    await store.fetched("e2-critical", severity="critical")
    store.inline("r1-inline")
    store.inline("r2-inline")
    await store.fetched("f1-warning", severity="warning")
    await store.fetched("e3-critical-newest", severity="critical")
    assert store.queued("media_proactive") == {"e1-critical-oldest", "e2-critical", "e3-critical-newest"}

    async with OutboxReader(store.path, max_bytes=10**9) as reader:
        retention = Retention(config, reader)
        await retention.enforce_budget()
        await retention.enforce_budget()  # a second check under budget deletes nothing more
    kept = {"e2-critical", "e3-critical-newest"}
    assert store.on_disk() == kept
    assert store.indexed() == kept
    assert store.queued("media_manifest") == kept
    assert store.queued("media_proactive") == kept
    assert retention.evicted == {"routine": 3, "evidence": 1}
    assert retention.media_bytes == 2 * FILE_BYTES
    health = Health()
    health.writers.append(retention.write_metrics)
    text = (await health.scrape()).decode()
    assert value(text, "cgw_media_evicted_total", **{"class": "evidence"}) == 1
    assert value(text, "cgw_media_evicted_total", **{"class": "routine"}) == 3
    assert value(text, "cgw_media_bytes") == 2 * FILE_BYTES


async def test_under_budget_nothing_is_evicted(tmp_path: Path) -> None:
    """Two files under a 1 MiB budget stay; the gauge reports their bytes.

    Broken on purpose: ``enforce_budget`` passing half the budget to ``evict_media`` deletes ``r1``
    (seen failing).
    """
    config = gateway_config(tmp_path)
    store = Store(config)
    store.inline("r1")
    await store.fetched("e1", severity="critical")
    async with OutboxReader(store.path, max_bytes=10**9) as reader:
        retention = Retention(config, reader)
        await retention.enforce_budget()
    assert store.on_disk() == {"r1", "e1"}
    assert retention.evicted == {"routine": 0, "evidence": 0}
    assert retention.media_bytes == 2 * FILE_BYTES


async def test_age_purge_drops_index_rows(tmp_path: Path) -> None:
    """The retention period's purge deletes old files and their index rows (and queued announcements).

    Broken on purpose: with ``forget_paths`` left out of ``_OutboxFile.purge_media`` the index
    still lists ``old``, pointing at a file that is gone.
    """
    config = gateway_config(tmp_path)
    store = Store(config)
    store.inline("old-inline")
    await store.fetched("old-fetched", severity="critical")
    store.inline("new-inline")
    media = config.state.dir / "media"
    long_ago = time.time() - 90 * 86400
    for name in ("old-inline", "old-fetched"):
        os.utime(media / store.paths[name], (long_ago, long_ago))
    async with OutboxReader(store.path, max_bytes=10**9) as reader:
        removed = await reader.purge_media(datetime.now(UTC) - timedelta(days=30))
    assert removed == 2
    assert store.on_disk() == {"new-inline"}
    assert store.indexed() == {"new-inline"}
    assert store.queued("media_manifest") == set()
    assert store.queued("media_fetch") == set()  # its "fetched" row would claim a file that is gone
