"""Which events the watch-list matcher looks at, and what of them (pure: events in, work out)."""

from __future__ import annotations

from datetime import UTC, datetime

from foundation.events import (
    AccessResult,
    BarrierAction,
    Direction,
    EbikeShedPayload,
    Event,
    EventKind,
    FaceAccessPayload,
    ListType,
    MediaRef,
    Payload,
    PlateColor,
    Provenance,
    Severity,
    ShedCondition,
    VehiclePassPayload,
    VehicleType,
    VerifyMode,
)
from gateway.outbox import WatchWork
from gateway.watch_subjects import FACE_WORK, PLATE_WORK, watch_work_for

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
FACE = FaceAccessPayload(result=AccessResult.GRANTED, direction=Direction.IN, verify_mode=VerifyMode.FACE)


def event(kind: EventKind, payload: Payload, *media: MediaRef) -> Event:
    return Event(
        event_id="0123456789abcdef",
        kind=kind,
        district_id="36010400005000000001",
        compound_id="36010400012160000101",
        device_id="36010400011240000001",
        occurred_at=T0,
        received_at=T0,
        severity=Severity.INFO,
        source=Provenance(vendor="test", dialect="test"),
        media=media,
        payload=payload,
    )


def vehicle(plate: str | None) -> VehiclePassPayload:
    return VehiclePassPayload(
        plate=plate,
        plate_color=PlateColor.BLUE,
        vehicle_type=VehicleType.CAR,
        direction=Direction.OUT,
        barrier_action=BarrierAction.OPENED,
        list_type=ListType.ALLOW,
    )


def test_face_gate_picture_in_the_media_store_is_face_work() -> None:
    """A face-gate event's first stored face or scene picture is queued for analysis, with its direction."""
    plate_picture = MediaRef(role="plate", ref="local:bb/plate.jpg")
    face_picture = MediaRef(role="face", ref="local:aa/face.jpg")
    scene_picture = MediaRef(role="scene", ref="local:cc/scene.jpg")
    assert watch_work_for(
        event(EventKind.FACE_ACCESS, FACE, plate_picture, face_picture, scene_picture)
    ) == WatchWork(FACE_WORK, "aa/face.jpg", "in")
    assert watch_work_for(event(EventKind.FACE_ACCESS, FACE, scene_picture)) == WatchWork(
        FACE_WORK, "cc/scene.jpg", "in"
    )


def test_face_gate_without_a_stored_picture_is_no_work() -> None:
    """No picture, or one only the device holds (never fetched), leaves nothing to analyse."""
    assert watch_work_for(event(EventKind.FACE_ACCESS, FACE)) is None
    remote = MediaRef(role="face", ref="device:cam-1/123")
    assert watch_work_for(event(EventKind.FACE_ACCESS, FACE, remote)) is None


def test_vehicle_pass_with_a_plate_is_plate_work() -> None:
    """A plate read is looked up; a pass without a plate, or another kind of event, is no work."""
    assert watch_work_for(event(EventKind.VEHICLE_PASS, vehicle("赣A12345"))) == WatchWork(
        PLATE_WORK, "赣A12345", "out"
    )
    assert watch_work_for(event(EventKind.VEHICLE_PASS, vehicle(None))) is None
    shed = EbikeShedPayload(condition=ShedCondition.FIRE_ALARM, temperature_c=80.0)
    scene = MediaRef(role="scene", ref="local:cc/scene.jpg")
    assert watch_work_for(event(EventKind.EBIKE_SHED, shed, scene)) is None
