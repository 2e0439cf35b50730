"""The evidence tests' district and a compound double that speaks ``uplink/evidence.py``.

The double is written from the protocol module alone (it is our own protocol): it reads its
request topic on the district broker, answers by its policy, and sends files as framed chunks,
optionally corrupted, repeated or out of order. The district runs for real: ``serve_api`` (the
operator API with the evidence desk inside it) on a real Mosquitto, a real SQLite store and index.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from device_sims.broker import free_port
from device_sims.inventory import DISTRICT_ID, compound_id
from district.config import DistrictConfig, load_district_config
from district.operations import OperationsDb
from district.operator_cli import serve_api
from district.query_model import Role
from foundation.events import Event, EventKind, Provenance, Severity, ThrownObjectPayload, utc_now
from foundation.mqtt import MqttSession, SessionOptions
from tests.district_data import registry_toml
from uplink.evidence import (
    ANSWER,
    CHUNK,
    MANIFEST,
    AnswerStatus,
    BarrierWindow,
    ChunkHeader,
    EventEvidence,
    EvidenceAnswer,
    EvidenceRequest,
    MediaItem,
    MediaManifest,
    chunk_spans,
    compound_evidence_topic,
    decode_request,
    encode_chunk,
    encode_json,
    request_topic,
)
from uplink.protocol import DEFAULT_PREFIX
from uplink.stores.sqlite import SqliteStore, SqliteStoreConfig

C1, C2 = compound_id(1), compound_id(2)
DEVICE = "36010400011240000001"
E1 = "evt-c1-alarm-0001"  # a thrown-object alarm of compound 1
E2 = "evt-c1-alarm-0002"
E_B = "evt-c2-alarm-0001"  # compound 2's


def alarm(
    event_id: str, compound: str, at: datetime | None = None, severity: Severity = Severity.CRITICAL
) -> Event:
    """A thrown-object event of one compound, critical unless ``severity`` says otherwise."""
    moment = at or utc_now() - timedelta(hours=1)
    return Event(
        event_id=event_id,
        kind=EventKind.THROWN_OBJECT,
        district_id=DISTRICT_ID,
        compound_id=compound,
        device_id=DEVICE,
        occurred_at=moment,
        received_at=moment,
        severity=severity,
        source=Provenance(vendor="test", dialect="test"),
        payload=ThrownObjectPayload(),
    )


def write_config(workdir: Path, broker_port: int, *, ttl_s: int = 60, extra: str = "") -> DistrictConfig:
    """A district config: the broker, an embedded store, the operator API and the evidence desk."""
    path = workdir / "district.toml"
    path.write_text(
        f'district_id = "{DISTRICT_ID}"\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {broker_port}\n'
        f'[ingest]\ndead_letter_path = "{workdir}/ingest.db"\nhttp_port = 0\n'
        f'[api]\nops_db = "{workdir}/operations.db"\nport = {free_port()}\n'
        f"[evidence]\nrequest_ttl_s = {ttl_s}\ntransfer_stale_s = 30\n{extra}\n"
        f'[store]\ntype = "sqlite"\npath = "{workdir}/district.db"\n\n{registry_toml()}',
        encoding="utf-8",
    )
    return load_district_config(path)


async def seed(config: DistrictConfig, events: list[Event]) -> None:
    """Write events into the district's embedded store (as the ingester would have)."""
    assert isinstance(config.store, SqliteStoreConfig)
    async with SqliteStore(config.store) as store:
        await store.write(events)


