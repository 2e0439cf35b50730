"""Evidence on the uplink: what the district asks a compound for, and the bytes that come back.

This is our own protocol (no standard covers it); both ends import this module and nothing else of
each other. Everything travels over the district broker's existing TLS sessions, under topics one
level below a compound's event topics (so the ingesters' ``+/+/+`` subscription never sees them)::

    <prefix>/<district>/<compound>/request/evidence     district -> compound  EvidenceRequest (JSON)
    <prefix>/<district>/<compound>/evidence/answer      compound -> district  EvidenceAnswer (JSON)
    <prefix>/<district>/<compound>/evidence/manifest    compound -> district  MediaManifest (JSON)
    <prefix>/<district>/<compound>/evidence/chunk       compound -> district  a framed chunk (binary)

The broker's ACL lets a compound read only its own ``request/evidence`` and write only its own
``evidence/+``, so a request for another compound's event never reaches the wrong compound and a
compound cannot answer for another one. Every message is QoS 1; the district's evidence desk keeps
a persistent session, so what a compound sends while the desk is down waits at the broker.

Why chunked MQTT rather than an HTTPS upload: the compound already holds an authenticated,
ACL-bound session to the district broker (its client certificate is its identity there), so no new
listener, certificate check or firewall opening is needed at the district, and a compound behind
NAT needs nothing inbound. The cost is framing and reassembly (``ChunkHeader``) and the broker's
packet limit, which ``MAX_CHUNK_BYTES`` stays far below.

A chunk is ``<4-byte big-endian header length><header JSON><bytes>``. Chunks of one transfer may
arrive in any order and more than once (QoS 1 redelivery); ``offset`` places each one, and the
receiver checks the SHA-256 of the whole before it keeps anything.
"""

from __future__ import annotations

import struct
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from foundation import strict_json
from foundation.errors import PayloadRejected
from foundation.events import Code, GbId, Text

EVIDENCE_VERSION: Literal[1] = 1
DEFAULT_CHUNK_BYTES = 256 * 1024
MAX_CHUNK_BYTES = 1024 * 1024
MAX_TRANSFER_BYTES = 64 * 1024 * 1024  # a clip of a few minutes at camera bit rates
MAX_ITEMS_PER_ANSWER = 500  # a barrier window's pictures; more must be asked for in shorter windows
MAX_MANIFEST_ITEMS = 200
_HEADER_LENGTH = struct.Struct(">I")
MAX_HEADER_BYTES = 4096

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]{8,64}$")]
MediaRole = Literal["face", "scene", "plate", "trajectory", "clip", "snapshot"]

REQUEST = "request/evidence"
ANSWER = "evidence/answer"
MANIFEST = "evidence/manifest"
CHUNK = "evidence/chunk"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


M = TypeVar("M", bound=_Message)


# --- topics ------------------------------------------------------------------------------------------


def request_topic(prefix: str, district_id: str, compound_id: str) -> str:
    """Where the district asks one compound for evidence (only that compound may read it)."""
    return f"{prefix}/{district_id}/{compound_id}/{REQUEST}"


def compound_evidence_topic(prefix: str, district_id: str, compound_id: str, what: str) -> str:
    """Where a compound publishes ``ANSWER``, ``MANIFEST`` or ``CHUNK``."""
    return f"{prefix}/{district_id}/{compound_id}/{what}"


def evidence_filter(prefix: str) -> str:
    """What the district's evidence desk subscribes to: every compound's answers, manifests, chunks."""
    return f"{prefix}/+/+/evidence/+"


class EvidenceAddress(BaseModel):
    """What an evidence topic says about its sender."""

    model_config = ConfigDict(frozen=True)
    district_id: str
    compound_id: str
    what: Literal["evidence/answer", "evidence/manifest", "evidence/chunk"]


def parse_evidence_topic(prefix: str, topic: str) -> EvidenceAddress:
    """Split a compound's evidence topic, or reject it."""
    head = prefix + "/"
    parts = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(parts) != 4 or parts[2] != "evidence" or not parts[0] or not parts[1]:
        raise PayloadRejected("bad_topic", f"not an evidence topic: {topic[:120]!r}")
    what = f"evidence/{parts[3]}"
    if what not in (ANSWER, MANIFEST, CHUNK):
        raise PayloadRejected("bad_topic", f"unknown evidence channel {parts[3]!r}")
    return EvidenceAddress(district_id=parts[0], compound_id=parts[1], what=what)


# --- district -> compound ----------------------------------------------------------------------------


class EventEvidence(_Message):
    """The media of one event (all of them, or only the roles named)."""

    kind: Literal["event"] = "event"
    event_id: str = Field(min_length=8, max_length=64)
    roles: tuple[MediaRole, ...] = Field(default=(), description="empty: every role the event has")


class BarrierWindow(_Message):
    """The vehicle pictures one barrier camera took in a time window."""

    kind: Literal["barrier_window"] = "barrier_window"
    device_id: GbId
    since: AwareDatetime
    until: AwareDatetime


