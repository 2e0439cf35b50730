"""A small embedded MQTT broker (3.1.1 and 5.0) for the demo: no server to install.

It implements what the demo's clients use, and nothing more: QoS 0 and 1, persistent sessions
(clean start / clean session, v5 session expiry), wildcards, shared subscriptions
(``$share/<group>/<filter>``), retained messages, last wills, keepalive. Sessions live in memory.
It is not a production broker: deployments and the test suite use Mosquitto.

Given the compound's ``BrokerAccounts`` it enforces them as the shipped Mosquitto configuration
does, from the same rules (``gateway/broker_accounts.py``): anonymous clients and bad logins are
refused at CONNECT (not authorised), a publish its user may not write is dropped (MQTT 5: PUBACK
0x87; 3.1.1 has no way to say so: acknowledged and dropped, like Mosquitto), and a message reaches
only sessions whose user may read its topic, checked again when it leaves a session's queue. Each
session belongs to its account, as with the shipped ``use_username_as_clientid``: the client id a
client sends is replaced by its user name, so no login can take over the gateway's persistent
session (and the events queued in it) or another device's by sending its client id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from collections import deque
from dataclasses import dataclass, field

import structlog

from foundation.mqtt import topic_matches
from gateway.broker_accounts import Access, BrokerAccounts

log = structlog.get_logger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
INFLIGHT = 100
NOT_AUTHORIZED_V5, NOT_AUTHORIZED_V3 = 0x87, 0x05
# MQTT 5 property identifiers and their value types: b byte, 2/4 integer, V varint, S string, B binary, P pair
PROPERTY_TYPES = {
    0x01: "b",
    0x02: "4",
    0x03: "S",
    0x08: "S",
    0x09: "B",
    0x0B: "V",
    0x11: "4",
    0x12: "S",
    0x13: "2",
    0x15: "S",
    0x16: "B",
    0x17: "b",
    0x18: "4",
    0x19: "b",
    0x1A: "S",
    0x1C: "S",
    0x1F: "S",
    0x21: "2",
    0x22: "2",
    0x23: "2",
    0x24: "b",
    0x25: "b",
    0x26: "P",
    0x27: "4",
    0x28: "b",
    0x29: "b",
    0x2A: "b",
}


class ProtocolViolation(Exception):  # noqa: N818 - the MQTT term
    """The client sent something this broker cannot read; the connection is closed."""


@dataclass
class Message:
    """A message on its way to one session."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False


@dataclass
class Session:
    """Subscriptions, queue and in-flight messages of one client id."""

    client_id: str
    v5: bool
    persistent: bool
    user: str | None = None
    subscriptions: dict[str, int] = field(default_factory=dict)
    queue: deque[Message] = field(default_factory=deque)
    inflight: dict[int, Message] = field(default_factory=dict)
    writer: asyncio.StreamWriter | None = None
    packet_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_id(self) -> int:
        """A packet id not in flight."""
        while True:
            pid = next(self.packet_ids) % 65535 + 1
            if pid not in self.inflight:
                return pid


