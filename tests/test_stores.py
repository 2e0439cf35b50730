"""District stores against real servers: InfluxDB 1.6.7 (v1 API) started per test, and SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from device_sims.influx import InfluxServer
from foundation.events import Event
from foundation.sqlite_thread import open_durable
from tests.test_uplink_protocol import T0, thrown
from uplink.stores import (
    InfluxV1Store,
    InfluxV1StoreConfig,
    SqliteStore,
    SqliteStoreConfig,
    StoreError,
    sqlite_event_ids,
)
from uplink.stores.sqlite import SQLITE_QUERY_COLUMNS, SQLITE_SCHEMA, migrate_sqlite_store


async def influx_event_ids(store: InfluxV1Store) -> tuple[int, set[str]]:
    """(raw point count, distinct event ids) across every measurement."""
    (result,) = await store.query('SELECT "event_id" FROM /.*/')
    values: list[str] = []
    for series in result.get("series", []):
        values += [row[1] for row in series["values"]]
    return len(values), set(values)


def many(n: int) -> list[Event]:
    return [thrown(i, at=T0 + timedelta(seconds=i)) for i in range(n)]


async def test_influx_v1_idempotent_and_distinct(influx: InfluxServer) -> None:
    """Written twice, stored once; two events of one device in the same millisecond both kept."""
    config = InfluxV1StoreConfig(url=influx.url, database="district")
    async with InfluxV1Store(config) as store:
        same_ms = [thrown(1000), thrown(1001)]  # same device, same occurred_at
        await store.write([*many(50), *same_ms])
        await store.write([*many(50), *same_ms])
        raw, distinct = await influx_event_ids(store)
        assert distinct == {e.event_id for e in [*many(50), *same_ms]}
        assert raw == len(distinct) == 52


async def test_influx_v1_escaping_survives_the_server(influx: InfluxServer) -> None:
    """Quotes, commas, equals signs, spaces and backslashes in values come back unchanged."""
    tricky = 'B座 "north", x=1 \\ y'
    config = InfluxV1StoreConfig(url=influx.url, database="district")
    async with InfluxV1Store(config) as store:
        await store.write([thrown(7, building=tricky)])
        (result,) = await store.query('SELECT "building", "event_id" FROM "thrown_object"')
        (series,) = result["series"]
        assert series["values"][0][1] == tricky
        assert series["values"][0][2] == thrown(7).event_id


async def test_influx_v1_errors_are_classified(influx: InfluxServer, tmp_path: Path) -> None:
    """A malformed write is not retryable; a server that is down is."""
    config = InfluxV1StoreConfig(url=influx.url, database="district")
    async with InfluxV1Store(config) as store:
        session = store._client()
        async with session.post("/write", params={"db": "district"}, data=b"bad line") as response:
            assert response.status == 400
        await store.write([thrown(1)])
        # a field type conflict (start_floor was written as an integer) is refused, not retried
        conflict = f'thrown_object,device_id=1 start_floor="x",event_id="e" {T0.timestamp():.0f}000000000'
        async with session.post("/write", params={"db": "district"}, data=conflict.encode()) as response:
            assert response.status == 400
            assert "field type conflict" in await response.text()
    down = InfluxV1StoreConfig(url="http://127.0.0.1:9", database="district", create_database=False)
    async with InfluxV1Store(down) as store:
        with pytest.raises(StoreError) as info:
            await store.write([thrown(1)])
        assert info.value.retryable
    missing = InfluxV1StoreConfig(url=influx.url, database="nowhere", create_database=False)
    async with InfluxV1Store(missing) as store:
        with pytest.raises(StoreError) as info:
            await store.write([thrown(1)])
        assert info.value.status == 404
        assert not info.value.retryable


async def test_sqlite_store_idempotent(tmp_path: Path) -> None:
    """The embedded store keeps one row per event id."""
    path = tmp_path / "district.db"
    async with SqliteStore(SqliteStoreConfig(path=path)) as store:
        await store.write(many(20))
        await asyncio.gather(store.write(many(20)), store.write(many(25)))
    assert sorted(sqlite_event_ids(path)) == sorted(e.event_id for e in many(25))


async def test_influx_v2_store_speaks_the_v2_write_api(tmp_path: Path) -> None:
    """The v2 store (influxdb-client) posts line protocol with the token, org and bucket, and classifies errors.

    No InfluxDB 2.x server is available here (Debian's 1.6.7 has no /api/v2/write), so a loopback
    HTTP endpoint implements the documented /api/v2/write status semantics: 204 stored, 401 refused.
    """
    from aiohttp import web  # noqa: PLC0415

    from device_sims.broker import free_port  # noqa: PLC0415
    from uplink.lineprotocol import to_lines  # noqa: PLC0415
    from uplink.stores import InfluxV2Store, InfluxV2StoreConfig  # noqa: PLC0415

    received: list[tuple[str, dict[str, str], bytes]] = []

    async def write(request: web.Request) -> web.Response:
        received.append((request.headers.get("Authorization", ""), dict(request.query), await request.read()))
        if request.headers.get("Authorization") != "Token good":
            return web.json_response({"code": "unauthorized", "message": "unauthorized access"}, status=401)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/api/v2/write", write)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        good = InfluxV2StoreConfig(
            url=f"http://127.0.0.1:{port}", org="district", bucket="events", token="good"
        )
        async with InfluxV2Store(good) as store:
            await store.write(many(3))
        auth, query, body = received[-1]
        assert auth == "Token good"
        assert query["org"] == "district"
        assert query["bucket"] == "events"
        assert query["precision"] == "ns"
        assert body == to_lines(many(3))
        bad = good.model_copy(update={"token": SecretStr("revoked")})
        async with InfluxV2Store(bad) as store:
            with pytest.raises(StoreError) as info:
                await store.write(many(1))
        assert info.value.status == 401
        assert not info.value.retryable
    finally:
        await runner.cleanup()


def test_ingesters_opening_a_new_embedded_store_together_all_start(tmp_path: Path) -> None:
    """Several ingesters migrating one new store file at the same instant all succeed, once.

    Found by the scale-out benchmark: each read the query columns as missing before taking the
    write lock, and all but the first then failed with "duplicate column name: time_ns". Checked
    to fail with the columns read only before the lock (as before): most rounds lose an opener.
    """
    for attempt in range(10):
        path = tmp_path / f"store-{attempt}.db"
        openers = 4
        connections = [open_durable(path, SQLITE_SCHEMA) for _ in range(openers)]
        start = threading.Barrier(openers)
        errors: list[BaseException] = []

        threads = [threading.Thread(target=_migrate_together, args=(db, start, errors)) for db in connections]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        columns = [row[1] for row in connections[0].execute("PRAGMA table_info(events)")]
        for db in connections:
            db.close()
        assert errors == []
        assert sorted(columns) == sorted(set(columns))
        assert {name for name, _ in SQLITE_QUERY_COLUMNS} <= set(columns)


def _migrate_together(db: sqlite3.Connection, start: threading.Barrier, errors: list[BaseException]) -> None:
    start.wait()
    try:
        migrate_sqlite_store(db)
    except sqlite3.Error as exc:
        errors.append(exc)
