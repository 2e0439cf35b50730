"""The district ingester: uplink batches from every compound into the district store.

N ingesters share the load through an MQTT shared subscription (``$share/<group>/...``); each keeps
a persistent session and acknowledges a message only after the store confirmed its events (or,
for a refused event, after its dead letter is durable), so killing an ingester mid-batch loses
nothing: the broker redelivers, and the store is idempotent by event id.

A store that is down, slow, or refusing credentials is retried with capped backoff for as long as
it takes (nothing is acknowledged meanwhile, and the read throttle stops taking more). A store that
refuses a batch as malformed is bisected: the good events are written, the bad one is dead-lettered
with the store's reason.

With ``[city]`` enabled, the objects the city gets of the events (``district.city.objects``, built
in the decoder's thread) go into the city queue in the same commit, after the store confirmed the
events and before the acknowledgement, the store's refusals left out: an
event the district holds is queued for the city too, whatever its age; a redelivered one adds
nothing. An event that cannot become an object is logged and counted, and skipped for the city
only (it is stored all the same).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import structlog

from district.city.config import CityConfig
from district.city.model import CityObject
from district.city.objects import ObjectBuildError, event_objects
from district.city.queue import CityQueue
from district.config import DistrictConfig
from district.health_server import INGESTER_TRANSPORT, serve_ingester_health
from foundation import strict_json
from foundation.backoff import Backoff, BackoffConfig
from foundation.cancellation import raise_if_cancelling
from foundation.errors import PayloadRejected, PublishRefusedError, TransportError
from foundation.events import Event, utc_now
from foundation.fault_switches import FaultSwitch, fault_on
from foundation.health import Health
from foundation.logging import worth_logging
from foundation.mqtt import Message, MqttSession, SessionOptions
from foundation.sqlite_thread import SqliteBacked, transaction
from foundation.supervision import supervise
from foundation.systemd import sd_notify, watchdog, watchdog_interval
from uplink.protocol import STATUS, TopicAddress, decode_batch, encode_receipt, parse_topic, receipt_topic
from uplink.stores import EventStore, RetentionPolicyCheck, RetentionRules, StoreError

log = structlog.get_logger(__name__)

MESSAGES_PER_ROUND = 256
RECEIPT_MAX_IDS = 2000
STORE_RETRY = BackoffConfig(initial_s=0.2, max_s=10.0)
RETENTION_RETRY = BackoffConfig(initial_s=1.0, max_s=60.0)
CITY_QUEUE_RETRY = BackoffConfig(initial_s=0.2, max_s=10.0)


@dataclass(frozen=True)
class IngestLetter:
    """A refused message or event, kept for inspection."""

    topic: str
    compound_id: str | None
    reason: str
    field: str | None
    detail: str
    payload: bytes
    event_id: str | None = None  # set when one event of a batch was refused by the store


@dataclass
class Round:
    """The messages taken in one go, decoded (the session holds what their acknowledgements need)."""

    events: list[Event] = field(default_factory=list)
    letters: list[IngestLetter] = field(default_factory=list)
    statuses: list[tuple[str, str, str | None]] = field(default_factory=list)
    messages: Sequence[Message] = ()
    # with [city]: each event's objects for the city, built with the decoding (off the event loop)
    city_objects: dict[str, list[CityObject]] = field(default_factory=dict)


INGEST_STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, topic TEXT NOT NULL, compound_id TEXT,
    reason TEXT NOT NULL, field TEXT, detail TEXT NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS compound_status (
    compound_id TEXT PRIMARY KEY, state TEXT NOT NULL, reported_at TEXT, received_at TEXT NOT NULL);
"""


