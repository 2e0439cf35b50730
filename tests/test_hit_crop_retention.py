"""District retention of watch-list hit crops: real SQLite, real InfluxDB 1.6.7, a real ingester.

A hit older than ``[retention] hit_crops_days`` loses its face crop (``payload.snapshot_jpeg_b64``
null in the stored body); the event itself, every other hit, and every other event stay as they
were, read back through the operators' query path and, for InfluxDB, point by point.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from device_sims.broker import Mosquitto
from device_sims.influx import InfluxServer
from device_sims.inventory import DISTRICT_ID
from district.config import load_district_config
from district.ingester import run_ingester
from district.query_backends import open_query_backend
from district.query_model import Selection
from foundation.errors import ConfigError
from foundation.events import (
    Direction,
    Event,
    EventKind,
    Provenance,
    Severity,
    VehicleWatchHitPayload,
    WatchlistHitPayload,
)
from foundation.identity import event_id
from tests.district_data import running
from tests.metrics import scrape, value
from tests.test_district_health import OWN, eventually
from tests.test_district_retention import events as thrown_events
from tests.test_uplink_e2e import district_config
from uplink.lineprotocol import EPOCH
from uplink.stores import (
    InfluxV1Store,
    InfluxV1StoreConfig,
    RetentionCounts,
    RetentionRules,
    SqliteStore,
    SqliteStoreConfig,
    StoreConfig,
    StoreError,
)
from uplink.stores.base import without_hit_crop

NOW = datetime.now(UTC)
RULES = RetentionRules(events_days=180, hit_crops_days=30, batch_rows=2)
HIT_DEVICES = ("36010400011310000001", "36010400011310000002")


def hit(n: int, age: timedelta, *, crop: bool = True) -> Event:
    """A face watch-list hit ``age`` old; two devices and two lists, so the points span several series."""
    at = NOW - age
    device = HIT_DEVICES[n % 2]
    return Event(
        event_id=event_id(device, "hit", str(n)),
        kind=EventKind.WATCHLIST_HIT,
        district_id=DISTRICT_ID,
        compound_id=OWN,
        device_id=device,
        occurred_at=at,
        received_at=at,
        severity=Severity.CRITICAL,
        source=Provenance(vendor="hikvision", dialect="isapi-face"),
        payload=WatchlistHitPayload(
            list_id=("wanted", "missing")[n % 2],
            list_version=3,
            person_ref=f"subject:{n}",
            distance=0.31,
            threshold=0.5,
            source_event_id=event_id(device, "face", str(n)),
            snapshot_jpeg_b64=base64.b64encode(f"face crop {n} ".encode() * 40).decode() if crop else None,
        ),
    )


def plate_hit(n: int, age: timedelta) -> Event:
    """A vehicle watch-list hit: a hit without a picture."""
    at = NOW - age
    return Event(
        event_id=event_id(HIT_DEVICES[0], "plate", str(n)),
        kind=EventKind.VEHICLE_WATCH_HIT,
        district_id=DISTRICT_ID,
        compound_id=OWN,
        device_id=HIT_DEVICES[0],
        occurred_at=at,
        received_at=at,
        severity=Severity.CRITICAL,
        source=Provenance(vendor="hikvision", dialect="isapi-lpr"),
        payload=VehicleWatchHitPayload(
            list_id="stolen",
            list_version=1,
            plate="赣A12345",
            direction=Direction.IN,
            source_event_id="x" * 16,
        ),
    )


def stripped(event: Event) -> Event:
    """The event as retention leaves it: the crop gone, all else the same."""
    assert isinstance(event.payload, WatchlistHitPayload)
    return event.model_copy(update={"payload": event.payload.model_copy(update={"snapshot_jpeg_b64": None})})


class Data:
    """Expired crops, recent crops, old hits without a crop, plate hits and other events."""

    def __init__(self, offset: int = 0) -> None:
        o = offset
        self.expired = [hit(o + n, timedelta(days=31 + n)) for n in range(7)]
        self.recent = [hit(o + 100 + n, timedelta(days=29 - n)) for n in range(3)]
        self.bare = [hit(o + 200 + n, timedelta(days=60), crop=False) for n in range(2)]
        self.others = [plate_hit(o + n, timedelta(days=40)) for n in range(2)] + thrown_events(
            o + 300, 3, timedelta(days=40)
        )

    @property
    def all(self) -> list[Event]:
        return self.expired + self.recent + self.bare + self.others

    def after_retention(self) -> dict[str, Event]:
        kept = self.recent + self.bare + self.others
        return {e.event_id: e for e in kept} | {e.event_id: stripped(e) for e in self.expired}


def everything() -> Selection:
    return Selection(
        district_id=DISTRICT_ID,
        compounds=None,
        start_ns=((NOW - timedelta(days=179)) - EPOCH) // timedelta(microseconds=1) * 1000,
        end_ns=((NOW + timedelta(days=1)) - EPOCH) // timedelta(microseconds=1) * 1000,
    )


async def read_back(config: StoreConfig) -> dict[str, Event]:
    """Every stored event, through the operators' query path (``QueryBackend.find``)."""
    async with open_query_backend(config) as backend:
        found = await backend.find(everything(), newest_first=False, limit=1000, cursor_ns=None)
    return {e.event_id: e for e in found}