@dataclass
class District:
    """The running operator API (with its desk) and tokens by name."""

    config: DistrictConfig
    url: str
    tokens: dict[str, str]
    ops: OperationsDb

    async def call(
        self, method: str, path: str, who: str | None, *, json: Any = None, **params: str
    ) -> tuple[int, Any]:
        """One API call: (status, JSON body)."""
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{self.url}/api/v1{path}", json=json, params=params, headers=headers) as r,
        ):
            return r.status, await r.json(content_type=None)

    async def status(self, event_id: str, who: str = "viewer") -> Any:
        """The event's evidence status (200 expected)."""
        code, body = await self.call("GET", f"/evidence/{event_id}", who)
        assert code == 200, body
        return body

    async def request(self, event_id: str, who: str = "operator", **body: Any) -> tuple[int, Any]:
        """Ask for an event's evidence."""
        return await self.call(
            "POST", f"/evidence/{event_id}/requests", who, json={"reason": "case 2026-114", **body}
        )

    async def wait_state(self, event_id: str, request_id: str, states: set[str], timeout: float = 20) -> Any:
        """Poll until the request is in one of ``states``; returns that request's view."""
        async with asyncio.timeout(timeout):
            while True:
                for request in (await self.status(event_id))["requests"]:
                    if request["request_id"] == request_id and request["state"] in states:
                        return request
                await asyncio.sleep(0.1)

    async def wait_held(self, event_id: str, count: int, timeout: float = 20) -> list[Any]:
        """Poll until the district holds ``count`` files of the event."""
        async with asyncio.timeout(timeout):
            while True:
                held = (await self.status(event_id))["held"]
                if len(held) >= count:
                    return list(held)
                await asyncio.sleep(0.1)

    async def metrics(self) -> str:
        """The API's /metrics text."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/metrics") as r:
            return await r.text()


@contextlib.asynccontextmanager
async def running_district(config: DistrictConfig, *, desk_up: bool = True) -> AsyncIterator[District]:
    """``serve_api`` in this loop, with tokens: viewer, operator, admin, and operator_a (compound 1 only).

    With ``desk_up`` the block starts once the desk has subscribed (on its first connection the
    broker has no session of it yet, so anything sent before would not be kept for it).
    """
    async with OperationsDb(config.api.ops_db) as ops:
        tokens = {
            role.value: await ops.create_token(role.value, role, DISTRICT_ID, (), "test") for role in Role
        }
        tokens["operator_a"] = await ops.create_token("operator_a", Role.OPERATOR, DISTRICT_ID, (C1,), "test")
        ready = asyncio.Event()
        task = asyncio.create_task(serve_api(config, ready=ready), name="operator-api")
        try:
            async with asyncio.timeout(20):
                await ready.wait()
            district = District(config, f"http://127.0.0.1:{config.api.port}", tokens, ops)
            async with asyncio.timeout(20):
                while (
                    desk_up
                    and 'cgw_transport_up{transport="evidence_desk"} 1.0' not in await district.metrics()
                ):
                    await asyncio.sleep(0.05)
            yield district
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def item_of(event_id: str, role: str, data: bytes, content_type: str = "image/jpeg") -> MediaItem:
    """The protocol's description of one file."""
    return MediaItem(
        event_id=event_id,
        role=role,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        content_type=content_type,
    )


def chunks(
    item: MediaItem,
    data: bytes,
    request_id: str | None,
    *,
    chunk_bytes: int = 1000,
    corrupt_index: int | None = None,
) -> list[bytes]:
    """The framed chunks of one file (``corrupt_index``: flip one byte of that chunk)."""
    spans = chunk_spans(len(data), chunk_bytes)
    framed = []
    for index, (offset, length) in enumerate(spans):
        piece = bytearray(data[offset : offset + length])
        if index == corrupt_index and piece:
            piece[0] ^= 0xFF
        header = ChunkHeader(request_id=request_id, item=item, offset=offset, index=index, count=len(spans))
        framed.append(encode_chunk(header, bytes(piece)))
    return framed


Policy = Callable[[EvidenceRequest], tuple[AnswerStatus, str | None]]


def allow(_: EvidenceRequest) -> tuple[AnswerStatus, str | None]:
    """Every request is allowed."""
    return AnswerStatus.SENDING, None


