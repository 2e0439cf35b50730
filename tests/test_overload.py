"""Overload made visible: the device broker's default queue overflows, and the gateway says so.

A real Mosquitto with its default ``max_queued_messages`` (1000) and ``$SYS`` every second; a real
gateway process, stopped (SIGSTOP) while a shed sensor and an LPR camera publish 1,500 numbered QoS 1
messages between them, each acknowledged by the broker. The broker keeps the gateway's in-flight
window and 1000 more, and drops the rest after the devices had their PUBACKs. Once the gateway runs
again and each device's next message arrives, the gateway must report exactly what the broker
dropped, three ways that agree: its copy of the broker's ``$SYS`` drop counter, the sequence numbers
missing per device, and the events that are not in the outbox; and its log must say what to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from adapters import DIALECTS
from adapters.base import DeviceContext, RawMessage
from device_sims.broker import Mosquitto, stop_process
from device_sims.devices import CST, MqttPublish, ShedSim, SimDevice, VzLprSim
from device_sims.inventory import sample_broker_accounts, sample_devices
from foundation.fault_switches import ENVIRONMENT_VARIABLE, FaultSwitch
from foundation.identity import Pseudonymizer
from gateway.broker_drops import DROPPED_TOPIC
from gateway.config import GatewayConfig, load_config
from gateway.outbox import Outbox
from tests.conftest import device_client, drop_counter_client, sample_config
from tests.metrics import scrape, value

ROOT = Path(__file__).resolve().parents[1]
BURST = 1500  # more than the default queue (1000) plus the gateway's in-flight window (256)
SHED = next(d for d in sample_devices() if d.dialect == "shed-mqtt")
LPR = next(d for d in sample_devices() if d.dialect == "vz-lpr-mqtt")


async def broker_dropped(port: int) -> int:
    """The broker's own count, as it publishes it (retained: a new subscriber gets the latest)."""
    async with drop_counter_client(port, identifier=f"t-sys-{time.monotonic_ns()}", timeout=5) as client:
        await client.subscribe(DROPPED_TOPIC)
        async with asyncio.timeout(10):
            async for message in client.messages:
                return int(bytes(message.payload))
    raise AssertionError("no $SYS value")


async def publish_numbered(port: int, messages: list[tuple[SimDevice, MqttPublish]]) -> None:
    """Each device publishes its own in order with QoS 1, on its own account; returns once all are acknowledged."""
    devices = list(dict.fromkeys(device for device, _ in messages))
    async with asyncio.TaskGroup() as tg:
        for device in devices:
            tg.create_task(_publish_as(port, device, [m for d, m in messages if d == device]))


async def _publish_as(port: int, device: SimDevice, messages: list[MqttPublish]) -> None:
    async with device_client(
        port,
        device,
        identifier=f"t-{device.username}-{time.monotonic_ns()}",
        max_inflight_messages=100,
        timeout=10,
    ) as client:
        pending: set[asyncio.Task[None]] = set()
        for message in messages:
            pending.add(asyncio.create_task(client.publish(message.topic, message.payload, qos=1)))
            if len(pending) >= 100:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pending)


def event_ids_by_number(
    config: GatewayConfig, messages: list[tuple[SimDevice, MqttPublish]]
) -> dict[str, tuple[str, int]]:
    """The event id each message becomes, with its device and sequence number (the dialect's parse)."""
    out = {}
    for device, message in messages:
        ctx = DeviceContext(
            district_id=config.compound.district_id,
            compound_id=config.compound.compound_id,
            device_id=device.id,
            received_at=datetime.now(CST),
            local_tz=ZoneInfo(config.compound.timezone),
            pseudonymizer=Pseudonymizer(b"k" * 32, config.compound.compound_id),
        )
        result = DIALECTS[device.dialect].parse(RawMessage(message.payload, topic=message.topic), ctx)
        assert result.sequence is not None
        for event in result.events:
            out[event.event_id] = (device.id, result.sequence)
    return out


def start_gateway(
    config_path: Path, log_path: Path, switches: tuple[FaultSwitch, ...]
) -> subprocess.Popen[bytes]:
    env = {**os.environ, ENVIRONMENT_VARIABLE: ",".join(s.value for s in switches)}
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "run", "--config", str(config_path)],
            stdout=log,
            stderr=log,
            cwd=ROOT,
            env=env,
        )


