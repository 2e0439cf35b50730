"""Per-device sequence gaps and last-heard times through a running gateway (real Mosquitto, HTTP pushes).

Numbering devices on both transports skip a number; a refused payload keeps its number (it arrived,
as a dead letter, and is no gap); a device without numbers only shows when it was last heard.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta

from device_sims.devices import CST, HikAcsSim, ShedSim, UfaceSim, VzLprSim, build_sim
from device_sims.inventory import sample_devices
from device_sims.runner import Runner
from device_sims.scenarios import Step
from tests.conftest import RunningGateway
from tests.metrics import samples, scrape, value


def sim_of(dialect: str) -> object:
    return build_sim(next(d for d in sample_devices() if d.dialect == dialect))


async def test_gaps_are_counted_per_device_and_refused_payloads_are_no_gap(gateway: RunningGateway) -> None:
    """vz-lpr (MQTT) and hik-isapi-acs (HTTP) each skip one number; the shed sensor's refused report is no gap.

    Teeth: with the intake no longer reading the number of a refused payload (``Intake._sequence``
    returning None) the shed sensor shows one missing message and this test fails (checked by hand).
    """
    shed, vz, hik, uface = (sim_of(d) for d in ("shed-mqtt", "vz-lpr-mqtt", "hik-isapi-acs", "uface-mqtt"))
    assert isinstance(shed, ShedSim)
    assert isinstance(vz, VzLprSim)
    assert isinstance(hik, HikAcsSim)
    assert isinstance(uface, UfaceSim)
    rng = random.Random(5)
    at = datetime(2026, 6, 1, 9, 0, tzinfo=CST)
    steps: list[Step] = []
    for i in range(1, 6):
        when = at + timedelta(seconds=i)
        if i == 3:  # an unknown alert bit: refused, numbered like the rest
            refused = shed.report(when, "alarm", 0x10, smoke=1, temp=20, battery=90)
            steps.append(Step(shed, refused, expect="reject"))
        else:
            steps.append(Step(shed, shed.routine(when, rng)))
        lpr, acs = vz.routine(when, rng), hik.routine(when, rng)
        if i != 2:  # the camera's and the controller's second message never reach the gateway
            steps += [Step(vz, lpr), Step(hik, acs)]
    steps += [Step(uface, uface.routine(at, rng)), Step(uface, uface.routine(at, rng))]
    started = time.time()
    report = await Runner(gateway.http, "127.0.0.1", gateway.broker.port, workers=1).run(steps)
    assert report.failed == 0
    # 4 shed reports, 4 plates, 4 passages, 2 faces, and the 3 MQTT devices' online (birth) messages
    await gateway.wait_for(lambda box: box.stats().pending == 17)

    text, _ = await scrape(gateway.http + "/metrics")
    missing = {s.labels["device"]: s.value for s in samples(text, "cgw_device_sequence_missing_total")}
    assert missing == {shed.device.id: 0, vz.device.id: 1, hik.device.id: 1}
    outstanding = {s.labels["device"]: s.value for s in samples(text, "cgw_device_sequence_outstanding")}
    assert outstanding == missing
    assert value(text, "cgw_device_sequence_gaps_total", device=vz.device.id) == 1
    assert value(text, "cgw_payloads_rejected_total", device=shed.device.id, reason="bad_field") == 1
    heard = {s.labels["device"]: s.value for s in samples(text, "cgw_device_last_heard_timestamp_seconds")}
    assert set(heard) == {shed.device.id, vz.device.id, hik.device.id, uface.device.id}
    assert all(started - 1 <= at_s <= time.time() + 1 for at_s in heard.values())
