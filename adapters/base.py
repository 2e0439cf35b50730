"""What every dialect adapter shares: its interface, its input and output, and strict field readers.

A dialect adapter is a pure translator: raw vendor bytes in, canonical events out, or a
``PayloadRejected`` naming the field and the reason. Transports (the MQTT intake, the HTTP receiver)
are shared by all devices and live in ``gateway/``; vendor quirks stay in the dialect modules.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from foundation import strict_json
from foundation.errors import PayloadRejected
from foundation.events import (
    DeviceState,
    DeviceStatusPayload,
    Event,
    EventKind,
    Location,
    MediaRef,
    Payload,
    Provenance,
    Severity,
)
from foundation.identity import Pseudonymizer, event_id

if TYPE_CHECKING:
    from adapters.commands import CommandEncoder

EARLIEST_PLAUSIBLE = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_PLAUSIBLE = datetime(2100, 1, 1, tzinfo=UTC)
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f]")


class Transport(StrEnum):
    """How a dialect's payloads reach the gateway."""

    MQTT = "mqtt"
    HTTP_DEVICE = "http_device"  # each device posts to its own URL: /push/<device id>
    HTTP_PLATFORM = "http_platform"  # a vendor platform posts for many devices: /platform/<dialect>


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One payload exactly as it arrived."""

    body: bytes
    content_type: str | None = None
    topic: str | None = None


@dataclass(frozen=True)
class DeviceContext:
    """What the gateway knows about the sending device, from the inventory."""

    district_id: str
    compound_id: str
    device_id: str
    received_at: datetime
    local_tz: tzinfo
    pseudonymizer: Pseudonymizer
    location: Location | None = None
    forward_is_in: bool = True  # cameras: does "forward"/"towards the camera" mean entering the compound?


@dataclass(frozen=True, slots=True)
class MediaBlob:
    """Picture bytes that arrived with an event; stored locally, referenced by hash."""

    role: str
    content_type: str
    data: bytes
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())

    @property
    def suffix(self) -> str:
        """File suffix in the media store."""
        return ".png" if self.content_type == "image/png" else ".jpg"

    @property
    def relative_path(self) -> str:
        """Content-addressed path inside the media store (identical pictures are stored once)."""
        return f"{self.sha256[:2]}/{self.sha256}{self.suffix}"

    def ref(self) -> MediaRef:
        """The reference an event carries instead of the bytes."""
        return MediaRef(
            role=self.role,  # validated by MediaRef itself
            ref=f"local:{self.relative_path}",
            content_type=self.content_type,
            sha256=self.sha256,
            size=len(self.data),
        )


@dataclass(frozen=True)
class DeviceTopics:
    """What one MQTT device may do on the compound broker, as topic filters with ``{ref}`` for its ref.

    The compound broker's ACL is written from these (``gateway/broker_accounts.py``): a device
    publishes only ``publishes`` and reads only ``subscribes`` under its own ref; the gateway reads
    every device's ``publishes`` and writes every device's ``subscribes``.
    """

    publishes: tuple[str, ...]
    subscribes: tuple[str, ...]

    @classmethod
    def under_prefix(cls, prefix: str) -> DeviceTopics:
        """The project's layout: events and status on ``<prefix>/<ref>/<channel>``, commands below.

        Command requests reach the device on ``<prefix>/<ref>/cmd/req`` and ``.../state/req``, its
        answers go to ``.../cmd/resp`` and ``.../state/resp`` (four levels: the gateway's event
        subscription ``<prefix>/+/+`` never receives them). Named for every MQTT dialect, also
        those whose adapter sends no command yet, so the ACL does not change when one does.
        """
        return cls(
            publishes=(f"{prefix}/{{ref}}/+", f"{prefix}/{{ref}}/cmd/resp", f"{prefix}/{{ref}}/state/resp"),
            subscribes=(f"{prefix}/{{ref}}/cmd/req", f"{prefix}/{{ref}}/state/req"),
        )

    def of(self, ref: str) -> DeviceTopics:
        """The topics of the device whose ref is ``ref``."""
        return DeviceTopics(
            tuple(t.replace("{ref}", ref) for t in self.publishes),
            tuple(t.replace("{ref}", ref) for t in self.subscribes),
        )


MQTT_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A ref that is safe as an MQTT topic level and a broker user name (no ``/``, ``+``, ``#``, spaces).

No ``:`` either: Mosquitto's password file splits ``user:hash`` at the first colon, so a MAC
address written with colons would never log in (Mosquitto 2.0.11 drops the entry); write it without.
"""


