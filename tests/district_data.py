"""District data for the query tests, produced by the real pipeline.

Two sample compounds, each with its own device broker and gateway, publish to one district broker;
two ingesters in different shared-subscription groups each take every batch, one into the
embedded SQLite store and one into a real InfluxDB 1.6.7. Both compounds play the same seeded
scenarios at the same times, so the same plates pass through both (what 查询比对 looks for).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from device_sims.broker import Mosquitto, free_port
from device_sims.demo import expected_event_ids
from device_sims.devices import CST, build_sim
from device_sims.influx import InfluxServer
from device_sims.inventory import (
    DISTRICT_ID,
    compound_id,
    compound_name,
    sample_broker_accounts,
    sample_devices,
    write_sample_config,
)
from device_sims.runner import Runner
from device_sims.scenarios import build
from district.config import DistrictConfig, load_district_config
from district.ingester import run_ingester
from district.operations import OperationsDb
from district.operator_api import build_api
from district.operator_service import open_operator_service
from district.query_model import Role
from foundation.events import DeviceState, DeviceStatusPayload, Event, utc_now
from gateway.config import GatewayConfig, load_config
from gateway.runtime import run_gateway

OTHER_DISTRICT = "36010300005000000001"
OTHER_COMPOUND = "36010300012160000101"
SEED = 11


@dataclass(frozen=True)
class DistrictData:
    """What the pipeline stored, where, and the window it falls in."""

    sqlite_path: Path
    influx_url: str
    database: str
    events: list[Event]  # every stored event (the oracle the query results are checked against)
    start: datetime
    end: datetime
    compounds: tuple[str, ...]
    offline_devices: frozenset[str]


def registry_toml() -> str:
    """The district's compound registry: both sample compounds and one of another district."""
    entries = [f'[[compounds]]\nid = "{compound_id(i)}"\nname = "{compound_name(i)}"\n' for i in (1, 2)]
    entries.append(
        f'[[compounds]]\nid = "{OTHER_COMPOUND}"\nname = "邻区小区"\ndistrict_id = "{OTHER_DISTRICT}"\n'
    )
    return "\n".join(entries)


def district_toml(
    workdir: Path, *, store: str, broker_port: int | None = None, name: str = "i1", api: str = ""
) -> str:
    """A district config text with the registry and an operations database in ``workdir``."""
    broker = f'[broker]\nhost = "127.0.0.1"\nport = {broker_port}\n' if broker_port else ""
    return (
        f'district_id = "{DISTRICT_ID}"\n{broker}'
        f'[ingest]\nname = "{name}"\ngroup = "g-{name}"\ndead_letter_path = "{workdir}/ingest-{name}.db"\n'
        f"http_port = {free_port()}\n"
        f'[api]\nops_db = "{workdir}/operations.db"\nport = {free_port()}\n{api}\n'
        f"[store]\n{store}\n\n{registry_toml()}"
    )


@contextlib.asynccontextmanager
async def running(start: Callable[..., Coroutine[Any, Any, None]], name: str) -> AsyncIterator[None]:
    """Run a daemon coroutine (``start(ready=...)``) for the block, once it says it is ready."""
    ready = asyncio.Event()
    task = asyncio.create_task(start(ready=ready), name=name)
    try:
        async with asyncio.timeout(30):
            await ready.wait()
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _gateway_config(workdir: Path, index: int, device_port: int, district_port: int) -> GatewayConfig:
    path = write_sample_config(
        workdir / f"gateway-{index}.toml",
        state_dir=workdir / f"state-{index}",
        http_port=free_port(),
        mqtt_port=device_port,
        index=index,
    )
    with path.open("a", encoding="utf-8") as handle:
        handle.write(
            '\n[uplink]\nmode = "mqtt"\nbatch_max_delay_ms = 20\n'
            f'[uplink.broker]\nhost = "127.0.0.1"\nport = {district_port}\n'
        )
    return load_config(path)


def _offline_devices(events: list[Event]) -> set[str]:
    return {
        e.device_id
        for e in events
        if isinstance(e.payload, DeviceStatusPayload) and e.payload.state is DeviceState.OFFLINE
    }


def _stored(path: Path) -> list[Event]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return [Event.model_validate_json(body) for (body,) in db.execute("SELECT body FROM events")]


