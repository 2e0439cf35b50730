"""The compound's evidence service on the real uplink session, a real Mosquitto as the district broker.

The test plays the district's evidence desk with ``uplink/evidence.py``'s codec: it publishes
requests on the compound's request topic, collects answers, manifests and chunks, and reassembles
each file (SHA-256 against the bytes on disk). The catalog is an in-memory ``EvidenceCatalog`` over
real files; the audit is the real SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

from device_sims.broker import Mosquitto
from device_sims.inventory import write_sample_config
from foundation.errors import TransportError
from foundation.events import EbikeShedPayload, Event, EventKind, Provenance, Severity, ShedCondition
from foundation.health import MetricFamilies
from foundation.mqtt import MqttSession, SessionOptions
from gateway.config import (
    EvidenceConfig,
    EvidenceServiceConfig,
    GatewayConfig,
    MqttUplinkConfig,
    load_config,
)
from gateway.evidence_catalog import DeviceFetch, EventMedia, FetchState, Outgoing, StoredMedia
from gateway.evidence_service import EvidenceAudit, EvidenceService, OpenRequest
from gateway.forwarder import MqttUplink
from gateway.outbox import EventRow, Outbox, OutboxReader, StoreEvents
from uplink.config import BrokerConfig
from uplink.evidence import (
    AnswerStatus,
    BarrierWindow,
    ChunkHeader,
    EventEvidence,
    EvidenceAnswer,
    EvidenceRequest,
    MediaItem,
    MediaManifest,
    MediaRole,
    decode_answer,
    decode_chunk,
    decode_manifest,
    encode_json,
    evidence_filter,
    request_topic,
)
from uplink.protocol import DEFAULT_PREFIX, event_topic

CHUNK = 16 * 1024
NOW = datetime.now(UTC)
_ids = count(1)


# --- the compound's side: files, an in-memory catalog ----------------------------------------------


def media_file(directory: Path, event_id: str, role: MediaRole, size: int) -> StoredMedia:
    """A file of random bytes and its catalog entry."""
    data = random.Random(f"{event_id}{role}").randbytes(size)
    path = directory / f"{event_id}-{role}.jpg"
    path.write_bytes(data)
    item = MediaItem(
        event_id=event_id,
        role=role,
        sha256=hashlib.sha256(data).hexdigest(),
        size=size,
        content_type="image/jpeg",
        occurred_at=NOW,
    )
    return StoredMedia(item=item, path=path)


def event_media(
    event_id: str,
    kind: EventKind,
    device_id: str,
    dialect: str,
    stored: Sequence[StoredMedia],
    *,
    severity: Severity = Severity.CRITICAL,
    occurred_at: datetime = NOW,
    fetches: Sequence[DeviceFetch] = (),
) -> EventMedia:
    return EventMedia(
        event_id=event_id,
        kind=kind,
        device_id=device_id,
        dialect=dialect,
        severity=severity,
        occurred_at=occurred_at,
        stored=tuple(stored),
        fetches=tuple(fetches),
    )


@dataclass
class MemoryCatalog:
    """An ``EvidenceCatalog`` over a dict, recording what the service marked."""

    events: dict[str, EventMedia] = field(default_factory=dict)
    proactive: list[Outgoing] = field(default_factory=list)
    manifests: list[Outgoing] = field(default_factory=list)
    proactive_marked: list[int] = field(default_factory=list)
    manifest_marked: list[int] = field(default_factory=list)

    async def event_media(self, event_id: str) -> EventMedia | None:
        return self.events.get(event_id)

    async def window_media(
        self, device_id: str, since: datetime, until: datetime, limit: int
    ) -> Sequence[EventMedia]:
        found = [
            e for e in self.events.values() if e.device_id == device_id and since <= e.occurred_at < until
        ]
        return sorted(found, key=lambda e: e.occurred_at)[:limit]

    async def proactive_pending(self, limit: int) -> Sequence[Outgoing]:
        return [o for o in self.proactive if o.key not in self.proactive_marked][:limit]

    async def proactive_sent(self, keys: Sequence[int]) -> None:
        self.proactive_marked += keys

    async def manifest_pending(self, limit: int) -> Sequence[Outgoing]:
        return [o for o in self.manifests if o.key not in self.manifest_marked][:limit]

    async def manifest_sent(self, keys: Sequence[int]) -> None:
        self.manifest_marked += keys


# --- the district's side: the evidence desk ---------------------------------------------------------


@dataclass
class Desk:
    """The district's evidence desk: everything the compound sent, in arrival order."""

    port: int
    answers: list[EvidenceAnswer] = field(default_factory=list)
    manifests: list[MediaManifest] = field(default_factory=list)
    chunks: list[tuple[ChunkHeader, bytes]] = field(default_factory=list)
    arrivals: list[tuple[str, str | None, str]] = field(default_factory=list)  # (what, request, sha)

    async def run(self) -> None:
        """Collect, reconnecting when the broker goes away."""
        options = SessionOptions(host="127.0.0.1", port=self.port, client_id="district-evidence-desk")
        while True:
            try:
                async with MqttSession(options) as session:
                    await session.subscribe(evidence_filter(DEFAULT_PREFIX), qos=1)
                    await session.subscribe(f"{DEFAULT_PREFIX}/+/+/+", qos=1)  # the events, as ingesters do
                    async for message in session.messages():
                        self._take(message.topic, message.payload)
            except TransportError:
                await asyncio.sleep(0.1)

    def _take(self, topic: str, payload: bytes) -> None:
        if "/evidence/" not in topic:
            self.arrivals.append(("events", None, topic))
        elif topic.endswith("/answer"):
            answer = decode_answer(payload)
            self.answers.append(answer)
            self.arrivals.append(("answer", answer.request_id, answer.status.value))
        elif topic.endswith("/manifest"):
            self.manifests.append(decode_manifest(payload))
        else:
            header, data = decode_chunk(payload)
            self.chunks.append((header, data))
            self.arrivals.append(("chunk", header.request_id, header.item.sha256))

    def answers_to(self, request_id: str) -> list[EvidenceAnswer]:
        return [a for a in self.answers if a.request_id == request_id]

    def file(self, request_id: str | None, item: MediaItem) -> bytes | None:
        """The file reassembled from its chunks (any order, repeats), or None while incomplete."""
        parts = {
            h.index: (h.offset, d, h.count)
            for h, d in self.chunks
            if h.request_id == request_id and h.item == item
        }
        if not parts or len(parts) != next(iter(parts.values()))[2]:
            return None
        body = b"".join(d for _, d, _ in sorted(parts.values(), key=lambda p: p[0]))
        return body if len(body) == item.size else None


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the gateway ------------------------------------------------------------------------------------


