"""``compound-gateway ingest --backfill-rollups``: (re)build a store's roll-ups and summaries from its events, then exit.

The ingester keeps them as events arrive and builds them once for a store that has none; this is
the repair (a store restored from a backup, roll-ups an operator dropped, a suspected miscount).
Idempotent: every level is recounted from the stored events, overwriting what was there. Periods
whose events retention already removed keep the counts they have (a recount would lower them).

- SQLite: the hourly ``event_rollups`` and the ``device_activity`` summary, in one transaction.
- InfluxDB 1.x: the roll-up retention policy and continuous query where missing (with the first
  backfill and the marker the query layer waits for), then every stored hour recounted
  (``InfluxV1Store.rebuild_rollups``; hours older than the events' policy are left as they are).
- InfluxDB 2.x/3.x: no roll-ups are implemented; counts there read raw events. Refused (exit 2).
"""

from __future__ import annotations

import sys
import time

import structlog

from district.config import DistrictConfig
from uplink.stores import InfluxV1Store, InfluxV2StoreConfig, SqliteStore

log = structlog.get_logger(__name__)


async def backfill_rollups(config: DistrictConfig) -> int:
    """Rebuild the configured store's roll-ups and summaries; prints what was written. The exit status."""
    if isinstance(config.store, InfluxV2StoreConfig):
        print(
            "rollups: InfluxDB 2.x/3.x stores have no roll-ups (not implemented); counts read raw events",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    async with config.store.build() as store:
        if isinstance(store, SqliteStore):
            hours, devices = await store.rebuild_summaries()
            summary = f"{hours} hourly roll-up rows, {devices} devices summarised"
        elif isinstance(store, InfluxV1Store):
            retention = config.retention
            await store.ensure_rollups(retention.rollup_days, alter=retention.influx_alter_policy)
            points = await store.rebuild_rollups(0, 2**62)
            summary = f"{points} hourly roll-up points"
        else:  # pragma: no cover - every other store config is refused above
            raise TypeError(f"no roll-ups for {type(store).__name__}")
    seconds = time.monotonic() - started
    log.info("rollups_rebuilt", summary=summary, seconds=round(seconds, 1))
    print(f"rollups rebuilt from the stored events in {seconds:.1f} s: {summary}")
    return 0
