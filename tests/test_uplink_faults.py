"""Fault tests of the uplink, with real Mosquitto and InfluxDB processes (reliability tests T1-T4).

Each counts the district store by event id afterwards: every event a device saw acknowledged is
there exactly once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from device_sims.broker import Mosquitto
from device_sims.demo import expected_event_ids
from device_sims.devices import build_sim
from device_sims.influx import InfluxServer
from device_sims.inventory import sample_devices
from device_sims.runner import Runner
from device_sims.scenarios import build, burst
from district.config import DistrictConfig
from district.ingester import run_ingester
from gateway.config import GatewayConfig
from gateway.runtime import run_gateway
from tests.district_data import running
from tests.metrics import scrape, value
from tests.processes import GatewayProcess, IngesterProcess
from tests.test_uplink_e2e import district_config, gateway_config, sqlite_ids, wait_until
from uplink.stores import InfluxV1Store, InfluxV1StoreConfig

pytestmark = pytest.mark.slow


async def play_burst(
    config: GatewayConfig, device_broker: Mosquitto, seed: int, count: int, rate: float | None = None
) -> set[str]:
    rng = random.Random(seed)
    sims = [build_sim(d) for d in sample_devices() if d.dialect != "hightoss-mqtt"]
    runner = Runner(
        f"http://127.0.0.1:{config.http.port}", "127.0.0.1", device_broker.port, workers=8, retry_http=True
    )
    report = await runner.run(burst(sims, rng, count), rate=rate)
    assert report.failed == 0
    return expected_event_ids(config, report.acked)


async def influx_ids(config: DistrictConfig) -> tuple[int, set[str]]:
    assert isinstance(config.store, InfluxV1StoreConfig)
    async with InfluxV1Store(config.store.model_copy(update={"create_database": False})) as store:
        values: list[str] = []
        for result in await store.query('SELECT "event_id" FROM /.*/'):
            for series in result.get("series", []):
                values += [row[1] for row in series["values"]]
    return len(values), set(values)


async def wait_for_influx(
    config: DistrictConfig, expected: set[str], timeout: float = 60
) -> tuple[int, set[str]]:
    deadline = time.monotonic() + timeout
    while True:
        raw, distinct = await influx_ids(config)
        if expected <= distinct or time.monotonic() > deadline:
            return raw, distinct
        await asyncio.sleep(0.3)


@pytest.mark.parametrize("seed", [3, 17])
async def test_ingester_kill9_mid_batch(
    seed: int, tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto, influx: InfluxServer
) -> None:
    """An ingester SIGKILLed while writing: redelivery and the idempotent store lose and double nothing."""
    config = gateway_config(tmp_path, mosquitto, district_broker, receipt_timeout_s=5)
    district = district_config(
        tmp_path, district_broker, f'type = "influx_v1"\nurl = "{influx.url}"\ndatabase = "district"'
    )
    ingester = IngesterProcess(tmp_path / "district-i1.toml", tmp_path / "ingester.log")
    await ingester.start()
    try:
        async with running(lambda ready: run_gateway(config, ready=ready), "gateway"):
            sending = asyncio.create_task(play_burst(config, mosquitto, seed, 3000))
            await asyncio.sleep(random.Random(seed).uniform(0.3, 1.0))
            ingester.kill()
            await asyncio.sleep(0.5)
            await ingester.start()
            expected = await sending
            raw, distinct = await wait_for_influx(district, expected)
        assert expected <= distinct, f"{len(expected - distinct)} events lost"
        assert raw == len(distinct)
    finally:
        ingester.stop()


async def test_two_ingesters_share_and_one_dies(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto, influx: InfluxServer
) -> None:
    """Two ingesters split the load; one is killed and stays dead; InfluxDB ends up with everything once.

    Both ingesters' own metrics show they stored events before the kill (the shared subscription did
    split the load), the kill lands while the devices are still sending, and the survivor stores more
    after it.
    """
    config = gateway_config(tmp_path, mosquitto, district_broker, receipt_timeout_s=3)
    store = f'type = "influx_v1"\nurl = "{influx.url}"\ndatabase = "district"'
    district = district_config(tmp_path, district_broker, store, name="i1")
    other = district_config(tmp_path, district_broker, store, name="i2")
    metrics = [f"http://127.0.0.1:{c.ingest.http_port}/metrics" for c in (district, other)]
    first = IngesterProcess(tmp_path / "district-i1.toml", tmp_path / "ingester-1.log")
    second = IngesterProcess(tmp_path / "district-i2.toml", tmp_path / "ingester-2.log")
    await first.start()
    await second.start()

    async def stored(url: str) -> float:
        text, _ = await scrape(url)
        return value(text, "cgw_ingest_events_stored_total")

    try:
        async with running(lambda ready: run_gateway(config, ready=ready), "gateway"):
            sending = asyncio.create_task(play_burst(config, mosquitto, 5, 2000, rate=400))
            deadline = time.monotonic() + 30
            while min([await stored(url) for url in metrics]) == 0:
                assert time.monotonic() < deadline, "the two ingesters did not both store events"
                await asyncio.sleep(0.1)
            assert not sending.done()  # the kill lands mid-burst
            survivor_before = await stored(metrics[1])
            first.kill()
            expected = await sending
            raw, distinct = await wait_for_influx(district, expected)
            assert await stored(metrics[1]) > survivor_before
        assert expected <= distinct, f"{len(expected - distinct)} events lost"
        assert raw == len(distinct)
    finally:
        first.stop()
        second.stop()


async def test_influxdb_down_then_back(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto, influx: InfluxServer
) -> None:
    """InfluxDB stopped under load: the ingester holds back acknowledgements and catches up after."""
    config = gateway_config(tmp_path, mosquitto, district_broker)
    district = district_config(
        tmp_path, district_broker, f'type = "influx_v1"\nurl = "{influx.url}"\ndatabase = "district"'
    )
    async with (
        running(lambda ready: run_ingester(district, ready=ready), "ingester"),
        running(lambda ready: run_gateway(config, ready=ready), "gateway"),
    ):
        before = await play_burst(config, mosquitto, 7, 500)
        await wait_for_influx(district, before)
        influx.stop()
        during = await play_burst(config, mosquitto, 8, 1000)
        await asyncio.sleep(1.0)
        influx.start()
        after = await play_burst(config, mosquitto, 9, 500)
        expected = before | during | after
        raw, distinct = await wait_for_influx(district, expected)
    assert expected <= distinct, f"{len(expected - distinct)} events lost"
    assert raw == len(distinct)


async def test_broker_restarted_without_session_state(
    tmp_path: Path, mosquitto: Mosquitto, influx: InfluxServer
) -> None:
    """The district broker comes back as a new process with no memory; nothing is lost.

    Receipts make the gateway send again whatever the district never stored.
    """
    district_broker = Mosquitto(tmp_path / "amnesiac", persistence=False).start()
    try:
        config = gateway_config(tmp_path, mosquitto, district_broker, receipt_timeout_s=3)
        district = district_config(
            tmp_path, district_broker, f'type = "influx_v1"\nurl = "{influx.url}"\ndatabase = "district"'
        )
        async with (
            running(lambda ready: run_ingester(district, ready=ready), "ingester"),
            running(lambda ready: run_gateway(config, ready=ready), "gateway"),
        ):
            sending = asyncio.create_task(play_burst(config, mosquitto, 11, 3000))
            await asyncio.sleep(0.7)
            district_broker.stop(kill=True)
            district_broker.start()
            expected = await sending
            raw, distinct = await wait_for_influx(district, expected)
        assert expected <= distinct, f"{len(expected - distinct)} events lost"
        assert raw == len(distinct)
    finally:
        district_broker.stop()


async def test_gateway_kill9_mid_replay_and_alarms_first(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """A gateway SIGKILLed while replaying a backlog loses and doubles nothing; alarms go first.

    The backlog builds while the district is away; the alarms raised during the outage reach the
    district before the routine backlog does. The store is the embedded SQLite one here because its
    row order shows the order of arrival (InfluxDB orders by event time).
    """
    config = gateway_config(tmp_path, mosquitto, district_broker, replay_rate=1500)
    store_path = tmp_path / "district.db"
    district = district_config(tmp_path, district_broker, f'type = "sqlite"\npath = "{store_path}"')
    gateway = GatewayProcess(tmp_path / "gateway.toml", tmp_path / "gateway.log")
    district_broker.stop()
    await gateway.start_gateway(config)
    try:
        backlog = await play_burst(config, mosquitto, 13, 4000)
        sims = [build_sim(d) for d in sample_devices() if d.dialect in {"shed-mqtt", "hightoss-mqtt"}]
        alarm_steps = build("shed-fire", sims, 14, 0) + build("thrown-object", sims, 14, 0)
        runner = Runner(f"http://127.0.0.1:{config.http.port}", "127.0.0.1", mosquitto.port)
        alarms_report = await runner.run(alarm_steps)
        alarm_ids = {e for e in expected_event_ids(config, alarms_report.acked) if e not in backlog}
        # "raised during the outage": the gateway has taken the device backlog and the alarms into
        # its outbox before the district returns (on a slow machine the intake may still be busy)
        outbox_path = config.state.dir / "outbox.db"

        def outbox_has_everything() -> bool:
            with sqlite3.connect(outbox_path) as db:
                held = {row[0] for row in db.execute("SELECT event_id FROM events")}
            return (backlog | alarm_ids) <= held

        await wait_until(outbox_has_everything, timeout=120)
        # The district returns whole: its broker and its ingester, before the compound reconnects
        # (a gateway reconnecting in the instant between the two would publish to a broker without
        # a subscriber, and the receipt timeout, not the alarm priority, would decide the order).
        assert gateway.process is not None
        paused = gateway.process.pid
        os.kill(paused, signal.SIGSTOP)
        try:
            district_broker.start()
        except BaseException:
            os.kill(paused, signal.SIGCONT)
            raise
        async with running(lambda ready: run_ingester(district, ready=ready), "ingester"):
            os.kill(paused, signal.SIGCONT)
            await wait_until(lambda: len(sqlite_ids(store_path)) >= 800, timeout=30)
            gateway.kill()
            await gateway.start_gateway(config)
            expected = backlog | alarm_ids
            await wait_until(lambda: expected <= set(sqlite_ids(store_path)), timeout=90)
        with sqlite3.connect(store_path) as db:
            rows = db.execute("SELECT rowid, event_id, severity FROM events ORDER BY rowid").fetchall()
        assert len(rows) == len({r[1] for r in rows})
        critical = [rowid for rowid, _, severity in rows if severity == "critical"]
        routine = sorted(rowid for rowid, _, severity in rows if severity != "critical")
        assert critical, "no alarm reached the district"
        assert max(critical) < routine[len(routine) // 10], "alarms waited behind the routine backlog"
    finally:
        gateway.stop()