@dataclass
class Compound:
    """One gateway's configuration, catalog and audit path, and what it takes to run its uplink."""

    config: GatewayConfig
    uplink: MqttUplinkConfig
    catalog: MemoryCatalog
    audit_path: Path
    files: Path

    @property
    def compound_id(self) -> str:
        return self.config.compound.compound_id

    def device(self, dialect: str) -> str:
        return next(d.id for d in self.config.devices if d.dialect == dialect)

    def request(
        self,
        subject: EventEvidence | BarrierWindow,
        *,
        role: str = "operator",
        reason: str = "case 2026-114: window broken at block 7",
        expires_in: timedelta = timedelta(hours=1),
        request_id: str | None = None,
    ) -> EvidenceRequest:
        now = datetime.now(UTC)
        return EvidenceRequest(
            request_id=request_id or f"req-{next(_ids):08d}",
            subject=subject,
            operator="officer-wang",
            role=role,
            reason=reason,
            requested_at=now,
            expires_at=now + expires_in,
        )

    async def ask(self, request: EvidenceRequest | bytes) -> None:
        """Publish a request as the district's evidence desk does."""
        options = SessionOptions(
            host="127.0.0.1", port=self.uplink.broker.port, client_id=f"asker-{next(_ids)}"
        )
        body = request if isinstance(request, bytes) else encode_json(request)
        topic = request_topic(DEFAULT_PREFIX, self.config.compound.district_id, self.compound_id)
        async with MqttSession(options) as session:
            await session.publish(topic, body, qos=1)

    def audit_rows(self, what: str) -> set[tuple[str, str, str | None]]:
        with contextlib.closing(sqlite3.connect(self.audit_path)) as db:
            rows = db.execute(
                "SELECT request_id, decision, rule FROM evidence_audit WHERE what = ?", (what,)
            ).fetchall()
        return {(r, d, rule) for r, d, rule in rows}


