"""The compound's MQTT device intake: one persistent session, acknowledged only after the commit.

aiomqtt 2.5 acknowledges a QoS 1 message before application code sees it, so a crash between its
PUBACK and our commit would lose the message. We switch the underlying paho client to manual
acknowledgement (paho >= 2.0 ``manual_ack``; aiomqtt 2.x has no public switch yet, see aiomqtt issue
#345) and send each PUBACK, in arrival order, only after the outbox has committed the event or its
dead letter. Everything not yet acknowledged is redelivered by the broker when we reconnect, because
the session is persistent (clean start off, a session expiry, a stable client id); the outbox's
uniqueness by event id makes the redelivery harmless.

Flow control: we ask for a Receive Maximum, but do not trust the broker with it (Mosquitto 2.0.11
floods a reconnecting session's backlog past the quota once PUBACKs flow; measured here: 2,698 queued
against a Receive Maximum of 10). aiomqtt's own answer to a full queue is to discard, which with
manual acknowledgement would stall those messages until the next reconnect. So the incoming queue
is unbounded in type but never grows past its high-water mark: reaching it stops reading the socket
(TCP back-pressure; the broker keeps the rest queued for our session), draining to the low-water
mark resumes. This module is the only one that touches aiomqtt or paho on the device side.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.base import RawMessage
from gateway.config import GatewayConfig
from gateway.errors import OutboxError, TransportError
from gateway.intake import IntakeItem
from gateway.pipeline import BATCH_MAX, IntakePipeline, ItemResult

log = structlog.get_logger(__name__)


class _PahoSocket(Protocol):
    def fileno(self) -> int: ...


class _ManualAck(Protocol):
    def manual_ack_set(self, on: bool) -> None: ...
    def ack(self, mid: int, qos: int) -> int: ...
    def loop_read(self, max_packets: int = 1) -> int: ...
    def socket(self) -> _PahoSocket | None: ...
    def disconnect(self) -> int: ...


class ReadThrottle:
    """Stops reading the broker's socket while too many messages wait in the incoming queue."""

    def __init__(self, high_water: int, low_water: int) -> None:
        self.high_water = high_water
        self.low_water = low_water
        self.paused = False
        self.pauses = 0
        self.max_depth = 0
        self.queue: asyncio.Queue[aiomqtt.Message] | None = None
        self._paho: _ManualAck | None = None
        self._fd = -1

    def attach(self, paho: _ManualAck) -> None:
        """The paho client whose socket to pause."""
        self._paho = paho

    def on_depth(self, depth: int) -> None:
        """Called with the queue depth after every put and get."""
        self.max_depth = max(self.max_depth, depth)
        if self._paho is None:
            return
        loop = asyncio.get_running_loop()
        if not self.paused and depth >= self.high_water:
            sock = self._paho.socket()
            if sock is not None and sock.fileno() >= 0:
                self._fd = sock.fileno()
                loop.remove_reader(self._fd)
                self.paused = True
                self.pauses += 1
        elif self.paused and depth <= self.low_water:
            self.paused = False
            sock = self._paho.socket()
            if sock is not None and sock.fileno() == self._fd:
                loop.add_reader(self._fd, self._read)
                loop.call_soon(self._read)  # bytes already decrypted by TLS do not make the fd readable

    def _read(self) -> None:
        paho = self._paho
        if paho is None or self.paused:
            return
        try:
            paho.loop_read()
        except Exception:  # noqa: BLE001 - as in aiomqtt's own reader: a failing read means a broken connection
            log.warning("mqtt_intake_read_failed")
            paho.disconnect()  # aiomqtt sees the disconnect and ends the message stream


def throttled_queue(throttle: ReadThrottle) -> type[asyncio.Queue[aiomqtt.Message]]:
    """A queue class for aiomqtt's ``queue_type`` that reports its depth to the throttle."""

    class ThrottledQueue(asyncio.Queue[aiomqtt.Message]):
        def __init__(self, maxsize: int = 0) -> None:
            super().__init__(0)  # never full, so aiomqtt never discards; the throttle bounds it
            del maxsize
            throttle.queue = self

        def put_nowait(self, item: aiomqtt.Message) -> None:
            super().put_nowait(item)
            throttle.on_depth(self.qsize())

        def get_nowait(self) -> aiomqtt.Message:
            item = super().get_nowait()
            throttle.on_depth(self.qsize())
            return item

    return ThrottledQueue


