"""The project's one MQTT port: sessions, our own message type, manual acknowledgement, typed refusals.

Everything else speaks MQTT through ``MqttSession``; this module is the only one that touches
aiomqtt and paho (ruff's banned-api rule enforces it), so a library upgrade changes one file.

Manual acknowledgement: aiomqtt 2.5 acknowledges a QoS 1 message before application code sees it,
so a crash between its PUBACK and our commit would lose the message. A session opened with
``manual_ack`` switches the underlying paho client to manual acknowledgement (paho >= 2.0
``manual_ack``; aiomqtt 2.x has no public switch yet, see aiomqtt issue #345) and the caller sends
each PUBACK (``ack``) once the message is durable. Anything not yet acknowledged is redelivered by
the broker on reconnect, because the session is persistent (clean start off, a session expiry, a
stable client id). ``consume`` is the one receive -> commit -> acknowledge loop built on that.

Flow control: we ask for a Receive Maximum, but do not trust the broker with it (Mosquitto 2.0.11
floods a reconnecting session's backlog past the quota once PUBACKs flow; measured here: 2,698
queued against a Receive Maximum of 10). aiomqtt's own answer to a full queue is to discard, which
with manual acknowledgement would stall those messages until the next reconnect. So the incoming
queue is unbounded in type but never grows past its high-water mark: reaching it stops reading the
socket (TCP back-pressure; the broker keeps the rest queued for our session), draining to the
low-water mark resumes.

Refusals: aiomqtt 2.5 completes ``publish`` on any PUBACK, success or not. The session watches the
PUBACK reason codes (MQTT v5) itself and raises ``PublishRefusedError`` with the broker's reason
(0x87 not authorised, ...). Every other aiomqtt/paho failure leaves the port as ``TransportError``.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, NoReturn, Protocol, Self, TypeVar

import aiomqtt
import paho.mqtt._packet
import structlog
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY, topic_matches_sub
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from foundation.cancellation import raise_if_cancelling
from foundation.errors import PublishRefusedError, TransportError

log = structlog.get_logger(__name__)
PACKET_SIZE_FACTOR = 4
MQTT_MAX_PACKET_SIZE = 268_435_455  # what the variable-length remaining-length field can express
DEFAULT_PUBLISH_WAIT_S = 30.0
W = TypeVar("W")  # what a consumer makes of one batch before committing it


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for us when the connection ends without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """How to open one MQTT session (a plain frozen dataclass: it carries an ``ssl.SSLContext``).

    Attributes:
        host: the broker's host name or address.
        port: the broker's TCP port.
        client_id: the MQTT client identifier; stable for a persistent session.
        protocol: ``"5"`` (default; needed for session expiry, Receive Maximum, Maximum Packet Size
            and publish refusals) or ``"3.1.1"`` (what many devices speak).
        clean_start: start a new session (v5 clean start; v3.1.1 clean session). Off, with a
            ``session_expiry_s``, makes the session persistent: unacknowledged messages come again.
        session_expiry_s: how long the broker keeps the session after a disconnect (v5).
        keepalive_s: the MQTT keepalive.
        timeout_s: how long to wait for CONNACK, SUBACK and DISCONNECT.
        tls_context: TLS for the connection (client certificate included), or plain TCP.
        username: the MQTT user name, if the broker asks for one.
        password: its password.
        receive_maximum: the Receive Maximum to announce (v5); it also sets the read throttle's
            marks (pause at twice it, resume at half of it).
        max_payload_bytes: announce a Maximum Packet Size of ``PACKET_SIZE_FACTOR`` times this (v5).
        will: the last will, if any.
        manual_ack: acknowledge QoS 1/2 messages only through ``ack`` (off: on arrival).
        max_inflight: QoS > 0 publishes in flight at once (paho's default otherwise).
        max_concurrent_calls: concurrent subscribe/publish calls (unbounded otherwise).
    """

    host: str
    port: int
    client_id: str
    protocol: Literal["5", "3.1.1"] = "5"
    clean_start: bool = True
    session_expiry_s: int | None = None
    keepalive_s: int = 60
    timeout_s: float = 10.0
    tls_context: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    receive_maximum: int | None = None
    max_payload_bytes: int | None = None
    will: Will | None = None
    manual_ack: bool = False
    max_inflight: int | None = None
    max_concurrent_calls: int | None = None

    def __post_init__(self) -> None:
        v5_only = {
            "session_expiry_s": self.session_expiry_s,
            "receive_maximum": self.receive_maximum,
            "max_payload_bytes": self.max_payload_bytes,
        }
        if self.protocol != "5" and any(value is not None for value in v5_only.values()):
            named = ", ".join(name for name, value in v5_only.items() if value is not None)
            msg = f"{named}: MQTT v5 only, but the session speaks {self.protocol}"
            raise ValueError(msg)
        if self.manual_ack and self.receive_maximum is None:
            # without it nothing bounds what the broker sends ahead of our acknowledgements
            msg = "manual_ack needs a receive_maximum (it also sets the read throttle)"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class Message:
    """One message received on a session.

    Attributes:
        topic: the topic it was published to.
        payload: its body.
        qos: the QoS it was delivered with.
        retain: whether the broker delivered it as a retained message.
        mid: the packet identifier its PUBACK must carry.
        connection: which connection delivered it: a PUBACK is only valid on that connection
            (packet identifiers are reused), so ``ack`` ignores a message from an earlier one.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    connection: int


class _PahoSocket(Protocol):
    def fileno(self) -> int: ...


class _Paho(Protocol):
    """The slice of paho's Client the port drives directly, named after its purpose."""

    def manual_ack_set(self, on: bool) -> None: ...
    def ack(self, mid: int, qos: int) -> int: ...
    def loop_read(self, max_packets: int = 1) -> int: ...
    def socket(self) -> _PahoSocket | None: ...
    def disconnect(self) -> int: ...


class ReadThrottle:
    """Stops reading the broker's socket while too many messages wait in the incoming queue.

    Attributes:
        high_water: the queue depth at which reading stops.
        low_water: the depth at which it resumes.
        paused: whether reading is stopped now.
        pauses: how often reading stopped on this connection.
        max_depth: the deepest the queue has been on this connection.
    """

    def __init__(self, high_water: int, low_water: int) -> None:
        self.high_water = high_water
        self.low_water = low_water
        self.paused = False
        self.pauses = 0
        self.max_depth = 0
        self.queue: asyncio.Queue[aiomqtt.Message] | None = None
        self._paho: _Paho | None = None
        self._fd = -1

    def attach(self, paho: _Paho) -> None:
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
                loop.remove_reader(self._fd)  # aiomqtt's reader; ours takes over on resume
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
            # as aiomqtt's reader does: a TLS socket may hold decrypted bytes loop_read left behind
            while not self.paused and (sock := paho.socket()) is not None and _tls_pending(sock):
                paho.loop_read()
        except Exception:  # noqa: BLE001 - as in aiomqtt's own reader: a failing read means a broken connection
            log.warning("mqtt_read_failed")
            paho.disconnect()  # aiomqtt sees the disconnect and ends the message stream


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest; wildcards never match ``$SYS``-style topics).

    paho's, the matching the brokers' clients already rely on, rather than our own.
    """
    matched: bool = topic_matches_sub(topic_filter, topic)
    return matched


def _tls_pending(sock: object) -> bool:
    pending = getattr(sock, "pending", None)
    return callable(pending) and int(pending()) > 0


RECV_CHUNK = 64 * 1024


class _BufferedSocket:
    """A plain TCP socket for paho with a read buffer: many packets per read, one read per chunk.

    paho reads a packet with three or more ``recv`` calls (type byte, each length byte, the rest)
    and one packet per reader callback, so each message cost three system calls and an event-loop
    round. Reading 64 KiB at a time and exposing ``pending()`` (as an SSL socket does) makes
    aiomqtt's reader callback, and the read throttle's, go on while bytes are buffered -- except
    while the throttle has paused reading: then the bytes wait here, and resuming reads them first.
    Everything else goes to the socket.
    """

    def __init__(self, sock: socket.socket, throttle: ReadThrottle) -> None:
        self.raw = sock
        self._throttle = throttle
        self._data = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes: from the buffer, else one ``recv`` of the socket."""
        if self._pos >= len(self._data):
            if size >= RECV_CHUNK:
                return self.raw.recv(size)
            self._data = self.raw.recv(RECV_CHUNK)  # BlockingIOError, EOF (b"") pass through
            self._pos = 0
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    def pending(self) -> int:
        """Bytes read from the socket and not yet taken (none while reading is paused)."""
        return 0 if self._throttle.paused else len(self._data) - self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class _PublishProperties(Properties):
    """paho's ``Properties`` for a received PUBLISH, sharing its lookup tables instead of rebuilding them.

    paho builds three tables in every ``Properties.__init__`` and walks all 27 property names in
    ``clear``; for each received v5 PUBLISH that was an eighth of the gateway's event loop. The
    tables never change, so instances of this class read them from the class; a fresh instance has
    no properties, so there is nothing to clear before ``unpack``. Only ``decode_publish`` makes these
    (``paho.mqtt._packet.Properties``, patched below; paho is pinned).
    """

    _TABLES = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    types = _TABLES.types
    names = _TABLES.names
    properties = _TABLES.properties

    def __init__(self, packetType: int) -> None:  # noqa: N803 - paho's name
        object.__setattr__(self, "packetType", packetType)

    def clear(self) -> None:
        """Forget the properties set on this instance."""
        for name in [n for n in vars(self) if n != "packetType"]:
            delattr(self, name)


