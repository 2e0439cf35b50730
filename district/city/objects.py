"""Events and registry entries as GA/T 1400 objects: ids, codes and times per the standard.

Ids (GA/T 1400.1, ``docs/reference`` device-protocols §5.5): an image id is 41 characters, the
capturing device's 20-digit id (its ``ApeID``), ``02`` (image), the shot time ``yyyyMMddHHmmss`` in
the district's zone and a 5-digit serial; a face or vehicle id is 48, the id of the image it was
recognised in (its ``SourceID``), the subtype (``02`` motor vehicle, ``06`` face) and the serial
``00001`` (one object per image). The serials come from a hash of the event id, so an event built
twice, or redelivered, gives the same ids. Two events of one device in one second may still hash
to one serial: the queue then renumbers the later one (``renumbered``), see ``district.city.queue``.

What is built is what ``[city.privacy]`` allows (``docs/privacy.md``): vehicles without pictures
(they stay in the compound), face passes as records without images, watch-list hits with their
face crop (SubImage type 11) only when the policy says crop. Never the scene, never an embedding,
never a person reference: the ``SourceID`` of a face names the scene picture the district does not
send, and no sent picture carries that id.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import structlog
from PIL import Image

from district.city.config import APE_TYPE, CityConfig, CityPrivacyConfig, FacePolicy
from district.city.model import Category, CityObject
from foundation.errors import GatewayError
from foundation.events import (
    Direction,
    Event,
    FaceAccessPayload,
    VehiclePassPayload,
    VehicleType,
    WatchlistHitPayload,
)

log = structlog.get_logger(__name__)

IMAGE_ID_LENGTH = 41
OBJECT_ID_LENGTH = 48
IMAGE_SUBTYPE = "02"  # 视频图像信息基本对象 subtype: 图像
MOTOR_VEHICLE_SUBTYPE = "02"
FACE_SUBTYPE = "06"
OBJECT_SERIAL = "00001"  # one semantic object per image
SERIALS = 100_000
TIME_FORMAT = "%Y%m%d%H%M%S"
INFO_KIND_AUTOMATIC = 1  # 自动采集
UNCERTAIN = 2  # the Is* flags: 0 否, 1 是, 2 不确定
FACE_CROP_TYPE = "11"  # 人脸图
EVENT_SORT_FACE_COMPARISON = 11  # 人脸比对: a watch-list hit is a comparison's result
UNKNOWN_VEHICLE_CLASS = "X99"  # GA 24.4 其它
UNKNOWN_COLOR = "99"  # ColorType 其他 (what real uploaders send when the colour was not read)

# GA 24.4 车辆类型: only K33 (轿车) is confirmed by the sources consulted (device-protocols §2.4,
# Hikvision's vehicleTypeByGAT); the other body classes do not say a size class (a "bus" may be
# K11 or K21, a "truck" any H code), so they go up as 其它 rather than as a guess.
_VEHICLE_CLASSES = {VehicleType.CAR: "K33"}
_IS_FLAGS = (
    "IsDriver",
    "IsForeigner",
    "IsSuspectedTerrorist",
    "IsCriminalInvolved",
    "IsDetainees",
    "IsVictim",
    "IsSuspiciousPerson",
)
# FunctionType of an APE: 1 车辆设备, 2 人脸设备, by the registry's device kind (adapters'
# DEVICE_KINDS); other kinds (sensors, the thrown-object camera) have no code and go without one
_FUNCTION_TYPES = {"face_gate": "2", "lpr_camera": "1"}
# ``kind`` of an object: the event kind it was built from, or this for an APE
KIND_DEVICE = "device"
KIND_FACE_ACCESS = "face_access"
KIND_WATCHLIST_HIT = "watchlist_hit"
KIND_VEHICLE_PASS = "vehicle_pass"
KINDS = frozenset({KIND_DEVICE, KIND_FACE_ACCESS, KIND_WATCHLIST_HIT, KIND_VEHICLE_PASS})


class ObjectBuildError(GatewayError):
    """An event that cannot become a GA/T 1400 object (it is skipped for the city, not for the store)."""


@dataclass(frozen=True)
class DeviceForCity:
    """What the APE list says of one device (from the district's device registry)."""

    device_id: str
    compound_id: str
    name: str
    kind: str  # the registry's device kind (e.g. face_gate, lpr_camera)
    dialect: str
    place: str | None
    online: bool


def _serial(event_id: str, purpose: str) -> int:
    digest = hashlib.sha256(f"{purpose}:{event_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SERIALS


def image_id(device: str, shot_time: str, serial: int) -> str:
    """A 41-character image id: device, ``02``, time, serial."""
    return f"{device}{IMAGE_SUBTYPE}{shot_time}{serial % SERIALS:05d}"


def _shifted(image: str, shift: int) -> str:
    return image_id(image[:20], image[22:36], int(image[36:]) + shift)


def image_ids(obj: CityObject) -> tuple[str, ...]:
    """The image ids an object claims: its ``SourceID`` and its sub-images' ``ImageID`` (none for an APE)."""
    if obj.category is Category.APE:
        return ()
    claimed = [str(obj.body["SourceID"])]
    claimed += [str(image["ImageID"]) for image in _sub_images(obj.body)]
    # the SourceID is the scene picture's ImageID when the scene is sent too (§5.3): claimed once
    return tuple(dict.fromkeys(claimed))


def _sub_images(body: dict[str, object]) -> list[dict[str, object]]:
    listed = body.get("SubImageList")
    if not isinstance(listed, dict):
        return []
    images = listed.get("SubImageInfoObject")
    return [image for image in images if isinstance(image, dict)] if isinstance(images, list) else []


def renumbered(obj: CityObject, shift: int) -> CityObject:
    """The object with the serial of every image id it claims moved on by ``shift`` (mod 100000).

    Its own id follows its ``SourceID``; what it says otherwise is unchanged.
    """
    body = json.loads(json.dumps(obj.body))
    source = _shifted(str(body["SourceID"]), shift)
    body["SourceID"] = source
    object_id = source + obj.object_id[IMAGE_ID_LENGTH:]
    body[obj.category.id_field] = object_id
    for image in _sub_images(body):
        image["ImageID"] = _shifted(str(image["ImageID"]), shift)
    return replace(obj, object_id=object_id, body=body)


def _wire_time(moment: datetime, zone: ZoneInfo) -> str:
    try:
        local = moment.astimezone(zone)
    except OverflowError:  # 9999-12-31 late in UTC is year 10000 east of it
        local = None
    # strftime("%Y") gives fewer than 4 digits before year 1000: the ids would be 40/47 characters
    if local is None or not 1000 <= local.year <= 9999:
        raise ObjectBuildError(
            f"{moment.isoformat()} is outside the years 1000-9999 a GA/T 1400 time can say"
        )
    return local.strftime(TIME_FORMAT)


def event_objects(
    event: Event, city: CityConfig, zone: ZoneInfo, *, crops_after: datetime | None = None
) -> list[CityObject]:
    """The objects one stored event becomes under the privacy policy (often none).

    vehicle_pass: a MotorVehicle; face_access: a Face record without images (if allowed);
    watchlist_hit: a Face with its crop (if allowed, if the event occurred after ``crops_after``,
    and if the crop is no larger than ``[city.privacy] max_crop_px``; else a record without it). The
    ingester passes now minus ``[retention] hit_crops_days``: a late hit the store keeps without
    its crop goes up without it too; ``None`` sets no age limit. Ids are derived from the event
    alone, so an event built twice gives the same objects. Raises ``ObjectBuildError`` for an event
    that cannot be built (a crop that is no readable JPEG, a time outside the years 1000-9999).
    """
    privacy = city.privacy
    payload = event.payload
    if isinstance(payload, VehiclePassPayload):
        return [_motor_vehicle(event, payload, city, zone)] if privacy.motor_vehicles else []
    if isinstance(payload, FaceAccessPayload):
        if privacy.face_passes is FacePolicy.OFF:
            return []
        return [_face(event, city, zone, crop=None, kind=KIND_FACE_ACCESS)]
    if isinstance(payload, WatchlistHitPayload):
        if privacy.watchlist_hits is FacePolicy.OFF:
            return []
        crop = payload.snapshot_jpeg_b64 if privacy.watchlist_hits is FacePolicy.CROP else None
        if crops_after is not None and event.occurred_at <= crops_after:
            crop = None  # older than [retention] hit_crops_days: the store has stripped it too
        return [_face(event, city, zone, crop=crop, kind=KIND_WATCHLIST_HIT)]
    return []


def _ape_id(city: CityConfig, device_id: str) -> str:
    return city.device_entry(device_id).ape_id or device_id


def ape_id_warnings(city: CityConfig, device_ids: Iterable[str]) -> list[str]:
    """One warning per device whose effective ApeID is not of type 119 (GA/T 1400's APE type).

    By default a device goes up under its own id (a gate's 124, a barrier camera's 121 ...), which a
    strict city registry refuses; ``[[city.devices]] ape_id`` gives it the 119 id the city knows.
    """
    warnings = []
    for device_id in dict.fromkeys(device_ids):
        ape_id = _ape_id(city, device_id)
        if ape_id[10:13] != APE_TYPE:
            warnings.append(
                f"device {device_id} goes up to the city as APE {ape_id} of type {ape_id[10:13]}, not"
                f" {APE_TYPE}: give it the city's id in [[city.devices]] ape_id"
            )
    return warnings


def under_policy(obj: CityObject, privacy: CityPrivacyConfig) -> CityObject | None:
    """``obj`` as ``privacy`` lets it leave now: unchanged, without its images, or ``None`` (withheld).

    For objects built under an earlier, laxer policy: the queue applies the policy in force when
    they are taken, not the one they were built under. An unknown kind is withheld.
    """
    withheld, records_only = policy_kinds(privacy)
    if obj.kind in withheld or obj.kind not in KINDS:
        return None
    if obj.kind in records_only and "SubImageList" in obj.body:
        return without_images(obj)
    return obj


def policy_kinds(privacy: CityPrivacyConfig) -> tuple[frozenset[str], frozenset[str]]:
    """The object kinds ``privacy`` withholds, and those it lets leave only as records (no image)."""
    withheld = set()
    records_only = set()
    if not privacy.motor_vehicles:
        withheld.add(KIND_VEHICLE_PASS)
    if not privacy.devices:
        withheld.add(KIND_DEVICE)
    for kind, policy in (
        (KIND_FACE_ACCESS, privacy.face_passes),
        (KIND_WATCHLIST_HIT, privacy.watchlist_hits),
    ):
        # == rather than is: a config copied with a plain string (model_copy) judges alike
        if policy == FacePolicy.OFF:
            withheld.add(kind)
        elif policy == FacePolicy.RECORDS:
            records_only.add(kind)
    return frozenset(withheld), frozenset(records_only)


def without_images(obj: CityObject) -> CityObject:
    """The object without its ``SubImageList`` (its record only)."""
    return replace(obj, body={key: value for key, value in obj.body.items() if key != "SubImageList"})


def _motor_vehicle(event: Event, payload: VehiclePassPayload, city: CityConfig, zone: ZoneInfo) -> CityObject:
    entry = city.device_entry(event.device_id)
    device = entry.ape_id or event.device_id
    shot = _wire_time(event.occurred_at, zone)
    source = image_id(device, shot, _serial(event.event_id, "scene"))
    object_id = f"{source}{MOTOR_VEHICLE_SUBTYPE}{OBJECT_SERIAL}"
    body: dict[str, object] = {
        "MotorVehicleID": object_id,
        "InfoKind": INFO_KIND_AUTOMATIC,
        "SourceID": source,
        "DeviceID": device,
    }
    # No tollgate configured: the field is left out rather than invented (a made-up 121 id names no
    # tollgate of the city's registry); docs/privacy.md asks for one per barrier camera.
    if entry.tollgate_id is not None:
        body["TollgateID"] = entry.tollgate_id
    lane = payload.lane if payload.lane is not None else entry.lane
    if lane is not None:
        body["LaneNo"] = lane
    body |= {
        "HasPlate": "1" if payload.plate else "0",
        "PlateNo": payload.plate or "",  # plate_raw is what the camera read, not a plate
        "PlateClass": payload.plate_class.ga1400_code,
        "PlateColor": payload.plate_color.ga1400_code,
        "VehicleClass": _VEHICLE_CLASSES.get(payload.vehicle_type, UNKNOWN_VEHICLE_CLASS),
        "VehicleColor": UNKNOWN_COLOR,
        "PassTime": shot,
    }
    # GA/T 1400 Direction is a compass direction (行驶方向) the district does not know; in/out of the
    # compound goes in the community extension's "InOut" (device-protocols §5.11), as issue 17 asks.
    if payload.direction is not Direction.UNKNOWN:
        body["InOut"] = payload.direction.value
    return CityObject(
        category=Category.MOTOR_VEHICLE,
        object_id=object_id,
        source=event.event_id,
        body=body,
        occurred_at=event.occurred_at,
        kind=KIND_VEHICLE_PASS,
    )


def _face(event: Event, city: CityConfig, zone: ZoneInfo, *, crop: str | None, kind: str) -> CityObject:
    device = _ape_id(city, event.device_id)
    shot = _wire_time(event.occurred_at, zone)
    scene_serial = _serial(event.event_id, "scene")
    source = image_id(device, shot, scene_serial)
    object_id = f"{source}{FACE_SUBTYPE}{OBJECT_SERIAL}"
    body: dict[str, object] = {
        "FaceID": object_id,
        "InfoKind": INFO_KIND_AUTOMATIC,
        "SourceID": source,  # the scene's id; the scene itself stays in the compound
        "DeviceID": device,
        "ShotTime": shot,
        "FaceAppearTime": shot,
        "FaceDisAppearTime": shot,
        **dict.fromkeys(_IS_FLAGS, UNCERTAIN),
    }
    picture = _jpeg(crop, event.event_id) if crop is not None else None
    if picture is not None:
        data, width, height = picture
        if max(width, height) > city.privacy.max_crop_px:
            # a crop, never the frame: a compound sending the scene as its "crop" gets the record up
            # without the picture rather than nothing
            log.warning(
                "city_crop_oversized",
                event_id=event.event_id,
                width=width,
                height=height,
                max_crop_px=city.privacy.max_crop_px,
            )
            picture = None
    if picture is not None:
        data, width, height = picture
        crop_serial = _serial(event.event_id, "crop")
        if crop_serial == scene_serial:
            crop_serial += 1
        body["SubImageList"] = {
            "SubImageInfoObject": [
                {
                    "ImageID": image_id(device, shot, crop_serial),
                    "EventSort": EVENT_SORT_FACE_COMPARISON,
                    "DeviceID": device,
                    "StoragePath": "",
                    "Type": FACE_CROP_TYPE,
                    "FileFormat": "Jpeg",
                    "ShotTime": shot,
                    "Width": width,
                    "Height": height,
                    "Data": data,
                }
            ]
        }
    return CityObject(
        category=Category.FACE,
        object_id=object_id,
        source=event.event_id,
        body=body,
        occurred_at=event.occurred_at,
        kind=kind,
    )


def _jpeg(encoded: str, event_id: str) -> tuple[str, int, int]:
    """The crop as sent (base64 without whitespace) with its size, read from the JPEG header only."""
    try:
        raw = base64.b64decode(encoded, validate=True)
        with Image.open(io.BytesIO(raw)) as picture:
            found, (width, height) = picture.format, picture.size
    except Exception as error:
        # any PIL error is a bad crop: UnidentifiedImageError, OSError, SyntaxError, and the
        # DecompressionBombError of a header claiming a gigapixel image (no OSError)
        raise ObjectBuildError(f"{event_id}: the face crop is no readable JPEG ({error})") from error
    if found != "JPEG":
        raise ObjectBuildError(f"{event_id}: the face crop is {found}, not a JPEG")
    return base64.b64encode(raw).decode(), width, height


def ape_object(device: DeviceForCity, city: CityConfig, zone: ZoneInfo) -> CityObject:
    """The APE object of one device with its online status; its source names the state sent.

    ``source`` is ``device:<id>@<hash of the body>``: a changed status or name is a new object for
    the queue, the same state again is not. Longitude and latitude are left out (not configured).
    """
    ape_id = _ape_id(city, device.device_id)
    body: dict[str, object] = {
        "ApeID": ape_id,
        "Name": device.name,
        "Model": device.dialect,
        "IsOnline": "1" if device.online else "0",
        "OrgCode": city.org_code,
    }
    if device.place:
        body["Place"] = device.place
    function_type = _FUNCTION_TYPES.get(device.kind)
    if function_type is not None:
        body["FunctionType"] = function_type
    state = hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    return CityObject(
        category=Category.APE,
        object_id=ape_id,
        source=f"device:{device.device_id}@{state}",
        body=body,
        occurred_at=datetime.now(UTC),
        kind=KIND_DEVICE,
    )
