"""The uplink wire format and the line-protocol mapping (pure functions, no servers)."""

from __future__ import annotations

import json
import re
import typing
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foundation.errors import PayloadRejected
from foundation.events import (
    DeviceState,
    DeviceStatusPayload,
    Event,
    EventKind,
    Payload,
    Provenance,
    Severity,
    ThrownObjectPayload,
)
from foundation.identity import event_id
from uplink.lineprotocol import EPOCH, PAYLOAD_COLUMNS, point_time_ns, to_line
from uplink.protocol import decode_batch, encode_batch, event_topic, parse_topic

DISTRICT, COMPOUND = "36010400005000000001", "36010400012160000101"
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def thrown(
    n: int, *, building: str = "7幢", at: datetime = T0, compound: str = COMPOUND, district: str = DISTRICT
) -> Event:
    return Event(
        event_id=event_id("36010400011320000001", "t", str(n)),
        kind=EventKind.THROWN_OBJECT,
        district_id=district,
        compound_id=compound,
        device_id="36010400011320000001",
        occurred_at=at,
        received_at=at,
        severity=Severity.CRITICAL,
        source=Provenance(vendor="dahua", dialect="hightoss-mqtt"),
        payload=ThrownObjectPayload(building=building, start_floor=14, confidence=0.9),
    )


def test_batch_round_trip_without_reserialization() -> None:
    """The batch is built from stored bodies and decodes to the same events."""
    events = [thrown(1), thrown(2)]
    body = encode_batch(DISTRICT, COMPOUND, [e.model_dump_json().encode() for e in events])
    address = parse_topic("cgw/v1", event_topic("cgw/v1", DISTRICT, COMPOUND, "thrown_object"))
    decoded = decode_batch(address, body, now=T0)
    assert decoded.events == events
    assert decoded.rejected == []


def test_payload_must_match_topic() -> None:
    """A compound cannot speak for another: envelope and events must match the topic."""
    address = parse_topic("cgw/v1", event_topic("cgw/v1", DISTRICT, COMPOUND, "thrown_object"))
    other = "36010400012160000102"
    body = encode_batch(DISTRICT, other, [thrown(1).model_dump_json().encode()])
    with pytest.raises(PayloadRejected) as info:
        decode_batch(address, body, now=T0)
    assert info.value.rejection.reason == "identity_mismatch"
    body = encode_batch(
        DISTRICT,
        COMPOUND,
        [thrown(1, compound=other).model_dump_json().encode(), thrown(2).model_dump_json().encode()],
    )
    decoded = decode_batch(address, body, now=T0)
    assert [e.event_id for e in decoded.events] == [thrown(2).event_id]
    assert decoded.rejected[0][0] == 0
    assert decoded.rejected[0][1].rejection.reason == "identity_mismatch"


def test_kind_must_match_topic_and_times_must_be_sane() -> None:
    """A thrown-object event on the face topic, or from next year, is refused alone."""
    address = parse_topic("cgw/v1", event_topic("cgw/v1", DISTRICT, COMPOUND, "face_access"))
    body = encode_batch(DISTRICT, COMPOUND, [thrown(1).model_dump_json().encode()])
    (rejected,) = decode_batch(address, body, now=T0).rejected
    assert rejected[1].rejection.field == "kind"
    address = parse_topic("cgw/v1", event_topic("cgw/v1", DISTRICT, COMPOUND, "thrown_object"))
    future = thrown(1, at=T0 + timedelta(days=400))
    (rejected,) = decode_batch(
        address, encode_batch(DISTRICT, COMPOUND, [future.model_dump_json().encode()]), now=T0
    ).rejected
    assert rejected[1].rejection.reason == "bad_timestamp"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("location", "description"), "长" * 257),
        (("source", "vendor"), "v" * 65),
        (("payload", "building"), "7" * 65),
        (("payload", "trajectory"), [{"t_ms": i, "x": 0.5, "y": 0.5} for i in range(513)]),
        (("media",), [{"role": "scene", "ref": f"device:{i}"} for i in range(9)]),
    ],
)
def test_every_string_and_list_of_an_event_is_bounded(path: tuple[str, ...], value: object) -> None:
    """A compound cannot fill the district store through an unbounded field: that event is refused, by path."""
    address = parse_topic("cgw/v1", event_topic("cgw/v1", DISTRICT, COMPOUND, "thrown_object"))
    doc = json.loads(thrown(1).model_dump_json())
    target = doc
    for key in path[:-1]:
        if target.get(key) is None:
            target[key] = {}
        target = target[key]
    target[path[-1]] = value
    body = encode_batch(DISTRICT, COMPOUND, [json.dumps(doc).encode(), thrown(2).model_dump_json().encode()])
    decoded = decode_batch(address, body, now=T0)
    assert [e.event_id for e in decoded.events] == [thrown(2).event_id]
    ((index, problem),) = decoded.rejected
    assert index == 0
    assert problem.rejection.field is not None
    # a payload's path names its kind: payload.thrown_object.building
    assert problem.rejection.field.replace(".thrown_object", "").startswith(".".join(path))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "malformed_json"),
        (b"[]", "malformed_json"),
        (b'{"v": 2}', "unsupported_version"),
        (
            json.dumps({"v": 1, "district_id": DISTRICT, "compound_id": COMPOUND, "events": []}).encode(),
            "bad_field",
        ),
    ],
)
def test_bad_envelopes(body: bytes, reason: str) -> None:
    """Broken envelopes are refused with a specific reason."""
    address = parse_topic("cgw/v1", event_topic("cgw/v1", DISTRICT, COMPOUND, "thrown_object"))
    with pytest.raises(PayloadRejected) as info:
        decode_batch(address, body, now=T0)
    assert info.value.rejection.reason == reason


