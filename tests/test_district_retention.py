"""District retention: the embedded store's purge (real SQLite, real ingester) and its configuration."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from device_sims.broker import Mosquitto
from device_sims.influx import InfluxServer
from device_sims.inventory import DISTRICT_ID
from district.config import load_district_config
from district.ingester import run_ingester
from foundation.errors import ConfigError
from foundation.events import Event
from tests.delivery import sqlite_ids, stored_ids
from tests.district_data import running
from tests.metrics import scrape, value
from tests.test_district_health import OWN, eventually
from tests.test_uplink_e2e import district_config
from tests.test_uplink_protocol import thrown
from uplink.lineprotocol import EPOCH
from uplink.stores.influx_v1 import InfluxV1Store, InfluxV1StoreConfig
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
        toml.read_text(encoding="utf-8")
        + "[retention]\nevents_days = 30\ncheck_interval_s = 1\npurge_batch_rows = 2\n",
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


async def policies(store: InfluxV1Store) -> dict[str, tuple[str, bool]]:
    """Each retention policy of the store's database: its duration and whether it is the default."""
    results = await store.query('SHOW RETENTION POLICIES ON "d"')
    return {row[0]: (row[1], row[4]) for row in results[0]["series"][0]["values"]}


async def test_ingester_start_applies_the_influx_retention_and_influxd_drops_the_expired_points(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """Points 20 days old under the infinite default policy are gone once the ingester shortens it to 1 day.

    Read back, not only the policy listed: influxd (retention check every second) dropped the old
    shard group; the recent points remain. Checked once to fail with influx_alter_policy ignored
    (the policy stayed infinite: the wait for the 24h policy timed out).
    """
    with InfluxServer(tmp_path / "influx", retention_check="1s") as server:
        store_config = InfluxV1StoreConfig(url=server.url, database="d")
        old, recent = events(0, 4, timedelta(days=20)), events(100, 3, timedelta(hours=1))
        async with InfluxV1Store(store_config) as store:
            await store.write(old + recent)
            assert (await policies(store))["autogen"] == ("0s", True)
        config = district_config(
            tmp_path, district_broker, f'type = "influx_v1"\nurl = "{server.url}"\ndatabase = "d"'
        )
        toml = tmp_path / "district-i1.toml"
        toml.write_text(
            toml.read_text(encoding="utf-8") + "[retention]\nevents_days = 1\ninflux_alter_policy = true\n",
            encoding="utf-8",
        )
        config = load_district_config(toml)
        async with running(lambda ready: run_ingester(config, ready=ready), "ingester"):
            async with InfluxV1Store(store_config) as store:

                async def altered() -> bool:
                    return (await policies(store))["autogen"] == ("24h0m0s", True)

                await eventually(altered)

            async def expired() -> bool:
                return set(await stored_ids(store_config)) != {e.event_id for e in old + recent}

            await eventually(expired)
            assert set(await stored_ids(store_config)) == {e.event_id for e in recent}


async def test_influx_policy_is_created_when_missing_and_left_alone_when_it_differs(
    influx: InfluxServer,
) -> None:
    """A configured policy that does not exist is created (1 day, the default); an operator's is not changed.

    Checked once to fail with ``alter`` taken as always true (the operator's 48h policy was altered).
    """
    created = InfluxV1StoreConfig(url=influx.url, database="d", retention_policy="short")
    async with InfluxV1Store(created) as store:
        check = await store.ensure_retention(1, alter=False)
        assert (check.policy, check.action) == ("short", "created")
        assert (await policies(store))["short"] == ("24h0m0s", True)
        assert (await store.ensure_retention(1, alter=False)).action == "matches"
        await store.query('CREATE RETENTION POLICY "ops" ON "d" DURATION 48h REPLICATION 1', method="POST")
    operators = created.model_copy(update={"retention_policy": "ops"})
    async with InfluxV1Store(operators) as store:
        check = await store.ensure_retention(1, alter=False)
        assert (check.policy, check.action, check.found, check.wanted) == (
            "ops",
            "differs",
            "48h0m0s",
            "24h0m0s",
        )
        assert (await policies(store))["ops"] == ("48h0m0s", False)
        assert (await store.ensure_retention(1, alter=True)).action == "altered"
        assert (await policies(store))["ops"] == ("24h0m0s", False)


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