def compound(tmp_path: Path, broker: Mosquitto, **serve: float) -> Compound:
    path = write_sample_config(tmp_path / "g.toml", state_dir=tmp_path / "state", http_port=1, mqtt_port=2)
    settings = {"chunk_bytes": CHUNK, "recheck_s": 0.1, "poll_s": 0.05, "barrier_window_max_s": 600, **serve}
    config = load_config(path).model_copy(
        update={"evidence": EvidenceConfig(serve=EvidenceServiceConfig.model_validate(settings))}
    )
    uplink = MqttUplinkConfig(broker=BrokerConfig(port=broker.port), receipts=False)
    files = tmp_path / "media"
    files.mkdir()
    return Compound(config, uplink, MemoryCatalog(), config.state.dir / "evidence.db", files)


@dataclass
class Running:
    service: EvidenceService
    connected: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def gateway(c: Compound) -> AsyncIterator[Running]:
    """The gateway's uplink with its evidence service, reconnecting as the supervisor would."""
    async with (
        OutboxReader(c.config.state.dir / "outbox.db", max_bytes=1 << 24) as reader,
        EvidenceAudit(c.audit_path) as audit,
    ):
        service = EvidenceService(c.config, c.uplink.topic_prefix, c.catalog, audit)
        uplink = MqttUplink(c.config, c.uplink, reader, evidence=service)
        connected = asyncio.Event()

        async def supervised() -> None:
            while True:
                with contextlib.suppress(TransportError):
                    await uplink.run(connected.set)
                connected.clear()
                await asyncio.sleep(0.1)

        task = asyncio.create_task(supervised(), name="test-uplink")
        try:
            await until(connected.is_set)
            yield Running(service, connected, task)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def desk(broker: Mosquitto) -> AsyncIterator[Desk]:
    d = Desk(broker.port)
    task = asyncio.create_task(d.run(), name="test-desk")
    try:
        await asyncio.sleep(0.3)  # subscribed
        yield d
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def metrics(service: EvidenceService) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = MetricFamilies()
    service.write_metrics(families)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families.metrics
        for s in family.samples
    }


# --- tests ------------------------------------------------------------------------------------------


async def test_alarm_request_is_answered_and_each_file_reassembles(
    tmp_path: Path, open_mosquitto: Mosquitto
) -> None:
    """An operator asks for a thrown object's media: SENDING with its alarm pictures, never its face.

    Broken on purpose: sending every stored file instead of the allowed roles puts the face in the
    items (exact set compared); reading ``chunk_bytes`` past the span corrupts the SHA-256.
    """
    c = compound(tmp_path, open_mosquitto)
    cam = c.device("hightoss-mqtt")
    event_id = "evt-thrown-000001"
    snapshot = media_file(c.files, event_id, "snapshot", 5 * CHUNK + 123)
    trajectory = media_file(c.files, event_id, "trajectory", CHUNK)
    face = media_file(c.files, event_id, "face", 2000)
    c.catalog.events[event_id] = event_media(
        event_id, EventKind.THROWN_OBJECT, cam, "hightoss-mqtt", [snapshot, trajectory, face]
    )
    async with desk(open_mosquitto) as district, gateway(c) as gw:
        request = c.request(EventEvidence(event_id=event_id))
        await c.ask(request)
        await until(lambda: any(a.status == "sending" for a in district.answers_to(request.request_id)))
        (answer,) = district.answers_to(request.request_id)
        assert (answer.status, answer.rule) == ("sending", "alarm_evidence")
        assert set(answer.items) == {snapshot.item, trajectory.item}
        await until(lambda: all(district.file(request.request_id, m.item) for m in (snapshot, trajectory)))
        for media in (snapshot, trajectory):
            body = district.file(request.request_id, media.item)
            assert body is not None
            assert hashlib.sha256(body).hexdigest() == sha_of(media.path)
        await until(lambda: gw.service.open == 0)
        figures = metrics(gw.service)
    assert c.audit_rows("decided") == {(request.request_id, "allowed", "alarm_evidence")}
    assert c.audit_rows("answered") == {(request.request_id, "sending", "alarm_evidence")}
    assert not [h for h, _ in district.chunks if h.item == face.item]
    assert (
        figures[("cgw_evidence_requests_total", (("decision", "allowed"), ("rule", "alarm_evidence")))] == 1
    )
    assert figures[("cgw_evidence_files_sent_total", (("why", "request"),))] == 2
    assert figures[("cgw_evidence_bytes_sent_total", ())] == snapshot.item.size + trajectory.item.size
    assert figures[("cgw_evidence_requests_open", ())] == 0