async def test_sqlite_strips_exactly_the_expired_crops_and_keeps_the_events(tmp_path: Path) -> None:
    """Hits past hit_crops_days lose their crop, byte for byte nothing else changes; a second pass strips none.

    Events past events_days go in the same pass and count as purged events, not crops. Checked
    once to fail with the crop cutoff ignored (``time_ns < ?`` dropped: the 3 recent hits lost
    their crops too and the count was 10).
    """
    data, ancient = Data(), [hit(900 + n, timedelta(days=200)) for n in range(2)]
    config = SqliteStoreConfig(path=tmp_path / "d.db")
    counts = RetentionCounts()
    async with SqliteStore(config) as store:
        await store.write(data.all + ancient)
        assert (await store.enforce_retention(RULES, NOW, counts)).policy is None
        assert counts == RetentionCounts(events_purged=2, hit_crops_purged=7)
        await store.enforce_retention(RULES, NOW, counts)
        assert counts == RetentionCounts(events_purged=2, hit_crops_purged=7)
    assert await read_back(config) == data.after_retention()
    with sqlite3.connect(config.path) as db:
        bodies = dict(db.execute("SELECT event_id, body FROM events").fetchall())
    assert bodies == {i: e.model_dump_json() for i, e in data.after_retention().items()}


def test_sqlite_finds_the_crops_through_their_partial_index(tmp_path: Path) -> None:
    """The crop query uses the partial index of hits still carrying a crop (no scan of every old body).

    Checked once to fail with the index made for another kind (the plan became a search of
    events_by_time).
    """
    from uplink.stores.sqlite import HIT_CROP_PRESENT, SQLITE_INDEXES, SQLITE_SCHEMA  # noqa: PLC0415

    with sqlite3.connect(tmp_path / "d.db") as db:
        db.executescript(SQLITE_SCHEMA)
        for column in ("time_ns INTEGER", "plate TEXT", "person_ref TEXT"):
            db.execute(f"ALTER TABLE events ADD COLUMN {column}")
        db.executescript(SQLITE_INDEXES)
        plan = db.execute(
            f"EXPLAIN QUERY PLAN SELECT event_id FROM events WHERE {HIT_CROP_PRESENT} AND time_ns < ? LIMIT ?",
            (1, 2),
        ).fetchall()
    assert "events_with_hit_crop" in " ".join(str(row[-1]) for row in plan)


async def points(store: InfluxV1Store, source: str) -> dict[str, dict[str, Any]]:
    """Every point of ``source``, by event id: its time, tags and fields (raw: a duplicate point fails)."""
    found: dict[str, dict[str, Any]] = {}
    for result in await store.query(f"SELECT * FROM {source}", epoch="ns"):
        for series in result.get("series", []):
            for row in series["values"]:
                point = dict(zip(series["columns"], row, strict=True))
                assert point["event_id"] not in found, f"two points for {point['event_id']}"
                found[point["event_id"]] = point
    return found


