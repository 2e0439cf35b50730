"""The district's evidence desk: asks compounds for evidence and receives what they send.

It runs inside the operator API process (``compound-gateway api``) as named tasks beside the HTTP
server, with its own persistent MQTT session to the district broker (``[evidence]`` client id, QoS
1, clean start off): what compounds send while the desk is down waits at the broker. The API
serves whether or not the broker answers; the desk reconnects with capped backoff, and requests
written meanwhile stay ``pending`` until it can publish them.

Trust: the broker's ACL lets a compound write only its own evidence topics, and the desk checks
what it receives against the topic's compound: an answer must be to a request made of that
compound, and a file or manifest item must be of an event of that compound wherever the district
knows the event (its store, or earlier evidence). Anything else is refused, counted and logged;
nothing a compound sends can crash the desk.

Tasks: ``evidence-session`` (the session: publish pending requests, receive answers, manifests
and chunks), ``evidence-expiry`` (expires unanswered requests, drops stale partial files) and
``evidence-retention`` (``[retention] media_days`` / ``evidence_confirmed_days``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import structlog

from district.config import DistrictConfig
from district.evidence_store import (
    OPEN_STATES,
    ChunkOutcome,
    EvidenceAccess,
    RequestRecord,
    RequestState,
    Transfers,
)
from district.operations import AuditEntry, OperationsDb
from district.query_backends import QueryBackend
from district.query_model import AlarmState, Selection
from foundation.backoff import Backoff, BackoffConfig
from foundation.cancellation import raise_if_cancelling
from foundation.errors import PayloadRejected, PublishRefusedError, TransportError
from foundation.events import utc_now
from foundation.health import Health, MetricFamilies
from foundation.logging import worth_logging
from foundation.mqtt import MqttSession, SessionOptions
from foundation.supervision import supervise, until_first_ends
from uplink.evidence import (
    ANSWER,
    CHUNK,
    AnswerStatus,
    BarrierWindow,
    EventEvidence,
    EvidenceRequest,
    MediaItem,
    decode_answer,
    decode_chunk,
    decode_manifest,
    encode_json,
    evidence_filter,
    parse_evidence_topic,
    request_topic,
)
from uplink.lineprotocol import EPOCH
from uplink.stores import StoreError

log = structlog.get_logger(__name__)

EVIDENCE_TRANSPORT = "evidence_desk"
"""The transport name of the desk's session (``cgw_transport_up{transport="evidence_desk"}``)."""
RECONNECT = BackoffConfig(initial_s=0.5, max_s=30.0)
RETRY = BackoffConfig(initial_s=1.0, max_s=60.0)
POLL_S = 1.0  # how often the desk looks for requests another process (the CLI) wrote
RECEIVE_MAXIMUM = 64
OWNER_CACHE = 10_000
EVENT_LOOKBACK = timedelta(days=400)
ANSWER_STATES = {
    AnswerStatus.SENDING: RequestState.SENDING,
    AnswerStatus.WAITING: RequestState.WAITING,
    AnswerStatus.REFUSED: RequestState.REFUSED,
    AnswerStatus.NOT_FOUND: RequestState.NOT_FOUND,
    AnswerStatus.EXPIRED: RequestState.EXPIRED,
    AnswerStatus.FAILED: RequestState.FAILED,
}
AUDITED_ANSWERS = {
    RequestState.REFUSED: 403,
    RequestState.NOT_FOUND: 404,
    RequestState.FAILED: 502,
    RequestState.EXPIRED: 504,
}
"""A compound's final "no", audited at the district with the HTTP status it maps to."""
FILE_OUTCOMES = ("verified", "hash_mismatch", "rejected")
UNASKED_ROLES = frozenset({"snapshot", "trajectory"})
"""What a compound may send without a request: a critical alarm's pictures (docs/privacy.md)."""


