"""Events, a ``[city]`` section and a GA/T 1400 checker for the city link's tests.

The checker is written here from the standard's rules (device-protocols §5.3-5.6, §6), not taken
from the product or from the VIID double: ids of 20/41/48 characters laid out as GA/T 1400.1 says,
codes from GA/T 1400.3's tables, times ``yyyyMMddHHmmss``.
"""

from __future__ import annotations

import base64
import io
import re
import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from PIL import Image

from device_sims.inventory import COMPOUND_ID, DISTRICT_ID
from district.city.config import CityConfig
from foundation.events import Event

ZONE = ZoneInfo("Asia/Shanghai")
FACE_GATE = "36010400011240000001"
BARRIER = "36010400011210000002"
CITY_APE = "36010400011190000009"  # the id the city's registry knows the barrier camera by
TOLLGATE = "36010400011210000099"
ORG_CODE = "360104000000"


def city_config(**privacy: str | bool) -> CityConfig:
    """A ``[city]`` section: the barrier camera known to the city by another id, with its tollgate."""
    return CityConfig.model_validate(
        {
            "server_url": "http://127.0.0.1:9",
            "platform_id": "36010400005030000001",
            "org_code": ORG_CODE,
            "password": "secret",
            "devices": [{"device_id": BARRIER, "ape_id": CITY_APE, "tollgate_id": TOLLGATE, "lane": 2}],
            "privacy": privacy,
        }
    )


def jpeg(width: int, height: int) -> bytes:
    """A real JPEG of that size."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (120, 90, 60)).save(out, "JPEG")
    return out.getvalue()


def _event(kind: str, device: str, at: datetime, payload: dict[str, Any], event_id: str | None) -> Event:
    return Event.model_validate(
        {
            "event_id": event_id or str(uuid.uuid4()),
            "kind": kind,
            "district_id": DISTRICT_ID,
            "compound_id": COMPOUND_ID,
            "device_id": device,
            "occurred_at": at.isoformat(),
            "received_at": (at + timedelta(seconds=1)).isoformat(),
            "severity": "critical" if kind == "watchlist_hit" else "info",
            "source": {"vendor": "test", "dialect": "test"},
            "payload": payload,
        }
    )


def vehicle_pass(
    at: datetime, plate: str | None = "赣A12345", event_id: str | None = None, **extra: Any
) -> Event:
    """A vehicle at the barrier (no plate read when ``plate`` is None)."""
    payload = {
        "kind": "vehicle_pass",
        "plate": plate,
        "plate_color": "blue" if plate else "unknown",
        "vehicle_type": "car",
        "direction": "in",
        "barrier_action": "opened",
        "list_type": "allow",
        **extra,
    }
    return _event("vehicle_pass", BARRIER, at, payload, event_id)


def face_access(at: datetime, event_id: str | None = None) -> Event:
    """A resident through the face gate (with a pseudonymous person reference)."""
    payload = {
        "kind": "face_access",
        "result": "granted",
        "direction": "in",
        "verify_mode": "face",
        "person_ref": "p1:00112233445566778899aabb",
        "person_type": "resident",
    }
    return _event("face_access", FACE_GATE, at, payload, event_id)


def watchlist_hit(at: datetime, crop: bytes | None = None, event_id: str | None = None) -> Event:
    """A watch-list hit at the face gate, with its face crop unless ``crop`` is None."""
    payload = {
        "kind": "watchlist_hit",
        "list_id": "zdry",
        "list_version": 1,
        "person_ref": "subject-0042",
        "distance": 0.31,
        "threshold": 0.5,
        "source_event_id": "source-event-0001",
        "snapshot_jpeg_b64": base64.b64encode(crop).decode() if crop is not None else None,
    }
    return _event("watchlist_hit", FACE_GATE, at, payload, event_id)


# --- the standard's rules, as the tests check them --------------------------------------------------

GB_ID = re.compile(r"^[0-9]{20}$")
TIME = re.compile(r"^[0-9]{14}$")
PLATE_COLORS = {"1", "2", "5", "6", "9", "99"}  # GA/T 1400.3 ColorType as plates use it
IMAGE_TYPES = {f"{n:02d}" for n in range(1, 15)} | {"100"}
IS_FLAGS = (
    "IsDriver",
    "IsForeigner",
    "IsSuspectedTerrorist",
    "IsCriminalInvolved",
    "IsDetainees",
    "IsVictim",
    "IsSuspiciousPerson",
)


def wire_time(text: str) -> datetime:
    """A ``yyyyMMddHHmmss`` time (it must be a real moment), in the district's zone."""
    assert TIME.match(text), text
    return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=ZONE)