class IngestState(SqliteBacked):
    """The ingester's own SQLite file: dead letters and the compounds' last status."""

    def __init__(self, path: Path, keep: int) -> None:
        super().__init__(path, INGEST_STATE_SCHEMA, "ingest-state")
        self._keep = keep

    async def record(
        self, letters: Sequence[IngestLetter], statuses: Sequence[tuple[str, str, str | None]]
    ) -> None:
        """Durably keep dead letters and compound statuses (before the messages are acknowledged)."""
        if not letters and not statuses:
            return
        now = utc_now().isoformat()

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.executemany(
                    "INSERT INTO dead_letters (at, topic, compound_id, reason, field, detail, payload)"
                    " VALUES (?,?,?,?,?,?,?)",
                    [
                        (now, x.topic, x.compound_id, x.reason, x.field, x.detail, x.payload[:65536])
                        for x in letters
                    ],
                )
                db.executemany(
                    "INSERT INTO compound_status VALUES (?,?,?,?) ON CONFLICT (compound_id) DO UPDATE SET"
                    " state=excluded.state, reported_at=excluded.reported_at, received_at=excluded.received_at",
                    [(compound, state, reported, now) for compound, state, reported in statuses],
                )
                db.execute(
                    "DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?",
                    (self._keep,),
                )

        await self._file.call(write)