async def test_refusals_expiry_and_bad_requests_are_answered_and_audited(
    tmp_path: Path, open_mosquitto: Mosquitto
) -> None:
    """Every refusal is answered with its rule, no refused byte leaves, the audit holds each decision.

    Face gate -> REFUSED face_gate_never; a too-long barrier window -> REFUSED barrier_window; an
    expired request -> EXPIRED; a viewer -> role_required; unknown event -> NOT_FOUND; garbage counted.

    Broken on purpose: skipping the expiry check in ``_judge`` answers the expired request SENDING;
    dropping the audit insert leaves the decided set empty.
    """
    c = compound(tmp_path, open_mosquitto)
    gate, lpr, cam = c.device("uface-mqtt"), c.device("vz-lpr-mqtt"), c.device("hightoss-mqtt")
    face_event, alarm = "evt-face-0000001", "evt-thrown-000002"
    c.catalog.events[face_event] = event_media(
        face_event, EventKind.FACE_ACCESS, gate, "uface-mqtt",
        [media_file(c.files, face_event, "face", 3000), media_file(c.files, face_event, "scene", 9000)],
        severity=Severity.INFO,
    )  # fmt: skip
    c.catalog.events[alarm] = event_media(
        alarm, EventKind.THROWN_OBJECT, cam, "hightoss-mqtt", [media_file(c.files, alarm, "snapshot", 4000)]
    )
    long_window = BarrierWindow(device_id=lpr, since=NOW - timedelta(hours=2), until=NOW)
    requests = {
        "face": c.request(EventEvidence(event_id=face_event)),
        "window": c.request(long_window),
        "expired": c.request(EventEvidence(event_id=alarm), expires_in=timedelta(seconds=-1)),
        "viewer": c.request(EventEvidence(event_id=alarm), role="viewer"),
        "unknown": c.request(EventEvidence(event_id="evt-nowhere-00001")),
    }
    async with desk(open_mosquitto) as district, gateway(c) as gw:
        await c.ask(b"{not json")
        await c.ask(b'{"v": 1, "request_id": "short"}')
        for request in requests.values():
            await c.ask(request)
        await until(lambda: all(district.answers_to(r.request_id) for r in requests.values()))
        await until(lambda: gw.service.open == 0)
        bad = gw.service.bad_requests
    answered = {
        name: [(a.status.value, a.rule) for a in district.answers_to(r.request_id)]
        for name, r in requests.items()
    }
    assert answered == {
        "face": [("refused", "face_gate_never")],
        "window": [("refused", "barrier_window")],
        "expired": [("expired", None)],
        "viewer": [("refused", "role_required")],
        "unknown": [("not_found", None)],
    }
    assert district.chunks == []
    assert bad == 2
    ids = {name: r.request_id for name, r in requests.items()}
    assert c.audit_rows("decided") == {
        (ids["face"], "refused", "face_gate_never"),
        (ids["window"], "refused", "barrier_window"),
        (ids["expired"], "expired", None),
        (ids["viewer"], "refused", "role_required"),
        (ids["unknown"], "not_found", None),
    }
    with contextlib.closing(sqlite3.connect(c.audit_path)) as db:
        operators = {r for (r,) in db.execute("SELECT DISTINCT operator FROM evidence_audit")}
        try:
            db.execute("UPDATE evidence_audit SET decision = 'allowed'")
        except sqlite3.IntegrityError as exc:
            refused_update = str(exc)
        else:
            refused_update = ""
    assert operators == {"officer-wang"}
    assert "append-only" in refused_update


