"""District retention: the embedded store's purge (real SQLite, real ingester) and its configuration."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from device_sims.broker import Mosquitto
from device_sims.inventory import DISTRICT_ID
from district.config import load_district_config
from district.ingester import run_ingester
from foundation.errors import ConfigError
from foundation.events import Event
from tests.delivery import sqlite_ids
from tests.district_data import running
from tests.metrics import scrape, value
from tests.test_district_health import OWN, eventually
from tests.test_uplink_e2e import district_config
from tests.test_uplink_protocol import thrown
from uplink.lineprotocol import EPOCH
from uplink.stores.sqlite import SqliteStore, SqliteStoreConfig

NOW = datetime.now(UTC)


def events(first: int, count: int, age: timedelta) -> list[Event]:
    return [thrown(n, at=NOW - age, compound=OWN, district=DISTRICT_ID) for n in range(first, first + count)]


def cutoff_ns(days: int) -> int:
    return (NOW - timedelta(days=days) - EPOCH) // timedelta(microseconds=1) * 1000


async def test_purge_deletes_exactly_the_events_before_the_cutoff_in_batches(tmp_path: Path) -> None:
    """Old events are gone, newer ones kept (read back), the count is what was deleted.

    Checked once to fail with the purge stopping after its first batch (7 old events, batches of 3:
    it counted 3).
    """
    old, new = events(0, 7, timedelta(days=200)), events(100, 5, timedelta(days=2))
    async with SqliteStore(SqliteStoreConfig(path=tmp_path / "d.db")) as store:
        await store.write(old + new)
        purged = await store.purge_before(cutoff_ns(180), batch_rows=3)
        assert purged == 7
        assert await store.purge_before(cutoff_ns(180), batch_rows=3) == 0
    assert set(sqlite_ids(tmp_path / "d.db")) == {e.event_id for e in new}


async def test_two_purgers_on_one_file_delete_each_event_once(tmp_path: Path) -> None:
    """Two stores (as two scaled-out ingesters) purge one file together: counts add up, kept rows stay.

    Checked once to fail with each purge stopping after its first batch (the counts added up to 14).
    """
    old, new = events(0, 400, timedelta(days=200)), events(1000, 50, timedelta(days=1))
    path = tmp_path / "d.db"
    async with SqliteStore(SqliteStoreConfig(path=path)) as a, SqliteStore(SqliteStoreConfig(path=path)) as b:
        await a.write(old + new)
        counts = await asyncio.gather(a.purge_before(cutoff_ns(30), 7), b.purge_before(cutoff_ns(30), 7))
    assert sum(counts) == 400
    assert set(sqlite_ids(path)) == {e.event_id for e in new}


async def test_a_running_ingester_purges_on_schedule_and_counts_it(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """The ingester purges at start and again every check_interval_s; /metrics counts each event once.

    Checked once to fail with the purge loop returning after its first run (the events added while
    the ingester ran stayed, the metric stayed at 3).
    """
    path = tmp_path / "district.db"
    config = district_config(tmp_path, district_broker, f'type = "sqlite"\npath = "{path}"')
    toml = tmp_path / "district-i1.toml"
    toml.write_text(
        toml.read_text(encoding="utf-8") + "[retention]\nevents_days = 30\ncheck_interval_s = 1\n",
        encoding="utf-8",
    )
    config = load_district_config(toml)
    first_old, later_old = events(0, 3, timedelta(days=31)), events(10, 4, timedelta(days=400))
    kept = events(100, 5, timedelta(days=29))
    async with SqliteStore(SqliteStoreConfig(path=path)) as store:
        await store.write(first_old + kept)
    metrics = f"http://127.0.0.1:{config.ingest.http_port}/metrics"

    async def purged(count: int) -> bool:
        text, _ = await scrape(metrics)
        return value(text, "cgw_district_events_purged_total") == count

    async with running(lambda ready: run_ingester(config, ready=ready), "ingester"):
        await eventually(lambda: purged(3))
        assert set(sqlite_ids(path)) == {e.event_id for e in kept}
        async with SqliteStore(SqliteStoreConfig(path=path)) as store:
            await store.write(later_old)
        await eventually(lambda: purged(7), timeout=15)
        assert set(sqlite_ids(path)) == {e.event_id for e in kept}


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("events_days = 0", "events_days"),
        ("check_interval_s = 0.1", "check_interval_s"),
        ("days = 3", "days"),
    ],
)
def test_retention_config_errors_name_the_field(tmp_path: Path, line: str, field: str) -> None:
    """A bad [retention] value is refused with its file and field."""
    path = tmp_path / "district.toml"
    path.write_text(
        f'district_id = "{DISTRICT_ID}"\n[store]\ntype = "sqlite"\npath = "{tmp_path}/d.db"\n'
        f"[retention]\n{line}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as raised:
        load_district_config(path)
    message = str(raised.value)
    assert str(path) in message
    assert f"retention.{field}" in message
