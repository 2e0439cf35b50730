"""Events as GA/T 1400 objects: valid ids, codes and times, stable ids, and only what the policy allows."""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from adapters.base import RawMessage
from device_sims.broker import free_port
from device_sims.devices import CST, HttpPost, build_sim
from device_sims.inventory import COMPOUND_ID, sample_devices
from device_sims.scenarios import morning_rush, normal_day
from district.city.config import CityConfig
from district.city.model import Category
from district.city.objects import DeviceForCity, ObjectBuildError, ape_id_warnings, ape_object, event_objects
from foundation.events import Event, EventKind
from foundation.identity import Pseudonymizer
from gateway.config import load_config
from gateway.intake import Intake, IntakeItem
from gateway.outbox.facade import StoreEvents
from tests.city_events import (
    BARRIER,
    CITY_APE,
    FACE_GATE,
    ORG_CODE,
    TOLLGATE,
    ZONE,
    check_face,
    check_motor_vehicle,
    city_config,
    face_access,
    image_ids_of,
    jpeg,
    vehicle_pass,
    watchlist_hit,
)
from tests.conftest import sample_config

DAY = datetime(2026, 12, 5, tzinfo=CST)


def simulated_day(tmp_path: Path) -> list[Event]:
    """A day of the sample compound's devices (normal day and morning rush), as the gateway reads them."""
    config = load_config(sample_config(tmp_path, free_port()))
    unlimited = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"device_burst": 1 << 30})})
    intake = Intake(unlimited, Pseudonymizer(b"x" * 32, COMPOUND_ID))
    sims = [build_sim(device) for device in sample_devices()]
    rng = random.Random(17)
    steps = normal_day(sims, rng, count=600, start=DAY) + morning_rush(sims, rng, count=400, start=DAY)
    events: list[Event] = []
    for step in steps:
        message = step.message
        if message is None:
            continue
        if isinstance(message, HttpPost):
            raw = RawMessage(message.body, content_type=message.content_type)
            kind, _, name = message.path.strip("/").partition("/")
            item = IntakeItem("http_device" if kind == "push" else "http_platform", raw, 1 << 30, target=name)
        else:
            item = IntakeItem("mqtt", RawMessage(message.payload, topic=message.topic), 1 << 30)
        operation = intake.classify(item).operation
        if isinstance(operation, StoreEvents):
            events += [Event.model_validate_json(row.body) for row in operation.events]
    return events


def test_a_day_of_simulated_passages_gives_valid_objects_with_stable_ids(tmp_path: Path) -> None:
    """Every vehicle pass and face pass of a simulated day: one valid object, the same when built again.

    Ids 20/41/48 characters laid out as GA/T 1400.1 says, codes from GA/T 1400.3, times in the
    district's zone; the barrier camera the city knows by another id goes up under that id with its
    tollgate and lane; nothing else becomes an object. Broken on purpose once: with the time written
    in UTC instead of ``zone``, every PassTime was 8 hours off and ``check_motor_vehicle`` failed.
    """
    events = simulated_day(tmp_path)
    kinds = {event.kind for event in events}
    assert {EventKind.VEHICLE_PASS, EventKind.FACE_ACCESS} <= kinds
    assert len(kinds) > 2  # sheds, thrown objects, ... which the city does not get
    city = city_config()
    object_ids: set[str] = set()
    images: list[str] = []
    for event in events:
        objects = event_objects(event, city, ZONE)
        assert objects == event_objects(event, city, ZONE)  # built twice: the same
        if event.kind is EventKind.VEHICLE_PASS:
            [obj] = objects
            assert (obj.category, obj.source, obj.occurred_at) == (
                Category.MOTOR_VEHICLE,
                event.event_id,
                event.occurred_at,
            )
            assert obj.object_id == obj.body["MotorVehicleID"]
            check_motor_vehicle(obj.body, event)
            if event.device_id == BARRIER:
                assert (obj.body["DeviceID"], obj.body["TollgateID"]) == (CITY_APE, TOLLGATE)
            else:
                assert obj.body["DeviceID"] == event.device_id
                assert "TollgateID" not in obj.body
        elif event.kind is EventKind.FACE_ACCESS:
            [obj] = objects
            assert (obj.category, obj.source) == (Category.FACE, event.event_id)
            assert obj.object_id == obj.body["FaceID"]
            check_face(obj.body, event)
            assert "SubImageList" not in obj.body
            assert obj.body["DeviceID"] == event.device_id
        else:
            assert objects == []
        for obj in objects:
            object_ids.add(obj.object_id)
            images += image_ids_of(obj.body)
    passes = sum(1 for e in events if e.kind in {EventKind.VEHICLE_PASS, EventKind.FACE_ACCESS})
    assert len(object_ids) == passes
    assert len(images) == len(set(images)) == passes


