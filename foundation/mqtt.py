"""Persistent MQTT sessions that acknowledge only after the application says so.

aiomqtt 2.5 acknowledges a QoS 1 message before application code sees it, so a crash between its
PUBACK and our commit would lose the message. We switch the underlying paho client to manual
acknowledgement (paho >= 2.0 ``manual_ack``; aiomqtt 2.x has no public switch yet, see aiomqtt issue
#345) and the caller sends each PUBACK once the message is durable. Anything not yet acknowledged
is redelivered by the broker on reconnect, because the session is persistent (clean start off, a
session expiry, a stable client id).

Flow control: we ask for a Receive Maximum, but do not trust the broker with it (Mosquitto 2.0.11
floods a reconnecting session's backlog past the quota once PUBACKs flow; measured here: 2,698
queued against a Receive Maximum of 10). aiomqtt's own answer to a full queue is to discard, which
with manual acknowledgement would stall those messages until the next reconnect. So the incoming
queue is unbounded in type but never grows past its high-water mark: reaching it stops reading the
socket (TCP back-pressure; the broker keeps the rest queued for our session), draining to the
low-water mark resumes. This module and ``gateway/forwarder.py`` are the only ones that touch aiomqtt.
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
from typing import Any, Protocol

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from foundation.errors import PublishRefusedError

log = structlog.get_logger(__name__)
PACKET_SIZE_FACTOR = 4
MQTT_MAX_PACKET_SIZE = 268_435_455  # what the variable-length remaining-length field can express


class _PahoSocket(Protocol):
    def fileno(self) -> int: ...


class ManualAck(Protocol):  # noqa: D101 - the slice of paho's Client we use, named after its purpose
    def manual_ack_set(self, on: bool) -> None: ...  # noqa: D102
    def ack(self, mid: int, qos: int) -> int: ...  # noqa: D102
    def loop_read(self, max_packets: int = 1) -> int: ...  # noqa: D102
    def socket(self) -> _PahoSocket | None: ...  # noqa: D102
    def disconnect(self) -> int: ...  # noqa: D102


class ReadThrottle:
    """Stops reading the broker's socket while too many messages wait in the incoming queue."""

    def __init__(self, high_water: int, low_water: int) -> None:
        self.high_water = high_water
        self.low_water = low_water
        self.paused = False
        self.pauses = 0
        self.max_depth = 0
        self.queue: asyncio.Queue[aiomqtt.Message] | None = None
        self._paho: ManualAck | None = None
        self._fd = -1

    def attach(self, paho: ManualAck) -> None:
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


def paho_of(client: aiomqtt.Client) -> ManualAck:
    """The paho client inside an aiomqtt client."""
    # The one place we reach past aiomqtt's public API: enable and send manual PUBACKs on its
    # paho client. Pinned to aiomqtt 2.5.x in pyproject; aiomqtt 3 makes this a public option.
    paho_client: ManualAck = client._client
    return paho_client


def persistent_client(
    *,
    host: str,
    port: int,
    client_id: str,
    receive_maximum: int,
    session_expiry_s: int,
    keepalive_s: int,
    throttle: ReadThrottle,
    username: str | None = None,
    password: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    max_payload_bytes: int | None = None,
) -> tuple[aiomqtt.Client, ManualAck]:
    """An MQTT v5 client with a persistent session, manual acknowledgement and a read throttle.

    With ``max_payload_bytes`` the client announces a Maximum Packet Size of
    ``PACKET_SIZE_FACTOR`` times it: a payload a little over the limit still arrives and is
    dead-lettered where it can be inspected, while the broker discards anything far larger
    before it is sent, so no peer can make this process buffer a 256 MB packet.
    """
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = session_expiry_s
    properties.ReceiveMaximum = receive_maximum
    if max_payload_bytes is not None:
        properties.MaximumPacketSize = min(max_payload_bytes * PACKET_SIZE_FACTOR, MQTT_MAX_PACKET_SIZE)
    client = aiomqtt.Client(
        host,
        port,
        identifier=client_id,
        username=username,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=properties,
        keepalive=keepalive_s,
        timeout=10,
        queue_type=throttled_queue(throttle),
        tls_context=tls_context,
    )
    paho = paho_of(client)
    paho.manual_ack_set(True)
    throttle.attach(paho)
    return client, paho


def new_throttle(receive_maximum: int) -> ReadThrottle:
    """The throttle for one connection: pause at twice the Receive Maximum, resume at half of it."""
    return ReadThrottle(high_water=max(2, receive_maximum * 2), low_water=receive_maximum // 2)


def take_batch(first: aiomqtt.Message, throttle: ReadThrottle, limit: int) -> list[aiomqtt.Message]:
    """The message just received plus whatever else is already queued, up to ``limit``."""
    batch = [first]
    queue = throttle.queue
    while queue is not None and len(batch) < limit:
        try:
            batch.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            break
    return batch


def message_body(payload: object) -> bytes:
    """Aiomqtt types payloads loosely; on the wire they are bytes."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return str(payload or "").encode()


def consume_result(future: asyncio.Future[Any]) -> None:
    """Done-callback for outcomes nobody waits for any more: retrieve them so none is reported twice."""
    if not future.cancelled():
        future.exception()


_LAST_PUBLISH_MID: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "cgw_publish_mid", default=None
)
MAX_REMEMBERED_REFUSALS = 1024


class PublishRefusals:
    """The PUBACK reason codes aiomqtt drops: a v5 broker's refusal (0x87 not authorised, ...) made visible.

    aiomqtt 2.5 completes ``publish`` on any PUBACK, success or not. Wrapping its paho client's
    ``publish`` (to learn the message id, per task) and ``on_publish`` (to keep failure codes)
    lets ``publish`` below raise when the broker refused the message.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        paho: Any = client._client  # the same reach as paho_of, for the same pinned version
        self._refused: dict[int, str] = {}
        paho_publish = paho.publish
        aiomqtt_on_publish = paho.on_publish

        def publish(*args: Any, **kwargs: Any) -> Any:
            info = paho_publish(*args, **kwargs)
            _LAST_PUBLISH_MID.set(info.mid)
            return info

        def on_publish(*args: Any) -> None:
            _, _, mid, reason_code, _ = args
            if getattr(reason_code, "is_failure", False):
                if len(self._refused) >= MAX_REMEMBERED_REFUSALS:  # timed-out publishes never ask
                    self._refused.clear()
                self._refused[mid] = str(reason_code)
            aiomqtt_on_publish(*args)

        paho.publish = publish
        paho.on_publish = on_publish

    async def publish(
        self,
        client: aiomqtt.Client,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        ack_wait_s: float = 30,
    ) -> None:
        """Publish at QoS 1; ``PublishRefusedError`` when the broker answered with a failure code."""
        _LAST_PUBLISH_MID.set(None)
        await client.publish(topic, payload, qos=1, retain=retain, timeout=ack_wait_s)
        mid = _LAST_PUBLISH_MID.get()
        reason = self._refused.pop(mid, None) if mid is not None else None
        if reason is not None:
            raise PublishRefusedError(topic, reason)
