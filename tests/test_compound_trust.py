"""End to end on the compound side: a device's account makes only that device's events.

The shipped compound broker configuration (``deploy/mosquitto/compound.conf``) with the accounts
and ACL written from the sample compound's config, and the gateway running against it: what the
gateway stores is compared exactly with what the legitimate devices sent.
"""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path

import aiomqtt
import pytest

from device_sims.broker import Mosquitto
from device_sims.demo import expected_event_ids
from device_sims.devices import CST, MqttPublish, SimDevice, build_sim
from device_sims.inventory import sample_broker_accounts, sample_devices
from tests.conftest import gateway_in_process, sample_config

AT = datetime(2026, 6, 1, 22, 40, tzinfo=CST)


def _device(dialect: str) -> SimDevice:
    return next(d for d in sample_devices() if d.dialect == dialect)


def _alarm(device: SimDevice, seed: int) -> MqttPublish:
    message = build_sim(device).alarm(AT, random.Random(seed))
    assert isinstance(message, MqttPublish)
    return message


@pytest.mark.parametrize(
    "secured",
    [
        pytest.param(True, id="shipped"),
        pytest.param(
            False,
            marks=pytest.mark.xfail(strict=True, reason="teeth: an open broker lets the forgery through"),
            id="teeth-open-broker",
        ),
    ],
)
async def test_a_sensor_s_account_cannot_raise_another_device_s_alarm(tmp_path: Path, secured: bool) -> None:
    """The shed sensor's account publishes a thrown-object alarm as the facade camera, then its own fire alarm.

    The running gateway stores exactly the sensor's own alarm: the forgery never reaches it (the
    broker acknowledges and drops it; one client's messages keep their order, so once the sensor's
    own alarm is stored the forgery would have been too). Teeth: on an open broker (anonymous, no
    ACL: the strict-xfail parameter) the forged alarm is stored and the comparison fails.
    """
    accounts = sample_broker_accounts()
    broker = (
        Mosquitto(tmp_path / "broker", shipped_compound=True, accounts=accounts)
        if secured
        else Mosquitto(tmp_path / "broker")
    ).start()
    try:
        async with gateway_in_process(sample_config(tmp_path, broker.port), broker) as gateway:
            sensor, camera = _device("shed-mqtt"), _device("hightoss-mqtt")
            forged, own = _alarm(camera, 1), _alarm(sensor, 2)
            expected = expected_event_ids(gateway.config, [own])
            async with aiomqtt.Client(
                "127.0.0.1",
                broker.port,
                identifier=sensor.username,
                username=sensor.username,
                password=sensor.secret,
                protocol=aiomqtt.ProtocolVersion.V311,  # as the sensors in the field
            ) as client:
                await client.publish(forged.topic, forged.payload, qos=1)
                await client.publish(own.topic, own.payload, qos=1)
            await gateway.wait_for(lambda box: bool(expected & set(box.event_ids())))
            with gateway.outbox() as box:
                stored = set(box.event_ids())
    finally:
        broker.stop()
    assert expected_event_ids(gateway.config, [forged]).isdisjoint(expected)
    assert stored == expected


async def test_strangers_cannot_connect_to_the_shipped_broker(tmp_path: Path) -> None:
    """Anonymous clients and a device's user name with a wrong password are refused at CONNECT.

    A correct login is the control. Teeth: see ``test_compound_broker.py`` (its anonymous-allowed
    parameter); here the same refusal is checked on the broker the gateway test above runs on.
    """
    sensor = _device("shed-mqtt")
    with Mosquitto(tmp_path / "broker", shipped_compound=True, accounts=sample_broker_accounts()) as broker:
        for username, password in ((None, None), (sensor.username, "not-its-secret")):
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    "127.0.0.1", broker.port, username=username, password=password, timeout=5
                ):
                    pass
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, username=sensor.username, password=sensor.secret, timeout=5
        ):
            pass