async def test_barrier_window_sends_plate_and_scene_of_one_camera_in_the_window(
    tmp_path: Path, open_mosquitto: Mosquitto
) -> None:
    """Only the window's vehicle passes of that camera, only plate and scene.

    Broken on purpose: dropping the role filter adds the faces, dropping the kind filter adds the
    watch hit's plate to the exact item set.
    """
    c = compound(tmp_path, open_mosquitto)
    lpr, anpr = c.device("vz-lpr-mqtt"), c.device("hik-isapi-anpr")
    inside: list[StoredMedia] = []
    for n, minutes in enumerate((-9, -5, 3)):
        event_id = f"evt-car-{n:08d}"
        stored = [media_file(c.files, event_id, role, 3000 + n) for role in ("plate", "scene", "face")]
        c.catalog.events[event_id] = event_media(
            event_id, EventKind.VEHICLE_PASS, lpr, "vz-lpr-mqtt", stored,
            severity=Severity.INFO, occurred_at=NOW + timedelta(minutes=minutes),
        )  # fmt: skip
        if minutes < 0:
            inside += stored[:2]
    other = "evt-car-other001"
    c.catalog.events[other] = event_media(
        other, EventKind.VEHICLE_PASS, anpr, "hik-isapi-anpr", [media_file(c.files, other, "plate", 500)],
        severity=Severity.INFO, occurred_at=NOW - timedelta(minutes=1),
    )  # fmt: skip
    hit = "evt-carhit-000001"  # a watch hit on the same camera: not a vehicle pass
    c.catalog.events[hit] = event_media(
        hit, EventKind.VEHICLE_WATCH_HIT, lpr, "vz-lpr-mqtt", [media_file(c.files, hit, "plate", 700)],
        occurred_at=NOW - timedelta(minutes=2),
    )  # fmt: skip
    request = c.request(BarrierWindow(device_id=lpr, since=NOW - timedelta(minutes=10), until=NOW))
    async with desk(open_mosquitto) as district, gateway(c):
        await c.ask(request)
        await until(lambda: bool(district.answers_to(request.request_id)))
        (answer,) = district.answers_to(request.request_id)
        assert (answer.status, answer.rule) == ("sending", "barrier_window")
        assert set(answer.items) == {m.item for m in inside}
        await until(lambda: all(district.file(request.request_id, m.item) is not None for m in inside))
    assert {h.item for h, _ in district.chunks} == {m.item for m in inside}


async def test_waiting_then_sending_when_the_fetch_lands(tmp_path: Path, open_mosquitto: Mosquitto) -> None:
    """Allowed but still fetching: WAITING once, then SENDING when the catalog says fetched.

    Broken on purpose: answering from what is stored without looking at pending fetches answers
    NOT_FOUND at once; not re-checking (no ``_next_check`` expiry) leaves it WAITING forever.
    """
    c = compound(tmp_path, open_mosquitto)
    shed = c.device("shed-mqtt")
    event_id = "evt-fire-00000001"
    pending = (DeviceFetch("snapshot", FetchState.PENDING),)
    c.catalog.events[event_id] = event_media(
        event_id, EventKind.EBIKE_SHED, shed, "shed-mqtt", [], fetches=pending
    )
    request = c.request(EventEvidence(event_id=event_id))
    async with desk(open_mosquitto) as district, gateway(c) as gw:
        await c.ask(request)
        await until(lambda: bool(district.answers_to(request.request_id)))
        await asyncio.sleep(0.5)  # several re-checks: still one WAITING answer
        assert [a.status for a in district.answers_to(request.request_id)] == ["waiting"]
        assert gw.service.open == 1
        snapshot = media_file(c.files, event_id, "snapshot", 3 * CHUNK)
        c.catalog.events[event_id] = replace(
            c.catalog.events[event_id],
            stored=(snapshot,),
            fetches=(DeviceFetch("snapshot", FetchState.FETCHED),),
        )
        await until(lambda: district.file(request.request_id, snapshot.item) is not None)
        assert [a.status for a in district.answers_to(request.request_id)] == ["waiting", "sending"]
        # and a fetch that gives up is FAILED with why
        failing = "evt-fire-00000002"
        c.catalog.events[failing] = event_media(
            failing, EventKind.EBIKE_SHED, shed, "shed-mqtt", [], fetches=pending
        )
        second = c.request(EventEvidence(event_id=failing))
        await c.ask(second)
        await until(lambda: bool(district.answers_to(second.request_id)))
        c.catalog.events[failing] = replace(
            c.catalog.events[failing], fetches=(DeviceFetch("snapshot", FetchState.FAILED, "device offline"),)
        )
        await until(lambda: len(district.answers_to(second.request_id)) == 2)
        # the answer is recorded after its PUBACK: leaving at once could cut the gateway before that
        await until(lambda: (second.request_id, "failed", "alarm_evidence") in c.audit_rows("answered"))
    assert [(a.status.value, a.detail) for a in district.answers_to(second.request_id)] == [
        ("waiting", "fetching the media from the device"),
        ("failed", "snapshot: device offline"),
    ]
    assert c.audit_rows("answered") == {
        (request.request_id, "waiting", "alarm_evidence"),
        (request.request_id, "sending", "alarm_evidence"),
        (second.request_id, "waiting", "alarm_evidence"),
        (second.request_id, "failed", "alarm_evidence"),
    }


