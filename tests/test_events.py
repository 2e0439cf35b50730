"""The canonical event model: validation rules and the published JSON Schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from foundation.events import (
    AccessResult,
    BarrierAction,
    Direction,
    Event,
    EventKind,
    FaceAccessPayload,
    ListType,
    PlateClass,
    PlateColor,
    Provenance,
    Severity,
    VehiclePassPayload,
    VehicleType,
    VerifyMode,
    classify_plate,
    event_json_schema,
)

ROOT = Path(__file__).resolve().parents[1]


def _vehicle(plate: str | None, *, new_energy: bool = False) -> VehiclePassPayload:
    return VehiclePassPayload(
        plate=plate,
        new_energy=new_energy,
        plate_color=PlateColor.BLUE,
        vehicle_type=VehicleType.CAR,
        direction=Direction.IN,
        barrier_action=BarrierAction.OPENED,
        list_type=ListType.ALLOW,
    )


def _event(**changes: object) -> Event:
    fields: dict[str, object] = {
        "event_id": "0f0e0d0c-0000-5000-8000-000000000001",
        "kind": EventKind.FACE_ACCESS,
        "district_id": "36010400005000000001",
        "compound_id": "36010400012160000101",
        "device_id": "36010400011240000001",
        "occurred_at": datetime(2026, 6, 1, 8, 0, tzinfo=UTC),
        "received_at": datetime(2026, 6, 1, 8, 0, 1, tzinfo=UTC),
        "severity": Severity.INFO,
        "source": Provenance(vendor="hikvision", dialect="hik-isapi-acs"),
        "payload": FaceAccessPayload(
            result=AccessResult.GRANTED, direction=Direction.IN, verify_mode=VerifyMode.FACE
        ),
    }
    fields.update(changes)
    return Event.model_validate(fields)


def test_published_schema_is_current() -> None:
    """docs/event-schema.json is exactly what the models generate (regenerate with `compound-gateway schema`)."""
    published = json.loads((ROOT / "docs" / "event-schema.json").read_text(encoding="utf-8"))
    assert published == event_json_schema()


def test_schema_lists_every_kind() -> None:
    """The schema's payload union covers every event kind."""
    text = json.dumps(event_json_schema())
    for kind in EventKind:
        assert f'"{kind.value}"' in text


@pytest.mark.parametrize(
    "plate",
    ["浙A12345", "京AF0236", "粤BD12345", "苏E1234学", "沪A1234警", "使014578", "WJ京12345", "粤B1234应急"],
)
def test_valid_plates(plate: str) -> None:
    """Ordinary, new-energy and special-suffix plates are accepted."""
    assert _vehicle(plate, new_energy=classify_plate(plate) is PlateClass.NEW_ENERGY).plate == plate


@pytest.mark.parametrize(
    "plate",
    [
        "浙A1234",
        "浙I12345",
        "AB12345",
        "浙A123456789",
        "浙a12345",
        "浙A12 45",
        "WJ京1234<",
        "粤B1234应急应急",
    ],
)
def test_invalid_plates(plate: str) -> None:
    """Wrong length, I/O letters, missing province, lower case and spaces are refused."""
    with pytest.raises(ValidationError):
        _vehicle(plate)


def test_new_energy_needs_eight_characters() -> None:
    """A new-energy flag on a 7-character plate is a contradiction."""
    with pytest.raises(ValidationError, match="8 characters"):
        _vehicle("浙A12345", new_energy=True)


def test_kind_must_match_payload() -> None:
    """The envelope's kind repeats the payload's; a mismatch is refused."""
    with pytest.raises(ValidationError, match="does not match"):
        _event(kind=EventKind.VEHICLE_PASS)


def test_times_need_a_zone() -> None:
    """occurred_at without a time zone is refused."""
    with pytest.raises(ValidationError):
        _event(occurred_at=datetime(2026, 6, 1, 8, 0))


def test_ids_are_twenty_digits() -> None:
    """Device ids follow the 20-digit GB/T 28181 layout."""
    with pytest.raises(ValidationError):
        _event(device_id="3601040001124000000")


def test_events_are_frozen_and_round_trip() -> None:
    """Events are immutable and survive JSON serialization unchanged."""
    event = _event()
    with pytest.raises(ValidationError):
        event.severity = Severity.CRITICAL  # type: ignore[misc]
    assert Event.model_validate_json(event.model_dump_json()) == event


def test_alarm_is_critical_severity() -> None:
    """Only critical events count as alarms (never shed, sent first)."""
    assert _event(severity=Severity.CRITICAL).is_alarm
    assert not _event(severity=Severity.WARNING).is_alarm


def test_ga1400_plate_colour_codes() -> None:
    """The internal colour maps to GA/T 1400's ColorType codes (5 blue, 6 yellow, 9 green)."""
    assert PlateColor.BLUE.ga1400_code == "5"
    assert PlateColor.YELLOW.ga1400_code == "6"
    assert PlateColor.GREEN.ga1400_code == "9"


def test_event_of_1_1_without_plate_class_decodes() -> None:
    """A 1.1 vehicle pass (no plate_class, no plate_raw) still decodes; the class comes from the plate."""
    payload = {
        "kind": "vehicle_pass",
        "plate": "粤BD12345",
        "new_energy": True,
        "plate_color": "green",
        "vehicle_type": "car",
        "direction": "in",
        "barrier_action": "opened",
        "list_type": "allow",
    }
    event = _event(schema_version="1.1", kind=EventKind.VEHICLE_PASS, payload=payload)
    assert event.schema_version == "1.1"
    assert isinstance(event.payload, VehiclePassPayload)
    assert event.payload.plate_class is PlateClass.NEW_ENERGY
    assert event.payload.plate_raw is None
    no_plate = _event(
        schema_version="1.1",
        kind=EventKind.VEHICLE_PASS,
        payload={**payload, "plate": None, "new_energy": False},
    )
    assert isinstance(no_plate.payload, VehiclePassPayload)
    assert no_plate.payload.plate_class is PlateClass.UNKNOWN


@pytest.mark.parametrize(
    ("plate", "plate_class"),
    [("沪A1234警", PlateClass.CIVIL), ("浙A12345", PlateClass.POLICE), (None, PlateClass.POLICE)],
)
def test_plate_class_must_match_the_plate(plate: str | None, plate_class: PlateClass) -> None:
    """A class the plate does not show is a contradiction."""
    with pytest.raises(ValidationError, match="plate_class"):
        VehiclePassPayload(
            plate=plate,
            plate_class=plate_class,
            plate_color=PlateColor.BLUE,
            vehicle_type=VehicleType.CAR,
            direction=Direction.IN,
            barrier_action=BarrierAction.OPENED,
            list_type=ListType.ALLOW,
        )


@pytest.mark.parametrize("raw", ["a" * 33, "浙A<script>", "x\n", ""])
def test_plate_raw_is_bounded_and_plain(raw: str) -> None:
    """plate_raw is short text without markup, quoting or control characters."""
    with pytest.raises(ValidationError):
        VehiclePassPayload(
            plate_raw=raw,
            plate_color=PlateColor.BLUE,
            vehicle_type=VehicleType.CAR,
            direction=Direction.IN,
            barrier_action=BarrierAction.OPENED,
            list_type=ListType.ALLOW,
        )