paho.mqtt._packet.Properties = _PublishProperties  # type: ignore[attr-defined]


def new_throttle(receive_maximum: int) -> ReadThrottle:
    """The throttle for one connection: pause at twice the Receive Maximum, resume at half of it."""
    return ReadThrottle(high_water=max(2, receive_maximum * 2), low_water=receive_maximum // 2)


def _throttled_queue(throttle: ReadThrottle) -> type[asyncio.Queue[aiomqtt.Message]]:
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


def _paho_of(client: aiomqtt.Client) -> Any:
    # The one place we reach past aiomqtt's public API: manual PUBACKs, the read throttle, the
    # PUBACK reason codes and the raw socket all need its paho client. Pinned to aiomqtt 2.5.x in
    # pyproject; aiomqtt 3 makes manual acknowledgement a public option.
    return client._client


def _body(payload: object) -> bytes:
    """Aiomqtt types payloads loosely; on the wire they are bytes."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return str(payload or "").encode()


_LAST_PUBLISH_MID: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "cgw_publish_mid", default=None
)
MAX_REMEMBERED_REFUSALS = 1024


class _PublishRefusals:
    """The PUBACK reason codes aiomqtt drops: a v5 broker's refusal made visible.

    Wrapping the paho client's ``publish`` (to learn the message id, per task: aiomqtt calls it
    synchronously inside our task) and ``on_publish`` (to keep failure codes) lets
    ``MqttSession.publish`` raise when the broker refused the message.
    """

    def __init__(self, paho: Any) -> None:
        self._refused: dict[int, tuple[str, int]] = {}
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
                self._refused[mid] = (str(reason_code), int(reason_code.value))
            aiomqtt_on_publish(*args)

        paho.publish = publish
        paho.on_publish = on_publish

    def begin(self) -> None:
        """Forget the message id of this task's previous publish."""
        _LAST_PUBLISH_MID.set(None)

    def outcome(self) -> tuple[str, int] | None:
        """The broker's refusal (reason, code) of this task's last publish, if it refused it."""
        mid = _LAST_PUBLISH_MID.get()
        return self._refused.pop(mid, None) if mid is not None else None