class EvidenceRequest(_Message):
    """An operator's request, as the compound receives it; the compound applies its own policy."""

    v: Literal[1] = EVIDENCE_VERSION
    request_id: RequestId
    subject: EventEvidence | BarrierWindow = Field(discriminator="kind")
    operator: Code = Field(description="who asked (the token's subject at the district)")
    role: Code = Field(description="the operator's role at the district")
    reason: Text = Field(min_length=1)
    requested_at: AwareDatetime
    expires_at: AwareDatetime


# --- compound -> district ----------------------------------------------------------------------------


class AnswerStatus(StrEnum):
    """How a compound answers a request."""

    SENDING = "sending"  # the items listed follow as chunks
    WAITING = "waiting"  # allowed, but the media are still being fetched from the device
    REFUSED = "refused"  # a policy rule says no (``rule`` names it)
    NOT_FOUND = "not_found"  # no such event, or no media, in this compound
    EXPIRED = "expired"  # reached the compound after ``expires_at``
    FAILED = "failed"  # allowed, but the media could not be had (``detail`` says why)


class MediaItem(_Message):
    """One file: which event and role it belongs to, and what its bytes are."""

    event_id: str = Field(min_length=8, max_length=64)
    role: MediaRole
    sha256: Sha256
    size: int = Field(ge=0, le=MAX_TRANSFER_BYTES)
    content_type: Code
    occurred_at: AwareDatetime | None = None


class EvidenceAnswer(_Message):
    """The compound's answer to one request (it may answer ``waiting`` first, then again)."""

    v: Literal[1] = EVIDENCE_VERSION
    request_id: RequestId
    status: AnswerStatus
    rule: Code | None = Field(default=None, description="the policy rule that decided (always on a refusal)")
    detail: Text | None = None
    items: tuple[MediaItem, ...] = Field(default=(), max_length=MAX_ITEMS_PER_ANSWER)
    answered_at: AwareDatetime


class MediaManifest(_Message):
    """Media a compound fetched from its devices after the events were sent (events stay immutable)."""

    v: Literal[1] = EVIDENCE_VERSION
    items: tuple[MediaItem, ...] = Field(min_length=1, max_length=MAX_MANIFEST_ITEMS)


class ChunkHeader(_Message):
    """One piece of one file's bytes.

    ``request_id`` is None for evidence a compound sends without being asked (the snapshot and
    trajectory picture of a critical alarm).
    """

    v: Literal[1] = EVIDENCE_VERSION
    request_id: RequestId | None = None
    item: MediaItem
    offset: int = Field(ge=0, le=MAX_TRANSFER_BYTES)
    index: int = Field(ge=0)
    count: int = Field(ge=1, le=MAX_TRANSFER_BYTES // 1024 + 1)


def encode_json(message: EvidenceRequest | EvidenceAnswer | MediaManifest) -> bytes:
    """A JSON message's bytes."""
    return message.model_dump_json(exclude_none=True).encode()


def decode_request(body: bytes) -> EvidenceRequest:
    """A request, or ``PayloadRejected`` naming the field."""
    return strict_json.decode_model(EvidenceRequest, body)


def decode_answer(body: bytes) -> EvidenceAnswer:
    """An answer, or ``PayloadRejected`` naming the field."""
    return strict_json.decode_model(EvidenceAnswer, body)


def decode_manifest(body: bytes) -> MediaManifest:
    """A manifest, or ``PayloadRejected`` naming the field."""
    return strict_json.decode_model(MediaManifest, body)


def encode_chunk(header: ChunkHeader, data: bytes) -> bytes:
    """A framed chunk: header length, header JSON, bytes."""
    head = header.model_dump_json(exclude_none=True).encode()
    return _HEADER_LENGTH.pack(len(head)) + head + data


def decode_chunk(body: bytes) -> tuple[ChunkHeader, bytes]:
    """Split a framed chunk and check its header against its bytes, or reject it."""
    if len(body) < _HEADER_LENGTH.size:
        raise PayloadRejected("bad_chunk", "shorter than its header length")
    (length,) = _HEADER_LENGTH.unpack_from(body)
    if not 2 <= length <= MAX_HEADER_BYTES or len(body) < _HEADER_LENGTH.size + length:
        raise PayloadRejected("bad_chunk", f"header length {length} does not fit the message")
    start = _HEADER_LENGTH.size
    header = strict_json.decode_model(ChunkHeader, body[start : start + length])
    data = body[start + length :]
    if len(data) > MAX_CHUNK_BYTES:
        raise PayloadRejected("bad_chunk", f"{len(data)} bytes in one chunk (at most {MAX_CHUNK_BYTES})")
    if header.offset + len(data) > header.item.size or header.index >= header.count:
        raise PayloadRejected(
            "bad_chunk",
            f"chunk {header.index}/{header.count} at {header.offset} overruns the file",
            field="offset",
        )
    return header, data


def chunk_spans(size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[tuple[int, int]]:
    """The (offset, length) of each chunk of a file of ``size`` bytes (one empty chunk for 0 bytes)."""
    if size == 0:
        return [(0, 0)]
    return [(offset, min(chunk_bytes, size - offset)) for offset in range(0, size, chunk_bytes)]


def is_expired(request: EvidenceRequest, now: datetime) -> bool:
    """Whether a request arrived too late to be served."""
    return now >= request.expires_at
