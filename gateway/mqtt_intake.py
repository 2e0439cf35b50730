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
from typing import Protocol

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.base import RawMessage
from gateway.config import GatewayConfig
from gateway.errors import OutboxError, TransportError
from gateway.intake import Intake
from gateway.outbox import OutboxWriter, StoreResult

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


class MqttIntake:
    """Subscribes to the device dialects' topics and feeds the outbox; one instance per connection."""

    def __init__(self, config: GatewayConfig, intake: Intake, writer: OutboxWriter) -> None:
        self._config = config
        self._intake = intake
        self._writer = writer
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
        pending: asyncio.Queue[tuple[asyncio.Future[StoreResult | None], int, int]] = asyncio.Queue(
            maxsize=cfg.receive_maximum * 4
        )
        try:
            async with client:
                for topic_filter in self._intake.mqtt_topic_filters():
                    await client.subscribe(topic_filter, qos=1)
                log.info(
                    "mqtt_intake_connected",
                    host=cfg.host,
                    port=cfg.port,
                    client_id=self._config.mqtt_client_id,
                )
                on_connected()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._acknowledge(client, pending), name="mqtt-intake-acker")
                    await self._receive(client, pending)
        except* (aiomqtt.MqttError, TransportError) as group:
            raise TransportError(f"device broker {cfg.host}:{cfg.port}: {group.exceptions[0]}") from group
        finally:
            _abandon(pending)

    async def _receive(
        self,
        client: aiomqtt.Client,
        pending: asyncio.Queue[tuple[asyncio.Future[StoreResult | None], int, int]],
    ) -> None:
        max_bytes = self._config.mqtt.max_payload_bytes
        async for message in client.messages:
            self.messages += 1
            payload = message.payload
            body = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
            outcome = self._intake.from_mqtt(RawMessage(bytes(body), topic=str(message.topic)), max_bytes)
            future = await self._writer.enqueue(outcome.operation)
            await pending.put((future, message.mid, message.qos))
        raise TransportError("device broker closed the message stream")

    async def _acknowledge(
        self,
        client: aiomqtt.Client,
        pending: asyncio.Queue[tuple[asyncio.Future[StoreResult | None], int, int]],
    ) -> None:
        paho = _paho(client)
        while True:
            future, mid, qos = await pending.get()
            try:
                await future
            except OutboxError as exc:
                # Not committed: do not acknowledge. Dropping the connection makes the broker
                # redeliver everything unacknowledged once we are back.
                raise TransportError(f"outbox refused a device message, reconnecting: {exc}") from exc
            if qos > 0:
                paho.ack(mid, qos)
                self.acked += 1


def _abandon(pending: asyncio.Queue[tuple[asyncio.Future[StoreResult | None], int, int]]) -> None:
    """Forget outcomes nobody will acknowledge any more (the broker redelivers those messages).

    Their commits may still succeed or fail; either way the result is consumed here so that a
    failure is not reported again as an unretrieved exception.
    """
    while not pending.empty():
        future, _, _ = pending.get_nowait()
        future.add_done_callback(_consume)


def _consume(future: asyncio.Future[StoreResult | None]) -> None:
    if not future.cancelled():
        future.exception()