class Dialect(Protocol):
    """One vendor dialect: how to find the device and how to read its payloads."""

    @property
    def name(self) -> str:
        """The dialect's name in configs and on the command line."""
        ...

    @property
    def vendor(self) -> str:
        """Whose dialect it is (provenance)."""
        ...

    @property
    def kind(self) -> EventKind:
        """The event kind its payloads mostly carry."""
        ...

    @property
    def transport(self) -> Transport:
        """How its payloads arrive."""
        ...

    @property
    def description(self) -> str:
        """One line for ``parse --list-dialects``."""
        ...

    @property
    def topic_filter(self) -> str | None:
        """MQTT dialects: what the gateway subscribes to."""
        ...

    @property
    def device_topics(self) -> DeviceTopics | None:
        """MQTT dialects: what each device may publish and read on the compound broker."""
        ...

    @property
    def commands(self) -> CommandEncoder | None:
        """How to send its devices commands (``adapters/commands.py``), or None: they take none."""
        ...

    @property
    def sequence(self) -> SequenceReader | None:
        """Where its payloads carry the device's own message sequence number, or None: they carry none."""
        ...

    def device_ref(self, raw: RawMessage) -> str:
        """The vendor's identity of the sending device (for shared transports), or reject."""
        ...

    def parse(self, raw: RawMessage, ctx: DeviceContext) -> ParseResult:
        """Canonical events (and their pictures) from one payload, or ``PayloadRejected``."""
        ...


@dataclass(frozen=True)
class ParseResult:
    """What a dialect made of one payload.

    Attributes:
        events: the canonical events (none for a heartbeat or a post that is no passage).
        media: the pictures the events refer to.
        sequence: the device's own sequence number of this payload, for dialects whose devices
            number their messages (``Dialect.sequence``); None otherwise.
    """

    events: tuple[Event, ...]
    media: tuple[MediaBlob, ...] = ()
    sequence: int | None = None


class SequenceReader(Protocol):
    """How a dialect's devices number their messages, so that the gateway can see what never arrived.

    A device that counts its messages (a shed sensor's ``seq``, an access controller's ``serialNo``)
    lets the gateway tell a gap (numbers that never arrived) from a restart (the count starts again)
    and from a QoS 1 redelivery (a number seen before). ``parse`` reports the number of a payload it
    accepts in ``ParseResult.sequence``; ``read`` finds it in a payload that was refused for another
    reason, so that a dead-lettered message is not mistaken for a lost one.
    """

    @property
    def field(self) -> str:
        """The vendor's name of the field (for logs and documentation)."""
        ...

    def read(self, raw: RawMessage) -> int | None:
        """The payload's sequence number, best effort: None when it has none or it is unreadable; never raises."""
        ...


@dataclass(frozen=True)
class JsonSequence:
    """A sequence number at a fixed path in a JSON payload (a non-negative integer)."""

    path: tuple[str, ...]

    @property
    def field(self) -> str:
        """The dotted path of the field."""
        return ".".join(self.path)

    def read(self, raw: RawMessage) -> int | None:
        """The integer at ``path``, or None."""
        try:
            return sequence_at(load_json_object(raw.body), self.path)
        except PayloadRejected:
            return None


def sequence_at(document: Mapping[str, object], path: tuple[str, ...]) -> int | None:
    """The non-negative integer at ``path`` in a decoded JSON document, or None (never raises)."""
    value: object = document
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:  # not "²"
        return int(value)  # firmware that quotes its numbers (the parsers accept decimal strings too)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


# --- strict readers --------------------------------------------------------------------------------