async def _influx_count(influx: InfluxServer, database: str) -> int:
    from uplink.stores import InfluxV1Store, InfluxV1StoreConfig  # noqa: PLC0415

    config = InfluxV1StoreConfig.model_validate({"url": influx.url, "database": database})
    async with InfluxV1Store(config) as store:
        results = await store.query("SELECT count(event_id) FROM /.*/", epoch="ns")
    return sum(int(s["values"][0][1]) for r in results for s in r.get("series", []))


async def produce(workdir: Path, influx: InfluxServer) -> DistrictData:
    """Run the two compounds through the pipeline until both stores hold every acknowledged event."""
    database = "district_queries"
    sqlite_path = workdir / "district.db"
    # each compound's device broker with its own accounts; the district broker as the district side runs it
    brokers = [
        Mosquitto(workdir / "devices-1", accounts=sample_broker_accounts(1)).start(),
        Mosquitto(workdir / "devices-2", accounts=sample_broker_accounts(2)).start(),
        Mosquitto(workdir / "district").start(),
    ]
    try:
        device_brokers, district = brokers[:2], brokers[2]
        configs = [
            _gateway_config(workdir, i + 1, b.port, district.port) for i, b in enumerate(device_brokers)
        ]
        districts: list[DistrictConfig] = []
        for name, store in (
            ("sqlite", f'type = "sqlite"\npath = "{sqlite_path}"'),
            ("influx", f'type = "influx_v1"\nurl = "{influx.url}"\ndatabase = "{database}"'),
        ):
            path = workdir / f"ingest-{name}.toml"
            path.write_text(
                district_toml(workdir, store=store, broker_port=district.port, name=name), encoding="utf-8"
            )
            districts.append(load_district_config(path))
        # the day before yesterday, local time: the scenarios spread over a whole day, all of it
        # more than a day ago, so "silent for over an hour" holds at any hour the tests run
        start = (utc_now().astimezone(CST) - timedelta(days=2)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        expected: set[str] = set()
        async with contextlib.AsyncExitStack() as stack:
            for district_config in districts:
                await stack.enter_async_context(running(partial(run_ingester, district_config), "ingester"))
            for config in configs:
                await stack.enter_async_context(running(partial(run_gateway, config), "gateway"))
            for index, (config, broker) in enumerate(zip(configs, device_brokers, strict=True), start=1):
                sims = [build_sim(d) for d in sample_devices(index)]
                runner = Runner(f"http://127.0.0.1:{config.http.port}", "127.0.0.1", broker.port)
                steps = (
                    build("normal-day", sims, SEED, 160, start)
                    + build("morning-rush", sims, SEED, 120, start)
                    + build("shed-fire", sims, SEED, 0, start + timedelta(hours=21))
                    + build("thrown-object", sims, SEED, 0, start + timedelta(hours=21, minutes=30))
                )
                if index == 2:
                    steps += build("offline", sims, SEED, 0, start + timedelta(hours=22))
                report = await runner.run(steps)
                assert report.failed == 0, report
                expected |= expected_event_ids(config, report.acked)
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                events = _stored(sqlite_path)
                stored = {e.event_id for e in events}
                in_influx = await _influx_count(influx, database)
                # compound 2's five MQTT devices lose power: their wills must have arrived too
                if expected <= stored and in_influx == len(stored) and len(_offline_devices(events)) == 5:
                    break
                assert asyncio.get_running_loop().time() < deadline, (
                    f"stores incomplete: sqlite {len(stored & expected)}/{len(expected)}, influx {in_influx}"
                )
                await asyncio.sleep(0.2)
        events = _stored(sqlite_path)
        assert await _influx_count(influx, database) == len(events), "both stores hold the same events"
        offline = _offline_devices(events)
        return DistrictData(
            sqlite_path=sqlite_path,
            influx_url=influx.url,
            database=database,
            events=events,
            start=start - timedelta(hours=1),
            end=utc_now() + timedelta(minutes=1),
            compounds=(compound_id(1), compound_id(2)),
            offline_devices=frozenset(offline),
        )
    finally:
        for broker in brokers:
            broker.stop()


@contextlib.asynccontextmanager
async def serving_operator_api(
    config: DistrictConfig,
) -> AsyncIterator[tuple[str, dict[str, str], OperationsDb]]:
    """The real operator API on a free port, with a token per role: (base url, tokens by role, ops db)."""
    async with OperationsDb(config.api.ops_db) as ops, open_operator_service(config) as service:
        tokens = {
            role.value: await ops.create_token(role.value, role, DISTRICT_ID, (), "test") for role in Role
        }
        runner = web.AppRunner(build_api(service))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}", tokens, ops
        finally:
            await runner.cleanup()