async def test_duplicate_request_is_answered_once(tmp_path: Path, open_mosquitto: Mosquitto) -> None:
    """The same request id twice (a QoS 1 redelivery): one answer, one set of chunks, counted.

    Broken on purpose: without the audit's known-id check the second copy is answered and sent again.
    """
    c = compound(tmp_path, open_mosquitto)
    cam = c.device("hightoss-mqtt")
    event_id = "evt-thrown-000003"
    snapshot = media_file(c.files, event_id, "snapshot", 2 * CHUNK)
    c.catalog.events[event_id] = event_media(
        event_id, EventKind.THROWN_OBJECT, cam, "hightoss-mqtt", [snapshot]
    )
    request = c.request(EventEvidence(event_id=event_id))
    async with desk(open_mosquitto) as district, gateway(c) as gw:
        await c.ask(request)
        await until(lambda: district.file(request.request_id, snapshot.item) is not None)
        await until(lambda: gw.service.open == 0)
        await c.ask(request)
        await until(lambda: gw.service.duplicates == 1)
        await asyncio.sleep(0.5)
    assert len(district.answers_to(request.request_id)) == 1
    assert len(district.chunks) == 2
    assert c.audit_rows("decided") == {(request.request_id, "allowed", "alarm_evidence")}


async def test_proactive_files_marked_only_after_every_chunk_and_resent_after_a_cut(
    tmp_path: Path, open_mosquitto: Mosquitto
) -> None:
    """A critical alarm's snapshot goes up unasked and is marked sent only once all of it went.

    The broker is killed mid-file: not marked; after the restart the whole file goes again and
    only then is it marked. The manifest goes up and is marked.

    Broken on purpose: calling ``proactive_sent`` before ``_send_file`` marks it at the cut (the
    ``proactive_marked == [6]`` assertion fails) and the file never completes after the restart.
    """
    c = compound(tmp_path, open_mosquitto)
    event_id = "evt-thrown-000004"
    big = media_file(c.files, event_id, "snapshot", 2000 * CHUNK)  # 2000 chunks: the cut lands mid-file
    fetched = media_file(c.files, "evt-fire-00000009", "snapshot", 1000)
    face = media_file(c.files, event_id, "face", 1000)  # a catalog that got it wrong: never unasked
    c.catalog.proactive.append(Outgoing(key=6, media=face))
    c.catalog.proactive.append(Outgoing(key=7, media=big))
    c.catalog.manifests.append(Outgoing(key=11, media=fetched))
    async with desk(open_mosquitto) as district, gateway(c) as gw:
        await until(lambda: gw.service.bytes_sent >= 3 * CHUNK)  # the desk may lag behind the broker
        await asyncio.to_thread(open_mosquitto.stop, kill=True)
        assert district.file(None, big.item) is None
        assert c.catalog.proactive_marked == [6]
        await asyncio.to_thread(open_mosquitto.start)
        await until(lambda: district.file(None, big.item) is not None, timeout=60)
        await until(lambda: c.catalog.proactive_marked == [6, 7])
        await until(lambda: c.catalog.manifest_marked == [11])
        files = gw.service.files_sent["proactive"]
    body = district.file(None, big.item)
    assert body is not None
    assert hashlib.sha256(body).hexdigest() == sha_of(big.path)
    assert {(h.request_id, h.item) for h, _ in district.chunks} == {(None, big.item)}
    assert [m.items for m in district.manifests] == [(fetched.item,)]
    assert files == 1


