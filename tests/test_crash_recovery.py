"""kill -9 of the gateway during a 10,000-event burst, then restart (reliability test T1).

HTTP-push devices and MQTT devices publishing with QoS 1 send at full speed; the gateway process is
SIGKILLed at a random point and restarted. Afterwards every event that a device saw acknowledged (an
HTTP 200 from the gateway, a PUBACK from the broker) is in the outbox exactly once. HTTP devices
re-send what was not acknowledged, as real ones do; the MQTT broker redelivers what the gateway had
not acknowledged, because the gateway acknowledges only after its commit.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest

from device_sims.broker import Mosquitto
from device_sims.demo import expected_event_ids
from device_sims.devices import build_sim
from device_sims.inventory import sample_devices
from device_sims.runner import Runner
from device_sims.scenarios import burst
from gateway.config import load_config
from tests.conftest import sample_config
from tests.processes import GatewayProcess

EVENTS = 10_000
SEEDS = [int(s) for s in os.environ.get("CRASH_SEEDS", "11,23,37").split(",")]
BURST_DIALECTS = {"hik-isapi-acs", "hik-isapi-anpr", "ctwing-smoke", "uface-mqtt", "vz-lpr-mqtt", "shed-mqtt"}


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
async def test_kill9_mid_burst_loses_and_duplicates_nothing(
    seed: int, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Every acknowledged event is in the outbox exactly once after a SIGKILL mid-burst and a restart."""
    rng = random.Random(seed)
    config_path = sample_config(tmp_path, mosquitto.port)
    config = load_config(config_path)
    gateway = GatewayProcess(config_path, tmp_path / "gateway.log")
    await gateway.start_gateway(config)
    sims = [build_sim(d) for d in sample_devices() if d.dialect in BURST_DIALECTS]
    steps = burst(sims, rng, EVENTS)
    runner = Runner(
        f"http://127.0.0.1:{config.http.port}", "127.0.0.1", mosquitto.port, workers=16, retry_http=True
    )
    kill_after = rng.randint(EVENTS // 5, EVENTS * 7 // 10)
    recovery_s = 0.0

    async def killer() -> None:
        nonlocal recovery_s
        while runner.report.sent < kill_after:
            await asyncio.sleep(0.01)
        gateway.kill()
        await asyncio.sleep(rng.uniform(0.1, 1.0))
        recovery_s = await gateway.start_gateway(config)

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(killer())
            report = await runner.run(steps)
        assert report.failed == 0, report.summary()
        expected = expected_event_ids(config, report.acked)
        assert len(expected) >= EVENTS * 0.99
        db_path = config.state.dir / "outbox.db"
        deadline = time.monotonic() + 60
        while True:
            with sqlite3.connect(db_path) as db:
                stored = {row[0] for row in db.execute("SELECT event_id FROM events")}
            if expected <= stored or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        missing = expected - stored
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:3]}"
        with sqlite3.connect(db_path) as db:
            raw, distinct = db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events WHERE kind != 'device_status'"
            ).fetchone()
            assert raw == distinct
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert recovery_s < 5.0, f"restart took {recovery_s:.1f}s"
        print(
            f"seed {seed}: killed after {kill_after} sent, {len(expected)} acknowledged events, "
            f"all stored once; {raw} rows; restart ready in {recovery_s:.2f}s; burst {report.seconds:.1f}s"
        )
        assert b"gateway_started" in (tmp_path / "gateway.log").read_bytes()
    finally:
        gateway.stop()
