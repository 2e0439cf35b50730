"""The device broker's $SYS drop counter: read, exported, and a warning saying what to change.

The overflow itself, against the gateway as a process, is ``tests/test_overload.py``; here the
follower alone, against a real Mosquitto with $SYS on and off.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from device_sims.broker import Mosquitto
from device_sims.inventory import sample_broker_accounts
from foundation.health import MetricFamilies
from gateway import broker_drops
from gateway.broker_drops import BrokerDrops
from gateway.config import load_config
from gateway.device_secrets import load_device_secrets, with_broker_login
from tests.conftest import sample_config


def gauge(drops: BrokerDrops) -> float:
    families = MetricFamilies()
    drops.write_metrics(families)
    (family,) = families.metrics
    (sample,) = family.samples
    return float(sample.value)


def test_rises_warn_with_what_to_change_and_a_broker_restart_is_no_drop(tmp_path: Path) -> None:
    drops = BrokerDrops(load_config(sample_config(tmp_path, 1883)))
    assert math.isnan(gauge(drops))  # not read yet: no made-up zero
    with capture_logs() as logs:
        for payload in (b"0", b"0", b"17", b"bogus", b"17", b"30", b"2"):
            drops.update(payload)
    warnings = [e for e in logs if e["event"] == "device_broker_dropped_messages"]
    assert [(e["dropped"], e["dropped_total"]) for e in warnings] == [(17, 17), (13, 30)]
    assert all("max_queued_messages" in e["hint"] for e in warnings)
    assert [e["event"] for e in logs if e["log_level"] == "info"][-1] == "device_broker_drop_counter_reset"
    assert any(e["event"] == "device_broker_drop_counter_unreadable" for e in logs)
    assert gauge(drops) == 2


@pytest.mark.parametrize("sys_interval", [1, 0])
async def test_follows_a_real_broker_and_says_when_it_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sys_interval: int
) -> None:
    """With $SYS on, the retained value is read at once; with ``sys_interval 0`` a warning says why not."""
    monkeypatch.setattr(broker_drops, "FIRST_VALUE_WITHIN_S", 1.0)
    broker = Mosquitto(
        tmp_path / "broker", persistence=False, sys_interval_s=sys_interval, accounts=sample_broker_accounts()
    ).start()
    try:
        path = sample_config(tmp_path, broker.port)
        drops = BrokerDrops(with_broker_login(load_config(path), load_device_secrets(load_config(path))))
        with capture_logs() as logs:
            task = asyncio.create_task(drops.run(lambda: None), name="test-sys")
            try:
                async with asyncio.timeout(20):
                    while not any(
                        e["event"] in {"device_broker_drop_counter_read", "device_broker_drop_counter_silent"}
                        for e in logs
                    ):
                        await asyncio.sleep(0.05)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        broker.stop()
    events = {e["event"] for e in logs}
    if sys_interval:
        assert "device_broker_drop_counter_read" in events
        assert gauge(drops) == 0
    else:
        assert "device_broker_drop_counter_silent" in events
        assert math.isnan(gauge(drops))