def load_json_object(body: bytes, *, what: str = "payload") -> Mapping[str, object]:
    """Decode a UTF-8 JSON object or reject with the precise reason."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadRejected("not_utf8", f"{what} is not UTF-8 (byte {exc.start})") from None
    try:
        value = strict_json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise PayloadRejected("malformed_json", f"{what} nests too deeply") from None
    except json.JSONDecodeError as exc:
        raise PayloadRejected(
            "malformed_json", f"{what} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(value, dict):
        raise PayloadRejected("malformed_json", f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _reject_constant(name: str) -> object:
    raise PayloadRejected("malformed_json", f"{name} is not a JSON number")


class Fields:
    """Typed access to a vendor JSON object; every failure names the dotted field path."""

    def __init__(self, obj: Mapping[str, object], path: str = "") -> None:
        self._obj = obj
        self._path = path

    def _where(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def has(self, key: str) -> bool:
        """Whether the key is present and not null."""
        return self._obj.get(key) is not None

    def raw(self, key: str) -> object:
        """The value as decoded, or None."""
        return self._obj.get(key)

    def sub(self, key: str) -> Fields:
        """A required nested object."""
        value = self._obj.get(key)
        if not isinstance(value, dict):
            raise self._missing_or_wrong(key, value, "an object")
        return Fields(value, self._where(key))

    def opt_sub(self, key: str) -> Fields | None:
        """An optional nested object."""
        return None if self._obj.get(key) is None else self.sub(key)

    def items(self, key: str) -> list[Fields]:
        """A required list of objects (possibly empty)."""
        value = self._obj.get(key)
        if not isinstance(value, list):
            raise self._missing_or_wrong(key, value, "a list")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise PayloadRejected(
                    "bad_field",
                    f"expected an object, got {type(item).__name__}",
                    field=f"{self._where(key)}[{i}]",
                )
            out.append(Fields(item, f"{self._where(key)}[{i}]"))
        return out

    def text(self, key: str, *, max_len: int = 256) -> str:
        """A required non-empty string."""
        value = self._obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self._missing_or_wrong(key, value, "a non-empty string")
        if len(value) > max_len:
            raise PayloadRejected("bad_field", f"longer than {max_len} characters", field=self._where(key))
        if _CONTROL_CHARACTERS.search(value):
            raise PayloadRejected("bad_field", "contains control characters", field=self._where(key))
        return value.strip()

    def opt_text(self, key: str, *, max_len: int = 256) -> str | None:
        """An optional string; empty strings count as absent."""
        value = self._obj.get(key)
        if value is None or value == "":
            return None
        return self.text(key, max_len=max_len)

    def integer(self, key: str, *, lo: int | None = None, hi: int | None = None) -> int:
        """A required integer (JSON number without fraction, or a decimal string)."""
        value = self._obj.get(key)
        if isinstance(value, bool) or value is None:
            raise self._missing_or_wrong(key, value, "an integer")
        if isinstance(value, int):
            number = value
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 20:
            number = int(value.strip())
        elif isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            number = int(value)
        else:
            raise self._missing_or_wrong(key, value, "an integer")
        self._check_range(key, number, lo, hi)
        return number

    def opt_integer(self, key: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
        """An optional integer."""
        return None if self._obj.get(key) is None else self.integer(key, lo=lo, hi=hi)

    def number(self, key: str, *, lo: float | None = None, hi: float | None = None) -> float:
        """A required finite number (or numeric string)."""
        value = self._obj.get(key)
        number: float
        if isinstance(value, bool) or value is None:
            raise self._missing_or_wrong(key, value, "a number")
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise self._missing_or_wrong(key, value, "a number") from None
        else:
            raise self._missing_or_wrong(key, value, "a number")
        if not math.isfinite(number):
            raise PayloadRejected("bad_field", "must be a finite number", field=self._where(key))
        self._check_range(key, number, lo, hi)
        return number

    def opt_number(self, key: str, *, lo: float | None = None, hi: float | None = None) -> float | None:
        """An optional finite number."""
        value = self._obj.get(key)
        return None if value is None or value == "" else self.number(key, lo=lo, hi=hi)

    def _check_range(self, key: str, number: float, lo: float | None, hi: float | None) -> None:
        if (lo is not None and number < lo) or (hi is not None and number > hi):
            raise PayloadRejected("out_of_range", f"{number} is outside {lo}..{hi}", field=self._where(key))

    def _missing_or_wrong(self, key: str, value: object, expected: str) -> PayloadRejected:
        if value is None:
            return PayloadRejected("missing_field", f"required, expected {expected}", field=self._where(key))
        shown = repr(value)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        return PayloadRejected("bad_field", f"expected {expected}, got {shown}", field=self._where(key))

    def path(self, key: str) -> str:
        """The dotted path of a key under this object (for callers raising their own rejections)."""
        return self._where(key)


def plausible_time(value: datetime, field_name: str) -> datetime:
    """Reject clocks that are certainly wrong (before 2000 or after 2099); keep the rest as reported."""
    if value.tzinfo is None:
        raise PayloadRejected("bad_timestamp", "time has no time zone", field=field_name)
    if not EARLIEST_PLAUSIBLE <= value < LATEST_PLAUSIBLE:
        raise PayloadRejected(
            "bad_timestamp", f"{value.isoformat()} is not a plausible time", field=field_name
        )
    return value


def parse_iso_time(text: str, field_name: str, local_tz: tzinfo) -> datetime:
    """ISO 8601 time; a time without offset is the device's local time zone."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise PayloadRejected(
            "bad_timestamp", f"{text[:40]!r} is not an ISO 8601 time", field=field_name
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=local_tz)
    return plausible_time(value, field_name)