async def test_alarm_pictures_overtake_request_files_and_open_requests_survive_a_restart(
    tmp_path: Path, open_mosquitto: Mosquitto
) -> None:
    """Alarm pictures go before a request's next file; an open request is served again after a restart.

    A proactive picture that turns up while a request's first file is going goes before its second
    file; the gateway then stops mid-file and a new one (same audit file) sends the request again.

    Broken on purpose: closing the request in the audit when SENDING is answered (before its files)
    leaves nothing to resume; ``_send_proactive`` only at the top of the loop sends the alarm last.
    """
    c = compound(tmp_path, open_mosquitto)
    cam = c.device("hightoss-mqtt")
    event_id = "evt-thrown-000005"
    # the alarm must turn up while the first file is going: long enough that a test loop starved by
    # a busy machine still sees it going (40 chunks were sent before the test looked, once, in CI)
    first = media_file(c.files, event_id, "scene", 1000 * CHUNK)
    # 64 MB, the most one file may be (3000 chunks once finished before the stop, under load)
    second = media_file(c.files, event_id, "snapshot", 4000 * CHUNK)
    alarm = media_file(c.files, "evt-thrown-000006", "snapshot", 2 * CHUNK)
    c.catalog.events[event_id] = event_media(
        event_id, EventKind.THROWN_OBJECT, cam, "hightoss-mqtt", [first, second]
    )
    request = c.request(EventEvidence(event_id=event_id, roles=("scene", "snapshot")))
    async with desk(open_mosquitto) as district:
        async with gateway(c) as gw:
            await c.ask(request)
            await until(lambda: gw.service.bytes_sent > 0)
            c.catalog.proactive.append(Outgoing(key=1, media=alarm))
            await until(lambda: c.catalog.proactive_marked == [1])
            # the gateway's own count: the desk lags behind what the broker already acknowledged
            await until(lambda: gw.service.bytes_sent >= first.item.size + alarm.item.size + 5 * CHUNK)
        # stopped mid-way through the second file (4000 chunks)
        assert district.file(request.request_id, second.item) is None
        order = [sha for what, _, sha in district.arrivals if what == "chunk"]
        assert order.index(alarm.item.sha256) > order.index(first.item.sha256)
        assert len(order) - 1 - order[::-1].index(alarm.item.sha256) < order.index(second.item.sha256)
        assert c.audit_rows("answered") == set()
        async with gateway(c) as gw:
            await until(lambda: district.file(request.request_id, second.item) is not None, timeout=60)
            await until(lambda: gw.service.open == 0)
    for media in (first, second):
        body = district.file(request.request_id, media.item)
        assert body is not None
        assert hashlib.sha256(body).hexdigest() == sha_of(media.path)
    assert [a.status for a in district.answers_to(request.request_id)] == ["sending", "sending"]
    assert c.audit_rows("answered") == {(request.request_id, "sending", "alarm_evidence")}


async def test_audit_purge_keeps_open_requests_and_forgets_old_rows(tmp_path: Path) -> None:
    """Rows older than ``audit_keep_days`` go; newer ones and the open requests stay.

    Broken on purpose: ``at > ?`` in ``purge`` deletes the new rows instead (exact sets compared).
    """
    c = compound(tmp_path, Mosquitto(tmp_path / "unused"))
    old, new = (
        c.request(EventEvidence(event_id="evt-old-00000001")),
        c.request(EventEvidence(event_id="evt-new-00000001")),
    )
    row = OpenRequest(old, False, AnswerStatus.REFUSED, "default_deny", "no", frozenset(), None)
    async with EvidenceAudit(c.audit_path) as audit:
        assert await audit.record(old, "refused", row, NOW - timedelta(days=400))
        assert await audit.record(new, "refused", replace(row, request=new), NOW - timedelta(days=10))
        assert await audit.purge(NOW - timedelta(days=365)) == 1
        still_open = {r.request.request_id for r in await audit.open_requests()}
        assert not await audit.record(new, "refused", replace(row, request=new), NOW)  # still known
    assert c.audit_rows("decided") == {(new.request_id, "refused", "default_deny")}
    assert still_open == {old.request_id, new.request_id}


