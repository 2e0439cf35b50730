"""Gateway -> district: drain the outbox to the district broker (or straight into a store).

Each round reads what is pending, alarms first and then oldest first; alarms go out at once in
their own batches, routine events are batched per kind (bounded by count, bytes and a short delay)
and paced by a token bucket, so that a backlog after an outage is replayed at a configured rate
without ever holding back a live alarm. An event is marked delivered only after the broker's
PUBACK (or the store's confirmation) for its batch; anything unconfirmed stays pending and is sent
again, so a lost acknowledgement or a broker that lost our session loses nothing (the district
store is idempotent by event id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog
from pydantic import ValidationError

from foundation.cancellation import raise_if_cancelling
from foundation.errors import PayloadRejected, PublishRefusedError, TransportError, UplinkError
from foundation.events import Event, utc_now
from foundation.health import Health
from foundation.logging import worth_logging
from foundation.mqtt import MqttSession, SessionOptions, Will
from gateway.command_service import CommandService
from gateway.config import DirectUplinkConfig, GatewayConfig, MqttUplinkConfig, Pacing
from gateway.evidence_service import EvidenceService
from gateway.inventory import configured_inventory
from gateway.outbox import OutboxReader, StoredEvent
from gateway.rate_limits import TokenBucket
from gateway.watchlists import WatchListRegistry
from uplink.inventory import encode_inventory, inventory_topic
from uplink.protocol import (
    decode_receipt,
    encode_batch,
    event_topic,
    receipt_topic,
    status_topic,
    watchlist_filter,
    watchlist_id,
)
from uplink.stores import StoreError
from uplink.watchlist_document import WatchListRejected

log = structlog.get_logger(__name__)

Send = Callable[[str, list[StoredEvent]], Awaitable[None]]


class Forwarder:
    """Moves outbox rows to a sender, round after round, until the sender fails."""

    def __init__(self, reader: OutboxReader, pacing: Pacing) -> None:
        self._reader = reader
        self._pacing = pacing
        self._bucket = TokenBucket(pacing.replay_rate)
        self._want = 1
        self.sent_events = 0
        self.sent_alarms = 0

    def expose(self, health: Health) -> None:
        """What was sent, as metrics."""
        health.expose("cgw_uplink_sent_events_total", "events sent to the district", lambda: self.sent_events)
        health.expose("cgw_uplink_sent_alarms_total", "alarms sent to the district", lambda: self.sent_alarms)

    async def run(self, send: Send) -> None:
        """Forward forever; returns only by raising (``UplinkError``) or cancellation.

        Rows read but not yet sent (a routine batch still filling, tokens still missing) are kept
        between rounds, and each round reads only the rows committed since (by sequence number), so
        a live stream is read from the file once instead of on every poll. Whatever makes a kept
        row stale starts over from the file: a new ``run`` (a new connection) and requeued rows.
        """
        pacing = self._pacing
        window = pacing.batch_max_events * pacing.inflight_batches
        next_requeue = time.monotonic()
        kept: list[StoredEvent] = []  # read, still pending, alarms first then by seq
        after = (0, 0)  # the last alarm / routine seq read
        while True:
            raise_if_cancelling()
            if pacing.receipt_timeout is not None and time.monotonic() >= next_requeue:
                now = utc_now()
                alarm_timeout = pacing.alarm_receipt_timeout or pacing.receipt_timeout
                requeued = await self._reader.requeue(now - pacing.receipt_timeout, now - alarm_timeout)
                if requeued:
                    log.warning("uplink_receipts_missing", requeued=requeued)
                    kept, after = [], (0, 0)  # requeued rows sit below the cursors: read afresh
                next_requeue = (
                    time.monotonic() + min(pacing.receipt_timeout, alarm_timeout).total_seconds() / 4
                )
            if len(kept) < window:
                fresh = await self._reader.pending(window - len(kept), after=after)
                if fresh:
                    kept += fresh
                    kept.sort(key=_send_order)
                    after = (
                        max((r.seq for r in fresh if r.alarm), default=after[0]),
                        max((r.seq for r in fresh if not r.alarm), default=after[1]),
                    )
            alarms = [r for r in kept if r.alarm]
            routine = [r for r in kept if not r.alarm]
            ready = self._ready_routine(routine, alarms_waiting=bool(alarms))
            if not alarms and not ready:
                await asyncio.sleep(self._idle_delay(kept))
                continue
            batches = self._batches(alarms) + self._batches(ready)
            await self._send_all(send, batches)  # raises unless every batch went
            kept = routine[len(ready) :]

    def _ready_routine(self, routine: list[StoredEvent], *, alarms_waiting: bool) -> list[StoredEvent]:
        if not routine:
            return []
        pacing = self._pacing
        full = len(routine) >= pacing.batch_max_events
        oldest = datetime.fromisoformat(routine[0].received_at)
        if not full and not alarms_waiting and utc_now() - oldest < pacing.batch_max_delay:
            return []  # let a batch fill, up to the delay
        # Send in chunks the pace allows, rather than a trickle of tiny batches.
        self._want = int(min(pacing.batch_max_events, self._bucket.capacity, len(routine)))
        allowed = self._bucket.available()
        if allowed < self._want:
            return []
        ready = routine[:allowed]
        self._bucket.take(len(ready))
        return ready

    def _idle_delay(self, rows: list[StoredEvent]) -> float:
        if rows:  # routine events are waiting for tokens or for their batch to fill
            return min(self._pacing.poll_s, max(0.001, self._bucket.seconds_until(self._want)))
        return self._pacing.poll_s

    def _batches(self, rows: list[StoredEvent]) -> list[tuple[str, list[StoredEvent]]]:
        by_kind: dict[str, list[StoredEvent]] = {}
        for row in rows:
            by_kind.setdefault(row.kind, []).append(row)
        batches: list[tuple[str, list[StoredEvent]]] = []
        for kind, items in by_kind.items():
            current: list[StoredEvent] = []
            size = 0
            for row in items:
                if current and (
                    len(current) >= self._pacing.batch_max_events
                    or size + len(row.body) > self._pacing.batch_max_bytes
                ):
                    batches.append((kind, current))
                    current, size = [], 0
                current.append(row)
                size += len(row.body)
            if current:
                batches.append((kind, current))
        return batches

    async def _send_all(self, send: Send, batches: list[tuple[str, list[StoredEvent]]]) -> None:
        limit = asyncio.Semaphore(self._pacing.inflight_batches)
        failures: list[BaseException] = []

        async def one(kind: str, rows: list[StoredEvent]) -> None:
            async with limit:
                try:
                    await send(kind, rows)
                except UplinkError as exc:
                    failures.append(exc)
                    return
            ids = [r.event_id for r in rows]
            if self._pacing.receipt_timeout is None:
                await self._reader.delivered(ids)
            else:
                await self._reader.sent(ids)
            self.sent_events += len(rows)
            self.sent_alarms += sum(1 for r in rows if r.alarm)

        async with asyncio.TaskGroup() as tg:
            for kind, rows in batches:
                tg.create_task(one(kind, rows), name=f"uplink-batch-{kind}")
        if failures:
            raise TransportError(f"uplink send failed: {failures[0]}")


def _send_order(row: StoredEvent) -> tuple[bool, int]:
    return (not row.alarm, row.seq)


class MqttUplink:
    """The gateway's connection to the district broker; ``run`` is one connection."""

    def __init__(
        self,
        config: GatewayConfig,
        uplink: MqttUplinkConfig,
        reader: OutboxReader,
        *,
        watchlists: WatchListRegistry | None = None,
        evidence: EvidenceService | None = None,
        commands: CommandService | None = None,
    ) -> None:
        self._config = config
        self._commands = commands  # None: no device takes commands, no orders are read
        self._watchlists = watchlists
        self._evidence = evidence  # None: no evidence requests are read, no pictures sent
        self._uplink = uplink
        self.forwarder = Forwarder(reader, uplink.pacing())
        self._reader = reader
        compound = config.compound
        self._status_topic = status_topic(uplink.topic_prefix, compound.district_id, compound.compound_id)
        self._receipt_topic = receipt_topic(uplink.topic_prefix, compound.district_id, compound.compound_id)
        self._inventory_topic = inventory_topic(
            uplink.topic_prefix, compound.district_id, compound.compound_id
        )
        self.confirmed = 0
        self.refused_publishes = 0  # the broker answered with a failure code (v5), e.g. not authorised
        self.bad_receipts = 0
        self._connected_once = False

    def expose(self, health: Health) -> None:
        """Its metrics: the forwarder's, the evidence service's, and the publishes the broker refused."""
        self.forwarder.expose(health)
        if self._evidence is not None:
            self._evidence.expose(health)
        health.expose(
            "cgw_uplink_publish_refused_total",
            "publishes the district broker refused (MQTT v5 reason code), e.g. not authorised",
            lambda: self.refused_publishes,
        )

    def _status(self, state: str) -> bytes:
        return json.dumps(
            {"state": state, "compound_id": self._config.compound.compound_id, "at": utc_now().isoformat()}
        ).encode()

    async def run(self, on_connected: Callable[[], None]) -> None:
        """Connect, announce, forward until the connection fails (``TransportError``)."""
        up = self._uplink
        broker = up.broker
        compound = self._config.compound
        problem = broker.tls.certificate_problem() if broker.tls else None
        if problem is not None:  # say so instead of a handshake the broker silently drops
            raise TransportError(f"district broker {broker.host}:{broker.port}: {problem}")
        session = MqttSession(
            SessionOptions(
                host=broker.host,
                port=broker.port,
                client_id=up.client_id or f"cgw-up-{compound.compound_id}",
                clean_start=False,
                session_expiry_s=broker.session_expiry_s,
                keepalive_s=broker.keepalive_s,
                tls_context=broker.tls.context() if broker.tls else None,
                username=broker.username,
                password=broker.password.get_secret_value() if broker.password else None,
                will=Will(self._status_topic, self._status("offline"), qos=1, retain=True),
                max_inflight=up.inflight_batches,
            )
        )

        async def publish(topic: str, payload: bytes, *, retain: bool = False) -> None:
            try:
                await session.publish(topic, payload, qos=1, retain=retain)
            except PublishRefusedError as exc:
                # Not sent: the events stay pending and go again after the reconnect backoff.
                self.refused_publishes += 1
                if worth_logging(self.refused_publishes, first=1):  # repeats on every retry
                    log.error(
                        "uplink_publish_refused",
                        topic=exc.topic,
                        reason=exc.reason,
                        hint=self._refusal_hint(),
                        count=self.refused_publishes,
                    )
                raise

        async def send(kind: str, rows: list[StoredEvent]) -> None:
            topic = event_topic(up.topic_prefix, compound.district_id, compound.compound_id, kind)
            payload = encode_batch(compound.district_id, compound.compound_id, [r.body for r in rows])
            try:
                await publish(topic, payload)
            except TransportError as exc:  # a refusal included: the batch stays pending
                raise UplinkError(str(exc)) from exc

        try:
            async with session:
                await self._subscribe(session)
                await publish(self._status_topic, self._status("online"), retain=True)
                await self._publish_inventory(session)
                log.info("uplink_connected", host=broker.host, port=broker.port)
                self._connected_once = True
                on_connected()
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._incoming(session), name="uplink-incoming")
                        if self._evidence is not None:
                            # its own task, one publish at a time: files never hold events back
                            tg.create_task(self._evidence.run(publish), name="uplink-evidence")
                        if self._commands is not None:
                            tg.create_task(self._commands.run_reports(publish), name="uplink-command-reports")
                        await self.forwarder.run(send)
                finally:
                    with contextlib.suppress(TransportError, TimeoutError):
                        async with asyncio.timeout(2):  # a clean stop is not an outage: say so
                            await session.publish(
                                self._status_topic, self._status("stopped"), qos=1, retain=True
                            )
        except* (UplinkError, TransportError) as group:
            refused = any(isinstance(e, PublishRefusedError) for e in group.exceptions)
            hint = (
                " (with TLS: the broker drops a client certificate it does not accept -- check that it is"
                " issued by the district CA and not revoked)"
                if broker.tls is not None
                and broker.tls.cert_file is not None
                and not self._connected_once
                and not refused
                else ""
            )
            raise TransportError(
                f"district broker {broker.host}:{broker.port}: {group.exceptions[0]}{hint}"
            ) from group

    async def _publish_inventory(self, session: MqttSession) -> None:
        """Retain the configured devices for the district's registry, on every connection.

        Every connection, not only the first: a gateway restarted with a changed config replaces
        what the broker holds, and a broker that lost its retained store gets it back. A refusal
        (a district ACL without the inventory rule) is logged and counted, never fatal: events
        must flow whether or not the district keeps a registry.
        """
        try:
            body = encode_inventory(configured_inventory(self._config))
        except ValidationError:
            # a bug (the config passed its own checks): the events must still flow
            log.exception("uplink_inventory_invalid")
            return
        try:
            await session.publish(self._inventory_topic, body, qos=1, retain=True)
        except PublishRefusedError as exc:
            self.refused_publishes += 1
            log.error(
                "uplink_inventory_refused",
                topic=exc.topic,
                reason=exc.reason,
                hint=f"the district broker's ACL must let compound {self._config.compound.compound_id}"
                f" write {self._inventory_topic}",
            )
            return
        log.info("uplink_inventory_published", devices=len(self._config.devices), bytes=len(body))

    async def _subscribe(self, session: MqttSession) -> None:
        """What the district sends this compound: receipts, watch lists, evidence requests, command orders."""
        up = self._uplink
        if up.receipts:
            await session.subscribe(self._receipt_topic, qos=1)
        if self._watchlists is not None:
            # retained: the current version of every list arrives on each (re)connect
            await session.subscribe(
                watchlist_filter(up.topic_prefix, self._config.compound.district_id), qos=1
            )
        if self._evidence is not None:
            await session.subscribe(self._evidence.request_topic, qos=1)
        if self._commands is not None:
            await session.subscribe(self._commands.order_topic, qos=1)

    def _refusal_hint(self) -> str:
        compound = self._config.compound.compound_id
        tls = self._uplink.broker.tls
        name = tls.certificate_name() if tls is not None else None
        if name is not None and name != compound:
            return (
                f"the client certificate is issued to {name!r}, but this gateway is compound {compound}:"
                " the district broker lets a certificate write only its own compound's topics"
            )
        return f"check the district broker's ACL for compound {compound}"

    async def _incoming(self, session: MqttSession) -> None:
        # Receipts are acknowledged on arrival (the session's default): losing one only means the
        # events are sent again after the receipt timeout, and the district store is idempotent.
        # Watch lists are retained: one lost is delivered again on the next connection.
        async for message in session.messages():
            if self._evidence is not None and message.topic == self._evidence.request_topic:
                await self._evidence.receive(message.payload)  # judged and recorded; served by its task
                continue
            if self._commands is not None and message.topic == self._commands.order_topic:
                await self._commands.receive(
                    message.payload
                )  # admitted to the ledger; executed by its workers
                continue
            list_id = watchlist_id(self._uplink.topic_prefix, message.topic)
            if list_id is not None:
                await self._apply_watchlist(list_id, message.payload)
                continue
            try:
                ids = decode_receipt(message.payload)
            except PayloadRejected as exc:
                self.bad_receipts += 1
                if worth_logging(self.bad_receipts, first=1):
                    log.warning(
                        "uplink_bad_receipt",
                        reason=exc.rejection.reason,
                        detail=exc.rejection.detail,
                        count=self.bad_receipts,
                    )
                continue
            self.confirmed += await self._reader.delivered(ids)
        raise UplinkError("district broker closed the receipt stream")

    async def _apply_watchlist(self, list_id: str, body: bytes) -> None:
        if self._watchlists is None:
            return
        # logged and counted by the registry when refused; the held version stays in force
        try:
            # file write with fsync and index build: off the event loop
            await asyncio.to_thread(self._watchlists.apply, body, list_id)
        except WatchListRejected:
            pass
        except Exception:
            # a list the gateway cannot apply must not take down the link that carries its alarms
            # (the retained document would come back on every reconnect)
            self._watchlists.rejected += 1
            log.exception("watchlist_apply_failed", list_id=list_id)