def test_a_pass_without_a_plate_and_the_codes_of_a_plate() -> None:
    """No plate read: PlateNo empty, HasPlate 0, whatever the camera's raw text; a plate's codes per GA.

    Broken on purpose once: with ``PlateNo`` taken from ``plate_raw`` when no plate was read, the
    first assertion failed ('?A1' instead of '').
    """
    at = datetime(2026, 12, 6, 0, 30, 5, 123_000, tzinfo=ZONE)
    city = city_config()
    [unread] = event_objects(vehicle_pass(at, plate=None, plate_raw="?A1"), city, ZONE)
    assert (unread.body["PlateNo"], unread.body["HasPlate"], unread.body["PlateColor"]) == ("", "0", "99")
    assert unread.body["PassTime"] == "20261206003005"
    check_motor_vehicle(unread.body, vehicle_pass(at, plate=None))
    [yellow] = event_objects(vehicle_pass(at, plate="赣A1234学", plate_color="yellow"), city, ZONE)
    assert (yellow.body["PlateNo"], yellow.body["PlateClass"], yellow.body["PlateColor"]) == (
        "赣A1234学",
        "16",
        "6",
    )
    [truck] = event_objects(vehicle_pass(at, vehicle_type="truck", direction="unknown", lane=4), city, ZONE)
    assert (truck.body["VehicleClass"], truck.body["LaneNo"]) == ("X99", 4)
    assert "InOut" not in truck.body
    [car] = event_objects(vehicle_pass(at), city, ZONE)
    assert (car.body["VehicleClass"], car.body["LaneNo"], car.body["InOut"]) == ("K33", 2, "in")
    assert "Direction" not in car.body  # a compass direction the district does not know


@pytest.mark.parametrize(
    ("passes", "hits", "pass_faces", "hit_faces", "hit_crop"),
    [
        ("records", "crop", 1, 1, True),
        ("records", "records", 1, 1, False),
        ("off", "off", 0, 0, False),
        ("off", "crop", 0, 1, True),
        ("records", "off", 1, 0, False),
    ],
)
def test_face_objects_follow_the_privacy_policy(
    passes: str, hits: str, pass_faces: int, hit_faces: int, hit_crop: bool
) -> None:
    """Face passes as records without images; hits with their crop only under ``crop``; nothing when off.

    No person reference (the gate's pseudonym, the watch list's subject) and no embedding in any
    object. Broken on purpose once: with the crop attached whatever the policy, the
    ``records``/``records`` case found the 96x128 crop on the hit.
    """
    at = datetime(2026, 12, 6, 9, 15, 42, tzinfo=ZONE)
    city = city_config(face_passes=passes, watchlist_hits=hits)
    crop = jpeg(96, 128)
    gate = face_access(at)
    hit = watchlist_hit(at, crop)
    gate_objects = event_objects(gate, city, ZONE)
    hit_objects = event_objects(hit, city, ZONE)
    assert (len(gate_objects), len(hit_objects)) == (pass_faces, hit_faces)
    for obj in gate_objects:
        check_face(obj.body, gate)
        assert "SubImageList" not in obj.body
    for obj in hit_objects:
        check_face(obj.body, hit)
        listed: Any = obj.body.get("SubImageList", {})
        images = listed.get("SubImageInfoObject", [])
        assert [(i["Type"], i["Width"], i["Height"]) for i in images] == (
            [("11", 96, 128)] if hit_crop else []
        )
    for obj in gate_objects + hit_objects:
        text = json.dumps(obj.body, ensure_ascii=False)
        for secret in ("p1:00112233445566778899aabb", "subject-0042", "zdry", "Feature", "Scene"):
            assert secret not in text
        assert obj.body["DeviceID"] == FACE_GATE


def test_a_hit_without_a_crop_and_a_crop_that_is_no_jpeg() -> None:
    """A hit whose crop the compound withheld is a record; a crop that is no JPEG cannot be built.

    Broken on purpose once: with the format check left out, the PNG crop raised no
    ObjectBuildError (it would have gone up labelled Jpeg).
    """
    at = datetime(2026, 12, 6, 9, 15, 42, tzinfo=ZONE)
    city = city_config()
    [record] = event_objects(watchlist_hit(at, None), city, ZONE)
    assert "SubImageList" not in record.body
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    with pytest.raises(ObjectBuildError, match="not a JPEG"):
        event_objects(watchlist_hit(at, png.getvalue()), city, ZONE)
    with pytest.raises(ObjectBuildError, match="no readable JPEG"):
        event_objects(watchlist_hit(at, b"\xff\xd8 not really"), city, ZONE)


