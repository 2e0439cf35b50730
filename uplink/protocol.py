"""The uplink wire format between compound gateways and the district.

Topics: ``<prefix>/<district id>/<compound id>/<kind>`` carry event batches, and the retained
``<prefix>/<district id>/<compound id>/status`` carries the gateway's state (its last will says
offline). A batch is one JSON object::

    {"v": 1, "district_id": "...", "compound_id": "...", "sent_at": "...", "events": [<event>, ...]}

where every event is the canonical event (``foundation/events.py``) exactly as the outbox stored it,
so the gateway never re-serializes. The ingester checks the envelope against the topic and every
event against the envelope, and refuses what does not match.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, ValidationError

from foundation import strict_json
from foundation.errors import PayloadRejected
from foundation.events import Event, EventKind, utc_now

PROTOCOL_VERSION = 1
DEFAULT_PREFIX = "cgw/v1"
STATUS = "status"
MAX_EVENTS_PER_BATCH = 5_000
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(days=1)


def event_topic(prefix: str, district_id: str, compound_id: str, kind: str) -> str:
    """Where a compound publishes batches of one kind."""
    return f"{prefix}/{district_id}/{compound_id}/{kind}"


def status_topic(prefix: str, district_id: str, compound_id: str) -> str:
    """Where a compound's gateway state is retained."""
    return f"{prefix}/{district_id}/{compound_id}/{STATUS}"


def receipt_topic(prefix: str, district_id: str, compound_id: str) -> str:
    """Where the district confirms stored events to a compound.

    One level deeper than the event topics, so the ingesters' ``+/+/+`` subscription does not
    receive their own receipts.
    """
    return f"{prefix}/{district_id}/{compound_id}/receipt/stored"


def watchlist_topic(prefix: str, district_id: str, list_id: str) -> str:
    """Where the district retains the current version of a watch list (for every compound)."""
    return f"{prefix}/{district_id}/watchlist/{list_id}/current"


def watchlist_filter(prefix: str, district_id: str) -> str:
    """What a gateway subscribes to for its district's lists (six levels: never an event topic)."""
    return f"{prefix}/{district_id}/watchlist/+/current"


def watchlist_id(prefix: str, topic: str) -> str | None:
    """The list id of a watch-list topic, or None for any other topic."""
    parts = topic.removeprefix(prefix + "/").split("/")
    if len(parts) == 4 and parts[1] == "watchlist" and parts[3] == "current":
        return parts[2]
    return None


def encode_receipt(event_ids: Sequence[str]) -> bytes:
    """The district's confirmation that these events are in its store."""
    return json.dumps({"v": PROTOCOL_VERSION, "event_ids": list(event_ids)}, separators=(",", ":")).encode()


def decode_receipt(body: bytes) -> list[str]:
    """The event ids of a receipt, or reject."""
    try:
        document = strict_json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise PayloadRejected("malformed_json", "receipt is not JSON") from None
    ids = document.get("event_ids") if isinstance(document, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) and 8 <= len(i) <= 64 for i in ids):
        raise PayloadRejected("bad_field", "event_ids must be a list of event ids", field="event_ids")
    return ids


def encode_batch(
    district_id: str, compound_id: str, bodies: Sequence[bytes], sent_at: datetime | None = None
) -> bytes:
    """A batch from already-serialized events (the outbox bodies), without parsing them again."""
    head = json.dumps(
        {
            "v": PROTOCOL_VERSION,
            "district_id": district_id,
            "compound_id": compound_id,
            "sent_at": (sent_at or utc_now()).isoformat(),
        },
        separators=(",", ":"),
    ).encode()
    return head[:-1] + b',"events":[' + b",".join(bodies) + b"]}"


@dataclass(frozen=True)
class TopicAddress:
    """What a topic says about the sender."""

    district_id: str
    compound_id: str
    channel: str  # an event kind or "status"