def parse_epoch(seconds: float, field_name: str) -> datetime:
    """Unix time in seconds (fractions allowed)."""
    try:
        value = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise PayloadRejected("bad_timestamp", f"{seconds} is not a Unix time", field=field_name) from None
    return plausible_time(value, field_name)


def parse_compact_time(text: str, field_name: str, local_tz: tzinfo) -> datetime:
    """``yyyyMMddTHHmmssZ`` (NB-IoT platforms, UTC) or ``yyyyMMddHHmmss`` (GA/T 1400, local)."""
    cleaned = text.strip()
    try:
        if cleaned.endswith("Z") and "T" in cleaned:
            value = datetime.strptime(cleaned, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        else:
            value = datetime.strptime(cleaned, "%Y%m%d%H%M%S").replace(tzinfo=local_tz)
    except ValueError:
        raise PayloadRejected(
            "bad_timestamp", f"{cleaned[:40]!r} is not a compact time", field=field_name
        ) from None
    return plausible_time(value, field_name)


def clamp_unit(value: float) -> float:
    """Clamp a normalized coordinate into 0..1 (devices report a pixel or two outside the frame)."""
    return min(1.0, max(0.0, value))


def build_event(
    ctx: DeviceContext,
    dialect: Dialect,
    *,
    vendor_key: str,
    payload: Payload,
    severity: Severity,
    occurred_at: datetime,
    event_code: str | None,
    device_ref: str | None,
    media: tuple[MediaBlob, ...] = (),
    device_media: tuple[MediaRef, ...] = (),
) -> Event:
    """Wrap a payload in the canonical envelope with a deterministic id."""
    return Event(
        event_id=event_id(ctx.device_id, dialect.name, vendor_key),
        kind=payload.kind,
        district_id=ctx.district_id,
        compound_id=ctx.compound_id,
        device_id=ctx.device_id,
        occurred_at=occurred_at,
        received_at=ctx.received_at,
        severity=severity,
        source=Provenance(
            vendor=dialect.vendor, dialect=dialect.name, event_code=event_code, device_ref=device_ref
        ),
        location=ctx.location,
        media=tuple(blob.ref() for blob in media) + device_media,
        payload=payload,
    )


def topic_parts(raw: RawMessage, prefix: str) -> tuple[str, str]:
    """``<prefix>/<device ref>/<channel>`` -> (device ref, channel), or reject."""
    parts = (raw.topic or "").split("/")
    if len(parts) != 3 or parts[0] != prefix or not parts[1] or len(parts[1]) > 64:
        raise PayloadRejected("bad_topic", f"expected {prefix}/<device>/<channel>, got {raw.topic!r}")
    return parts[1], parts[2]


def read_mqtt_json(raw: RawMessage, prefix: str, event_channel: str) -> tuple[str, str, Fields]:
    """(device ref, channel, document) of a ``<prefix>/<ref>/<event channel or status>`` message."""
    ref, channel = topic_parts(raw, prefix)
    if channel not in {event_channel, "status"}:
        raise PayloadRejected("bad_topic", f"unknown channel {channel!r}; expected {event_channel} or status")
    return ref, channel, Fields(load_json_object(raw.body))


def status_event(ctx: DeviceContext, dialect: Dialect, device_ref: str, fields: Fields, key: str) -> Event:
    """A device_status event from a vendor's status / last-will message ``{"online": bool, "session": ...}``.

    The will is fixed when the device connects, so its ``session`` (the connect time) identifies the
    outage: a will delivered twice is one event.
    """
    online = fields.raw(key)
    if not isinstance(online, bool):
        raise PayloadRejected("bad_field", "expected true or false", field=fields.path(key))
    at = ctx.received_at
    reason = fields.opt_text("reason", max_len=120)
    session = fields.opt_text("session", max_len=64) or at.isoformat()
    return build_event(
        ctx,
        dialect,
        vendor_key=f"status|{online}|{session}",
        payload=DeviceStatusPayload(
            state=DeviceState.ONLINE if online else DeviceState.OFFLINE, reason=reason
        ),
        severity=Severity.INFO if online else Severity.WARNING,
        occurred_at=at,
        event_code="online" if online else "offline",
        device_ref=device_ref,
    )