_CONNECTIONS = itertools.count(1)


class _Messages:
    """Async iterator over a connection's messages, as ours; ``TransportError`` when it ends."""

    def __init__(self, session: MqttSession, client: aiomqtt.Client) -> None:
        self._session = session
        self._source = client.messages

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        try:
            received = await self._source.__anext__()
        except aiomqtt.MqttError as exc:
            raise TransportError(f"message stream ended: {exc}") from exc
        return self._session.to_message(received)


class MqttSession:
    """One MQTT connection, as an async context manager: connect on enter, disconnect on exit.

    A session may be entered again after it exited (a new connection with the same options);
    never twice at once. Statistics of the read throttle are per connection (``throttle``).
    """

    def __init__(self, options: SessionOptions) -> None:
        self.options = options
        self.throttle = new_throttle(options.receive_maximum or 0)
        self._client: aiomqtt.Client | None = None
        self._paho: _Paho | None = None
        self._refusals: _PublishRefusals | None = None
        self._connection = 0

    async def __aenter__(self) -> Self:
        """Connect (``TransportError`` when the broker cannot be reached or refuses us)."""
        opts = self.options
        self.throttle = new_throttle(opts.receive_maximum or 0)  # a new connection starts reading
        client = aiomqtt.Client(
            opts.host,
            opts.port,
            identifier=opts.client_id,
            username=opts.username,
            password=opts.password,
            protocol=aiomqtt.ProtocolVersion.V5 if opts.protocol == "5" else aiomqtt.ProtocolVersion.V311,
            clean_start=opts.clean_start if opts.protocol == "5" else MQTT_CLEAN_START_FIRST_ONLY,
            clean_session=None if opts.protocol == "5" else opts.clean_start,
            properties=_connect_properties(opts),
            keepalive=opts.keepalive_s,
            timeout=opts.timeout_s,
            queue_type=_throttled_queue(self.throttle),
            tls_context=opts.tls_context,
            will=aiomqtt.Will(opts.will.topic, opts.will.payload, opts.will.qos, opts.will.retain)
            if opts.will
            else None,
            max_inflight_messages=opts.max_inflight,
            max_concurrent_outgoing_calls=opts.max_concurrent_calls,
        )
        paho = _paho_of(client)
        if opts.manual_ack:
            paho.manual_ack_set(True)
        if opts.receive_maximum is not None:
            self.throttle.attach(paho)
        refusals = _PublishRefusals(paho)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise TransportError(str(exc)) from exc
        if type(paho._sock) is socket.socket:  # plain TCP (TLS sockets buffer already)
            paho._sock = _BufferedSocket(paho._sock, self.throttle)
        self._client, self._paho, self._refusals = client, paho, refusals
        self._connection = next(_CONNECTIONS)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Disconnect (a clean DISCONNECT unless the connection is already gone)."""
        client, self._client, self._paho, self._refusals = self._client, None, None, None
        if client is None:
            return
        try:
            await client.__aexit__(exc_type, exc, tb)
        except aiomqtt.MqttError as error:
            raise TransportError(f"disconnect: {error}") from error

    def _connected(self) -> tuple[aiomqtt.Client, _Paho, _PublishRefusals]:
        if self._client is None or self._paho is None or self._refusals is None:
            msg = "the MQTT session is not connected"
            raise TransportError(msg)
        return self._client, self._paho, self._refusals

    def to_message(self, received: aiomqtt.Message) -> Message:
        """Our message type for one aiomqtt message of this connection."""
        return Message(
            topic=received.topic.value,
            payload=_body(received.payload),
            qos=received.qos,
            retain=received.retain,
            mid=received.mid,
            connection=self._connection,
        )

    def messages(self) -> _Messages:
        """The messages of the subscriptions, as they arrive; ``TransportError`` when the connection ends."""
        client, _, _ = self._connected()
        return _Messages(self, client)

    def take_batch(self, first: Message, limit: int) -> list[Message]:
        """``first`` plus whatever else is already queued, up to ``limit`` (never waits)."""
        batch = [first]
        queue = self.throttle.queue
        while queue is not None and len(batch) < limit:
            try:
                batch.append(self.to_message(queue.get_nowait()))
            except asyncio.QueueEmpty:
                break
        return batch

    def ack(self, message: Message) -> bool:
        """Send the PUBACK of a message the caller has made durable; True when one was sent.

        Nothing is sent for QoS 0, without ``manual_ack`` (it was acknowledged on arrival), or for
        a message of an earlier connection (the broker redelivers it on this one).
        """
        if not self.options.manual_ack or message.qos == 0 or message.connection != self._connection:
            return False
        if self._paho is None:
            return False  # disconnected: the broker redelivers it
        return self._paho.ack(message.mid, message.qos) == 0

    async def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        """Subscribe (a refusal in the SUBACK is logged: the broker delivers nothing for it)."""
        client, _, _ = self._connected()
        try:
            granted = await client.subscribe(topic_filter, qos=qos)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"subscribe to {topic_filter}: {exc}") from exc
        refused = [str(code) for code in granted if getattr(code, "is_failure", False)]
        if refused:
            log.warning("mqtt_subscribe_refused", topic_filter=topic_filter, reason=refused[0])

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float = DEFAULT_PUBLISH_WAIT_S,
    ) -> None:
        """Publish; at QoS > 0 return once the broker acknowledged it.

        Raises:
            PublishRefusedError: the broker answered with a failure reason code (MQTT v5).
            TransportError: not connected, the connection failed, or no acknowledgement in time.
        """
        client, _, refusals = self._connected()
        refusals.begin()
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=timeout_s)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"publish to {topic}: {exc}") from exc
        refused = refusals.outcome()
        if refused is not None:
            raise PublishRefusedError(topic, refused[0], refused[1])

    def cut(self) -> None:
        """Drop the TCP connection without a DISCONNECT, as a power cut would: the broker publishes the will."""
        if self._paho is None:
            return
        sock = self._paho.socket()
        if isinstance(sock, _BufferedSocket):
            sock = sock.raw
        if isinstance(sock, socket.socket):  # TCP and TLS; a websocket wrapper has no shutdown
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                log.debug("mqtt_cut_on_closed_socket")

    async def consume(
        self,
        begin: Callable[[list[Message]], W],
        commit: Callable[[W], Awaitable[None]],
        *,
        batch_max: int,
        depth: int,
        acknowledged: Callable[[list[Message]], None] | None = None,
        abandon: Callable[[W], None] | None = None,
        linger_s: float = 0.0,
    ) -> NoReturn:
        """Receive in batches, have each committed, acknowledge it after its commit, in order.

        Two stages, each bounded: receive (``begin`` turns each batch -- the message just
        received plus what is already queued, up to ``batch_max`` -- into work, at most ``depth``
        batches ahead) and acknowledge (awaits ``commit`` of each batch's work in arrival order,
        then sends its PUBACKs and calls ``acknowledged``). A batch whose commit raised is never
        acknowledged, nor is any after it: the exception ends the loop, and the broker redelivers
        everything unacknowledged on the next connection. Work still queued when the loop ends
        is handed to ``abandon``. With ``linger_s``, a batch that is not yet full waits that long
        for more messages after its first (fewer, larger commits: group commit by arrival). Returns only by raising (``TransportError`` when the connection
        ends, or whatever ``commit`` raised) or cancellation.
        """
        in_flight: asyncio.Queue[tuple[W, list[Message]]] = asyncio.Queue(maxsize=depth)

        async def acknowledge() -> None:
            while True:
                raise_if_cancelling()
                work, batch = await in_flight.get()
                await commit(work)
                for message in batch:
                    self.ack(message)
                if acknowledged is not None:
                    acknowledged(batch)

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(acknowledge(), name=f"mqtt-acknowledge-{self.options.client_id}")
                async for first in self.messages():
                    queue = self.throttle.queue
                    if linger_s > 0 and queue is not None and queue.qsize() < batch_max - 1:
                        await asyncio.sleep(linger_s)
                    batch = self.take_batch(first, batch_max)
                    await in_flight.put((begin(batch), batch))
                msg = "the broker closed the message stream"
                raise TransportError(msg)
        finally:
            while not in_flight.empty():
                work, _ = in_flight.get_nowait()
                if abandon is not None:
                    abandon(work)


def _connect_properties(opts: SessionOptions) -> Properties | None:
    if opts.protocol != "5":
        return None
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if opts.session_expiry_s is not None:
        properties.SessionExpiryInterval = opts.session_expiry_s
    if opts.receive_maximum is not None:
        properties.ReceiveMaximum = opts.receive_maximum
    if opts.max_payload_bytes is not None:
        # A payload a little over the limit still arrives and is dead-lettered where it can be
        # inspected, while the broker discards anything far larger before it is sent, so no peer
        # can make this process buffer a 256 MB packet.
        properties.MaximumPacketSize = min(opts.max_payload_bytes * PACKET_SIZE_FACTOR, MQTT_MAX_PACKET_SIZE)
    return properties
