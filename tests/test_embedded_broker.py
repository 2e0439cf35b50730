"""The demo's embedded broker, with real aiomqtt clients (v3.1.1 and v5)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sims.broker import free_port
from device_sims.embedded_broker import EmbeddedBroker, topic_matches


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