def check_image_id(value: object, device: str, shot: str) -> str:
    """A 41-character image id of ``device`` at ``shot`` (GA/T 1400.1: device, 02, time, serial)."""
    assert isinstance(value, str), value
    assert re.fullmatch(r"[0-9]{41}", value), value
    assert (value[:20], value[20:22], value[22:36]) == (device, "02", shot), value
    return value


def check_object_id(value: object, source: str, subtype: str) -> None:
    """A 48-character object id: its image's id, the subtype, a 5-digit serial."""
    assert isinstance(value, str), value
    assert re.fullmatch(r"[0-9]{48}", value), value
    assert (value[:41], value[41:43]) == (source, subtype), value


def check_motor_vehicle(body: dict[str, Any], event: Event) -> None:
    """A MotorVehicleObject as GA/T 1400 wants it, saying what the event says."""
    device = body["DeviceID"]
    assert GB_ID.match(device), device
    assert wire_time(body["PassTime"]) == event.occurred_at.astimezone(ZONE).replace(microsecond=0)
    check_image_id(body["SourceID"], device, body["PassTime"])
    check_object_id(body["MotorVehicleID"], body["SourceID"], "02")
    assert body["InfoKind"] == 1
    assert body["HasPlate"] in {"0", "1"}
    plate = event.payload.plate  # type: ignore[union-attr]
    assert body["PlateNo"] == (plate or "")
    assert body["HasPlate"] == ("1" if plate else "0")
    assert re.fullmatch(r"[0-9]{2}", body["PlateClass"]), body["PlateClass"]
    assert body["PlateColor"] in PLATE_COLORS
    assert re.fullmatch(r"[A-Z][0-9]{2}", body["VehicleClass"]), body["VehicleClass"]
    if "TollgateID" in body:
        assert GB_ID.match(body["TollgateID"]), body["TollgateID"]
        assert body["TollgateID"][10:13] == "121", body["TollgateID"]
    if "LaneNo" in body:
        assert isinstance(body["LaneNo"], int)
        assert 0 <= body["LaneNo"] <= 99
    assert "SubImageList" not in body
    assert "StorageUrl1" not in body


def check_face(body: dict[str, Any], event: Event) -> None:
    """A FaceObject as GA/T 1400 wants it; a sub-image is a face crop (11), never a scene (14)."""
    device = body["DeviceID"]
    assert GB_ID.match(device), device
    shot = body["ShotTime"]
    assert wire_time(shot) == event.occurred_at.astimezone(ZONE).replace(microsecond=0)
    check_image_id(body["SourceID"], device, shot)
    check_object_id(body["FaceID"], body["SourceID"], "06")
    assert body["InfoKind"] == 1
    assert {body[flag] for flag in IS_FLAGS} <= {0, 1, 2}
    for image in body.get("SubImageList", {}).get("SubImageInfoObject", []):
        image_id = check_image_id(image["ImageID"], device, shot)
        assert image_id != body["SourceID"]  # SourceID is the scene's id; the crop is not the scene
        assert image["Type"] == "11"
        assert image["FileFormat"] == "Jpeg"
        assert image["DeviceID"] == device
        assert image["ShotTime"] == shot
        with Image.open(io.BytesIO(base64.b64decode(image["Data"], validate=True))) as picture:
            assert picture.format == "JPEG"
            assert (image["Width"], image["Height"]) == picture.size
    for forbidden in ("IDNumber", "Name", "FeatureList", "PersonID"):
        assert forbidden not in body


def image_ids_of(body: dict[str, Any]) -> list[str]:
    """Every 41-character image id an object names."""
    images = body.get("SubImageList", {}).get("SubImageInfoObject", [])
    return [body["SourceID"], *(image["ImageID"] for image in images)]