@pytest.mark.parametrize("policy", [None, "ops"])
async def test_influx_rewrites_the_expired_hit_points_without_their_crop(
    influx: InfluxServer, policy: str | None
) -> None:
    """Each expired hit point keeps its series, time and other fields, and gets the stripped body; no copies.

    With ``policy`` the store writes to a retention policy that is not the database default: the
    crops are found and rewritten in it, none land in autogen. Read back point by point (every field
    and tag compared) and, without a policy, through the query path. Checked once to fail with the
    rewrite's timestamp off by 1 ns (the pass stopped: the rewritten point still had its crop) and
    once with the rewrite written without ``rp`` (the "ops" case stopped the same way).
    """
    config = InfluxV1StoreConfig(url=influx.url, database="d", retention_policy=policy)
    source = '"watchlist_hit"' if policy is None else f'"d"."{policy}"."watchlist_hit"'
    data = Data()
    counts = RetentionCounts()
    async with InfluxV1Store(config.model_copy(update={"retention_policy": None})) as admin:
        if policy is not None:
            await admin.query(
                f'CREATE RETENTION POLICY "{policy}" ON "d" DURATION 0s REPLICATION 1', method="POST"
            )
    async with InfluxV1Store(config) as store:
        await store.write(data.all)
        before = await points(store, source)
        first = await store.enforce_retention(RULES, NOW, counts)
        assert first.policy is not None
        assert first.policy.policy == (policy or "autogen")
        assert counts == RetentionCounts(events_purged=0, hit_crops_purged=7)
        again = await store.enforce_retention(RULES, NOW, counts)
        assert again.policy is None  # checked once per store
        assert counts == RetentionCounts(events_purged=0, hit_crops_purged=7)
        after = await points(store, source)
        if policy is not None:
            assert await points(store, '"d"."autogen"."watchlist_hit"') == {}
    expected = data.after_retention()
    hits = {e.event_id for e in data.all if e.kind is EventKind.WATCHLIST_HIT}
    assert set(after) == hits
    for key, point in after.items():
        assert Event.model_validate_json(point["body"]) == expected[key]
        assert {k: v for k, v in point.items() if k != "body"} == {
            k: v for k, v in before[key].items() if k != "body"
        }
    if policy is None:
        assert await read_back(config) == expected


async def test_influx_strips_nothing_when_no_hit_is_older_than_the_cutoff(influx: InfluxServer) -> None:
    """Recent crops only: the pass rewrites nothing and every body is as written.

    Checked once to fail with the time condition reversed (``time > $cutoff``: the 3 recent hits
    were stripped).
    """
    config = InfluxV1StoreConfig(url=influx.url, database="d")
    data = Data()
    counts = RetentionCounts()
    async with InfluxV1Store(config) as store:
        await store.write(data.recent + data.others)
        await store.enforce_retention(RULES, NOW, counts)
    assert counts.hit_crops_purged == 0
    assert await read_back(config) == {e.event_id: e for e in data.recent + data.others}


@pytest.mark.parametrize("store", ["sqlite", "influx_v1"])
async def test_a_running_ingester_strips_crops_on_schedule_and_counts_them(
    tmp_path: Path, district_broker: Mosquitto, store: str
) -> None:
    """The ingester's one "retention" task strips at start and every check_interval_s, whatever the store.

    ``cgw_district_hit_crops_purged_total`` counts each stripped crop once (and the events purged
    stay counted on their own metric). Checked once to fail with the metric reading the events
    counter instead (it never reached 7).
    """
    with contextlib.ExitStack() as stack:
        if store == "sqlite":
            store_toml = f'type = "sqlite"\npath = "{tmp_path / "district.db"}"'
            store_config: StoreConfig = SqliteStoreConfig(path=tmp_path / "district.db")
        else:
            server = stack.enter_context(InfluxServer(tmp_path / "influx"))
            store_toml = f'type = "influx_v1"\nurl = "{server.url}"\ndatabase = "d"'
            store_config = InfluxV1StoreConfig(url=server.url, database="d")
        config = district_config(tmp_path, district_broker, store_toml)
        toml = tmp_path / "district-i1.toml"
        toml.write_text(
            toml.read_text(encoding="utf-8")
            + "[retention]\nevents_days = 100\nhit_crops_days = 30\ncheck_interval_s = 1\npurge_batch_rows = 2\n",
            encoding="utf-8",
        )
        config = load_district_config(toml)
        first, later = Data(), Data(offset=1000)
        ancient = [hit(900, timedelta(days=150))]
        async with config.store.build() as writer:
            await writer.write(first.all + ancient)
        metrics = f"http://127.0.0.1:{config.ingest.http_port}/metrics"

        async def counted(crops: int, purged: int) -> bool:
            text, _ = await scrape(metrics)
            return (
                value(text, "cgw_district_hit_crops_purged_total"),
                value(text, "cgw_district_events_purged_total"),
            ) == (crops, purged)

        # SQLite deletes the ancient hit; InfluxDB leaves that to influxd (the stock infinite policy is
        # only warned about), so there the hit is still stored and loses its crop instead
        purged, crops = (1, 7) if store == "sqlite" else (0, 8)
        async with running(lambda ready: run_ingester(config, ready=ready), "ingester"):
            await eventually(lambda: counted(crops, purged))
            async with config.store.build() as writer:
                await writer.write(later.all)
            await eventually(lambda: counted(crops + 7, purged), timeout=15)
        expected = first.after_retention() | later.after_retention()
        if store != "sqlite":
            expected[ancient[0].event_id] = stripped(ancient[0])
        assert await read_back(store_config) == expected