async def test_alarm_events_are_not_held_back_by_a_file(tmp_path: Path, open_mosquitto: Mosquitto) -> None:
    """An alarm committed while a large file is going reaches the district before the file's end.

    Broken on purpose: running ``EvidenceService.run`` in the forwarder's place (awaited before
    ``forwarder.run`` instead of as its own task) holds the alarm until the file is done: it
    arrives after the last chunk (or never: the service never returns).
    """
    c = compound(tmp_path, open_mosquitto)
    cam = c.device("hightoss-mqtt")
    event_id = "evt-thrown-000007"
    big = media_file(c.files, event_id, "clip", 2000 * CHUNK)
    c.catalog.events[event_id] = event_media(event_id, EventKind.THROWN_OBJECT, cam, "hightoss-mqtt", [big])
    request = c.request(EventEvidence(event_id=event_id))
    shed = c.device("shed-mqtt")
    fire = Event(
        event_id="evt-fire-alarm-0001",
        kind=EventKind.EBIKE_SHED,
        district_id=c.config.compound.district_id,
        compound_id=c.compound_id,
        device_id=shed,
        occurred_at=NOW,
        received_at=NOW,
        severity=Severity.CRITICAL,
        source=Provenance(vendor="test", dialect="shed-mqtt"),
        payload=EbikeShedPayload(condition=ShedCondition.FIRE_ALARM, temperature_c=80.0),
    )
    fire_topic = event_topic(DEFAULT_PREFIX, c.config.compound.district_id, c.compound_id, "ebike_shed")
    with Outbox(c.config.state.dir / "outbox.db", max_bytes=1 << 24) as outbox:
        async with desk(open_mosquitto) as district, gateway(c):
            await c.ask(request)
            await until(lambda: len(district.chunks) >= 10)
            await asyncio.to_thread(outbox.commit, [StoreEvents([EventRow.from_event(fire)], ())])
            await until(lambda: ("events", None, fire_topic) in district.arrivals)
            chunks_before = sum(1 for what, _, _ in district.arrivals if what == "chunk")
            await until(lambda: district.file(request.request_id, big.item) is not None, timeout=120)
    assert chunks_before < 2000


async def test_waiting_request_expires_and_a_full_queue_answers_busy(
    tmp_path: Path, open_mosquitto: Mosquitto
) -> None:
    """A request still waiting at ``expires_at`` is answered EXPIRED; one over ``max_open_requests`` FAILED (busy).

    Broken on purpose: skipping the expiry check in ``_serve_request`` leaves the first WAITING for
    ever; dropping the ``max_open_requests`` check answers the second WAITING too.
    """
    c = compound(tmp_path, open_mosquitto, max_open_requests=1)
    shed = c.device("shed-mqtt")
    event_id = "evt-fire-00000003"
    pending = (DeviceFetch("snapshot", FetchState.PENDING),)
    c.catalog.events[event_id] = event_media(
        event_id, EventKind.EBIKE_SHED, shed, "shed-mqtt", [], fetches=pending
    )
    first = c.request(EventEvidence(event_id=event_id), expires_in=timedelta(seconds=2))
    second = c.request(EventEvidence(event_id=event_id))
    async with desk(open_mosquitto) as district, gateway(c) as gw:
        await c.ask(first)
        await until(lambda: bool(district.answers_to(first.request_id)))
        await c.ask(second)
        await until(lambda: bool(district.answers_to(second.request_id)))
        await until(lambda: len(district.answers_to(first.request_id)) == 2)
        await until(lambda: gw.service.open == 0)
    assert [a.status for a in district.answers_to(first.request_id)] == ["waiting", "expired"]
    assert [(a.status.value, a.detail) for a in district.answers_to(second.request_id)] == [
        ("failed", "the compound has too many open requests")
    ]
    assert c.audit_rows("decided") == {
        (first.request_id, "allowed", "alarm_evidence"),
        (second.request_id, "busy", None),
    }


async def test_a_landed_fetch_serves_a_waiting_request_at_once(
    tmp_path: Path, open_mosquitto: Mosquitto
) -> None:
    """With a 10-minute re-check, ``wake()`` (the fetcher's call when a file lands) sends it now.

    Broken on purpose: ``wake()`` without clearing the re-check times left the request WAITING
    until the 20 s limit below.
    """
    c = compound(tmp_path, open_mosquitto, recheck_s=600)
    shed = c.device("shed-mqtt")
    event_id = "evt-fire-00000009"
    c.catalog.events[event_id] = event_media(
        event_id,
        EventKind.EBIKE_SHED,
        shed,
        "shed-mqtt",
        [],
        fetches=(DeviceFetch("snapshot", FetchState.PENDING),),
    )
    request = c.request(EventEvidence(event_id=event_id))
    async with desk(open_mosquitto) as district, gateway(c) as gw:
        await c.ask(request)
        await until(lambda: bool(district.answers_to(request.request_id)))
        snapshot = media_file(c.files, event_id, "snapshot", 2 * CHUNK)
        c.catalog.events[event_id] = replace(
            c.catalog.events[event_id],
            stored=(snapshot,),
            fetches=(DeviceFetch("snapshot", FetchState.FETCHED),),
        )
        gw.service.wake()
        await until(lambda: district.file(request.request_id, snapshot.item) is not None, timeout=20)
        assert [a.status for a in district.answers_to(request.request_id)] == ["waiting", "sending"]