@pytest.mark.parametrize(
    "topic", ["cgw/v1/a/b", "cgw/v1/a/b/c/d", "other/v1/a/b/face_access", "cgw/v1/a/b/nonsense"]
)
def test_bad_topics(topic: str) -> None:
    """Topics outside the layout are refused."""
    with pytest.raises(PayloadRejected):
        parse_topic("cgw/v1", topic)


def test_point_times_are_deterministic_and_distinct() -> None:
    """Same event, same point; distinct events of one device in one millisecond, distinct points."""
    a, b = thrown(1), thrown(2)
    assert point_time_ns(a) == point_time_ns(thrown(1))
    assert point_time_ns(a) != point_time_ns(b)
    assert point_time_ns(a) // 1_000_000 == point_time_ns(b) // 1_000_000  # same millisecond


def test_point_times_keep_the_order_of_sub_millisecond_times() -> None:
    """Birth, report and last will of one device within one millisecond stay in order.

    The devices query takes a device's latest point as its last word; with the millisecond plus a
    hashed offset of up to 1 ms (as before), a will 0.4 ms after a birth sorted before it about half
    the time and the device showed online (the demo test caught it).
    """
    base = thrown(1).occurred_at.replace(microsecond=120_000)
    # (a time on the whole millisecond takes the device-clock path: 1 in 1000 of the gateway's)
    times = [base + timedelta(microseconds=us) for us in (1, 2, 17, 400, 401, 999)]
    events = [thrown(n).model_copy(update={"occurred_at": at}) for n, at in enumerate(times)]
    points = [point_time_ns(e) for e in events]
    assert points == sorted(points)
    assert len(set(points)) == len(points)
    assert [point_time_ns(e) for e in events] == points  # deterministic
    for event, point in zip(events, points, strict=True):
        assert point // 1000 == (event.occurred_at - EPOCH) // timedelta(microseconds=1)


_LINE = re.compile(r"^(?P<head>(?:[^ \\]|\\.)+) (?P<fields>.+) (?P<ts>-?\d+)$")


def _split(text: str, sep: str) -> list[str]:
    parts, current, escaped, quoted = [], "", False, False
    for char in text:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
            current += char
        elif char == sep and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _unescape_string(text: str) -> str:
    return re.sub(r'\\([\\"])', r"\1", text)


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """A reference reader of InfluxDB line protocol (tags unescaped; string fields as stored)."""
    match = _LINE.match(line)
    assert match, line
    head = _split(match["head"], ",")
    tags = dict(_split(t, "=") for t in head[1:])
    fields: dict[str, str] = {}
    for item in _split(match["fields"], ","):
        key, value = item.split("=", 1)
        fields[key] = _unescape_string(value[1:-1]) if value.startswith('"') else value
    return head[0], tags, fields


@given(st.text(min_size=1, max_size=60))
@settings(max_examples=300, deadline=None)
def test_no_line_protocol_injection(text: str) -> None:
    """Any text in a string field stays inside that field: one line, same tags, same value."""
    event = Event.model_validate(
        thrown(1).model_dump()
        | {
            "kind": "device_status",
            "payload": DeviceStatusPayload(state=DeviceState.FAULT, reason=text).model_dump(),
        }
    )
    line = to_line(event)
    assert "\n" not in line
    measurement, tags, fields = parse_line(line)
    assert measurement == "device_status"
    assert set(tags) == {"district_id", "compound_id", "device_id", "severity", "dialect", "state"}
    expected = text.replace("\n", "\\n")  # InfluxDB keeps a newline as the two characters
    assert fields["reason"] == expected
    assert json.loads(fields["body"])["payload"]["reason"] == text  # the body keeps it exactly


def test_every_payload_type_has_line_protocol_columns() -> None:
    """Each member of ``Payload`` has its tags and fields listed, naming only its own attributes.

    Dropping an entry from ``PAYLOAD_COLUMNS`` (or adding a payload type without one) fails here; before,
    a forgotten kind silently got no tags.
    """
    (union, *_) = typing.get_args(Payload)
    assert set(PAYLOAD_COLUMNS) == set(typing.get_args(union))
    for payload_type, (tags, fields) in PAYLOAD_COLUMNS.items():
        assert set(tags) | set(fields) <= set(payload_type.model_fields), payload_type
        assert not set(tags) & set(fields), payload_type
