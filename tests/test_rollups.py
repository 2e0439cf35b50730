"""Hourly roll-ups (issue 15): real SQLite and a real InfluxDB 1.6.7, checked against distinct raw events.

Every test writes events of two compounds, two kinds and two severities over several hours, then
the same events again (re-sent batches), then a late backlog (events of days before, written last),
and compares the roll-ups with the distinct events per (compound, kind, severity, hour), as sets.

Teeth, each broken once on purpose and seen failing:

* SQLite, counted on INSERT attempts instead of inserted rows: the trigger made ``BEFORE INSERT``
  (it fires for an ``INSERT OR IGNORE`` that then ignores the row) -> re-sent events counted again:
  ``test_sqlite_rollups_count_each_event_once`` and ``test_sqlite_counts_from_rollups`` failed.
* SQLite retention decrementing roll-ups: an ``AFTER DELETE`` trigger subtracting each deleted
  event -> ``test_sqlite_retention_keeps_rollups`` and ``test_sqlite_counts_from_rollups`` failed.
* The counts query never taking the roll-ups: ``rollups_serve`` made to require
  ``selection.devices`` -> both ``*_counts_from_rollups`` failed on the counts that must outlive
  the purged events / dropped shards.
* InfluxDB roll-ups per device (``device_id`` added to ``ROLLUP_TAGS``: sums still right, series
  cardinality x8) -> ``test_influx_rollups_equal_distinct_raw`` failed on the statement and, with
  that assertion disabled, on the roll-up series' tag keys.
* InfluxDB re-sends as new points (``CGW_FAULT_SWITCHES=influx_dedup_off``: a random point time per
  write) -> both InfluxDB tests failed: roll-ups count what the raw points count, so their
  once-only counting rests on ``uplink.lineprotocol.point_time_ns``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cli.main import main
from device_sims.influx import InfluxServer
from district.query_backends import InfluxQueries, InfluxRollups, SqliteQueries, influx_rollups
from district.query_model import CountRow, DeviceActivity, Selection
from foundation.events import DeviceState, DeviceStatusPayload, Event, EventKind, Severity
from foundation.identity import event_id
from tests.test_uplink_protocol import DISTRICT, thrown
from uplink.lineprotocol import point_time_ns
from uplink.stores import (
    InfluxV1Store,
    InfluxV1StoreConfig,
    RetentionCounts,
    RetentionRules,
    SqliteStore,
    SqliteStoreConfig,
)
from uplink.stores.sqlite import SQLITE_INSERT, SQLITE_SCHEMA, migrate_sqlite_store, sqlite_row

HOUR_NS = 3_600_000_000_000
CST = ZoneInfo("Asia/Shanghai")
C1, C2 = "36010400012160000101", "36010400012160000102"
DAY0 = datetime(2026, 6, 10, 0, 0, tzinfo=UTC)
NOW = DAY0 + timedelta(days=2)
Key = tuple[str, str, str, int]  # compound, kind, severity, UTC hour (ns)


def status(n: int, at: datetime, compound: str) -> Event:
    """A device status report (kind device_status, severity warning)."""
    base = thrown(n, at=at, compound=compound)
    return base.model_copy(
        update={
            "event_id": event_id("36010400011340000001", "s", str(n)),
            "kind": EventKind.DEVICE_STATUS,
            "device_id": "36010400011340000001",
            "severity": Severity.WARNING,
            "payload": DeviceStatusPayload(state=DeviceState.OFFLINE, reason="power lost"),
        }
    )


def scenario() -> tuple[list[Event], list[Event], list[Event]]:
    """(first writes, re-sends, late backlog): 2 compounds x 2 kinds x 2 severities over 30 hours."""
    events: list[Event] = []
    for n in range(240):
        at = DAY0 + timedelta(minutes=7 * n, seconds=n % 60)
        compound = C1 if n % 3 else C2
        event = thrown(n, at=at, compound=compound) if n % 4 else status(n, at, compound)
        if n % 5 == 0 and event.kind is EventKind.THROWN_OBJECT:
            event = event.model_copy(update={"severity": Severity.WARNING})
        events.append(event)
    resent = events[10:90] + events[200:]
    # a gateway back after days offline: events of 3 and 4 days before DAY0, on hours already seen
    backlog = [
        thrown(1000 + n, at=DAY0 - timedelta(days=3 + n % 2, minutes=11 * n), compound=C1) for n in range(60)
    ]
    return events, resent, backlog


def distinct_counts(events: list[Event]) -> Counter[Key]:
    """The oracle: distinct events per (compound, kind, severity, UTC hour of occurrence)."""
    unique = {e.event_id: e for e in events}
    return Counter(
        (e.compound_id, e.kind.value, e.severity.value, point_time_ns(e) // HOUR_NS * HOUR_NS)
        for e in unique.values()
    )


def sqlite_rollups(path: Path) -> Counter[Key]:
    with sqlite3.connect(path) as db:
        return Counter(
            {
                (compound, kind, severity, hour): n
                for compound, kind, severity, hour, n in db.execute(
                    "SELECT compound_id, kind, severity, hour_ns, events FROM event_rollups"
                )
            }
        )


def selection(start: datetime, end: datetime, **filters: object) -> Selection:
    def ns(at: datetime) -> int:
        return int(at.timestamp()) * 1_000_000_000

    return Selection(district_id=DISTRICT, compounds=None, start_ns=ns(start), end_ns=ns(end), **filters)  # type: ignore[arg-type]


def expected_rows(events: list[Event], *, interval: str, zone: ZoneInfo) -> list[CountRow]:
    """Counts per compound and kind per local hour or day, from distinct events (the raw oracle)."""
    tally: Counter[tuple[datetime, str, str]] = Counter()
    for e in {e.event_id: e for e in events}.values():
        local = e.occurred_at.astimezone(zone).replace(minute=0, second=0, microsecond=0)
        bucket = local if interval == "hour" else local.replace(hour=0)
        tally[(bucket, e.compound_id, e.kind.value)] += 1
    return [
        CountRow(bucket=bucket, count=n, compound_id=compound, kind=kind)
        for (bucket, compound, kind), n in sorted(
            tally.items(), key=lambda kv: (kv[0][0].timestamp(), kv[0][1], kv[0][2])
        )
    ]


async def test_sqlite_rollups_count_each_event_once(tmp_path: Path) -> None:
    """Roll-ups == distinct raw counts per (compound, kind, severity, hour) after re-sends and a late backlog."""
    path = tmp_path / "store.db"
    events, resent, backlog = scenario()
    async with SqliteStore(SqliteStoreConfig(path=path)) as store:
        await store.write(events)
        await store.write(resent)
        await store.write(events[:5] + events[:5])  # one batch carrying an event twice
        assert sqlite_rollups(path) == distinct_counts(events)
        await store.write(backlog)
        await store.write(backlog[::2])
        everything = events + backlog
        assert sqlite_rollups(path) == distinct_counts(everything)
        assert sum(sqlite_rollups(path).values()) == len({e.event_id for e in everything}) == 300
        # the backlog went to its own, older hours (3 and 4 days before)
        assert (
            min(hour for *_, hour in sqlite_rollups(path))
            < int((DAY0 - timedelta(days=3)).timestamp()) * 10**9
        )


async def test_sqlite_retention_keeps_rollups(tmp_path: Path) -> None:
    """Purging expired events leaves their roll-ups; roll-ups go only after rollup_days, whole hours."""
    path = tmp_path / "store.db"
    events, _, backlog = scenario()
    async with SqliteStore(SqliteStoreConfig(path=path)) as store:
        await store.write(events + backlog)
        before = sqlite_rollups(path)
        tally = RetentionCounts()
        # events older than 1 day before NOW go (the backlog and DAY0's first day); roll-ups stay
        await store.enforce_retention(
            RetentionRules(events_days=1, hit_crops_days=1, batch_rows=7, rollup_days=400), NOW, tally
        )
        cutoff = NOW - timedelta(days=1)
        kept = [e for e in events + backlog if e.occurred_at >= cutoff]
        assert tally.events_purged == len(events) + len(backlog) - len(kept) > 60
        with sqlite3.connect(path) as db:
            assert {row[0] for row in db.execute("SELECT event_id FROM events")} == {e.event_id for e in kept}
        assert sqlite_rollups(path) == before
        # roll-ups older than rollup_days go, whole hours only: the backlog's (3 and 4 days back)
        await store.enforce_retention(
            RetentionRules(events_days=1, hit_crops_days=1, batch_rows=7, rollup_days=3), NOW, tally
        )
        rollup_cutoff = int((NOW - timedelta(days=3)).timestamp()) * 10**9
        assert sqlite_rollups(path) == Counter({k: n for k, n in before.items() if k[3] >= rollup_cutoff})
        assert sqlite_rollups(path) != before


async def test_sqlite_backfill_on_upgrade(tmp_path: Path) -> None:
    """A store file from before roll-ups gets them from its events once, when opened (twice: no double count)."""
    path = tmp_path / "old.db"
    events, _, backlog = scenario()
    with sqlite3.connect(path) as db:
        db.executescript(SQLITE_SCHEMA)
        migrate_sqlite_store(db)
        db.execute("DROP TRIGGER events_rollup")
        db.execute("DROP TABLE event_rollups")
        db.executemany(SQLITE_INSERT, [sqlite_row(e) for e in events + backlog])
    for _ in range(2):
        async with SqliteStore(SqliteStoreConfig(path=path)):
            assert sqlite_rollups(path) == distinct_counts(events + backlog)
    async with SqliteStore(SqliteStoreConfig(path=path)) as store:
        # the repair tool: recounting a range from the events gives the same counts
        assert await store.rebuild_rollups(0, 2**62) > 0
        assert sqlite_rollups(path) == distinct_counts(events + backlog)


async def test_sqlite_counts_from_rollups(tmp_path: Path) -> None:
    """The counts query answers the same rows from roll-ups as from raw events, and from roll-ups alone after a purge."""
    path = tmp_path / "store.db"
    events, resent, backlog = scenario()
    everything = events + backlog
    async with SqliteStore(SqliteStoreConfig(path=path)) as store:
        await store.write(events)
        await store.write(resent + backlog)
        rolled, raw = SqliteQueries(store), SqliteQueries(store, use_rollups=False)
        window = selection(DAY0 - timedelta(days=5), DAY0 + timedelta(days=2))
        answers = {}
        for interval in ("hour", "day"):
            for zone in (CST, ZoneInfo("UTC")):
                args: dict[str, Any] = {"interval": interval, "group_by": ("compound", "kind"), "zone": zone}
                answers[interval, zone.key] = await rolled.count(window, **args)
                assert answers[interval, zone.key] == await raw.count(window, **args)
                assert answers[interval, zone.key] == expected_rows(everything, interval=interval, zone=zone)
        critical = selection(DAY0 - timedelta(days=5), DAY0 + timedelta(days=2), severity="critical")
        args = {"interval": "day", "group_by": ("kind",), "zone": CST}
        assert await rolled.count(critical, **args) == await raw.count(critical, **args)
        # a zone at half hours: its hours are not UTC hours, raw events answer (and agree)
        args = {"interval": "hour", "group_by": ("compound",), "zone": ZoneInfo("Asia/Kolkata")}
        assert await rolled.count(window, **args) == await raw.count(window, **args)
        # a range not on whole hours falls back to raw events (and still agrees)
        odd = selection(DAY0 + timedelta(minutes=30), DAY0 + timedelta(hours=20))
        args = {"interval": "hour", "group_by": ("compound",), "zone": CST}
        assert await rolled.count(odd, **args) == await raw.count(odd, **args)
        # every event purged: raw counts are empty, roll-up counts are what they were
        await store.enforce_retention(
            RetentionRules(events_days=1, hit_crops_days=1, batch_rows=100),
            NOW + timedelta(days=30),
            RetentionCounts(),
        )
        args = {"interval": "day", "group_by": ("compound", "kind"), "zone": CST}
        assert await raw.count(window, **args) == []
        assert await rolled.count(window, **args) == answers["day", "Asia/Shanghai"]


async def influx_rollup_counts(store: InfluxV1Store) -> Counter[Key]:
    results = await store.query(
        'SELECT "events" FROM "event_rollups"./.*/ GROUP BY "compound_id", "severity"', epoch="ns"
    )
    counts: Counter[Key] = Counter()
    for result in results:
        for series in result.get("series", []):
            if series["name"] in {"rollups_backfilled", "device_days_backfilled", "device_days"}:
                continue  # the markers, and the device days (a level of their own)
            tags = series["tags"]
            for at, n in series["values"]:
                if n:
                    counts[(tags["compound_id"], series["name"], tags["severity"], int(at))] += int(n)
    return counts


async def test_influx_rollups_equal_distinct_raw(influx: InfluxServer) -> None:
    """The continuous query exists; backfill and rebuild give distinct raw counts, re-sends and a late backlog included."""
    config = InfluxV1StoreConfig(url=influx.url, database="district")
    events, resent, backlog = scenario()
    rules = RetentionRules(events_days=3650, hit_crops_days=30, batch_rows=100, rollup_days=400)
    async with InfluxV1Store(config) as store:
        await store.write(events)
        await store.write(resent)
        assert not await store.rollups_backfilled()
        done = await store.enforce_retention(rules, datetime.now(UTC), RetentionCounts())
        assert done.rollups is not None
        assert done.rollups.action == "created"
        assert await store.rollups_backfilled()
        assert await influx_rollup_counts(store) == distinct_counts(events)
        (result,) = await store.query("SHOW CONTINUOUS QUERIES")
        queries = [row for s in result["series"] if s["name"] == "district" for row in s.get("values", [])]
        assert len(queries) == 3  # the hourly counts', the device days' and the daily counts'
        (cq,) = [row for row in queries if row[0].startswith("event_rollups_")]
        (daily_cq,) = [row for row in queries if row[0].startswith("daily_rollups_")]
        # local days of UTC+8 start at 16:00 UTC; into a policy of their own (named for the offset)
        assert daily_cq[1].endswith("GROUP BY time(1d, 16h), district_id, compound_id, severity END")
        assert "INTO district.event_rollups_dayp8.:MEASUREMENT" in daily_cq[1]
        assert "RESAMPLE EVERY 1h FOR 1w" in cq[1]
        assert cq[1].endswith("GROUP BY time(1h), district_id, compound_id, severity END")
        # the roll-up series are per compound and severity only (never per device: cardinality)
        (result,) = await store.query('SELECT count("events") FROM "event_rollups"./.*/ GROUP BY *')
        tagged = {
            (series["name"] == "device_days", key, bool(value))
            for series in result["series"]
            for key, value in series["tags"].items()
        }
        assert {key for days, key, present in tagged if present and not days} == {
            "compound_id",
            "district_id",
            "severity",
        }
        # the device days: a series per device (as the events have), nothing finer
        assert {key for days, key, present in tagged if present and days} == {
            "compound_id",
            "district_id",
            "device_id",
        }
        (result,) = await store.query('SHOW RETENTION POLICIES ON "district"')
        policies = {row[0]: (row[1], row[4]) for row in result["series"][0]["values"]}
        assert policies["event_rollups"] == ("9600h0m0s", False)  # 400 days, not the default
        assert policies["event_rollups_dayp8"] == ("9600h0m0s", False)
        # a late backlog (3-4 days before): its compound's hours are recounted as it is written
        await store.write(backlog)
        await store.write(backlog[::3] + resent)
        assert await influx_rollup_counts(store) == distinct_counts(events + backlog)
        # the repair tool recounts a range the same (and again: idempotent)
        start = int((DAY0 - timedelta(days=6)).timestamp()) * 10**9
        assert await store.rebuild_rollups(start, int(NOW.timestamp()) * 10**9) > 0
        assert await store.rebuild_rollups(start, int(NOW.timestamp()) * 10**9) > 0  # idempotent
        assert await influx_rollup_counts(store) == distinct_counts(events + backlog)
        # a second start finds the policy and the query as they are: nothing recreated or recounted
        store._policy_checked = False
        again = await store.enforce_retention(rules, datetime.now(UTC), RetentionCounts())
        assert again.rollups is not None
        assert again.rollups.action == "matches"
        assert await influx_rollup_counts(store) == distinct_counts(events + backlog)


async def test_influx_counts_from_rollups(influx: InfluxServer) -> None:
    """The counts query answers the same rows from roll-ups as from raw events, and after the raw events are gone."""
    config = InfluxV1StoreConfig(url=influx.url, database="district")
    events, resent, backlog = scenario()
    everything = events + backlog
    async with InfluxV1Store(config) as store:
        await store.write(events + backlog)
        await store.write(resent)

        async def run(query: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
            return await store.query(query, method="POST", params=params, epoch="ns")

        # "now" is in the middle of the data: the last 2 hours before it come from raw events
        now_ns = int((DAY0 + timedelta(hours=20, minutes=10)).timestamp()) * 10**9
        where = InfluxRollups(**{**vars(influx_rollups(config)), "recheck_s": 0.0})
        rolled = InfluxQueries(run, store.ping, where, now_ns=lambda: now_ns)
        raw = InfluxQueries(run, store.ping)
        window = selection(DAY0 - timedelta(days=5), DAY0 + timedelta(days=2))
        args: dict[str, Any] = {"interval": "day", "group_by": ("compound", "kind"), "zone": CST}
        assert not await rolled.rollups_ready()  # no roll-ups yet: raw counts, same answer
        assert await rolled.count(window, **args) == await raw.count(window, **args)
        await store.ensure_rollups(400, alter=False)
        assert await rolled.rollups_ready()
        answers = {}
        for interval in ("hour", "day"):
            args = {"interval": interval, "group_by": ("compound", "kind"), "zone": CST}
            answers[interval] = await rolled.count(window, **args)
            assert answers[interval] == await raw.count(window, **args)
            assert answers[interval] == expected_rows(everything, interval=interval, zone=CST)
        critical = selection(DAY0 - timedelta(days=5), DAY0 + timedelta(days=2), severity="critical")
        args = {"interval": "hour", "group_by": ("compound",), "zone": CST}
        assert await rolled.count(critical, **args) == await raw.count(critical, **args)
        # the events policy drops its shards (what influxd's retention does; DELETE would reach
        # into every policy): raw counts are gone, roll-up counts stay
        (result,) = await store.query("SHOW SHARDS")
        (shards,) = [series for series in result["series"] if series["name"] == "district"]
        columns = shards["columns"]
        dropped = 0
        for row in shards["values"]:
            shard = dict(zip(columns, row, strict=True))
            if shard["retention_policy"] == "autogen":
                await store.query(f"DROP SHARD {int(shard['id'])}", method="POST")
                dropped += 1
        assert dropped >= 1
        later = InfluxQueries(run, store.ping, where, now_ns=lambda: now_ns + 10 * 24 * HOUR_NS)
        args = {"interval": "hour", "group_by": ("compound", "kind"), "zone": CST}
        assert await raw.count(window, **args) == []
        assert await later.count(window, **args) == answers["hour"]


def activity_key(a: DeviceActivity) -> tuple[str, str]:
    return a.compound_id, a.device_id


async def activity_pair(
    store: SqliteStore, where: Selection
) -> tuple[list[DeviceActivity], list[DeviceActivity]]:
    """(from the summary, from the events) for one selection, each sorted by compound and device."""
    summary = await SqliteQueries(store).device_activity(where)
    raw = await SqliteQueries(store, use_rollups=False).device_activity(where)
    return sorted(summary, key=activity_key), sorted(raw, key=activity_key)


def moved(event: Event, n: int, at: datetime, dialect: str) -> Event:
    """The event as another, later or earlier one of the same device (another id, time and dialect)."""
    source = event.source.model_copy(update={"dialect": dialect})
    return event.model_copy(
        update={"event_id": f"{event.event_id}-{n}", "occurred_at": at, "received_at": at, "source": source}
    )


async def test_sqlite_device_activity_summary_equals_events(tmp_path: Path) -> None:
    """The per-device summary answers what the events answer: after re-sends, a late backlog, retention, a scope.

    Teeth: the trigger made to take every event as the newest (``dialect``/``last_ns`` set from
    ``excluded`` unconditionally) -> the late backlog (older events, another dialect) written last
    moved the devices' last seen back, and this test failed on the first comparison after it.
    """
    path = tmp_path / "store.db"
    events, resent, backlog = scenario()
    # the backlog's device speaks another dialect: a summary taking late events as newest shows it
    backlog = [moved(e, 0, e.occurred_at, "old-firmware") for e in backlog]
    last = moved(events[-1], 1, events[-1].occurred_at + timedelta(minutes=1), "new-firmware")
    everywhere = selection(DAY0 - timedelta(days=5), NOW + timedelta(minutes=5))
    async with SqliteStore(SqliteStoreConfig(path=path)) as store:
        await store.write(events)
        await store.write([*resent, last])
        summary, raw = await activity_pair(store, everywhere)
        assert summary == raw
        assert {(a.compound_id, a.device_id) for a in raw} == {(e.compound_id, e.device_id) for e in events}
        assert any(a.dialect == "new-firmware" for a in summary)
        assert any(a.status_state == "offline" for a in summary)
        await store.write(backlog)
        await store.write(backlog[::2] + resent)
        assert await activity_pair(store, everywhere) == (summary, raw)
        assert all(a.dialect != "old-firmware" for a in summary)
        # one compound in scope; a range starting after the last status reports (statuses none)
        scoped = dataclasses.replace(everywhere, compounds=(C1,))
        pair = await activity_pair(store, scoped)
        assert pair[0] == pair[1]
        assert {a.compound_id for a in pair[0]} == {C1}
        last_status = max(point_time_ns(e) for e in events if e.kind is EventKind.DEVICE_STATUS)
        late_start = dataclasses.replace(everywhere, start_ns=last_status + 1)
        pair = await activity_pair(store, late_start)
        assert pair[0] == pair[1]
        assert pair[0]
        assert all(a.status_state is None for a in pair[0])
        # a range ending before the last events: the summary cannot say, the events answer
        early = dataclasses.replace(everywhere, end_ns=point_time_ns(events[100]))
        pair = await activity_pair(store, early)
        assert pair[0] == pair[1]
        assert pair[0]
        # every event purged by retention: the summary forgets what it knew of them
        await store.enforce_retention(
            RetentionRules(events_days=1, hit_crops_days=1, batch_rows=50),
            NOW + timedelta(hours=12),
            RetentionCounts(),
        )
        assert await activity_pair(store, everywhere) == ([], [])


async def test_sqlite_device_activity_backfilled_and_rebuilt(tmp_path: Path) -> None:
    """A file from before the summary gets it from its events when opened; the rebuild gives the same."""
    path = tmp_path / "old.db"
    events, _, backlog = scenario()
    with sqlite3.connect(path) as db:
        db.executescript(SQLITE_SCHEMA)
        migrate_sqlite_store(db)
        db.execute("DROP TRIGGER events_device_activity")
        db.execute("DROP TABLE device_activity")
        db.executemany(SQLITE_INSERT, [sqlite_row(e) for e in events + backlog])
    everywhere = selection(DAY0 - timedelta(days=5), NOW + timedelta(minutes=5))
    async with SqliteStore(SqliteStoreConfig(path=path)) as store:
        summary, raw = await activity_pair(store, everywhere)
        assert summary == raw
        assert len(raw) == 4
        rollup_rows, devices = await store.rebuild_summaries()
        assert devices == 4
        assert rollup_rows > 100  # every hour but the oldest (kept: its events may be thinned)
        assert await activity_pair(store, everywhere) == (summary, raw)
        assert sqlite_rollups(path) == distinct_counts(events + backlog)


def district_toml(tmp_path: Path, store: str) -> Path:
    path = tmp_path / "district.toml"
    path.write_text(f'district_id = "{DISTRICT}"\n[store]\n{store}\n', encoding="utf-8")
    return path


async def test_cli_backfill_rollups_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ingest --backfill-rollups`` puts damaged roll-ups and device summary back to what the events say.

    Teeth: the command made to return before rebuilding -> the damaged counts stayed, this failed.
    """
    path = tmp_path / "store.db"
    events, resent, backlog = scenario()
    async with SqliteStore(SqliteStoreConfig(path=path)) as store:
        await store.write(events + backlog)
        await store.write(resent)
        everywhere = selection(DAY0 - timedelta(days=5), NOW + timedelta(minutes=5))
        good = await activity_pair(store, everywhere)
    with sqlite3.connect(path) as db:  # an operator's mistake, a restored half backup
        db.execute("UPDATE event_rollups SET events = events + 5")
        db.execute("DELETE FROM device_activity WHERE rowid % 2 = 0")
    assert sqlite_rollups(path) != distinct_counts(events + backlog)
    config = district_toml(tmp_path, f'type = "sqlite"\npath = "{path}"')
    assert await asyncio.to_thread(main, ["ingest", "--config", str(config), "--backfill-rollups"]) == 0
    assert "rollups rebuilt" in capsys.readouterr().out
    # every hour but the oldest (its events may be thinned by retention: it keeps its count)
    oldest = min(hour for *_, hour in distinct_counts(events + backlog))
    assert Counter({k: n for k, n in sqlite_rollups(path).items() if k[3] != oldest}) == Counter(
        {k: n for k, n in distinct_counts(events + backlog).items() if k[3] != oldest}
    )
    async with SqliteStore(SqliteStoreConfig(path=path)) as store:
        assert await activity_pair(store, everywhere) == good