def parse_topic(prefix: str, topic: str) -> TopicAddress:
    """Split an uplink topic, or reject it."""
    head = prefix + "/"
    rest = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(rest) != 3 or not all(rest):
        raise PayloadRejected(
            "bad_topic", f"expected {prefix}/<district>/<compound>/<kind>, got {topic[:120]!r}"
        )
    district_id, compound_id, channel = rest
    if channel != STATUS and channel not in {k.value for k in EventKind}:
        raise PayloadRejected("bad_topic", f"unknown channel {channel!r} in {topic[:120]!r}")
    return TopicAddress(district_id, compound_id, channel)


@dataclass
class DecodedBatch:
    """The events of a batch that passed, and a rejection for each one that did not."""

    events: list[Event] = field(default_factory=list)
    rejected: list[tuple[int, PayloadRejected]] = field(default_factory=list)


class _Envelope(BaseModel):
    """The batch as pydantic reads it in one pass (the fast path for batches without problems)."""

    model_config = ConfigDict(extra="ignore")
    v: int
    district_id: str
    compound_id: str
    events: list[Event]


def decode_batch(address: TopicAddress, body: bytes, *, now: datetime | None = None) -> DecodedBatch:
    """Validate a batch against its topic; per-event problems reject only that event."""
    now = now or utc_now()
    try:
        envelope = _Envelope.model_validate_json(body)
    except ValidationError:
        pass  # find out exactly what is wrong, event by event, below
    else:
        if (
            envelope.v == PROTOCOL_VERSION
            and envelope.district_id == address.district_id
            and envelope.compound_id == address.compound_id
            and 1 <= len(envelope.events) <= MAX_EVENTS_PER_BATCH
        ):
            decoded = DecodedBatch()
            for index, event in enumerate(envelope.events):
                try:
                    decoded.events.append(_check_identity_and_time(address, event, now))
                except PayloadRejected as exc:
                    decoded.rejected.append((index, exc))
            return decoded
    try:
        document = strict_json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PayloadRejected("malformed_json", f"batch is not JSON: {str(exc)[:120]}") from None
    if not isinstance(document, dict):
        raise PayloadRejected("malformed_json", "batch must be a JSON object")
    if document.get("v") != PROTOCOL_VERSION:
        raise PayloadRejected(
            "unsupported_version",
            f"batch version {document.get('v')!r}, expected {PROTOCOL_VERSION}",
            field="v",
        )
    for key in ("district_id", "compound_id"):
        if document.get(key) != getattr(address, key):
            raise PayloadRejected(
                "identity_mismatch", f"{key} {document.get(key)!r} does not match the topic", field=key
            )
    events = document.get("events")
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS_PER_BATCH:
        raise PayloadRejected(
            "bad_field", f"events must be a list of 1..{MAX_EVENTS_PER_BATCH}", field="events"
        )
    decoded = DecodedBatch()
    for index, raw in enumerate(events):
        try:
            decoded.events.append(_check_event(address, raw, now))
        except PayloadRejected as exc:
            decoded.rejected.append((index, exc))
    return decoded


def _check_event(address: TopicAddress, raw: object, now: datetime) -> Event:
    try:
        event = Event.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PayloadRejected("invalid_event", first["msg"], field=where) from None
    return _check_identity_and_time(address, event, now)


def _check_identity_and_time(address: TopicAddress, event: Event, now: datetime) -> Event:
    if event.compound_id != address.compound_id or event.district_id != address.district_id:
        raise PayloadRejected(
            "identity_mismatch", "event belongs to another compound than its topic", field="compound_id"
        )
    if event.kind.value != address.channel:
        raise PayloadRejected(
            "identity_mismatch", f"a {event.kind} event on the {address.channel} topic", field="kind"
        )
    for name in ("occurred_at", "received_at"):
        moment: datetime = getattr(event, name)
        if not EARLIEST <= moment <= now + FUTURE_TOLERANCE:
            raise PayloadRejected("bad_timestamp", f"{moment.isoformat()} is not a sane time", field=name)
    return event
