"""Canonical events as InfluxDB line protocol: the documented measurement / tag / field mapping.

* measurement: the event kind (``face_access``, ``vehicle_pass``, ...).
* tags (low cardinality only): district_id, compound_id, device_id, severity, dialect, and per kind
  the few enumerations operators filter on (result and direction; direction and list type;
  shed condition; device state; watch list id).
* fields: ``event_id`` and ``body`` (the canonical event JSON) always; per kind the values queries
  need (person_ref, plate, similarity, confidence, floors, temperatures...). Person references,
  plates and event ids are fields, never tags: they would explode series cardinality.
* timestamp: occurred_at truncated to the millisecond, plus a deterministic 0..999,999 ns offset
  derived from the event id. The same event always lands on the same point (a re-write is an
  identical overwrite, so writes are idempotent), and two distinct events of one device in the
  same millisecond land on different points unless their ids collide in 20 bits of the offset
  (probability 1e-6 per such pair).

Every string is escaped for its position, so no value can inject a tag, a field or a line.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from types import MappingProxyType

from pydantic import BaseModel

from foundation.events import (
    DeviceStatusPayload,
    EbikeShedPayload,
    Event,
    FaceAccessPayload,
    RuleFiredPayload,
    ThrownObjectPayload,
    VehiclePassPayload,
    VehicleWatchHitPayload,
    WatchlistHitPayload,
)
from foundation.fault_switches import FaultSwitch, fault_on

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FieldValue = str | float | int | bool


def _escape_key(text: str) -> str:
    # tag keys, tag values and field keys: comma, equals sign and space are escaped
    return (
        text.replace("\\", "\\\\")
        .replace(",", "\\,")
        .replace("=", "\\=")
        .replace(" ", "\\ ")
        .replace("\n", "\\n")
    )


def _escape_measurement(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ").replace("\n", "\\n")


def _field(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)  # always with a decimal point or exponent: stays a float field
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def point_time_ns(event: Event) -> int:
    """The point's timestamp: the time of occurrence plus the event's deterministic offset.

    InfluxDB keeps one point per series and timestamp, so distinct events of one device must not
    share one, while the same event written twice must land on its own point again. Device clocks
    mostly tick in whole seconds or milliseconds: those events get the millisecond plus an offset
    of up to 999,999 ns from their id (two events of one device in one millisecond collide with a
    chance of one in a million). Times with sub-millisecond digits (the gateway's own clock: births,
    last wills, receipt times) keep their microsecond, so a device's birth, report and last will
    within one millisecond stay in order, plus an offset of up to 999 ns from the id.
    """
    micros = (event.occurred_at - EPOCH) // timedelta(microseconds=1)
    if fault_on(FaultSwitch.INFLUX_DEDUP_OFF):
        # broken on purpose (tests only): each write of the event is a new point
        return (micros // 1000) * 1_000_000 + secrets.randbelow(1_000_000)
    digest = int.from_bytes(hashlib.sha256(event.event_id.encode()).digest()[:8], "big")
    if micros % 1000:
        return micros * 1000 + digest % 1000
    return (micros // 1000) * 1_000_000 + digest % 1_000_000


# Per payload type: the payload attributes that become tags (indexed, few values) and those that
# become fields, in this order. Every member of ``Payload`` must be listed: a kind missing here
# raises when its first event is written (never "no tags"), and tests/test_uplink_protocol.py fails
# as soon as a new payload type is added without its entry.
PAYLOAD_COLUMNS: Mapping[type[BaseModel], tuple[tuple[str, ...], tuple[str, ...]]] = MappingProxyType(
    {
        FaceAccessPayload: (
            ("result", "direction"),
            ("person_ref", "person_type", "verify_mode", "similarity", "mask"),
        ),
        VehiclePassPayload: (
            ("direction", "list_type", "plate_class"),
            (
                "plate",
                "plate_raw",
                "plate_color",
                "new_energy",
                "vehicle_type",
                "barrier_action",
                "confidence",
            ),
        ),
        ThrownObjectPayload: ((), ("building", "unit", "start_floor", "confidence")),
        EbikeShedPayload: (("condition",), ("temperature_c", "smoke_level", "battery_pct")),
        DeviceStatusPayload: (("state",), ("reason",)),
        WatchlistHitPayload: (("list_id",), ("person_ref", "distance", "list_version", "source_event_id")),
        VehicleWatchHitPayload: (("list_id", "direction"), ("plate", "list_version", "source_event_id")),
        RuleFiredPayload: (("rule", "phase"), ("trigger_event_id", "trigger_kind", "matched_events")),
    }
)


def _plain(value: object) -> FieldValue | None:
    """An enum as its value; everything else as it is (str, int, float, bool or None)."""
    return value.value if isinstance(value, Enum) else value  # type: ignore[return-value]


def tags_and_fields(event: Event) -> tuple[dict[str, str], dict[str, FieldValue]]:
    """The tag set and field set of an event."""
    tags = {
        "district_id": event.district_id,
        "compound_id": event.compound_id,
        "device_id": event.device_id,
        "severity": event.severity.value,
        "dialect": event.source.dialect,
    }
    fields: dict[str, FieldValue] = {"event_id": event.event_id, "body": event.model_dump_json()}
    payload = event.payload
    try:
        tag_names, field_names = PAYLOAD_COLUMNS[type(payload)]
    except KeyError:
        raise TypeError(
            f"no line-protocol columns for {type(payload).__name__}: add it to PAYLOAD_COLUMNS"
        ) from None
    tags |= {name: str(_plain(getattr(payload, name))) for name in tag_names}
    for name in field_names:
        value = _plain(getattr(payload, name))
        if value is not None:
            fields[name] = value
    return tags, fields


def point_line(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], time_ns: int
) -> str:
    """One point as one line, every name and value escaped for its position (empty tags left out).

    Also how retention rewrites a stored point: InfluxDB replaces the given fields of the point with
    the same measurement, tag set and time, and keeps its other fields.
    """
    tag_text = "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in sorted(tags.items()) if v)
    field_text = ",".join(f"{_escape_key(k)}={_field(v)}" for k, v in fields.items())
    return f"{_escape_measurement(measurement)}{tag_text} {field_text} {time_ns}"


def to_line(event: Event) -> str:
    """One event as one line of line protocol."""
    tags, fields = tags_and_fields(event)
    return point_line(event.kind.value, tags, fields, point_time_ns(event))


def to_lines(events: Iterable[Event]) -> bytes:
    """A write body."""
    return "\n".join(to_line(event) for event in events).encode()