def test_an_event_built_at_another_moment_keeps_its_ids() -> None:
    """Rebuilding an event (a redelivery hours later, another process) gives the same ids.

    And two events of one device in one second get different serials (from their ids). Broken on
    purpose once: with the serial from ``random.randrange`` the rebuilt object id differed.
    """
    at = datetime(2026, 12, 6, 9, 15, 42, tzinfo=ZONE)
    city = city_config()
    event = watchlist_hit(at, jpeg(40, 40))
    first = event_objects(event, city, ZONE)
    again = event_objects(Event.model_validate_json(event.model_dump_json()), city, ZONE)
    assert first == again
    other = event_objects(watchlist_hit(at, jpeg(40, 40)), city, ZONE)
    assert first[0].object_id[:36] == other[0].object_id[:36]
    assert first[0].object_id != other[0].object_id


def test_the_ape_object_and_its_source_per_state() -> None:
    """An APE under the city's id, with its status; the same state the same source, a change a new one.

    Broken on purpose once: with the source named by the device id alone (no state hash), the
    source check failed (and an offline state would have had the online state's source).
    """
    city: CityConfig = city_config()
    zone = ZONE
    barrier = DeviceForCity(
        BARRIER, COMPOUND_ID, "南门车辆道闸", "lpr_camera", "vz-lpr-mqtt", "南门", online=True
    )
    online = ape_object(barrier, city, zone)
    assert online.category is Category.APE
    assert online.object_id == CITY_APE
    assert online.body == {
        "ApeID": CITY_APE,
        "Name": "南门车辆道闸",
        "Model": "vz-lpr-mqtt",
        "IsOnline": "1",
        "OrgCode": ORG_CODE,
        "Place": "南门",
        "FunctionType": "1",
    }
    assert online.source.startswith(f"device:{BARRIER}@")
    assert ape_object(barrier, city, zone).source == online.source
    offline = ape_object(DeviceForCity(**{**barrier.__dict__, "online": False}), city, zone)
    assert offline.body["IsOnline"] == "0"
    assert offline.source != online.source
    gate = ape_object(
        DeviceForCity(FACE_GATE, COMPOUND_ID, "东门人脸门禁1", "face_gate", "hik-isapi-acs", None, True),
        city,
        zone,
    )
    assert (gate.object_id, gate.body["FunctionType"], "Place" in gate.body) == (FACE_GATE, "2", False)
    shed = ape_object(
        DeviceForCity("36010400011340000001", COMPOUND_ID, "烟感", "smoke_sensor", "shed-mqtt", None, True),
        city,
        zone,
    )
    assert "FunctionType" not in shed.body


def test_a_hit_older_than_hit_crops_days_goes_without_its_crop() -> None:
    """A late hit the store keeps without its crop (``[retention] hit_crops_days``) is built without it.

    A hit younger than the cutoff keeps its crop. Broken on purpose once: with the ``crops_after``
    check left out of ``event_objects``, the hit of the day before the cutoff carried its crop.
    """
    cutoff = datetime(2026, 12, 6, 0, 0, tzinfo=ZONE)
    city = city_config()
    crop = jpeg(96, 128)
    late = watchlist_hit(cutoff - timedelta(days=1), crop)
    [old] = event_objects(late, city, ZONE, crops_after=cutoff)
    [new] = event_objects(watchlist_hit(cutoff + timedelta(hours=1), crop), city, ZONE, crops_after=cutoff)
    assert "SubImageList" not in old.body
    check_face(old.body, late)
    listed: Any = new.body["SubImageList"]
    assert [i["Type"] for i in listed["SubImageInfoObject"]] == ["11"]


