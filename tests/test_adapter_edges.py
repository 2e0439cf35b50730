"""Edge cases found in the field or by hypothesis, pinned as regressions."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from adapters import DIALECTS
from adapters.base import ParseResult, RawMessage
from foundation.errors import PayloadRejected
from tests.conftest import PARSE_CONTEXT

CTX = PARSE_CONTEXT


def parse(
    dialect: str, body: bytes, *, content_type: str | None = None, topic: str | None = None
) -> ParseResult:
    return DIALECTS[dialect].parse(RawMessage(body, content_type=content_type, topic=topic), CTX)


def rejected(dialect: str, body: bytes, **kw: str) -> tuple[str, str | None]:
    with pytest.raises(PayloadRejected) as info:
        parse(dialect, body, **kw)
    return info.value.rejection.reason, info.value.rejection.field


def test_xml_with_unknown_encoding_is_rejected() -> None:
    """Found by hypothesis: an unknown encoding in the XML declaration raised LookupError."""
    body = b'<?xml version="1.0" encoding="ttf-8"?><EventNotificationAlert/>'
    assert rejected("hik-isapi-anpr", body, content_type="text/xml")[0] == "malformed_xml"


def test_xml_entity_expansion_is_refused() -> None:
    """Billion-laughs style documents never expand."""
    body = b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "bbbbbbbb">]><EventNotificationAlert>&b;</EventNotificationAlert>'
    assert rejected("hik-isapi-anpr", body, content_type="application/xml")[0] == "forbidden_xml"


def test_naive_device_time_is_local() -> None:
    """Uface sends local time without a zone: it is read in the compound's zone (UTC+8)."""
    doc = {
        "msgId": "m1",
        "sn": "SN1",
        "type": "face_rec",
        "time": "2026-06-01 08:00:00",
        "data": {"recResult": 1},
    }
    (event,) = parse("uface-mqtt", json.dumps(doc).encode(), topic="uface/SN1/event").events
    assert event.occurred_at == datetime(2026, 6, 1, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("when", ["1970-01-01 00:00:00", "2100-06-01 00:00:00", "2026-13-01 00:00:00"])
def test_implausible_device_clock_is_rejected(when: str) -> None:
    """A clock at the epoch, past 2099 or nonsense is refused with the field named."""
    doc = {"msgId": "m1", "sn": "SN1", "type": "face_rec", "time": when, "data": {"recResult": 1}}
    assert rejected("uface-mqtt", json.dumps(doc).encode(), topic="uface/SN1/event") == (
        "bad_timestamp",
        "time",
    )


def test_similarity_above_scale_is_out_of_range() -> None:
    """A similarity of 150 (on a 0..100 scale) is refused, not clamped."""
    doc = {
        "msgId": "m1",
        "sn": "SN1",
        "type": "face_rec",
        "time": "2026-06-01 08:00:00",
        "data": {"recResult": 1, "similarity": 150},
    }
    assert rejected("uface-mqtt", json.dumps(doc).encode(), topic="uface/SN1/event") == (
        "out_of_range",
        "data.similarity",
    )


def test_shed_report_with_several_alerts_yields_one_event_each() -> None:
    """Alert 0x85 = smoke + low battery + fault: three events with distinct ids."""
    doc = {
        "seq": 9,
        "ts": 1780272000000,
        "type": "alarm",
        "alert": 0x85,
        "devCode": 3,
        "smoke": 40,
        "temp": 50,
        "battPct": 9,
    }
    events = parse("shed-mqtt", json.dumps(doc).encode(), topic="shed/860812045678901/up").events
    assert [e.payload.condition for e in events] == ["fire_alarm", "low_battery", "fault"]  # type: ignore[union-attr]
    assert len({e.event_id for e in events}) == 3
    assert [e.severity for e in events] == ["critical", "warning", "warning"]


def test_shed_unknown_alert_bits_are_rejected() -> None:
    """Bits the dialect does not define are refused rather than ignored."""
    doc = {"seq": 9, "ts": 1780272000000, "type": "alarm", "alert": 0x40}
    assert rejected("shed-mqtt", json.dumps(doc).encode(), topic="shed/860812045678901/up") == (
        "bad_field",
        "alert",
    )


def test_hightoss_follow_up_pictures_are_not_new_alarms() -> None:
    """Posts 2..n of a picture group add pictures to the alarm raised by post 1."""
    doc = {"Code": "HighTossDetect", "EventID": 5, "UTC": 1780272000, "IndexInGroup": 2, "Objects": []}
    assert parse("hightoss-mqtt", json.dumps(doc).encode(), topic="hightoss/SN/alarm").events == ()


def test_topic_for_another_channel_is_rejected() -> None:
    """An MQTT message on an unexpected channel names the topic problem."""
    assert rejected("vz-lpr-mqtt", b"{}", topic="vzlpr/SN/config")[0] == "bad_topic"


def test_ctwing_fault_state_turns_heartbeat_into_fault() -> None:
    """DevState != 0 on an otherwise quiet report is a device fault."""
    doc = {
        "notifyType": "deviceDataChanged",
        "deviceId": "p1",
        "service": {
            "serviceId": "Report",
            "eventTime": "20260601T000000Z",
            "data": {"devId": "D1", "devState": 2, "cmdValue": "0", "temperature": 250},
        },
    }
    (event,) = parse("ctwing-smoke", json.dumps(doc).encode()).events
    assert event.payload.condition == "fault"  # type: ignore[union-attr]
    assert event.payload.temperature_c == 25.0  # type: ignore[union-attr]