@dataclass
class CompoundDouble:
    """A compound on the district broker: answers requests for its files by its policy."""

    compound: str
    port: int
    files: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)  # event id -> (role, bytes)
    # the vehicle pictures a barrier window request gets: event id -> (role, bytes, content type)
    barrier_files: dict[str, list[tuple[str, bytes, str]]] = field(default_factory=dict)
    policy: Policy = allow
    corrupt_index: int | None = None
    repeat: bool = False  # every chunk twice, the file's chunks in reverse order, then all again
    gate_answer: asyncio.Event | None = None  # hold the answer until set
    gate_chunks: asyncio.Event | None = None  # hold the chunks (after the answer) until set
    requests: list[EvidenceRequest] = field(default_factory=list)
    session: MqttSession | None = None

    def topic(self, what: str) -> str:
        """One of this compound's evidence topics."""
        return compound_evidence_topic(DEFAULT_PREFIX, DISTRICT_ID, self.compound, what)

    @contextlib.asynccontextmanager
    async def online(self) -> AsyncIterator[CompoundDouble]:
        """Connected (persistent session: requests made while offline arrive now) and answering."""
        options = SessionOptions(
            host="127.0.0.1",
            port=self.port,
            client_id=f"compound-{self.compound}",
            clean_start=False,
            session_expiry_s=3600,
        )
        async with MqttSession(options) as session:
            self.session = session
            await session.subscribe(request_topic(DEFAULT_PREFIX, DISTRICT_ID, self.compound), qos=1)
            task = asyncio.create_task(self._serve(session), name=f"double-{self.compound}")
            try:
                yield self
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self.session = None

    async def _serve(self, session: MqttSession) -> None:
        async for message in session.messages():
            request = decode_request(message.payload)
            self.requests.append(request)
            await self.answer(request)

    async def answer(self, request: EvidenceRequest) -> None:
        """Answer by the policy; send the files when sending."""
        assert self.session is not None
        if self.gate_answer is not None:
            await self.gate_answer.wait()
        if isinstance(request.subject, BarrierWindow):
            await self._answer_window(request)
            return
        status, rule = self.policy(request)
        assert isinstance(request.subject, EventEvidence)
        files = self.files.get(request.subject.event_id, [])
        items = tuple(item_of(request.subject.event_id, role, data) for role, data in files)
        answer = EvidenceAnswer(
            request_id=request.request_id,
            status=status,
            rule=rule,
            detail="refused by the compound's policy" if rule else None,
            items=items if status is AnswerStatus.SENDING else (),
            answered_at=utc_now(),
        )
        await self.session.publish(self.topic(ANSWER), encode_json(answer), qos=1)
        if status is not AnswerStatus.SENDING:
            return
        if self.gate_chunks is not None:
            await self.gate_chunks.wait()
        for item, (_, data) in zip(items, files, strict=True):
            await self.send_file(item, data, request.request_id)

    async def _answer_window(self, request: EvidenceRequest) -> None:
        # every barrier picture this double keeps (the test keeps only the window's), or not found
        assert self.session is not None
        pictures = [
            (item_of(event_id, role, data, content_type), data)
            for event_id, files in self.barrier_files.items()
            for role, data, content_type in files
        ]
        answer = EvidenceAnswer(
            request_id=request.request_id,
            status=AnswerStatus.SENDING if pictures else AnswerStatus.NOT_FOUND,
            items=tuple(item for item, _ in pictures),
            answered_at=utc_now(),
        )
        await self.session.publish(self.topic(ANSWER), encode_json(answer), qos=1)
        for item, data in pictures:
            await self.send_file(item, data, request.request_id)

    async def send_file(self, item: MediaItem, data: bytes, request_id: str | None) -> None:
        """Send one file's chunks (as configured: corrupted, repeated, reordered)."""
        assert self.session is not None
        framed = chunks(item, data, request_id, corrupt_index=self.corrupt_index)
        order = [c for c in reversed(framed) for _ in range(2)] + framed if self.repeat else framed
        for body in order:
            await self.session.publish(self.topic(CHUNK), body, qos=1)

    async def send_manifest(self, items: tuple[MediaItem, ...]) -> None:
        """Say which files this compound holds."""
        assert self.session is not None
        await self.session.publish(self.topic(MANIFEST), encode_json(MediaManifest(items=items)), qos=1)


def picture(seed: int, size: int = 4500) -> bytes:
    """Deterministic bytes that look like nothing in particular (several chunks at 1000 bytes)."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        out += block
        block = hashlib.sha256(block).digest()
    return bytes(out[:size])


def stored_files(config: DistrictConfig) -> set[str]:
    """The kept files' names under the media directory (partial transfers excluded)."""
    root = config.evidence_media_dir()
    return {p.name for p in root.rglob("*") if p.is_file() and ".partial" not in p.parts}


def partial_files(config: DistrictConfig) -> set[str]:
    """Files of transfers in progress."""
    partial = config.evidence_media_dir() / ".partial"
    return {p.name for p in partial.iterdir()} if partial.is_dir() else set()