async def test_cli_backfill_rollups_influx(
    influx: InfluxServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On InfluxDB 1.x the command creates the roll-ups of a store that has none and counts every event."""
    config = InfluxV1StoreConfig(url=influx.url, database="district")
    events, resent, backlog = scenario()
    async with InfluxV1Store(config) as store:
        await store.write(events + backlog)
        await store.write(resent)
        assert not await store.rollups_backfilled()
    path = district_toml(tmp_path, f'type = "influx_v1"\nurl = "{influx.url}"\ndatabase = "district"')
    assert await asyncio.to_thread(main, ["ingest", "--config", str(path), "--backfill-rollups"]) == 0
    assert "rollups rebuilt" in capsys.readouterr().out
    async with InfluxV1Store(config) as store:
        assert await store.rollups_backfilled()
        assert await influx_rollup_counts(store) == distinct_counts(events + backlog)
    v2 = district_toml(
        tmp_path, f'type = "influx_v2"\nurl = "{influx.url}"\norg = "o"\nbucket = "b"\ntoken = "t"'
    )
    assert await asyncio.to_thread(main, ["ingest", "--config", str(v2), "--backfill-rollups"]) == 2
    assert "not implemented" in capsys.readouterr().err


async def test_influx_device_activity_from_device_days(influx: InfluxServer) -> None:
    """The device inventory from device days + the last day's events equals the raw answer.

    Fresh hours split the data ("now" in its middle) or follow it; re-sends; a late backlog holding
    a device heard nowhere else (written after the roll-ups exist: its days are recounted by the
    write). Teeth: the device-days recount dropped from ``recount_rollups`` -> the backlog-only
    device was missing from the answer and this test failed at the "backlog" comparison.
    """
    config = InfluxV1StoreConfig(url=influx.url, database="district")
    events, resent, backlog = scenario()
    backlog = [
        e.model_copy(update={"device_id": "36010400011320000077"}) if n % 2 else e
        for n, e in enumerate(backlog)
    ]
    async with InfluxV1Store(config) as store:
        await store.write(events)
        await store.write(resent)

        async def run(query: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
            return await store.query(query, method="POST", params=params, epoch="ns")

        where = InfluxRollups(**{**vars(influx_rollups(config)), "recheck_s": 0.0})
        raw = InfluxQueries(run, store.ping)
        middle = int((DAY0 + timedelta(hours=20, minutes=10)).timestamp()) * 10**9
        after = int((NOW + timedelta(days=1)).timestamp()) * 10**9
        everywhere = selection(DAY0 - timedelta(days=5), NOW + timedelta(minutes=5))
        windows = [
            everywhere,
            dataclasses.replace(everywhere, compounds=(C1,)),
            dataclasses.replace(everywhere, start_ns=int((DAY0 + timedelta(hours=9)).timestamp()) * 10**9),
        ]

        async def compare(now_ns: int) -> None:
            rolled = InfluxQueries(run, store.ping, where, now_ns=lambda: now_ns)
            for window in windows:
                expected = sorted(await raw.device_activity(window), key=activity_key)
                assert expected
                assert sorted(await rolled.device_activity(window), key=activity_key) == expected

        await store.ensure_rollups(400, alter=False)
        assert await store.rollups_backfilled("device_days_backfilled")
        for now_ns in (middle, after):
            await compare(now_ns)
        await store.write(backlog)  # late: its compound's hours and days are recounted
        await store.write(backlog[::3] + resent)
        heard = {a.device_id for a in await raw.device_activity(everywhere)}
        assert "36010400011320000077" in heard  # backlog
        for now_ns in (middle, after):
            await compare(now_ns)


def sqlite_days(path: Path) -> Counter[Key]:
    with sqlite3.connect(path) as db:
        return Counter(
            {
                (compound, kind, severity, day): n
                for compound, kind, severity, day, n in db.execute(
                    "SELECT compound_id, kind, severity, day_ns, events FROM event_rollups_daily"
                )
            }
        )


def distinct_days(events: list[Event], offset_hours: int) -> Counter[Key]:
    """The oracle: distinct events per (compound, kind, severity, local day start at that UTC offset)."""
    offset = offset_hours * HOUR_NS
    day = 24 * HOUR_NS
    unique = {e.event_id: e for e in events}
    return Counter(
        (e.compound_id, e.kind.value, e.severity.value, (point_time_ns(e) + offset) // day * day - offset)
        for e in unique.values()
    )


async def test_sqlite_daily_rollups(tmp_path: Path) -> None:
    """Daily roll-ups (local days of UTC+8) == distinct raw counts; day counts read them and agree with raw.

    Teeth: the daily rows altered by hand -> the day count changed with them (so the query reads
    the daily level, and its equality with raw answers is the daily level's); the daily trigger
    made to fire ``BEFORE INSERT`` (counting ignored re-sends) -> the first comparison failed.
    """
    path = tmp_path / "store.db"
    events, resent, backlog = scenario()
    everything = events + backlog
    async with SqliteStore(SqliteStoreConfig(path=path)) as store:
        await store.write(events)
        await store.write(resent + backlog)
        await store.write(backlog[::2])
        assert sqlite_days(path) == distinct_days(everything, 8)
        rolled, raw = SqliteQueries(store), SqliteQueries(store, use_rollups=False)
        cst_midnight = datetime(2026, 6, 4, 16, 0, tzinfo=UTC)  # 2026-06-05 00:00 in Asia/Shanghai
        window = selection(cst_midnight, cst_midnight + timedelta(days=8))
        for group_by in (("compound", "kind"), ("kind",), ("compound",)):
            args: dict[str, Any] = {"interval": "day", "group_by": group_by, "zone": CST}
            assert await rolled.count(window, **args) == await raw.count(window, **args)
        args = {"interval": "day", "group_by": ("compound", "kind"), "zone": CST}
        expected = expected_rows(everything, interval="day", zone=CST)
        assert await rolled.count(window, **args) == expected
        critical = dataclasses.replace(window, severity="critical")
        assert await rolled.count(critical, **args) == await raw.count(critical, **args)
        with sqlite3.connect(path) as db:
            db.execute("UPDATE event_rollups_daily SET events = events + 1000")
        assert await rolled.count(window, **args) != expected  # the daily level answered
        await store.rebuild_summaries()
        assert await rolled.count(window, **args) == expected
        # a zone at another offset (UTC): its days are not these; hours answer, and agree
        utc_window = selection(DAY0 - timedelta(days=5), DAY0 + timedelta(days=2))
        utc_args: dict[str, Any] = {"interval": "day", "group_by": ("kind",), "zone": ZoneInfo("UTC")}
        assert await rolled.count(utc_window, **utc_args) == await raw.count(utc_window, **utc_args)
        # retention: whole local days before the cutoff go, with their hours
        await store.enforce_retention(
            RetentionRules(events_days=1, hit_crops_days=1, batch_rows=7, rollup_days=3),
            NOW,
            RetentionCounts(),
        )
        cutoff = int((NOW - timedelta(days=3)).timestamp()) * 10**9
        kept = Counter(
            {k: n for k, n in distinct_days(everything, 8).items() if k[3] + 24 * HOUR_NS > cutoff}
        )
        assert sqlite_days(path) == kept
        assert kept != distinct_days(everything, 8)  # the backlog's days went
    # the district moves to another zone (UTC): the next opening rebuilds the days from the hours
    async with SqliteStore(SqliteStoreConfig(path=path, rollup_day_offset_hours=0)):
        kept_hours = sqlite_rollups(path)
        by_day: Counter[Key] = Counter()
        for (compound, kind, severity, hour), n in kept_hours.items():
            by_day[(compound, kind, severity, hour // (24 * HOUR_NS) * 24 * HOUR_NS)] += n
        assert sqlite_days(path) == by_day
    async with SqliteStore(SqliteStoreConfig(path=path, rollup_day_offset_hours=None)):
        assert sqlite_days(path) == Counter()


async def test_influx_daily_rollups(influx: InfluxServer) -> None:
    """Day counts over whole Asia/Shanghai days from daily + hourly roll-ups + raw events equal raw answers.

    "now" in the middle of the data (days before it, the hours of its day up to the fresh hours,
    raw events after) and after it; a late backlog written after the roll-ups exist. Teeth: a
    daily point overwritten with a wrong count -> the answer changed with it (the daily level is
    read); ``rebuild_rollups`` put it back. The late-write recount of local days dropped -> the
    comparison after the backlog failed.
    """
    config = InfluxV1StoreConfig(url=influx.url, database="district")
    events, resent, backlog = scenario()
    everything = events + backlog
    async with InfluxV1Store(config) as store:
        await store.write(events)
        await store.write(resent)

        async def run(query: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
            return await store.query(query, method="POST", params=params, epoch="ns")

        where = InfluxRollups(**{**vars(influx_rollups(config)), "recheck_s": 0.0})
        raw = InfluxQueries(run, store.ping)
        cst_midnight = datetime(2026, 6, 4, 16, 0, tzinfo=UTC)  # 2026-06-05 00:00 in Asia/Shanghai
        window = selection(cst_midnight, cst_midnight + timedelta(days=8))
        await store.ensure_rollups(400, alter=False)
        assert await store.rollups_backfilled("daily_rollups_backfilled", "event_rollups_dayp8")
        await store.write(backlog)  # late: its compound's hours and local days are recounted
        await store.write(backlog[::3] + resent)
        middle = int((DAY0 + timedelta(hours=20, minutes=10)).timestamp()) * 10**9
        after = int((NOW + timedelta(days=1)).timestamp()) * 10**9
        args: dict[str, Any] = {"interval": "day", "group_by": ("compound", "kind"), "zone": CST}
        expected = expected_rows(everything, interval="day", zone=CST)
        for now_ns in (middle, after):
            rolled = InfluxQueries(run, store.ping, where, now_ns=lambda now_ns=now_ns: now_ns)  # type: ignore[misc]
            assert await rolled.count(window, **args) == expected
            for group_by in (("kind",), ("compound",)):
                by = {**args, "group_by": group_by}
                assert await rolled.count(window, **by) == await raw.count(window, **by)
            critical = dataclasses.replace(window, severity="critical")
            assert await rolled.count(critical, **args) == await raw.count(critical, **args)
        # one daily point made wrong: the answer follows it, the rebuild mends it
        rolled = InfluxQueries(run, store.ping, where, now_ns=lambda: after)
        thrown_c1 = next(
            e
            for e in events
            if e.compound_id == C1 and e.kind is EventKind.THROWN_OBJECT and e.severity is Severity.CRITICAL
        )
        day = (point_time_ns(thrown_c1) + 8 * HOUR_NS) // (24 * HOUR_NS) * (24 * HOUR_NS) - 8 * HOUR_NS
        line = f"thrown_object,compound_id={C1},district_id={DISTRICT},severity=critical events=100000i {day}"
        await store._post_write(
            line.encode(), {"db": "district", "rp": "event_rollups_dayp8", "precision": "ns"}
        )
        assert await rolled.count(window, **args) != expected
        await store.rebuild_rollups(0, 2**62, expiring=True, levels=("days",))
        assert await rolled.count(window, **args) == expected