async def wait_for_log(process: subprocess.Popen[bytes], log_path: Path, *markers: str) -> None:
    deadline = time.monotonic() + 30
    while not all(m in log_path.read_text(encoding="utf-8") for m in markers):
        assert process.poll() is None, log_path.read_text(encoding="utf-8")[-3000:]
        assert time.monotonic() < deadline, f"gateway never logged {markers}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    "switches",
    [
        (),
        pytest.param(
            (FaultSwitch.SEQUENCE_GAPS_IGNORED,),
            marks=pytest.mark.xfail(strict=True, reason="teeth: sequence numbers ignored, no gap is seen"),
            id="teeth-gaps-ignored",
        ),
    ],
)
async def test_default_queue_overflow_shows_in_metrics_and_log(
    tmp_path: Path, switches: tuple[FaultSwitch, ...]
) -> None:
    """The gateway's drop gauge, gap counts and outbox agree with the broker's own drop count.

    Two numbering devices (a shed sensor and an LPR camera) publish alternately; the broker drops
    the tail of their common stream, so each device's gap count is what it lost, and the sum is
    the broker's count.

    Teeth: with ``CGW_FAULT_SWITCHES=sequence_gaps_ignored`` (the gateway ignores the devices'
    sequence numbers, as before this test existed) the gap count is absent and this test fails
    (the parametrized strict xfail).
    """
    broker = Mosquitto(
        tmp_path / "broker",
        persistence=False,
        max_queued=None,
        sys_interval_s=1,
        accounts=sample_broker_accounts(),
    ).start()
    config_path = sample_config(tmp_path, broker.port, mqtt="device_burst = 100000")
    config = load_config(config_path)
    log_path = tmp_path / "gateway.log"
    sims: list[ShedSim | VzLprSim] = [ShedSim(SHED), VzLprSim(LPR)]
    rng = random.Random(12)
    start = datetime(2026, 6, 1, 7, 0, tzinfo=CST)

    def numbered(i: int, at: datetime) -> tuple[SimDevice, MqttPublish]:
        sim = sims[i % 2]
        message = sim.routine(at, rng)
        assert isinstance(message, MqttPublish)
        return sim.device, message

    burst = [numbered(i, start + timedelta(milliseconds=i)) for i in range(BURST)]
    # each device's next message, after the gateway caught up, shows the gap at the end of its burst
    after = [numbered(i, start + timedelta(seconds=10)) for i in range(2)]
    gateway = start_gateway(config_path, log_path, switches)
    try:
        await wait_for_log(gateway, log_path, "mqtt_intake_connected", "device_broker_drop_counter_read")
        os.kill(gateway.pid, signal.SIGSTOP)  # the gateway falls behind: it reads nothing
        try:
            await publish_numbered(broker.port, burst)  # every one acknowledged to the device
        finally:
            os.kill(gateway.pid, signal.SIGCONT)
        deadline = time.monotonic() + 15  # the broker republishes $SYS every second
        while (dropped := await broker_dropped(broker.port)) == 0:
            assert time.monotonic() < deadline, "the default queue did not overflow; the test proves nothing"
            await asyncio.sleep(0.3)
        await publish_numbered(broker.port, after)

        metrics_url = f"http://127.0.0.1:{config.http.port}/metrics"
        deadline = time.monotonic() + 60
        while True:
            dropped = await broker_dropped(broker.port)
            text, _ = await scrape(metrics_url)
            acked = value(text, "cgw_mqtt_intake_acked_total")
            if acked == BURST + 2 - dropped and value(text, "cgw_device_broker_dropped_messages") == dropped:
                break
            assert time.monotonic() < deadline, f"acked {acked}, broker dropped {dropped}:\n{text[-3000:]}"
            await asyncio.sleep(0.3)

        ids = event_ids_by_number(config, [*burst, *after])
        with Outbox(config.state.dir / "outbox.db", max_bytes=1 << 30) as box:
            stored = set(box.event_ids("pending"))
        assert stored <= ids.keys()
        lost = [ids[i] for i in ids.keys() - stored]
        assert len(lost) == dropped  # what the broker dropped is exactly what the outbox lacks
        assert value(text, "cgw_device_broker_dropped_messages") == dropped
        for device in (SHED, LPR):
            lost_here = sum(1 for d, _ in lost if d == device.id)
            assert lost_here > 0  # the tail of the common stream: both devices lost some
            assert value(text, "cgw_device_sequence_missing_total", device=device.id) == lost_here
            assert value(text, "cgw_device_sequence_outstanding", device=device.id) == lost_here
            assert value(text, "cgw_device_sequence_late_total", device=device.id) == 0
        log = log_path.read_text(encoding="utf-8")
        assert "device_broker_dropped_messages" in log
        assert "device_sequence_gap" in log
        assert "raise max_queued_messages and max_queued_bytes" in log
        assert "deploy/mosquitto/compound.conf" in log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(gateway.pid, signal.SIGCONT)
        stop_process(gateway)
        broker.stop()
