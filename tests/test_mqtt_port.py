"""The MQTT port (``foundation.mqtt``) against a real Mosquitto.

Acknowledgement is manual and survives a reconnect, the consume loop acknowledges only what was
committed, a broker's refusal comes back typed with its reason code, and the read throttle stops
and resumes reading the socket. aiomqtt appears here only as the raw peer that publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sims.broker import Mosquitto, free_port, mosquitto_binary, stop_process
from foundation.errors import PublishRefusedError, TransportError
from foundation.mqtt import Message, MqttSession, SessionOptions, _PublishProperties

NOT_AUTHORIZED = 0x87


def persistent(port: int, client_id: str, receive_maximum: int = 10) -> SessionOptions:
    """A persistent, manually acknowledged session, as the intake and the ingester open one."""
    return SessionOptions(
        host="127.0.0.1",
        port=port,
        client_id=client_id,
        clean_start=False,
        session_expiry_s=300,
        receive_maximum=receive_maximum,
        manual_ack=True,
    )


async def publish_raw(port: int, topic: str, bodies: list[bytes], qos: int = 1) -> None:
    """Publish as an outside peer, straight through aiomqtt."""
    async with aiomqtt.Client("127.0.0.1", port) as peer:
        for body in bodies:
            await peer.publish(topic, body, qos=qos)


async def receive(session: MqttSession, count: int, timeout_s: float = 10) -> list[Message]:
    """The next ``count`` messages of the session."""
    got: list[Message] = []
    async with asyncio.timeout(timeout_s):
        async for message in session.messages():
            got.append(message)
            if len(got) == count:
                break
    return got


async def quiet(session: MqttSession, seconds: float) -> list[Message]:
    """Whatever arrives within ``seconds``."""
    got: list[Message] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in session.messages():
                got.append(message)  # one by one: the timeout ends the loop, not the list
    return got


async def test_only_acknowledged_messages_are_gone_after_a_reconnect(open_mosquitto: Mosquitto) -> None:
    """An unacknowledged message comes again on the next connection; an acknowledged one does not.

    Checked once with ``manual_ack=False`` (aiomqtt's acknowledgement on arrival): "two" is not
    redelivered and the test fails. An acknowledgement of a message from an earlier connection is
    ignored (packet identifiers are reused), so "two" needs its own acknowledgement on the third.
    """
    options = persistent(open_mosquitto.port, "port-redelivery")
    async with MqttSession(options) as session:
        await session.subscribe("port/redelivery", qos=1)
    await publish_raw(open_mosquitto.port, "port/redelivery", [b"one", b"two"])

    async with MqttSession(options) as session:
        first = await receive(session, 2)
        acked_one = session.ack(first[0])
    async with MqttSession(options) as session:
        again = await quiet(session, 1.0)
        stale_ack = session.ack(first[1])
        acked_two = [session.ack(message) for message in again]
    async with MqttSession(options) as session:
        finally_left = await quiet(session, 1.0)

    assert [(m.topic, m.payload, m.qos) for m in first] == [
        ("port/redelivery", b"one", 1),
        ("port/redelivery", b"two", 1),
    ]
    assert [m.payload for m in again] == [b"two"]
    assert acked_one
    assert not stale_ack
    assert acked_two == [True]
    assert finally_left == []


class CommitFailedError(Exception):
    """What a caller's commit raises in the test."""


async def test_consume_acknowledges_only_what_was_committed_in_order(open_mosquitto: Mosquitto) -> None:
    """The shared consume loop acks committed batches in order and nothing from the failed commit on.

    Batches 1 and 2 commit; committing 3 fails, so 3 and everything received after it come
    again on the next connection. Checked once with the acknowledgement moved before ``commit``:
    3 is then acknowledged and missing from the redelivery, and the test fails.
    """
    options = persistent(open_mosquitto.port, "port-consume")
    async with MqttSession(options) as session:
        await session.subscribe("port/consume", qos=1)
    bodies = [str(n).encode() for n in range(1, 9)]
    await publish_raw(open_mosquitto.port, "port/consume", bodies)

    begun: list[bytes] = []
    committed: list[bytes] = []
    acknowledged: list[bytes] = []

    def begin(batch: list[Message]) -> list[bytes]:
        begun.extend(m.payload for m in batch)
        return [m.payload for m in batch]

    async def commit(work: list[bytes]) -> None:
        await asyncio.sleep(0.05)  # the receive stage runs ahead meanwhile
        if b"3" in work:
            raise CommitFailedError
        committed.extend(work)

    async with MqttSession(options) as session:
        with pytest.raises(ExceptionGroup) as raised:
            await session.consume(
                begin,
                commit,
                batch_max=1,
                depth=2,
                acknowledged=lambda batch: acknowledged.extend(m.payload for m in batch),
            )
    assert raised.group_contains(CommitFailedError)
    assert committed == [b"1", b"2"]
    assert acknowledged == [b"1", b"2"]

    async with MqttSession(options) as session:
        again = await quiet(session, 1.0)
    assert [m.payload for m in again] == bodies[2:]


@pytest.fixture
def acl_broker() -> Iterator[int]:
    """A Mosquitto with a password file and an ACL: user ``lister`` may write ``lists/#`` only."""
    # mosquitto reads these after dropping to its own user: a directory it can enter
    workdir = Path(tempfile.mkdtemp(prefix="cgw-acl-"))
    workdir.chmod(0o755)
    port = free_port()
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(workdir / "passwords"), "lister", "secret"],
        check=True,
        capture_output=True,
    )
    (workdir / "acl").write_text("user lister\ntopic write lists/#\ntopic read lists/#\n", encoding="utf-8")
    for name in ("passwords", "acl"):
        (workdir / name).chmod(0o644)
    (workdir / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n"
        f"password_file {workdir}/passwords\nacl_file {workdir}/acl\n",
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [mosquitto_binary(), "-c", str(workdir / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, "mosquitto refused the test configuration"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield port
    finally:
        stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)


async def test_a_refused_publish_raises_the_typed_refusal_with_its_reason_code(acl_broker: int) -> None:
    """A publish the ACL forbids raises ``PublishRefusedError`` (0x87); an allowed one arrives.

    Checked once with the refusal watch taken out of ``MqttSession.publish`` (returning on any
    PUBACK, as aiomqtt 2.5 does): nothing is raised and the test fails.
    """
    options = SessionOptions(
        host="127.0.0.1", port=acl_broker, client_id="port-lister", username="lister", password="secret"
    )
    async with (
        MqttSession(options) as session,
        MqttSession(dataclasses.replace(options, client_id="port-reader")) as reader,
    ):
        await reader.subscribe("lists/#", qos=1)
        with pytest.raises(PublishRefusedError) as refused:
            await session.publish("events/x", b"not mine", qos=1)
        await session.publish("lists/a", b"mine", qos=1, retain=False)
        arrived = await receive(reader, 1)
    assert isinstance(refused.value, TransportError)  # the port's one error family
    assert refused.value.reason_code == NOT_AUTHORIZED
    assert refused.value.reason == "Not authorized"
    assert refused.value.topic == "events/x"
    assert [(m.topic, m.payload) for m in arrived] == [("lists/a", b"mine")]


async def test_wrong_credentials_leave_the_port_as_a_transport_error(acl_broker: int) -> None:
    """A refused CONNECT is a ``TransportError`` (never an aiomqtt exception) naming the reason."""
    options = SessionOptions(
        host="127.0.0.1", port=acl_broker, client_id="port-intruder", username="lister", password="wrong"
    )
    with pytest.raises(TransportError) as raised:
        async with MqttSession(options):
            pass
    assert not isinstance(raised.value, aiomqtt.MqttError)
    assert "Bad user name or password" in str(raised.value) or "Not authorized" in str(raised.value)


async def test_the_read_throttle_pauses_at_high_water_and_resumes_at_low_water(
    open_mosquitto: Mosquitto,
) -> None:
    """A queue left undrained stops reading at its high-water mark; draining resumes, and nothing is lost.

    QoS 0, to which no Receive Maximum applies, stands in for a broker flooding past the quota.
    Checked once with the throttle never attached: the queue grows to all 200 messages, never
    pauses, and the test fails.
    """
    options = persistent(open_mosquitto.port, "port-throttle", receive_maximum=2)
    bodies = [f"{n:03d}".encode() for n in range(200)]
    async with MqttSession(options) as session:
        throttle = session.throttle
        assert (throttle.high_water, throttle.low_water) == (4, 1)
        await session.subscribe("port/throttle", qos=0)
        await publish_raw(open_mosquitto.port, "port/throttle", bodies, qos=0)
        deadline = time.monotonic() + 5
        while not throttle.paused and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # had reading gone on, the rest would have arrived by now
        paused_while_full = throttle.paused
        assert throttle.queue is not None
        assert throttle.queue.qsize() == throttle.high_water
        got = await receive(session, len(bodies))
        assert paused_while_full
        assert not throttle.paused
        assert throttle.pauses >= 2  # paused, resumed and paused again as the queue refilled
        assert throttle.max_depth <= throttle.high_water
    assert [m.payload for m in got] == bodies


async def test_payloads_larger_and_smaller_than_a_read_chunk_arrive_intact(open_mosquitto: Mosquitto) -> None:
    """The port reads the socket in 64 KiB chunks: packets split across chunks come out whole and in order.

    Checked once with ``_BufferedSocket.recv`` dropping the rest of a chunk after the bytes asked
    for: the stream desynchronises and the messages never all arrive (the test times out).
    """
    options = persistent(open_mosquitto.port, "port-chunks", receive_maximum=1000)
    bodies = [bytes([n % 251]) * size for n, size in enumerate([10, 70_000, 3, 200_000, 65_536, 1, 131_071])]
    bodies += [f"small-{n}".encode() for n in range(500)]
    async with MqttSession(options) as session:
        await session.subscribe("port/chunks", qos=1)
        await publish_raw(open_mosquitto.port, "port/chunks", bodies)
        got = await receive(session, len(bodies))
        for message in got:
            session.ack(message)
    assert [m.payload for m in got] == bodies


def test_publish_properties_decode_as_paho_does() -> None:
    """The PUBLISH properties the port decodes (shared lookup tables) equal paho's own decoding.

    Checked once with ``_PublishProperties.clear`` deleting nothing and an instance reused:
    the second decode keeps the first's Content Type and the comparison fails.
    """
    untyped: Any = Properties  # paho's properties are untyped
    sent = untyped(PacketTypes.PUBLISH)
    sent.ContentType = "application/json"
    sent.UserProperty = [("a", "1"), ("b", "2")]
    sent.MessageExpiryInterval = 30
    sent.CorrelationData = b"xy"
    sent.ResponseTopic = "r/t"
    packed = sent.pack()
    theirs, their_length = untyped(PacketTypes.PUBLISH).unpack(packed)
    ours: Any = _PublishProperties(PacketTypes.PUBLISH)
    ours_decoded, our_length = ours.unpack(packed)
    assert (our_length, ours_decoded.json()) == (their_length, theirs.json())
    empty = untyped(PacketTypes.PUBLISH).pack()
    again, _ = ours.unpack(empty)  # unpack clears what an earlier decode left
    assert again.json() == {}
    assert again.isEmpty()