def test_a_crop_larger_than_max_crop_px_goes_as_a_record_and_a_bomb_is_no_crop() -> None:
    """A crop, never the frame: a 1920x1080 "crop" leaves its record without the picture.

    The gateway's crops (at most 160 px, ``foundation.faces.crop_face``) and the limit itself pass;
    one pixel more does not. A JPEG header claiming 65000x65000 pixels (PIL's
    DecompressionBombError, no OSError) is an ObjectBuildError, not an error of the ingester.
    Broken on purpose once: without the size check the 1920x1080 frame went up as a Type 11
    picture; with the old ``except (binascii.Error, UnidentifiedImageError, OSError)`` the bomb
    raised DecompressionBombError out of ``event_objects``.
    """
    at = datetime(2026, 12, 6, 9, 15, 42, tzinfo=ZONE)
    city = city_config()
    assert city.privacy.max_crop_px == 320

    def sizes(width: int, height: int) -> list[tuple[int, int]]:
        [face] = event_objects(watchlist_hit(at, jpeg(width, height)), city, ZONE)
        listed: Any = face.body.get("SubImageList", {})
        return [(i["Width"], i["Height"]) for i in listed.get("SubImageInfoObject", [])]

    assert sizes(160, 160) == [(160, 160)]
    assert sizes(320, 240) == [(320, 240)]
    assert sizes(321, 100) == []
    assert sizes(100, 321) == []
    assert sizes(1920, 1080) == []
    small = city.model_copy(update={"privacy": city.privacy.model_copy(update={"max_crop_px": 100})})
    [face] = event_objects(watchlist_hit(at, jpeg(160, 160)), small, ZONE)
    assert "SubImageList" not in face.body
    with pytest.raises(ObjectBuildError, match="no readable JPEG"):
        event_objects(watchlist_hit(at, _claimed_size(jpeg(8, 8), 65000, 65000)), city, ZONE)


def _claimed_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its SOF0 header claiming another size (the data stays 8x8)."""
    start = data.index(b"\xff\xc0")
    # marker (2), length (2), precision (1), height (2), width (2)
    return data[: start + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[start + 9 :]


@pytest.mark.parametrize(
    "at",
    [
        datetime(999, 6, 1, 12, 0, tzinfo=UTC),
        datetime(999, 12, 31, 15, 0, tzinfo=UTC),  # still 999 in the district's zone
        datetime(9999, 12, 31, 23, 0, tzinfo=UTC),  # year 10000 in the district's zone
    ],
)
def test_a_time_outside_the_years_1000_to_9999_cannot_be_built(at: datetime) -> None:
    """strftime("%Y") gives 3 digits for year 999: the ids would be 40 and 47 characters.

    Broken on purpose once: without the year check, both passes of year 999 were built (with ids
    of 40 and 47 characters); year 10000 in the zone overflows ``astimezone``, caught as the same
    error.
    """
    with pytest.raises(ObjectBuildError, match="years 1000-9999"):
        event_objects(vehicle_pass(at), city_config(), ZONE)
    # the first and last moments that are years 1000 and 9999 in the district's zone still go
    for edge in (datetime(999, 12, 31, 20, 0, tzinfo=UTC), datetime(9999, 12, 31, 12, 0, tzinfo=UTC)):
        [first] = event_objects(vehicle_pass(edge), city_config(), ZONE)
        assert len(first.object_id) == 48


def test_ape_and_tollgate_ids_have_their_types_and_an_ape_id_is_given_once() -> None:
    """``ape_id`` must be of type 119, ``tollgate_id`` of type 121; two devices never share an ApeID.

    ``ape_id_warnings`` names each device going up under an id not of type 119 (by default its
    own). Broken on purpose once: without the type validators, a 124 ape_id was accepted; without
    the duplicate check, two barriers under one ApeID were accepted.
    """
    base = city_config().model_dump(mode="json")
    base["password"] = "secret"

    def with_devices(*devices: dict[str, str]) -> dict[str, Any]:
        return {**base, "devices": list(devices)}

    with pytest.raises(ValidationError, match="has type 124; a GA/T 1400 APE id has type 119"):
        CityConfig.model_validate(with_devices({"device_id": BARRIER, "ape_id": FACE_GATE}))
    with pytest.raises(ValidationError, match="has type 119; a GA/T 1400 tollgate id has type 121"):
        CityConfig.model_validate(with_devices({"device_id": BARRIER, "tollgate_id": CITY_APE}))
    with pytest.raises(ValidationError, match=f"both go up as APE {CITY_APE}"):
        CityConfig.model_validate(
            with_devices(
                {"device_id": BARRIER, "ape_id": CITY_APE}, {"device_id": FACE_GATE, "ape_id": CITY_APE}
            )
        )
    city = CityConfig.model_validate(
        with_devices({"device_id": BARRIER, "ape_id": CITY_APE, "tollgate_id": TOLLGATE})
    )
    warnings = ape_id_warnings(city, [BARRIER, FACE_GATE, FACE_GATE])
    assert len(warnings) == 1
    assert FACE_GATE in warnings[0]
    assert "type 124" in warnings[0]
