"""Operations: /healthz, /readyz, /metrics, and the systemd notify/watchdog protocol."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest

from device_sims.broker import Mosquitto
from device_sims.devices import CST, build_sim
from device_sims.inventory import sample_devices
from device_sims.runner import Runner
from device_sims.scenarios import Step
from gateway.config import load_config
from gateway.runtime import run_gateway
from tests.conftest import RunningGateway, sample_config


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition."""
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels}")


async def test_health_ready_and_metrics(gateway: RunningGateway) -> None:
    """The endpoints answer, and the metrics count what actually happened."""
    hik = build_sim(next(d for d in sample_devices() if d.dialect == "hik-isapi-acs"))
    shed = build_sim(next(d for d in sample_devices() if d.dialect == "shed-mqtt"))
    sims = [hik, shed]
    rng = random.Random(2)
    at = datetime(2026, 6, 1, 9, 0, tzinfo=CST)
    steps = [Step(s, s.routine(at.replace(minute=i), rng)) for s in sims for i in range(5)]
    steps += [Step(s, m, expect="reject") for s in sims for m in s.malformed(rng)[:2]]
    await Runner(gateway.http, "127.0.0.1", gateway.broker.port).run(steps)
    await gateway.wait_for(lambda box: box.stats().pending >= 10)
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.http + "/healthz") as response:
            assert response.status == 200
        async with session.get(gateway.http + "/readyz") as response:
            assert response.status == 200
            ready = await response.json()
        assert ready["ready"] is True
        assert ready["transports"]["mqtt-intake"]["up"] is True
        async with session.get(gateway.http + "/metrics") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
    assert metric(text, "cgw_events_stored_total", kind="face_access", device=hik.device.id) == 5
    assert metric(text, "cgw_events_stored_total", kind="ebike_shed", device=shed.device.id) == 5
    assert metric(text, "cgw_outbox_pending_events") >= 10
    assert metric(text, "cgw_transport_up", transport="mqtt-intake") == 1
    assert metric(text, "cgw_mqtt_intake_acked_total") >= 5
    assert (
        sum(float(v) for v in re.findall(r"^cgw_payloads_rejected_total\{.*\} (\S+)$", text, re.MULTILINE))
        == 4
    )
    assert metric(text, "cgw_outbox_oldest_pending_age_seconds") >= 0


class NotifyListener:
    """A stand-in for systemd's notification socket, recording (time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                data = self._sock.recv(4096)
                self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def times(self, message: str) -> list[float]:
        return [t for t, m in self.messages if m == message]


async def test_watchdog_pings_stop_while_the_loop_is_blocked(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READY=1 after start, WATCHDOG=1 at half the timeout, none while blocked, STOPPING=1 at the end."""
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.2 s
    config = load_config(sample_config(tmp_path, mosquitto.port))
    ready = asyncio.Event()
    task = asyncio.create_task(run_gateway(config, ready=ready))
    try:
        async with asyncio.timeout(20):
            await ready.wait()
        await asyncio.sleep(1.0)
        blocked_at = time.monotonic()
        time.sleep(1.2)
        resumed_at = time.monotonic()
        await asyncio.sleep(1.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)
        listener.close()
    assert listener.times("READY=1")
    pings = listener.times("WATCHDOG=1")
    before = [t for t in pings if t < blocked_at]
    assert len(before) >= 3
    assert not [t for t in pings if blocked_at + 0.05 < t < resumed_at - 0.05]
    assert [t for t in pings if t > resumed_at]
    assert listener.times("STOPPING=1")