class Ingester:
    """One ingester: a shared subscription, the store, the dead letters."""

    def __init__(
        self,
        config: DistrictConfig,
        store: EventStore,
        state: IngestState,
        decoder: Executor,
        city_queue: CityQueue | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._state = state
        self._decoder = decoder
        self._city_queue = city_queue
        self._zone = ZoneInfo(config.api.timezone)
        self.city_objects_queued = 0  # new objects this ingester put into the city queue
        self.city_build_failures = 0  # stored events that could not become an object for the city
        self.events_written = 0
        self.messages_acked = 0
        self.messages_received = 0
        # taken into a round on the current connection and not yet acknowledged: the fault tests
        # read it to know that a round is in flight when they kill the ingester
        self.messages_unacked = 0
        self.receipts_sent = 0
        self.receipts_refused = 0  # the broker refused a receipt (v5 reason code), e.g. its ACL
        self.store_write_failures = 0
        self.store_failing = False
        # the store's retention passes count here (``RetentionTally``), batch by batch
        self.events_purged = 0  # deleted by this ingester's retention (embedded store)
        self.hit_crops_purged = 0  # watch-list hits whose face crop this ingester's retention removed
        self.rejected: Counter[str] = Counter()
        self._rejected_by_compound: Counter[tuple[str, str]] = Counter()

    def session_options(self) -> SessionOptions:
        """The persistent, manually acknowledged session on the district broker."""
        broker, ingest = self._config.broker, self._config.ingest
        return SessionOptions(
            host=broker.host,
            port=broker.port,
            client_id=f"ingest-{ingest.name}",
            clean_start=False,
            session_expiry_s=broker.session_expiry_s,
            keepalive_s=broker.keepalive_s,
            tls_context=broker.tls.context() if broker.tls else None,
            username=broker.username,
            password=broker.password.get_secret_value() if broker.password else None,
            receive_maximum=ingest.receive_maximum,
            max_payload_bytes=ingest.max_message_bytes,
            manual_ack=True,
        )

    async def run(self, on_connected: Callable[[], None]) -> None:
        """Connect, subscribe, ingest until the connection fails (``TransportError``)."""
        cfg = self._config
        broker, ingest = cfg.broker, cfg.ingest
        session = MqttSession(self.session_options())
        topic_filter = f"$share/{ingest.group}/{ingest.topic_prefix}/+/+/+"
        try:
            async with session:
                await session.subscribe(topic_filter, qos=1)
                log.info("ingester_connected", host=broker.host, port=broker.port, subscription=topic_filter)
                self.messages_unacked = 0  # the broker redelivers the previous connection's
                on_connected()

                async def commit(decoding: asyncio.Future[Round]) -> None:
                    decoded = await decoding
                    if fault_on(FaultSwitch.INGESTER_ACK_BEFORE_STORE):
                        await self._ack_before_store(session, decoded)
                    stored = await self._ingest(decoded)
                    if ingest.receipts:
                        await self._send_receipts(session, stored)

                # Two stages, so that decoding the next round overlaps the store's write of this one.
                await session.consume(
                    self._decode_round,
                    commit,
                    batch_max=MESSAGES_PER_ROUND,
                    depth=2,
                    acknowledged=self._acknowledged,
                    abandon=_abandon_decoding,
                )
        except* TransportError as group:
            raise TransportError(
                f"district broker {broker.host}:{broker.port}: {group.exceptions[0]}"
            ) from group

    def _decode_round(self, batch: Sequence[Message]) -> asyncio.Future[Round]:
        self.messages_received += len(batch)
        self.messages_unacked += len(batch)
        # A round is up to 256 batches of up to 200 events: decoding it takes seconds under load.
        # On its own thread the event loop keeps answering /metrics, PUBACKs, keepalives and the
        # watchdog meanwhile (the GIL hands the loop a turn every few milliseconds).
        return asyncio.get_running_loop().run_in_executor(self._decoder, self._decode, batch)

    def _decode(self, batch: Sequence[Message]) -> Round:
        decoded = Round(messages=batch)
        for message in batch:
            decode_message(self._config, message.topic, message.payload, decoded)
        city = self._config.city
        if self._city_queue is not None and city is not None:
            # a hit older than [retention] hit_crops_days is stored without its crop: queued so too
            crops_after = utc_now() - timedelta(days=self._config.retention.hit_crops_days)
            decoded.city_objects = {
                event.event_id: self._city_objects(event, city, crops_after) for event in decoded.events
            }
        return decoded

    def _acknowledged(self, batch: Sequence[Message]) -> None:
        self.messages_acked += len(batch)
        self.messages_unacked -= len(batch)

    async def _ack_before_store(self, session: MqttSession, decoded: Round) -> None:
        """Fault switch ``ingester_ack_before_store``: the round is confirmed before it is durable.

        A kill during the store write then loses the round: the broker has its PUBACKs, the gateway
        its receipts. (The PUBACKs go out again after the write, as always; the broker ignores a
        PUBACK for a packet identifier it no longer holds.)
        """
        for message in decoded.messages:
            session.ack(message)
        claimed: dict[str, list[str]] = {}
        for event in decoded.events:
            claimed.setdefault(event.compound_id, []).append(event.event_id)
        if self._config.ingest.receipts:
            await self._send_receipts(session, claimed)

    async def _ingest(self, decoded: Round) -> dict[str, list[str]]:
        """Store a decoded round; returns the stored event ids per compound."""
        events, letters, statuses = decoded.events, decoded.letters, decoded.statuses
        limit = self._config.ingest.batch_max_events
        for start in range(0, len(events), limit):
            letters += await self._write(events[start : start + limit])
        await self._state.record(letters, statuses)
        for letter in letters:
            key = (letter.compound_id or "(unknown)", letter.reason)
            self.rejected[letter.reason] += 1
            self._rejected_by_compound[key] += 1
            count = self._rejected_by_compound[key]
            if worth_logging(count):
                log.warning(
                    "uplink_message_rejected",
                    topic=letter.topic,
                    compound=letter.compound_id,
                    reason=letter.reason,
                    field=letter.field,
                    detail=letter.detail,
                    count=count,
                )
        refused = {letter.event_id for letter in letters if letter.event_id}
        stored: dict[str, list[str]] = {}
        for event in events:
            if event.event_id not in refused:
                stored.setdefault(event.compound_id, []).append(event.event_id)
        if self._city_queue is not None:
            objects = [
                obj
                for event_id, built in decoded.city_objects.items()
                if event_id not in refused
                for obj in built
            ]
            await self._queue_for_city(self._city_queue, objects)
        return stored

    async def _queue_for_city(self, queue: CityQueue, objects: list[CityObject]) -> None:
        """The city's objects of stored events into its queue, retried until the queue takes them.

        Before the round is acknowledged: a queue that cannot be written holds the round back (the
        broker redelivers it; the store ignores the copies), as a failing store does.
        """
        backoff = Backoff(CITY_QUEUE_RETRY)
        failures = 0
        while True:
            try:
                added = await self._add_to_city_queue(queue, objects)
            except sqlite3.Error as exc:
                raise_if_cancelling()
                failures += 1
                if worth_logging(failures, first=1, every=10):
                    log.error("city_queue_write_failed", error=str(exc), objects=len(objects), count=failures)
                await asyncio.sleep(backoff.next_delay())
                continue
            if failures:
                log.info("city_queue_write_recovered", objects=len(objects))
            self.city_objects_queued += added
            return

    def _city_objects(self, event: Event, city: CityConfig, crops_after: datetime) -> list[CityObject]:
        """The objects of one event; none (counted, logged) if it cannot be built. In the decoder's thread."""
        try:
            return event_objects(event, city, self._zone, crops_after=crops_after)
        except ObjectBuildError as exc:
            self._count_build_failure(event, str(exc))
        except Exception as exc:
            # a builder bug costs the city one object, never the ingester (the event is stored)
            log.exception("city_object_builder_error", event_id=event.event_id, kind=event.kind.value)
            self._count_build_failure(event, f"{type(exc).__name__} while building")
        return []

    def _count_build_failure(self, event: Event, reason: str) -> None:
        self.city_build_failures += 1
        if worth_logging(self.city_build_failures, first=10, every=100):
            log.warning(
                "city_object_build_failed",
                event_id=event.event_id,
                kind=event.kind.value,
                compound=event.compound_id,
                reason=reason,
                count=self.city_build_failures,
            )

    async def _add_to_city_queue(self, queue: CityQueue, objects: list[CityObject]) -> int:
        try:
            return await queue.add(objects)
        except ObjectBuildError:
            # an object whose ids found no free serial (the queue refused the round for it): the
            # others one by one, that one counted as not built
            added = 0
            for obj in objects:
                try:
                    added += await queue.add([obj])
                except ObjectBuildError as exc:
                    self.city_build_failures += 1
                    log.warning("city_object_build_failed", source=obj.source, reason=str(exc))
            return added

    async def _send_receipts(self, session: MqttSession, stored: dict[str, list[str]]) -> None:
        # Before the source messages are acknowledged: if a receipt is lost, the gateway sends the
        # events again after its receipt timeout, and the store ignores the copies. A receipt the
        # broker refuses is such a loss: counted and logged, never a reason to stop ingesting.
        prefix, district = self._config.ingest.topic_prefix, self._config.district_id
        for compound, ids in stored.items():
            for start in range(0, len(ids), RECEIPT_MAX_IDS):
                payload = encode_receipt(ids[start : start + RECEIPT_MAX_IDS])
                try:
                    await session.publish(receipt_topic(prefix, district, compound), payload, qos=1)
                    self.receipts_sent += 1
                except PublishRefusedError as exc:
                    self.receipts_refused += 1
                    if worth_logging(self.receipts_refused, first=1):
                        log.error(
                            "receipt_publish_refused",
                            topic=exc.topic,
                            reason=exc.reason,
                            count=self.receipts_refused,
                        )

    async def _write(self, events: list[Event]) -> list[IngestLetter]:
        """Write until the store confirms; bisect batches it refuses as malformed."""
        if not events:
            return []
        backoff = Backoff(STORE_RETRY)
        failing = False
        while True:
            try:
                await self._store.write(events)
            except StoreError as exc:
                raise_if_cancelling()
                if not exc.retryable and exc.status in {400, 413, 422}:
                    return await self._bisect(events, exc)
                self.store_write_failures += 1
                self.store_failing = True
                if not failing:
                    log.error(
                        "store_write_failed", error=str(exc), retryable=exc.retryable, events=len(events)
                    )
                    failing = True
                await asyncio.sleep(backoff.next_delay())
                continue
            if failing:
                log.info("store_write_recovered", events=len(events))
            self.store_failing = False
            self.events_written += len(events)
            return []

    async def enforce_retention(self) -> None:
        """The store's retention (``EventStore.enforce_retention``) at start and every ``check_interval_s``.

        The store knows what it can do: SQLite deletes expired events and strips expired hit crops
        in bounded batches (each holds the write lock that this and the other ingesters' writes wait
        for); InfluxDB 1.x checks its retention policy once and strips the crops by rewriting their
        points. Every committed batch is counted at once (``events_purged``, ``hit_crops_purged``),
        so a pass that fails halfway still counts what it did. A failed pass is retried with capped
        backoff; it runs beside the ingesting, never before it: a store that is down must not keep
        the ingester from its broker.
        """
        retention = self._config.retention
        rules = RetentionRules(
            events_days=retention.events_days,
            hit_crops_days=retention.hit_crops_days,
            batch_rows=retention.purge_batch_rows,
            alter_policy=retention.influx_alter_policy,
            rollup_days=retention.rollup_days,
        )
        backoff = Backoff(RETENTION_RETRY)
        failures = 0
        while True:
            now = utc_now()
            purged, crops = self.events_purged, self.hit_crops_purged
            try:
                done = await self._store.enforce_retention(rules, now, self)
            except StoreError as exc:
                failures += 1
                await _pause_after_store_failure(
                    backoff,
                    failures,
                    "district_retention_failed",
                    exc,
                    purged=self.events_purged - purged,
                    hit_crops_purged=self.hit_crops_purged - crops,
                )
                continue
            backoff.reset()
            failures = 0
            if done.policy is not None:
                _log_policy(done.policy)
            if self.events_purged > purged:
                log.info(
                    "district_events_purged",
                    count=self.events_purged - purged,
                    cutoff=(now - timedelta(days=rules.events_days)).isoformat(),
                )
            if self.hit_crops_purged > crops:
                log.info(
                    "district_hit_crops_purged",
                    count=self.hit_crops_purged - crops,
                    cutoff=(now - timedelta(days=rules.hit_crops_days)).isoformat(),
                )
            await asyncio.sleep(retention.check_interval_s)

    async def _bisect(self, events: list[Event], exc: StoreError) -> list[IngestLetter]:
        if len(events) == 1:
            event = events[0]
            log.warning("store_refused_event", event_id=event.event_id, error=str(exc))
            return [
                IngestLetter(
                    topic=event.kind.value,
                    compound_id=event.compound_id,
                    reason="store_rejected",
                    field=None,
                    detail=str(exc)[:500],
                    payload=event.model_dump_json().encode(),
                    event_id=event.event_id,
                )
            ]
        middle = len(events) // 2
        return await self._write(events[:middle]) + await self._write(events[middle:])


def _abandon_decoding(decoding: asyncio.Future[Round]) -> None:
    # decoding cannot fail (a bad message becomes a dead letter): no exception to consume; a round
    # not yet started is not worth decoding, the broker redelivers it
    decoding.cancel()


def decode_message(config: DistrictConfig, topic: str, body: bytes, into: Round) -> None:
    """One uplink message into ``into``: its events, its gateway status, or dead letters saying why not.

    The compound is the one the topic names (the deployed broker lets a compound's certificate
    write only its own topics); a payload that claims another compound is refused. Never raises.
    """
    compound: str | None = None
    try:
        address = parse_topic(config.ingest.topic_prefix, topic)
        compound = address.compound_id
        _admit(config, address, body)
        if address.channel == STATUS:
            into.statuses.append(_status(address.compound_id, body))
            return
        decoded = decode_batch(address, body)
    except PayloadRejected as exc:
        r = exc.rejection
        into.letters.append(IngestLetter(topic, compound, r.reason, r.field, r.detail, body))
        return
    except Exception as exc:
        # A decoding bug must cost one dead letter, not a crash loop on a redelivered message.
        log.exception("uplink_decoder_error", topic=topic)
        detail = f"{type(exc).__name__} while decoding"
        into.letters.append(IngestLetter(topic, compound, "decoder_error", None, detail, body))
        return
    into.events.extend(decoded.events)
    for index, problem in decoded.rejected:
        r = problem.rejection
        field = f"events[{index}].{r.field}" if r.field else f"events[{index}]"
        into.letters.append(IngestLetter(topic, compound, r.reason, field, r.detail, body))


def _admit(config: DistrictConfig, address: TopicAddress, body: bytes) -> None:
    if address.district_id != config.district_id:
        raise PayloadRejected("foreign_district", f"district {address.district_id} is not ours")
    if len(body) > config.ingest.max_message_bytes:
        raise PayloadRejected("payload_too_large", f"{len(body)} bytes > {config.ingest.max_message_bytes}")


def _status(compound_id: str, body: bytes) -> tuple[str, str, str | None]:
    try:
        document = strict_json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise PayloadRejected("malformed_json", "status is not JSON (or nests too deeply)") from None
    if not isinstance(document, dict):
        raise PayloadRejected("malformed_json", "status must be a JSON object")
    state = document.get("state")
    if state not in {"online", "offline", "stopped"}:
        raise PayloadRejected("bad_field", f"unknown gateway state {str(state)[:40]!r}", field="state")
    at = document.get("at")
    return compound_id, state, at[:64] if isinstance(at, str) else None


def _log_policy(check: RetentionPolicyCheck) -> None:
    """What the store found of its own retention policy (InfluxDB 1.x): a warning if it differs."""
    if check.action in {"differs", "missing"}:
        log.warning(
            "influx_retention_policy_differs",
            policy=check.policy,
            duration=check.found,
            wanted=check.wanted,
            fix="ALTER RETENTION POLICY by hand, or set [retention] influx_alter_policy = true",
        )
    else:
        log.info(
            "influx_retention_policy",
            policy=check.policy,
            action=check.action,
            duration=check.wanted,
            before=check.found,
        )


async def _pause_after_store_failure(
    backoff: Backoff, failures: int, event: str, exc: StoreError, **fields: object
) -> None:
    """Log the ``failures``-th failure of a retention task (sparsely) and wait its backoff delay."""
    raise_if_cancelling()
    delay = backoff.next_delay()
    if worth_logging(failures, first=1, every=10):
        log.error(event, error=str(exc), retry_in_s=round(delay, 2), count=failures, **fields)
    await asyncio.sleep(delay)


async def run_ingester(config: DistrictConfig, *, ready: asyncio.Event | None = None) -> None:
    """Run one ingester until cancelled (with its health server unless ``[ingest] http_port`` is 0)."""
    health = Health()
    async with AsyncExitStack() as stack:
        configured: EventStore = config.store.build()
        store = await stack.enter_async_context(configured)
        state = await stack.enter_async_context(
            IngestState(config.ingest.dead_letter_path, config.ingest.dead_letter_keep)
        )
        # one thread: rounds are decoded one at a time, in arrival order
        decoder = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="ingest-decode"))
        city = config.city
        city_queue = None
        if city is not None and city.enabled:
            city_queue = await stack.enter_async_context(
                CityQueue(
                    city.queue_path,
                    refused_retry_s=city.refused_retry_s,
                    refused_max_attempts=city.refused_max_attempts,
                    privacy=city.privacy,
                )
            )
            # a [city.privacy] made stricter applies to what was queued before (docs/privacy.md)
            deleted, stripped = await city_queue.apply_policy(city.privacy)
            if deleted or stripped:
                log.info("city_queue_policy_applied", deleted=deleted, stripped=stripped)
        ingester = Ingester(config, store, state, decoder, city_queue)
        health.expose(
            "cgw_district_city_objects_queued_total",
            "objects of stored events this ingester added to the city queue (a redelivered event adds none)",
            lambda: ingester.city_objects_queued,
        )
        health.expose(
            "cgw_district_city_build_failures_total",
            "stored events that could not become a GA/T 1400 object (skipped for the city, kept in the store)",
            lambda: ingester.city_build_failures,
        )
        health.expose(
            "cgw_district_hit_crops_purged_total",
            "watch-list hits whose face crop this ingester's retention removed as older than"
            " [retention] hit_crops_days (the event itself stays)",
            lambda: ingester.hit_crops_purged,
        )
        await stack.enter_async_context(serve_ingester_health(config.ingest, health, ingester, store))
        connected = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            if (interval := watchdog_interval()) is not None:
                # alive while the event loop and the state file's thread answer; a store or broker
                # outage is not cured by a restart, so it does not stop the pings
                tg.create_task(
                    watchdog(state.ping, interval, failures=(sqlite3.Error,), what="ingest state file"),
                    name="watchdog",
                )
            tg.create_task(
                supervise(INGESTER_TRANSPORT, ingester.run, Backoff(BackoffConfig()), connected, health),
                name="ingester",
            )
            # beside the ingesting, not before it: a store that is down must not keep the ingester
            # from its broker; a write that names an InfluxDB policy not created yet gets a 500
            # ("retention policy not found") and is retried like any store outage
            tg.create_task(ingester.enforce_retention(), name="retention")
            await connected.wait()
            sd_notify("READY=1")
            if ready is not None:
                ready.set()