class DirectUplink:
    """Small districts without a broker: the gateway writes straight into the district store.

    No evidence travels this way: the district has no channel to ask the compound, and the
    compound none to send files, so alarm pictures and fetched media stay in the compound.
    """

    def __init__(self, uplink: DirectUplinkConfig, reader: OutboxReader) -> None:
        self._uplink = uplink
        self.forwarder = Forwarder(reader, uplink.pacing())

    def expose(self, health: Health) -> None:
        """Its metrics: the forwarder's."""
        self.forwarder.expose(health)

    async def run(self, on_connected: Callable[[], None]) -> None:
        """Open the store, forward until it fails (``TransportError``)."""
        async with self._uplink.store.build() as store:

            async def send(_: str, rows: list[StoredEvent]) -> None:
                events = [Event.model_validate_json(row.body) for row in rows]
                try:
                    await store.write(events)
                except StoreError as exc:
                    raise UplinkError(str(exc)) from exc

            on_connected()
            await self.forwarder.run(send)


class Uplink(Protocol):
    """One uplink mode at run time: supervised like a transport, with its own metrics."""

    async def run(self, on_connected: Callable[[], None]) -> None:
        """One connection: forward until it fails (``TransportError``)."""
        ...

    def expose(self, health: Health) -> None:
        """Publish its counters as metrics."""
        ...


@dataclass(frozen=True)
class UplinkFactory:
    """Builds the configured uplink (``config.uplink.build(UplinkFactory(...))``)."""

    config: GatewayConfig
    reader: OutboxReader
    watchlists: WatchListRegistry | None = None
    evidence: EvidenceService | None = None
    commands: CommandService | None = None

    def mqtt(self, uplink: MqttUplinkConfig) -> Uplink:
        """Through the district broker, with receipts, watch lists, evidence and commands."""
        return MqttUplink(
            self.config,
            uplink,
            self.reader,
            watchlists=self.watchlists,
            evidence=self.evidence,
            commands=self.commands,
        )

    def direct(self, uplink: DirectUplinkConfig) -> Uplink:
        """Straight into the district store."""
        return DirectUplink(uplink, self.reader)