def write_retention(tmp_path: Path, lines: str) -> Path:
    path = tmp_path / "district.toml"
    path.write_text(
        f'district_id = "{DISTRICT_ID}"\n[store]\ntype = "sqlite"\npath = "{tmp_path}/d.db"\n[retention]\n{lines}\n',
        encoding="utf-8",
    )
    return path


def test_hit_crops_days_longer_than_events_days_is_refused_naming_both(tmp_path: Path) -> None:
    """hit_crops_days > events_days is a config error naming the file and both fields.

    Checked once to fail with the check removed (the config loaded).
    """
    path = write_retention(tmp_path, "events_days = 20\nhit_crops_days = 21")
    with pytest.raises(ConfigError) as raised:
        load_district_config(path)
    message = str(raised.value)
    assert str(path) in message
    assert "retention: hit_crops_days (21) must be at most events_days (20)" in message


@pytest.mark.parametrize(
    ("lines", "days"),
    [("", 30), ("events_days = 7", 7), ("events_days = 40", 30), ("events_days = 7\nhit_crops_days = 3", 3)],
)
def test_hit_crops_days_defaults_to_30_or_the_shorter_events_days(
    tmp_path: Path, lines: str, days: int
) -> None:
    """Unset, hit_crops_days is 30, or events_days when shorter (such configs stay valid); set, it is kept.

    Checked once to fail with the default fixed at 30 ("events_days = 7" was refused).
    """
    assert load_district_config(write_retention(tmp_path, lines)).retention.hit_crops_days == days


def test_hit_crops_days_zero_is_refused(tmp_path: Path) -> None:
    """hit_crops_days = 0 names the field (a crop is kept at least a day)."""
    with pytest.raises(ConfigError, match=r"retention\.hit_crops_days"):
        load_district_config(write_retention(tmp_path, "hit_crops_days = 0"))


def test_a_body_the_model_no_longer_accepts_still_loses_its_crop() -> None:
    """A stored hit body of another schema (an unknown field) is stripped as plain JSON, the rest kept.

    Checked once to fail with the fallback returning the body unchanged (the crop stayed).
    """
    event = hit(1, timedelta(days=40))
    document = json.loads(event.model_dump_json())
    document["payload"]["added_later"] = "x"
    stale = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    with pytest.raises(ValueError, match="added_later"):
        Event.model_validate_json(stale)
    document["payload"]["snapshot_jpeg_b64"] = None
    assert json.loads(without_hit_crop(stale)) == document
    assert without_hit_crop(event.model_dump_json()) == stripped(event).model_dump_json()
    with pytest.raises(TypeError, match="vehicle_watch_hit"):
        without_hit_crop(plate_hit(1, timedelta(days=40)).model_dump_json())


async def test_influx_a_hit_point_whose_body_is_not_a_hit_is_a_store_error_naming_it(
    influx: InfluxServer,
) -> None:
    """A point the ingester could not have written (its body not JSON) fails the pass as a StoreError naming it.

    The ingester's retention task retries a StoreError and logs it; anything else would end the
    task group (the ingester). Checked once to fail without the translation (a ValidationError escaped).
    """
    config = InfluxV1StoreConfig(url=influx.url, database="d")
    at = RULES.cutoff_ns(40, NOW)
    async with InfluxV1Store(config) as store:
        await store.write_lines(
            f'watchlist_hit,list_id=x body="{{\\"snapshot_jpeg_b64\\":\\"abc" {at}'.encode()
        )
        with pytest.raises(StoreError, match=rf"watchlist_hit point at {at} {{'list_id': 'x'}} has a body"):
            await store.enforce_retention(RULES, NOW, RetentionCounts())