def _paho(client: aiomqtt.Client) -> _ManualAck:
    # The one place we reach past aiomqtt's public API: enable and send manual PUBACKs on its
    # paho client. Pinned to aiomqtt 2.5.x in pyproject; aiomqtt 3 makes this a public option.
    paho_client: _ManualAck = client._client
    return paho_client


InFlight = tuple["asyncio.Future[list[ItemResult]]", list[tuple[int, int]]]
PIPELINE_DEPTH = 3


class MqttIntake:
    """Subscribes to the device dialects' topics and feeds the intake pipeline; ``run`` is one connection.

    Two stages per connection, each bounded: receive (batches what aiomqtt has queued and hands
    each batch to the pipeline, which parses and commits it) and acknowledge (sends the batch's
    PUBACKs, in arrival order, once its commit is done).
    """

    def __init__(self, config: GatewayConfig, pipeline: IntakePipeline) -> None:
        self._config = config
        self._pipeline = pipeline
        self.messages = 0
        self.acked = 0
        self.throttle = self._new_throttle()

    def _new_throttle(self) -> ReadThrottle:
        receive_maximum = self._config.mqtt.receive_maximum
        return ReadThrottle(high_water=max(2, receive_maximum * 2), low_water=receive_maximum // 2)

    async def run(self, on_connected: Callable[[], None]) -> None:
        """Connect, subscribe and process until the connection fails (raises ``TransportError``)."""
        cfg = self._config.mqtt
        self.throttle = self._new_throttle()  # a new connection starts reading
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = cfg.session_expiry_s
        properties.ReceiveMaximum = cfg.receive_maximum
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=self._config.mqtt_client_id,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
            keepalive=cfg.keepalive_s,
            timeout=10,
            queue_type=throttled_queue(self.throttle),
        )
        paho = _paho(client)
        paho.manual_ack_set(True)
        self.throttle.attach(paho)
        in_flight: asyncio.Queue[InFlight] = asyncio.Queue(maxsize=PIPELINE_DEPTH)
        try:
            async with client:
                for topic_filter in self._pipeline.intake.mqtt_topic_filters():
                    await client.subscribe(topic_filter, qos=1)
                log.info(
                    "mqtt_intake_connected",
                    host=cfg.host,
                    port=cfg.port,
                    client_id=self._config.mqtt_client_id,
                )
                on_connected()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._acknowledge(paho, in_flight), name="mqtt-intake-acker")
                    await self._receive(client, in_flight)
        except* (aiomqtt.MqttError, TransportError) as group:
            raise TransportError(f"device broker {cfg.host}:{cfg.port}: {group.exceptions[0]}") from group
        finally:
            _abandon(in_flight)

    async def _receive(self, client: aiomqtt.Client, in_flight: asyncio.Queue[InFlight]) -> None:
        max_bytes = self._config.mqtt.max_payload_bytes
        async for message in client.messages:
            batch = [message]
            queue = self.throttle.queue
            while queue is not None and len(batch) < BATCH_MAX:
                try:
                    batch.append(queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            self.messages += len(batch)
            items = [
                IntakeItem("mqtt", RawMessage(_body(m.payload), topic=str(m.topic)), max_bytes) for m in batch
            ]
            await in_flight.put((self._pipeline.start(items), [(m.mid, m.qos) for m in batch]))
        raise TransportError("device broker closed the message stream")

    async def _acknowledge(self, paho: _ManualAck, in_flight: asyncio.Queue[InFlight]) -> None:
        while True:
            future, acks = await in_flight.get()
            try:
                await self._pipeline.finish(future)
            except OutboxError as exc:
                # Not committed: do not acknowledge. Dropping the connection makes the broker
                # redeliver everything unacknowledged once we are back.
                raise TransportError(f"outbox refused device messages, reconnecting: {exc}") from exc
            for mid, qos in acks:
                if qos > 0:
                    paho.ack(mid, qos)
                    self.acked += 1


def _body(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return str(payload or "").encode()


def _abandon(in_flight: asyncio.Queue[InFlight]) -> None:
    """Forget batches nobody will acknowledge any more (the broker redelivers those messages).

    Their commits may still succeed or fail; either way the result is consumed here so that a
    failure is not reported again as an unretrieved exception.
    """
    while not in_flight.empty():
        in_flight.get_nowait()[0].add_done_callback(_consume)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
