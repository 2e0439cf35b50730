"""Operations: /healthz, /readyz, /metrics, and the systemd notify/watchdog protocol."""

from __future__ import annotations

import asyncio
import contextlib
import random
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
from foundation.health import Health
from gateway.config import load_config
from gateway.runtime import run_gateway
from tests.conftest import RunningGateway, sample_config
from tests.metrics import families, scrape, total, value


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
    assert value(text, "cgw_events_stored_total", kind="face_access", device=hik.device.id) == 5
    assert value(text, "cgw_events_stored_total", kind="ebike_shed", device=shed.device.id) == 5
    assert value(text, "cgw_outbox_pending_events") >= 10
    assert value(text, "cgw_transport_up", transport="mqtt-intake") == 1
    assert value(text, "cgw_mqtt_intake_acked_total") >= 5
    assert total(text, "cgw_payloads_rejected_total") == 4
    assert value(text, "cgw_outbox_oldest_pending_age_seconds") >= 0


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


async def test_counters_render_exactly() -> None:
    """A counter of 1234567891 scrapes as exactly that (the former `{value:g}` rendering gave 1.23457e+09)."""
    health = Health()
    health.expose("cgw_big_total", "a large counter", lambda: 1234567891)
    health.writers.append(
        lambda families: families.counter("cgw_peers_total", "per peer", [({"peer": "a"}, 2**40 + 1)])
    )
    text = (await health.scrape()).decode()
    assert value(text, "cgw_big_total") == 1234567891
    assert value(text, "cgw_peers_total", peer="a") == 2**40 + 1


async def test_metric_names_and_types_unchanged(gateway: RunningGateway) -> None:
    """The gateway's metric families keep their names and types (dashboards and docs name them).

    The expected set was taken from the hand-written exposition before prometheus-client rendered it.
    """
    text, content_type = await scrape(gateway.http + "/metrics")
    assert content_type.startswith("text/plain; version=")
    ours = {name: kind for name, kind in families(text).items() if name.startswith("cgw_")}
    assert ours == {
        "cgw_transport_up": "gauge",
        "cgw_transport_connects_total": "counter",
        "cgw_intake_batches_total": "counter",
        "cgw_intake_batches_lost_total": "counter",
        "cgw_intake_worker_replaced_total": "counter",
        "cgw_intake_batches_in_flight": "gauge",
        "cgw_mqtt_intake_messages_total": "counter",
        "cgw_mqtt_intake_acked_total": "counter",
        "cgw_mqtt_intake_read_pauses_total": "counter",
        "cgw_faces_pictures_analysed_total": "counter",
        "cgw_faces_pictures_skipped_total": "counter",
        "cgw_faces_pictures_unreadable_total": "counter",
        "cgw_faces_pictures_shed_total": "counter",
        "cgw_faces_found_total": "counter",
        "cgw_watchlist_face_hits_total": "counter",
        "cgw_watchlist_plates_checked_total": "counter",
        "cgw_watchlist_plate_hits_total": "counter",
        "cgw_faces_analysis_seconds_total": "counter",
        "cgw_watchlist_rejected_total": "counter",
        "cgw_watchlist_version": "gauge",
        "cgw_watchlist_entries": "gauge",
        "cgw_media_purged_total": "counter",
        "cgw_media_bytes": "gauge",
        "cgw_media_evicted_total": "counter",
        "cgw_outbox_tombstones_purged_total": "counter",
        "cgw_http_rate_limited_total": "counter",
        "cgw_outbox_pending_events": "gauge",
        "cgw_outbox_pending_alarms": "gauge",
        "cgw_outbox_pending_bytes": "gauge",
        "cgw_outbox_oldest_pending_age_seconds": "gauge",
        "cgw_outbox_sent_awaiting_receipt": "gauge",
        "cgw_uplink_lag_seconds": "gauge",
        "cgw_outbox_dead_letters": "gauge",
        "cgw_events_stored_total": "counter",
        "cgw_payloads_rejected_total": "counter",
        "cgw_duplicate_events_total": "counter",
        "cgw_events_shed_total": "counter",
        "cgw_device_last_heard_timestamp_seconds": "gauge",
        "cgw_device_sequence_gaps_total": "counter",
        "cgw_device_sequence_missing_total": "counter",
        "cgw_device_sequence_late_total": "counter",
        "cgw_device_sequence_outstanding": "gauge",
        "cgw_device_sequence_duplicates_total": "counter",
        "cgw_device_sequence_restarts_total": "counter",
        "cgw_device_broker_dropped_messages": "gauge",
        "cgw_http_auth_refused_total": "counter",
        # commands (gateway/command_service.py): the sample compound's barrier camera takes them
        "cgw_command_bad_orders_total": "counter",
        "cgw_command_duplicate_orders_total": "counter",
        "cgw_command_queue_overflow_total": "counter",
        "cgw_command_queue_depth": "gauge",
        "cgw_commands_total": "counter",
    }