def _ns(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


def evidence_request(record: RequestRecord) -> EvidenceRequest:
    """What the compound receives for a request the index holds."""
    subject: EventEvidence | BarrierWindow
    if record.kind == "barrier_window" and record.device_id and record.since and record.until:
        subject = BarrierWindow(device_id=record.device_id, since=record.since, until=record.until)
    else:
        subject = EventEvidence(event_id=record.event_id or "", roles=record.roles)
    return EvidenceRequest(
        request_id=record.request_id,
        subject=subject,
        operator=record.operator[:64],
        role=record.role,
        reason=record.reason[:256],
        requested_at=record.created_at,
        expires_at=record.expires_at,
    )


class EvidenceDesk:
    """The desk: one MQTT session, the transfers in progress, expiry and retention."""

    def __init__(
        self,
        config: DistrictConfig,
        access: EvidenceAccess,
        backend: QueryBackend,
        operations: OperationsDb,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._config = config
        self._evidence = config.evidence
        self._access = access
        self._index = access.index
        self._backend = backend
        self._ops = operations
        self._clock = clock
        self._transfers = Transfers(access.files, config.evidence.max_transfers)
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._districts = {config.district_id} | {config.compound_district(c) for c in config.compounds}
        self.files: Counter[str] = Counter(dict.fromkeys(FILE_OUTCOMES, 0))
        """Files by outcome: verified, hash_mismatch; and refused evidence messages (rejected)."""
        self.bytes_received = 0
        self.duplicate_chunks = 0
        self.rejected: Counter[str] = Counter()
        self.purged: Counter[str] = Counter({"media": 0, "confirmed_alarm": 0})
        self.requests_published = 0
        self.requests_expired = 0

    # ---- wiring --------------------------------------------------------------------------

    def session_options(self) -> SessionOptions:
        """The desk's persistent session (``[evidence]`` overrides of ``[broker]``)."""
        return self._evidence.session_options(self._config.broker, RECEIVE_MAXIMUM)

    def expose(self, health: Health) -> None:
        """The desk's figures on the API's ``/metrics``."""
        health.expose(
            "cgw_district_evidence_bytes_total",
            "bytes of evidence files received and verified",
            lambda: self.bytes_received,
        )
        health.expose(
            "cgw_district_evidence_duplicate_chunks_total",
            "chunks of files already held (QoS 1 redelivery), ignored",
            lambda: self.duplicate_chunks,
        )

        def write(families: MetricFamilies) -> None:
            families.counter(
                "cgw_district_evidence_files_total",
                "evidence files verified or discarded for a SHA-256 mismatch, and evidence messages refused",
                [({"outcome": o}, n) for o, n in sorted(self.files.items())],
            )
            families.counter(
                "cgw_district_media_purged_total",
                "evidence index rows (and their files) deleted by retention, by class",
                [({"class": c}, n) for c, n in sorted(self.purged.items())],
            )
            families.counter(
                "cgw_district_evidence_rejected_total",
                "evidence messages refused, by reason",
                [({"reason": r}, n) for r, n in sorted(self.rejected.items())],
            )

        async def gather(families: MetricFamilies) -> None:
            try:
                counts = await self._index.state_counts()
            except sqlite3.Error:
                return  # the scrape still answers; the gauge is missing while the index does not
            families.gauge(
                "cgw_district_evidence_requests",
                "evidence requests in the index, by state",
                [({"state": s.value}, float(counts.get(s.value, 0))) for s in RequestState],
            )

        health.writers.append(write)
        health.gatherers.append(gather)

    async def run(self, health: Health | None = None, connected: asyncio.Event | None = None) -> None:
        """Run the session, expiry and retention until cancelled."""
        await self._transfers.clear_leftovers()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                supervise(EVIDENCE_TRANSPORT, self._connect_once, Backoff(RECONNECT), connected, health),
                name="evidence-session",
            )
            tg.create_task(self._expire_periodically(), name="evidence-expiry")
            tg.create_task(self._purge_periodically(), name="evidence-retention")

    # ---- the session ---------------------------------------------------------------------

    async def _connect_once(self, connected: Callable[[], None]) -> None:
        broker = self._config.broker
        session = MqttSession(self.session_options())
        try:
            async with session:
                await session.subscribe(evidence_filter(self._evidence.topic_prefix), qos=1)
                log.info("evidence_desk_connected", host=broker.host, port=broker.port)
                connected()
                # not a TaskGroup: it would leave a cancel request that stops the reconnecting
                await until_first_ends(self._publish_requests(session), self._receive(session))
        except TransportError as exc:
            raise TransportError(f"evidence desk, {broker.host}:{broker.port}: {exc}") from exc
        except (sqlite3.Error, OSError) as exc:
            # the index or the media directory failed: reconnect later; unacknowledged messages come again
            raise TransportError(f"evidence desk storage: {exc}") from exc

    async def _publish_requests(self, session: MqttSession) -> None:
        while True:
            self._access.new_request.clear()
            for record in await self._index.unpublished(self._clock()):
                await self._publish(session, record)
            try:
                async with asyncio.timeout(POLL_S):
                    await self._access.new_request.wait()
            except TimeoutError:
                raise_if_cancelling()

    async def _publish(self, session: MqttSession, record: RequestRecord) -> None:
        topic = request_topic(self._evidence.topic_prefix, record.district_id, record.compound_id)
        try:
            await session.publish(topic, encode_json(evidence_request(record)), qos=1)
        except PublishRefusedError as exc:
            await self._index.fail_request(
                record.request_id, f"the district broker refused it: {exc.reason}", self._clock()
            )
            log.error("evidence_request_refused_by_broker", request_id=record.request_id, reason=exc.reason)
            return
        await self._index.mark_published(record.request_id, self._clock())
        self.requests_published += 1
        log.info(
            "evidence_request_sent",
            request_id=record.request_id,
            compound=record.compound_id,
            kind=record.kind,
        )

    async def _receive(self, session: MqttSession) -> None:
        async for message in session.messages():
            await self.handle(message.topic, message.payload)
            session.ack(message)  # after the chunk is on disk and the index row committed
        raise TransportError("the broker closed the message stream")

    # ---- what compounds send -------------------------------------------------------------

    async def handle(self, topic: str, payload: bytes) -> None:
        """One evidence message; a bad one is refused, counted and logged, never raised.

        Index and disk failures (``sqlite3.Error``, ``OSError``) do raise: the message stays
        unacknowledged and comes again once the session is back.
        """
        compound: str | None = None
        try:
            address = parse_evidence_topic(self._evidence.topic_prefix, topic)
            compound = address.compound_id
            self._admit(address.district_id)
            if address.what == ANSWER:
                await self._on_answer(address.district_id, compound, payload)
            elif address.what == CHUNK:
                await self._on_chunk(address.district_id, compound, payload)
            else:
                await self._on_manifest(address.district_id, compound, payload)
        except PayloadRejected as exc:
            self._refused(topic, compound, exc)
        except (sqlite3.Error, OSError):
            raise
        except Exception:
            # a bug must cost one message, not a crash loop on its redelivery
            log.exception("evidence_message_error", topic=topic)
            self.files["rejected"] += 1
            self.rejected["desk_error"] += 1

    def _admit(self, district_id: str) -> None:
        if district_id not in self._districts:
            raise PayloadRejected("foreign_district", f"district {district_id} is not ours")

    def _refused(self, topic: str, compound: str | None, exc: PayloadRejected) -> None:
        reason = exc.rejection.reason
        self.files["rejected"] += 1
        self.rejected[reason] += 1
        if worth_logging(self.rejected[reason]):
            log.warning(
                "evidence_message_rejected",
                topic=topic[:200],
                compound=compound,
                reason=reason,
                field=exc.rejection.field,
                detail=exc.rejection.detail,
                count=self.rejected[reason],
            )

    async def _owner(self, district_id: str, event_id: str) -> str | None:
        """The compound an event belongs to, where the district knows it (store, then evidence index)."""
        if (known := self._owners.get(event_id)) is not None:
            self._owners.move_to_end(event_id)
            return known
        now = self._clock()
        selection = Selection(
            district_id=district_id,
            compounds=None,
            start_ns=_ns(now - EVENT_LOOKBACK),
            end_ns=_ns(now + timedelta(minutes=5)),
            event_id=event_id,
        )
        try:
            found = await self._backend.find(selection, newest_first=True, limit=1, cursor_ns=None)
        except StoreError:
            found = []  # the store is down: the index's word still counts
        owner = found[0].compound_id if found else await self._index.event_compound(event_id)
        if owner is not None:
            self._owners[event_id] = owner
            if len(self._owners) > OWNER_CACHE:
                self._owners.popitem(last=False)
        return owner

    async def _check_items(self, district_id: str, compound: str, items: tuple[MediaItem, ...]) -> None:
        for item in items:
            owner = await self._owner(district_id, item.event_id)
            if owner is not None and owner != compound:
                raise PayloadRejected(
                    "foreign_event",
                    f"event {item.event_id} belongs to compound {owner}, not the sender {compound}",
                    field="item.event_id",
                )

    async def _own_request(self, compound: str, request_id: str) -> RequestRecord:
        record = await self._index.request(request_id)
        if record is None:
            raise PayloadRejected("unknown_request", f"no request {request_id}", field="request_id")
        if record.compound_id != compound:
            raise PayloadRejected(
                "foreign_request", f"request {request_id} was made of another compound", field="request_id"
            )
        return record

    async def _on_answer(self, district_id: str, compound: str, payload: bytes) -> None:
        answer = decode_answer(payload)
        record = await self._own_request(compound, answer.request_id)
        if record.kind == "event" and any(item.event_id != record.event_id for item in answer.items):
            raise PayloadRejected("foreign_event", "the answer lists files of another event", field="items")
        await self._check_items(district_id, compound, answer.items)
        updated = await self._index.apply_answer(
            answer.request_id,
            ANSWER_STATES[answer.status],
            rule=answer.rule,
            detail=answer.detail,
            items=answer.items,
            compound_id=compound,
            now=self._clock(),
        )
        log.info(
            "evidence_answer",
            request_id=answer.request_id,
            compound=compound,
            status=answer.status.value,
            state=updated.state.value if updated else None,
            rule=answer.rule,
            items=len(answer.items),
        )
        if updated is not None and record.state in OPEN_STATES and updated.state in AUDITED_ANSWERS:
            # the compound's "no" belongs in the district's audit log too, beside the request it ends
            await self._ops.audit(
                AuditEntry(
                    actor=record.operator,
                    role=record.role,
                    channel="evidence",
                    client=f"compound:{compound}",
                    action="evidence_answer",
                    filters={
                        "request_id": record.request_id,
                        "event_id": record.event_id,
                        "device_id": record.device_id,
                    },
                    outcome=updated.state.value,
                    status=AUDITED_ANSWERS[updated.state],
                    reason=record.reason,
                    detail=f"rule {updated.rule}: {updated.detail}" if updated.rule else updated.detail,
                )
            )

    async def _on_manifest(self, district_id: str, compound: str, payload: bytes) -> None:
        manifest = decode_manifest(payload)
        await self._check_items(district_id, compound, manifest.items)
        await self._index.record_manifest(manifest.items, compound, "manifest", self._clock())

    async def _on_chunk(self, district_id: str, compound: str, payload: bytes) -> None:
        header, data = decode_chunk(payload)
        item = header.item
        await self._check_items(district_id, compound, (item,))
        if header.request_id is not None:
            await self._own_request(compound, header.request_id)
        elif item.role not in UNASKED_ROLES:
            # the compound's policy sends only these unasked; anything else is not kept on its word
            raise PayloadRejected(
                "unasked_role", f"a {item.role} file sent without a request is not kept", field="item.role"
            )
        if await self._access.files.exists(item.sha256):
            # held already (verified when it was kept): a redelivered chunk, or the same file again
            await self._index.add_media(item, compound, header.request_id, self._clock())
            self.duplicate_chunks += 1
            return
        outcome, _ = await self._transfers.receive(compound, header, data)
        if outcome is ChunkOutcome.PARTIAL:
            return
        if outcome is ChunkOutcome.HASH_MISMATCH:
            self.files["hash_mismatch"] += 1
            detail = f"{item.role} file of event {item.event_id} did not match its SHA-256 {item.sha256[:16]}...; discarded"
            log.warning(
                "evidence_hash_mismatch",
                compound=compound,
                event_id=item.event_id,
                role=item.role,
                request_id=header.request_id,
            )
            if header.request_id is not None:
                await self._index.fail_request(header.request_id, detail, self._clock())
            return
        updated = await self._index.add_media(item, compound, header.request_id, self._clock())
        self.files["verified"] += 1
        self.bytes_received += item.size
        log.info(
            "evidence_file_verified",
            compound=compound,
            event_id=item.event_id,
            role=item.role,
            size=item.size,
            request_id=header.request_id,
            request_state=updated.state.value if updated else None,
        )

    # ---- expiry and retention ------------------------------------------------------------

    async def expire_once(self) -> int:
        """Expire overdue requests and drop stale partial files; returns the requests expired."""
        ttl = timedelta(seconds=self._evidence.request_ttl_s)
        expired = await self._index.expire_requests(self._clock(), sending_grace=ttl)
        if expired:
            self.requests_expired += expired
            log.info("evidence_requests_expired", count=expired)
        for transfer in await self._transfers.drop_stale(self._evidence.transfer_stale_s):
            log.warning(
                "evidence_transfer_abandoned",
                compound=transfer.compound_id,
                event_id=transfer.item.event_id,
                chunks=len(transfer.spans),
                of=transfer.count,
            )
        return expired

    async def purge_once(self) -> dict[str, int]:
        """Delete media past retention (confirmed alarms' later), their files and old requests."""
        retention = self._config.retention
        now = self._clock()
        media_cutoff = now - timedelta(days=retention.media_days)
        confirmed_cutoff = now - timedelta(days=retention.evidence_confirmed_days)
        candidates = await self._index.purge_candidates(max(media_cutoff, confirmed_cutoff))
        histories = await self._ops.alarm_histories(candidates)
        confirmed = frozenset(
            event for event, steps in histories.items() if any(s.state is AlarmState.CONFIRMED for s in steps)
        )
        rows, orphans, requests = await self._index.purge(media_cutoff, confirmed_cutoff, confirmed)
        files = await self._access.files.remove(orphans)
        await self._index.files_removed(orphans)
        self.purged.update(rows)
        if files or requests or any(rows.values()):
            log.info("evidence_purged", rows=rows, files=files, requests=requests)
        return rows

    async def _expire_periodically(self) -> None:
        interval = max(0.5, min(5.0, self._evidence.request_ttl_s / 4))
        await self._periodically(self.expire_once, interval, "evidence_expiry_failed")

    async def _purge_periodically(self) -> None:
        await self._periodically(
            self.purge_once, self._config.retention.check_interval_s, "evidence_purge_failed"
        )

    async def _periodically(self, work: Callable[[], Awaitable[object]], interval: float, event: str) -> None:
        backoff = Backoff(RETRY)
        failures = 0
        while True:
            try:
                await work()
            except (sqlite3.Error, OSError) as exc:
                raise_if_cancelling()
                failures += 1
                delay = backoff.next_delay()
                if worth_logging(failures, first=1, every=10):
                    log.error(event, error=str(exc), retry_in_s=round(delay, 2), count=failures)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            failures = 0
            await asyncio.sleep(interval)
