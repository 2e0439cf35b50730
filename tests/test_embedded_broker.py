"""The demo's embedded broker, with real aiomqtt clients (v3.1.1 and v5)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import socket
from typing import Literal

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters import DIALECTS
from device_sims.broker import free_port
from device_sims.devices import SimDevice, sample_secret
from device_sims.embedded_broker import EmbeddedBroker, topic_matches
from device_sims.inventory import sample_broker_accounts, sample_devices
from foundation.errors import PublishRefusedError, TransportError
from foundation.mqtt import MqttSession, SessionOptions
from gateway.device_secrets import GATEWAY_BROKER_USER
from tests.conftest import until_quiet


def v5_persistent() -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 600
    return props


def test_topic_matching() -> None:
    """MQTT wildcard rules, including $-topics."""
    assert topic_matches("a/+/c", "a/b/c")
    assert topic_matches("a/#", "a")
    assert topic_matches("a/#", "a/b/c")
    assert not topic_matches("a/+", "a/b/c")
    assert not topic_matches("#", "$SYS/x")
    assert topic_matches("$SYS/#", "$SYS/x")


async def test_persistent_session_shared_subscription_retained_and_will() -> None:
    """Offline messages wait for a persistent v5 session; retained and will messages are delivered."""
    port = free_port()
    async with EmbeddedBroker(port):
        async with aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier="sub",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=v5_persistent(),
        ) as sub:
            await sub.subscribe("$share/g/a/+/c", qos=1)
            await sub.subscribe("r/#", qos=1)
            await sub.subscribe("will/#", qos=1)
        async with aiomqtt.Client("127.0.0.1", port, identifier="pub") as pub:
            for i in range(5):
                await pub.publish("a/b/c", f"m{i}".encode(), qos=1)
            await pub.publish("r/x", b"kept", qos=1, retain=True)
        dying = aiomqtt.Client(
            "127.0.0.1", port, identifier="dying", will=aiomqtt.Will("will/dying", b"gone", qos=1)
        )
        with contextlib.suppress(aiomqtt.MqttError):
            async with dying:
                sock = dying._client.socket()
                assert isinstance(sock, socket.socket)
                sock.shutdown(socket.SHUT_RDWR)
                await asyncio.sleep(0.3)
        got: list[tuple[str, bytes]] = []
        async with aiomqtt.Client(
            "127.0.0.1",
            port,
            identifier="sub",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=v5_persistent(),
        ) as sub:
            async with asyncio.timeout(5):
                async for message in sub.messages:
                    assert isinstance(message.payload, bytes)
                    got.append((str(message.topic), message.payload))
                    if len(got) == 7:
                        break
    assert got[:5] == [("a/b/c", f"m{i}".encode()) for i in range(5)]
    assert set(got[5:]) == {("r/x", b"kept"), ("will/dying", b"gone")}


SHED = next(d for d in sample_devices() if d.dialect == "shed-mqtt")
FACE = next(d for d in sample_devices() if d.dialect == "uface-mqtt")


def login(device: SimDevice, client_id: str, protocol: Literal["5", "3.1.1"] = "5") -> SessionOptions:
    """A device's own login on the compound broker, through the project's MQTT port."""
    return SessionOptions(
        host="127.0.0.1",
        port=0,
        client_id=client_id,
        protocol=protocol,
        username=device.username,
        password=device.secret,
    )


def gateway_login(port: int) -> SessionOptions:
    return SessionOptions(
        host="127.0.0.1",
        port=port,
        client_id="gateway",
        username=GATEWAY_BROKER_USER,
        password=sample_secret(GATEWAY_BROKER_USER),
    )


async def drain(session: MqttSession, quiet_s: float = 0.5) -> set[tuple[str, bytes]]:
    """Everything that arrives until ``quiet_s`` passes without a message."""
    got: set[tuple[str, bytes]] = set()
    with contextlib.suppress(TimeoutError):
        while True:
            async with asyncio.timeout(quiet_s):
                message = await anext(aiter(session.messages()))
            got.add((message.topic, message.payload))
    return got


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_accounts_and_acl_as_the_shipped_mosquitto_enforces_them(
    protocol: Literal["5", "3.1.1"],
) -> None:
    """With the sample compound's accounts: strangers refused, spoofs dropped, commands only to their device.

    The same cases as tests/test_compound_broker.py against Mosquitto. A spoofed publish is refused
    with PUBACK 0x87 in MQTT 5 and acknowledged and dropped in 3.1.1 (Mosquitto's behaviour); the
    gateway receives only the legitimate one. Teeth: checked once with ``_may`` returning True
    always: the spoof and the other device's command arrive and the set comparisons fail.
    """
    port = free_port()
    async with EmbeddedBroker(port, accounts=sample_broker_accounts()):
        for stranger in (
            dataclasses.replace(login(SHED, "anon", protocol), port=port, username=None, password=None),
            dataclasses.replace(login(SHED, "wrong", protocol), port=port, password="not-its-secret"),
            dataclasses.replace(login(SHED, "unknown", protocol), port=port, username="860812045670000"),
        ):
            with pytest.raises(TransportError, match=r"Not authorized|not authorised|Bad user"):
                async with MqttSession(stranger):
                    pass
        async with (
            MqttSession(gateway_login(port)) as gateway,
            MqttSession(dataclasses.replace(login(SHED, "shed", protocol), port=port)) as shed,
            MqttSession(dataclasses.replace(login(FACE, "face", protocol), port=port)) as face,
        ):
            await gateway.subscribe("shed/+/+", qos=1)
            await gateway.subscribe("uface/+/+", qos=1)
            for session in (shed, face):
                await session.subscribe("+/+/cmd/req", qos=1)
            if protocol == "5":
                with pytest.raises(PublishRefusedError):
                    await shed.publish(f"uface/{FACE.ref}/event", b"spoofed", qos=1)
            else:
                await shed.publish(f"uface/{FACE.ref}/event", b"spoofed", qos=1)  # acked, dropped
            await shed.publish(f"shed/{SHED.ref}/up", b"mine", qos=1)
            for device in (SHED, FACE):
                topics = DIALECTS[device.dialect].device_topics
                assert topics is not None
                await gateway.publish(
                    topics.of(device.username).subscribes[0], f"cmd {device.ref}".encode(), qos=1
                )
            assert await drain(gateway) == {(f"shed/{SHED.ref}/up", b"mine")}
            assert await drain(shed) == {(f"shed/{SHED.ref}/cmd/req", f"cmd {SHED.ref}".encode())}
            assert await drain(face) == {(f"uface/{FACE.ref}/cmd/req", f"cmd {FACE.ref}".encode())}


GATEWAY_CLIENT_ID = "cgw-36010400012160000101"  # what the sample gateway sends (config.mqtt_client_id)


def client_of(port: int, device: SimDevice | None, identifier: str, *, persistent: bool) -> aiomqtt.Client:
    """A v5 client with ``device``'s login (None: the gateway's), persistent or with a clean start."""
    username = device.username if device is not None else GATEWAY_BROKER_USER
    password = device.secret if device is not None else sample_secret(GATEWAY_BROKER_USER)
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=identifier,
        username=username,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=not persistent,
        properties=v5_persistent() if persistent else None,
        timeout=5,
    )


async def received(client: aiomqtt.Client, quiet_s: float = 0.7) -> list[bytes]:
    """The payloads that arrive until ``quiet_s`` passes without one."""
    return [payload for _, payload in await until_quiet(client, quiet_s)]


@pytest.mark.parametrize(
    "bound",
    [
        pytest.param(True, id="bound"),
        pytest.param(
            False,
            marks=pytest.mark.xfail(
                strict=True, reason="teeth: a device account takes the gateway's session"
            ),
            id="teeth-unbound",
        ),
    ],
)
async def test_no_account_takes_over_the_gateway_s_session(bound: bool) -> None:
    """As on the shipped Mosquitto: the face terminal's account sends the gateway's client id.

    Online, the gateway stays connected; offline, the shed sensor's fire alarm waits in the
    gateway's persistent session, the impostor (persistent, then clean) receives nothing, and the
    gateway reconnecting gets the alarm. Teeth: with the binding off (``username_as_client_id``
    False), the impostor takes the session over and the test fails (strict xfail parameter).
    """
    try:
        online, stolen, queued = await _takeover_attempt(bound)
    finally:
        # a session taken over leaves aiomqtt's disconnection future unretrieved; collected here, its
        # "never retrieved" log cannot interrupt pytest compiling a failure's source (which CPython
        # 3.11 reports as an internal error, "AST constructor recursion depth mismatch")
        gc.collect()
    assert online == [b"while online"]
    assert stolen == []
    assert queued == [b"fire alarm"]


async def _takeover_attempt(bound: bool) -> tuple[list[bytes], list[bytes], list[bytes]]:
    port = free_port()
    async with EmbeddedBroker(port, accounts=sample_broker_accounts(), username_as_client_id=bound):
        async with client_of(port, None, GATEWAY_CLIENT_ID, persistent=True) as gateway:
            await gateway.subscribe("shed/+/+", qos=1)
            async with (
                client_of(port, FACE, GATEWAY_CLIENT_ID, persistent=False),
                client_of(port, SHED, "shed", persistent=False) as shed,
            ):
                await shed.publish(f"shed/{SHED.ref}/up", b"while online", qos=1)
                online = await received(gateway)
        async with client_of(port, SHED, "shed", persistent=False) as shed:
            await shed.publish(f"shed/{SHED.ref}/up", b"fire alarm", qos=1)
        async with client_of(port, FACE, GATEWAY_CLIENT_ID, persistent=True) as impostor:
            await impostor.subscribe("#", qos=1)
            stolen = await received(impostor)
        async with client_of(port, FACE, GATEWAY_CLIENT_ID, persistent=False):
            await asyncio.sleep(0.1)
        async with client_of(port, None, GATEWAY_CLIENT_ID, persistent=True) as gateway:
            queued = await received(gateway)
    return online, stolen, queued


async def test_queued_messages_reach_only_users_who_may_read_them() -> None:
    """Without the session binding, a session taken over by another account delivers it nothing unreadable.

    The second line of defence (Mosquitto's too): read permission is checked again when a queued
    message leaves the session, not only when it was queued. Teeth: checked once with that check
    removed from ``_send_queued``: the face terminal's account received the shed sensor's alarm.
    """
    port = free_port()
    async with EmbeddedBroker(port, accounts=sample_broker_accounts(), username_as_client_id=False):
        async with client_of(port, None, GATEWAY_CLIENT_ID, persistent=True) as gateway:
            await gateway.subscribe("shed/+/+", qos=1)
        async with client_of(port, SHED, "shed", persistent=False) as shed:
            await shed.publish(f"shed/{SHED.ref}/up", b"fire alarm", qos=1)
        async with client_of(port, FACE, GATEWAY_CLIENT_ID, persistent=True) as impostor:
            stolen = await received(impostor)
    assert stolen == []