class Reader:
    """Reads MQTT fields from one packet."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        """One byte."""
        if self.pos >= len(self.data):
            raise ProtocolViolation("packet too short")
        self.pos += 1
        return self.data[self.pos - 1]

    def int2(self) -> int:
        """A two-byte integer."""
        return (self.byte() << 8) | self.byte()

    def varint(self) -> int:
        """A variable byte integer."""
        value, shift = 0, 0
        for _ in range(4):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
        raise ProtocolViolation("malformed variable byte integer")

    def binary(self) -> bytes:
        """Length-prefixed binary data."""
        size = self.int2()
        if self.pos + size > len(self.data):
            raise ProtocolViolation("field runs past the packet")
        self.pos += size
        return self.data[self.pos - size : self.pos]

    def text(self) -> str:
        """A length-prefixed UTF-8 string."""
        return self.binary().decode("utf-8", errors="replace")

    def properties(self) -> dict[int, object]:
        """An MQTT 5 property block (values by identifier)."""
        end = self.varint() + self.pos
        found: dict[int, object] = {}
        while self.pos < end:
            ident = self.varint()
            kind = PROPERTY_TYPES.get(ident)
            if kind == "b":
                found[ident] = self.byte()
            elif kind == "2":
                found[ident] = self.int2()
            elif kind == "4":
                found[ident] = (self.int2() << 16) | self.int2()
            elif kind == "V":
                found[ident] = self.varint()
            elif kind in {"S", "B"}:
                found[ident] = self.binary()
            elif kind == "P":
                found[ident] = (self.binary(), self.binary())
            else:
                raise ProtocolViolation(f"unknown property {ident:#x}")
        return found

    def rest(self) -> bytes:
        """Everything after the current position (a payload)."""
        return self.data[self.pos :]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


__all__ = ["EmbeddedBroker", "topic_matches"]


class EmbeddedBroker:
    """``async with EmbeddedBroker(port) as broker:`` serves on 127.0.0.1 until the block ends."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        accounts: BrokerAccounts | None = None,
        username_as_client_id: bool = True,
    ) -> None:
        """``accounts``: only these logins connect, each to its own topics and session; None: anyone, to anything.

        ``username_as_client_id`` False (tests showing what the binding prevents, only) keeps the
        client ids clients send even with accounts, as Mosquitto without ``use_username_as_clientid``.
        """
        self.host, self.port = host, port
        self.accounts = accounts
        self.username_as_client_id = username_as_client_id
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, Message] = {}
        self._server: asyncio.Server | None = None
        self._share_turn: dict[str, int] = {}
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> EmbeddedBroker:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.close()
            # Python 3.11 waits here for every connection handler to finish; they end as their
            # sockets close, and a client that never notices must not hold the shutdown.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    # --- connections --------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session: Session | None = None
        will: Message | None = None
        clean_exit = False
        self._writers.add(writer)
        try:
            packet_type, _, body = await self._read(reader, None)
            session, will, keepalive = self._connect(packet_type, Reader(body), writer)
            timeout = keepalive * 1.5 if keepalive else None
            await self._flush(session)
            while True:
                packet_type, flags, body = await self._read(reader, timeout)
                if packet_type == DISCONNECT:
                    reason = body[0] if body else 0
                    clean_exit = reason != 0x04  # 0x04: disconnect with will message
                    break
                self._handle(session, packet_type, flags, Reader(body))
                await self._flush(session)
        except (ProtocolViolation, asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
            log.debug("embedded_broker_connection_closed", reason=str(exc) or type(exc).__name__)
        finally:
            self._writers.discard(writer)
            writer.close()
            if session is not None and session.writer is writer:
                session.writer = None
                if not session.persistent:
                    self.sessions.pop(session.client_id, None)
            if (
                will is not None
                and not clean_exit
                and session is not None
                and self._may(session, "write", will.topic)
            ):
                self._route(will)

    @staticmethod
    async def _read(reader: asyncio.StreamReader, idle_limit_s: float | None) -> tuple[int, int, bytes]:
        async with asyncio.timeout(idle_limit_s):
            first = (await reader.readexactly(1))[0]
            length, shift = 0, 0
            for _ in range(4):
                byte = (await reader.readexactly(1))[0]
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
            body = await reader.readexactly(length)
        return first >> 4, first & 0x0F, body

    def _connect(
        self, packet_type: int, r: Reader, writer: asyncio.StreamWriter
    ) -> tuple[Session, Message | None, int]:
        if packet_type != CONNECT:
            raise ProtocolViolation("first packet is not CONNECT")
        r.text()  # protocol name
        level = r.byte()
        flags = r.byte()
        keepalive = r.int2()
        v5 = level == 5
        expiry = 0
        if v5:
            expiry = int(r.properties().get(0x11, 0))  # type: ignore[call-overload]
        client_id = r.text() or f"auto-{id(writer)}"
        will = None
        if flags & 0x04:
            if v5:
                r.properties()
            topic, payload = r.text(), r.binary()
            will = Message(topic, payload, (flags >> 3) & 0x03, bool(flags & 0x20))
        user = r.text() if flags & 0x80 else None
        password = r.binary() if flags & 0x40 else None
        if self.accounts is not None and not self.accounts.verify(user, password):
            code = NOT_AUTHORIZED_V5 if v5 else NOT_AUTHORIZED_V3
            writer.write(_packet(CONNACK << 4, bytes([0, code]) + (b"\x00" if v5 else b"")))
            raise ProtocolViolation(f"login refused for user {user!r}")
        if self.accounts is not None and self.username_as_client_id and user is not None:
            client_id = user  # one session per account: a client id names no other account's session
        clean = bool(flags & 0x02)
        persistent = (not clean) if not v5 else expiry > 0
        existing = self.sessions.get(client_id)
        if existing is not None and existing.writer is not None:
            existing.writer.close()  # session takeover
        present = existing is not None and not clean
        if present and existing is not None:
            session = existing
            session.v5, session.persistent = v5, persistent
        else:
            session = Session(client_id, v5, persistent)
            self.sessions[client_id] = session
        session.writer, session.user = writer, user
        body = bytes([1 if present else 0, 0]) + (b"\x00" if v5 else b"")
        writer.write(_packet(CONNACK << 4, body))
        # unacknowledged messages of the previous connection go out again first
        session.queue.extendleft(reversed(list(session.inflight.values())))
        session.inflight.clear()
        return session, will, keepalive

    def _handle(self, session: Session, packet_type: int, flags: int, r: Reader) -> None:
        if packet_type == PUBLISH:
            qos = (flags >> 1) & 0x03
            topic = r.text()
            pid = r.int2() if qos else 0
            if session.v5:
                r.properties()
            allowed = self._may(session, "write", topic)
            if allowed:
                self._route(Message(topic, r.rest(), min(qos, 1), bool(flags & 0x01)))
            if qos and session.writer is not None:
                refused = session.v5 and not allowed
                ack = struct.pack("!HB", pid, NOT_AUTHORIZED_V5) if refused else struct.pack("!H", pid)
                session.writer.write(_packet(PUBACK << 4, ack))
        elif packet_type == PUBACK:
            session.inflight.pop(r.int2(), None)
        elif packet_type == SUBSCRIBE:
            self._subscribe(session, r)
        elif packet_type == UNSUBSCRIBE:
            pid = r.int2()
            if session.v5:
                r.properties()
            codes = b""
            while r.pos < len(r.data):
                session.subscriptions.pop(r.text(), None)
                codes += b"\x00"
            body = struct.pack("!H", pid) + ((b"\x00" + codes) if session.v5 else b"")
            if session.writer is not None:
                session.writer.write(_packet(UNSUBACK << 4, body))
        elif packet_type == PINGREQ and session.writer is not None:
            session.writer.write(_packet(PINGRESP << 4, b""))

    def _subscribe(self, session: Session, r: Reader) -> None:
        pid = r.int2()
        if session.v5:
            r.properties()
        granted = b""
        retained: list[Message] = []
        while r.pos < len(r.data):
            topic_filter, options = r.text(), r.byte()
            qos = min(options & 0x03, 1)
            session.subscriptions[topic_filter] = qos
            granted += bytes([qos])
            if not topic_filter.startswith("$share/"):
                retained += [
                    Message(m.topic, m.payload, min(m.qos, qos), retain=True)
                    for m in self.retained.values()
                    if topic_matches(topic_filter, m.topic) and self._may(session, "read", m.topic)
                ]
        body = struct.pack("!H", pid) + (b"\x00" if session.v5 else b"") + granted
        if session.writer is not None:
            session.writer.write(_packet(SUBACK << 4, body))
        session.queue.extend(retained)

    # --- routing ------------------------------------------------------------------------------------

    def _route(self, message: Message) -> None:
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)
        groups: dict[str, list[tuple[Session, int]]] = {}
        for session in self.sessions.values():
            if not self._may(session, "read", message.topic):
                continue  # subscribed with a wider filter than it may read: delivered nothing of it
            best = -1
            for topic_filter, qos in session.subscriptions.items():
                if topic_filter.startswith("$share/"):
                    _, group, real = topic_filter.split("/", 2)
                    if topic_matches(real, message.topic):
                        groups.setdefault(f"{group}/{real}", []).append((session, qos))
                elif topic_matches(topic_filter, message.topic):
                    best = max(best, qos)
            if best >= 0:
                session.queue.append(Message(message.topic, message.payload, min(message.qos, best)))
        for key, members in groups.items():
            online = [m for m in members if m[0].writer is not None] or members
            turn = self._share_turn.get(key, 0)
            self._share_turn[key] = turn + 1
            session, qos = online[turn % len(online)]
            session.queue.append(Message(message.topic, message.payload, min(message.qos, qos)))
        for session in self.sessions.values():
            if session.queue and session.writer is not None:
                with contextlib.suppress(ConnectionError):
                    self._send_queued(session)

    def _may(self, session: Session, access: Access, topic: str) -> bool:
        return self.accounts is None or self.accounts.allows(session.user, access, topic)

    def _send_queued(self, session: Session) -> None:
        writer = session.writer
        if writer is None:
            return
        while session.queue and len(session.inflight) < INFLIGHT:
            message = session.queue.popleft()
            if not self._may(session, "read", message.topic):
                # queued for a session that another user has since taken over: dropped, never
                # delivered to a user who may not read it
                continue
            head = _string(message.topic)
            first = PUBLISH << 4 | (message.qos << 1) | (1 if message.retain else 0)
            if message.qos:
                pid = session.next_id()
                session.inflight[pid] = message
                head += struct.pack("!H", pid)
            writer.write(_packet(first, head + (b"\x00" if session.v5 else b"") + message.payload))

    async def _flush(self, session: Session) -> None:
        self._send_queued(session)
        if session.writer is not None:
            await session.writer.drain()
