"""Per-object checks of the VIID double, written from the protocol reference, not from our client.

Source: ``/work/shared/reference/device-protocols.md`` §5.3-5.7 (objects), §5.5 (id layout), §5.6
and §2.4 (code tables), §5.8 (subscriptions and notifications), §5.10 (what a real city ingest
checks) and §6 (20-digit device ids). Every check returns a list of reasons (empty = valid); a
reason names the field and what is wrong with it, so a test can assert on it and a human can read
a refusal's ``StatusString``.

Two levels: the *standard* checks (always on) are what the standard's layout and code tables
imply for any field that is present, plus the few fields without which the object means nothing.
``deployment_rules=True`` adds what the Shijiazhuang validator (§5.10) demands on top (all of a
vehicle's R fields, both pictures, 6-decimal coordinates, ...), for tests that want the strict city.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable
from datetime import datetime
from typing import Any

# §5.5: 子类型 of a 41-char base object (21-22) and of a 48-char semantic object (42-43)
BASE_IMAGE = "02"
SEMANTIC_MOTOR_VEHICLE = "02"
SEMANTIC_FACE = "06"
# §5.5: 子类型 (13-14) of 33-char ids
ID33_SUBSCRIBE = "03"
ID33_NOTIFICATION = "04"
# §6 / §5.10: type code at chars 11-13 of a 20-digit id
TYPE_APE = "119"
TYPE_TOLLGATE = "121"

INFO_KINDS = frozenset({"0", "1", "2"})  # §5.6: 0 其他, 1 自动采集, 2 人工采集
FLAGS = frozenset({"0", "1", "2"})  # §5.3: Is* flags 0 否, 1 是, 2 不确定
FACE_FLAGS = (
    "IsDriver",
    "IsForeigner",
    "IsSuspectedTerrorist",
    "IsCriminalInvolved",
    "IsDetainees",
    "IsVictim",
    "IsSuspiciousPerson",
)
# §5.6 ImageType: 01-14 and 100
IMAGE_TYPES = frozenset({f"{n:02d}" for n in range(1, 15)} | {"100"})
IMAGE_SCENE = "14"
IMAGE_FACE = "11"
IMAGE_VEHICLE = "01"
IMAGE_PLATE = "02"
# §5.6 FileFormat
FILE_FORMATS = frozenset(
    {
        "Bmp",
        "Gif",
        "Jpeg",
        "Jfif",
        "Kdc",
        "Pcd",
        "Pcx",
        "Pic",
        "Pix",
        "Png",
        "Psd",
        "Tapga",
        "Tiff",
        "Wmf",
        "Jp2",
        "Other",
    }
)
# §2.4: the 1400 ColorType table (PlateColor, VehicleColor)
COLORS = frozenset({str(n) for n in range(1, 14)} | {"99"})
# §2.4 lists part of GA 24.7; the rest of the table (03-27, 42, 43) is GA 24.7 as widely reproduced
PLATE_CLASSES = frozenset(
    {f"{n:02d}" for n in range(1, 28)} | {"31", "32", "41", "42", "43", "51", "52", "99"}
)
HAS_PLATE = frozenset({"0", "1", "true", "false"})  # §5.4 conflict: "1", 1 and true all appear
GENDERS = frozenset({"0", "1", "2", "9"})  # GB/T 2261.1
SUBSCRIBE_DETAILS = frozenset({str(n) for n in range(1, 17)})  # §5.6
RESOURCE_CLASSES = frozenset({"0", "1", "2", "3", "4", "5"})
SUBSCRIBE_STATUSES = frozenset({"0", "1", "2", "9"})
EXECUTE_OPERATIONS = frozenset({"1", "2", "3"})

Obj = dict[str, Any]
Reasons = list[str]


def code(value: object) -> str | None:
    """A code field as a string ("1", 1 and True all appear on the wire), None if absent or a nested value."""
    if value is None or isinstance(value, (dict, list, float)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def is_digits(value: object, length: int) -> bool:
    """A string of exactly ``length`` ASCII digits."""
    return isinstance(value, str) and len(value) == length and value.isascii() and value.isdigit()


def is_time14(value: object) -> bool:
    """Exactly 14 digits that name a real moment (yyyyMMddHHmmss)."""
    if not is_digits(value, 14):
        return False
    try:
        datetime.strptime(str(value), "%Y%m%d%H%M%S")  # a layout check: no zone involved
    except ValueError:
        return False
    return True


def device_id_reasons(field: str, value: object, *, type_code: str | None = None) -> Reasons:
    """A 20-digit GB/T 28181 id (§6), with ``type_code`` at chars 11-13 when given."""
    if not is_digits(value, 20):
        return [f"{field} must be 20 digits, got {value!r}"]
    if type_code is not None and str(value)[10:13] != type_code:
        return [f"{field} must have type {type_code} at chars 11-13, got {str(value)[10:13]!r}"]
    return []


def base_id_reasons(field: str, value: object) -> Reasons:
    """A 41-char 视频图像信息基本对象 id: device id + 02 (image) + 14-char time + 5-digit seq (§5.5)."""
    if not is_digits(value, 41):
        return [f"{field} must be 41 digits, got {value!r}"]
    text = str(value)
    if text[20:22] != BASE_IMAGE:
        return [f"{field} must have subtype 02 (image) at chars 21-22, got {text[20:22]!r}"]
    if not is_time14(text[22:36]):
        return [f"{field} chars 23-36 must be a real yyyyMMddHHmmss time, got {text[22:36]!r}"]
    return []


def semantic_id_reasons(field: str, value: object, subtype: str) -> Reasons:
    """A 48-char semantic id: a valid 41-char base id + ``subtype`` + 5-digit seq (§5.5)."""
    if not is_digits(value, 48):
        return [f"{field} must be 48 digits, got {value!r}"]
    text = str(value)
    reasons = base_id_reasons(f"{field} chars 1-41", text[:41])
    if text[41:43] != subtype:
        reasons.append(f"{field} must have subtype {subtype} at chars 42-43, got {text[41:43]!r}")
    return reasons


def id33_reasons(field: str, value: object, subtype: str) -> Reasons:
    """A 33-char id: 12-digit org code + ``subtype`` + 14-char time + 5-digit seq (§5.5)."""
    if not is_digits(value, 33):
        return [f"{field} must be 33 digits, got {value!r}"]
    text = str(value)
    reasons = []
    if text[12:14] != subtype:
        reasons.append(f"{field} must have subtype {subtype} at chars 13-14, got {text[12:14]!r}")
    if not is_time14(text[14:28]):
        reasons.append(f"{field} chars 15-28 must be a real yyyyMMddHHmmss time, got {text[14:28]!r}")
    return reasons


def _required(obj: Obj, fields: tuple[str, ...]) -> Reasons:
    return [f"{name} is required" for name in fields if obj.get(name) in (None, "")]


def _in_table(obj: Obj, field: str, table: frozenset[str], *, required: bool = False) -> Reasons:
    if field not in obj or obj[field] is None:
        return [f"{field} is required"] if required else []
    value = code(obj[field])
    if value is None or value.lower() not in {t.lower() for t in table}:
        return [f"{field} {obj[field]!r} is not a valid code"]
    return []


def _times(obj: Obj, fields: tuple[str, ...]) -> Reasons:
    return [
        f"{name} must be yyyyMMddHHmmss, got {obj[name]!r}"
        for name in fields
        if name in obj and not is_time14(obj[name])
    ]


def _non_negative_ints(obj: Obj, fields: tuple[str, ...]) -> Reasons:
    return [
        f"{name} must be a non-negative integer, got {obj[name]!r}"
        for name in fields
        if name in obj
        and not (isinstance(obj[name], int) and not isinstance(obj[name], bool) and obj[name] >= 0)
    ]


def sub_image_reasons(image: object, index: int) -> Reasons:
    """One SubImageInfoObject: ImageID 41, DeviceID 20, Type and FileFormat from §5.6, base64 Data."""
    where = f"SubImageInfoObject[{index}]"
    if not isinstance(image, dict):
        return [f"{where} must be an object"]
    reasons = [f"{where}.{r}" for r in base_id_reasons("ImageID", image.get("ImageID"))]
    reasons += [f"{where}.{r}" for r in device_id_reasons("DeviceID", image.get("DeviceID"))]
    if isinstance(image.get("ImageID"), str) and image["ImageID"][:20] != image.get("DeviceID"):
        reasons.append(f"{where}.ImageID chars 1-20 must equal its DeviceID")
    reasons += [f"{where}.{r}" for r in _in_table(image, "Type", IMAGE_TYPES, required=True)]
    fmt = image.get("FileFormat")
    if fmt not in FILE_FORMATS:
        reasons.append(f"{where}.FileFormat {fmt!r} is not in the table")
    reasons += [f"{where}.{r}" for r in _times(image, ("ShotTime",))]
    reasons += [f"{where}.{r}" for r in _non_negative_ints(image, ("Width", "Height", "EventSort"))]
    data = image.get("Data")
    if not isinstance(data, str) or not data:
        reasons.append(f"{where}.Data must be non-empty base64")
    else:
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            reasons.append(f"{where}.Data is not valid base64")
    return reasons


def _images(obj: Obj) -> tuple[list[Any], Reasons]:
    """The SubImageInfoObject list (empty when absent) and the reasons its envelope is wrong."""
    if "SubImageList" not in obj or obj["SubImageList"] is None:
        return [], []
    envelope = obj["SubImageList"]
    images = envelope.get("SubImageInfoObject") if isinstance(envelope, dict) else None
    if not isinstance(images, list):
        return [], ["SubImageList must be {'SubImageInfoObject': [...]}"]
    reasons = [r for i, image in enumerate(images) for r in sub_image_reasons(image, i)]
    return images, reasons


def _types(images: list[Any]) -> dict[str, Obj]:
    return {code(i.get("Type")) or "": i for i in images if isinstance(i, dict)}


def _source_matches_scene(obj: Obj, images: list[Any], scene_type: str) -> Reasons:
    scene = _types(images).get(scene_type)
    if scene is not None and scene.get("ImageID") != obj.get("SourceID"):
        return [f"SourceID must equal the ImageID of the Type {scene_type} picture"]
    return []


def _ids_agree(obj: Obj, id_field: str) -> Reasons:
    """The semantic id extends SourceID, and SourceID starts with DeviceID (§5.5 layouts)."""
    reasons = []
    object_id, source, device = obj.get(id_field), obj.get("SourceID"), obj.get("DeviceID")
    if isinstance(object_id, str) and isinstance(source, str) and object_id[:41] != source:
        reasons.append(f"{id_field} chars 1-41 must equal SourceID")
    if isinstance(source, str) and isinstance(device, str) and source[:20] != device:
        reasons.append("SourceID chars 1-20 must equal DeviceID")
    return reasons


def _info_kind(obj: Obj) -> Reasons:
    return _in_table(obj, "InfoKind", INFO_KINDS, required=True)


def motor_vehicle_reasons(obj: Obj, *, deployment_rules: bool = False) -> Reasons:
    """A MotorVehicleObject (§5.4; §5.10 with ``deployment_rules``)."""
    reasons = semantic_id_reasons("MotorVehicleID", obj.get("MotorVehicleID"), SEMANTIC_MOTOR_VEHICLE)
    reasons += _info_kind(obj)
    reasons += base_id_reasons("SourceID", obj.get("SourceID"))
    reasons += device_id_reasons("DeviceID", obj.get("DeviceID"))
    reasons += _ids_agree(obj, "MotorVehicleID")
    if "TollgateID" in obj or deployment_rules:
        reasons += device_id_reasons("TollgateID", obj.get("TollgateID"), type_code=TYPE_TOLLGATE)
    reasons += _in_table(obj, "HasPlate", HAS_PLATE, required=deployment_rules)
    reasons += _in_table(obj, "PlateClass", PLATE_CLASSES, required=deployment_rules)
    reasons += _in_table(obj, "PlateColor", COLORS, required=deployment_rules)
    reasons += _in_table(obj, "VehicleColor", COLORS, required=deployment_rules)
    if code(obj.get("HasPlate")) in {"1", "true"} and not obj.get("PlateNo"):
        reasons.append("PlateNo is required when HasPlate says there is a plate")
    reasons += _times(obj, ("PassTime",))
    reasons += _non_negative_ints(obj, ("LeftTopX", "LeftTopY", "RightBtmX", "RightBtmY", "LaneNo"))
    images, image_reasons = _images(obj)
    reasons += image_reasons
    reasons += _source_matches_scene(obj, images, IMAGE_VEHICLE)
    if deployment_rules:
        box = ("LeftTopX", "LeftTopY", "RightBtmX", "RightBtmY")
        reasons += _required(obj, ("StorageUrl1", *box, "LaneNo", "PlateNo"))
        missing = {IMAGE_VEHICLE, IMAGE_PLATE} - set(_types(images))
        reasons += [f"a Type {t} picture is required" for t in sorted(missing)]
    return reasons


def face_reasons(obj: Obj, *, deployment_rules: bool = False) -> Reasons:
    """A FaceObject (§5.3; §5.10 with ``deployment_rules``)."""
    reasons = semantic_id_reasons("FaceID", obj.get("FaceID"), SEMANTIC_FACE)
    reasons += _info_kind(obj)
    reasons += base_id_reasons("SourceID", obj.get("SourceID"))
    reasons += device_id_reasons("DeviceID", obj.get("DeviceID"))
    reasons += _ids_agree(obj, "FaceID")
    for flag in FACE_FLAGS:
        manual = flag == "IsSuspiciousPerson" and code(obj.get("InfoKind")) == "2"
        reasons += _in_table(obj, flag, FLAGS, required=manual or deployment_rules)
    reasons += _in_table(obj, "GenderCode", GENDERS)
    reasons += _times(obj, ("LocationMarkTime", "FaceAppearTime", "FaceDisAppearTime", "ShotTime"))
    reasons += _non_negative_ints(obj, ("LeftTopX", "LeftTopY", "RightBtmX", "RightBtmY"))
    images, image_reasons = _images(obj)
    reasons += image_reasons
    types = set(_types(images))
    if (images or deployment_rules) and IMAGE_FACE not in types:
        reasons.append("a face with pictures must include the Type 11 face crop")
    reasons += _source_matches_scene(obj, images, IMAGE_SCENE)
    if deployment_rules and IMAGE_SCENE not in types:
        reasons.append("a Type 14 scene picture is required")
    return reasons


def _coordinate(obj: Obj, field: str, limit: float, *, six_decimals: bool) -> Reasons:
    if field not in obj:
        return [f"{field} is required"] if six_decimals else []
    value = obj[field]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not -limit <= value <= limit:
        return [f"{field} must be a number within ±{limit}, got {value!r}"]
    if six_decimals and (len(repr(float(value)).split(".")[1]) != 6):
        return [f"{field} must have 6 decimals, got {value!r}"]
    return []


def ape_reasons(obj: Obj, *, deployment_rules: bool = False) -> Reasons:
    """An APEObject (§5.7; §5.10 with ``deployment_rules``)."""
    reasons = device_id_reasons("ApeID", obj.get("ApeID"), type_code=TYPE_APE)
    reasons += _required(obj, ("Name",))
    if code(obj.get("IsOnline")) is None:
        reasons.append("IsOnline is required")
    if obj.get("IPAddr"):
        try:
            ipaddress.ip_address(str(obj["IPAddr"]))
        except ValueError:
            reasons.append(f"IPAddr {obj['IPAddr']!r} is not an IP address")
    port = code(obj.get("Port"))
    if port not in (None, "") and not (port.isdigit() and 1 <= int(port) <= 65535):
        reasons.append(f"Port {obj['Port']!r} is not a TCP port")
    reasons += _coordinate(obj, "Longitude", 180, six_decimals=deployment_rules)
    reasons += _coordinate(obj, "Latitude", 90, six_decimals=deployment_rules)
    if obj.get("OrgCode") not in (None, "") and not is_digits(obj["OrgCode"], 12):
        reasons.append(f"OrgCode must be 12 digits, got {obj['OrgCode']!r}")
    place = obj.get("PlaceCode")
    if place not in (None, "") and not (is_digits(place, 6) or is_digits(place, 20) or is_digits(place, 21)):
        # §5.10 says 6 or 20; the §5.7 sample carries 21 digits, so both are taken as the standard's
        reasons.append(f"PlaceCode must be 6 or 20 digits, got {place!r}")
    function = code(obj.get("FunctionType"))
    if function not in (None, "") and not all(part.isdigit() for part in function.split("/")):
        reasons.append(f"FunctionType {obj['FunctionType']!r} is not a code (list)")
    if deployment_rules:
        reasons += _required(obj, ("Model", "IPAddr", "Port", "PlaceCode", "OrgCode"))
        reasons += [f"{name} must be present" for name in ("UserId", "Password") if name not in obj]
        reasons += _in_table(obj, "FunctionType", frozenset({"1", "2"}), required=True)
    return reasons


def subscribe_reasons(obj: Obj) -> Reasons:
    """A SubscribeObject as an upper platform sends it (§5.8, §5.6 codes) — for the double's own helper."""
    reasons = id33_reasons("SubscribeID", obj.get("SubscribeID"), ID33_SUBSCRIBE)
    reasons += _required(obj, ("Title", "SubscribeDetail", "ResourceURI", "ReceiveAddr"))
    details = str(obj.get("SubscribeDetail", "")).split(",")
    reasons += [f"SubscribeDetail {d!r} is not a code" for d in details if d and d not in SUBSCRIBE_DETAILS]
    reasons += _times(obj, ("BeginTime", "EndTime"))
    reasons += _in_table(obj, "ResourceClass", RESOURCE_CLASSES)
    reasons += _in_table(obj, "SubscribeStatus", SUBSCRIBE_STATUSES)
    reasons += _in_table(obj, "OperateType", frozenset({"0", "1"}), required=True)
    return reasons


# the objects a notification may carry: list key, object key, category, checker
NOTIFIED: tuple[tuple[str, str, str, Callable[..., Reasons]], ...] = (
    ("FaceObjectList", "FaceObject", "Face", face_reasons),
    ("MotorVehicleObjectList", "MotorVehicleObject", "MotorVehicle", motor_vehicle_reasons),
    ("DeviceList", "APEObject", "APE", ape_reasons),
)


def notification_reasons(obj: Obj, *, deployment_rules: bool = False) -> Reasons:
    """A SubscribeNotificationObject (§5.8, §5.10): ids, TriggerTime, and every object inside it."""
    reasons = id33_reasons("NotificationID", obj.get("NotificationID"), ID33_NOTIFICATION)
    reasons += id33_reasons("SubscribeID", obj.get("SubscribeID"), ID33_SUBSCRIBE)
    if not is_time14(obj.get("TriggerTime")):
        reasons.append(f"TriggerTime must be yyyyMMddHHmmss, got {obj.get('TriggerTime')!r}")
    reasons += _in_table(obj, "ExecuteOperation", EXECUTE_OPERATIONS)
    if deployment_rules:
        reasons += _required(obj, ("Title", "InfoIDs"))
    for list_key, object_key, _category, check in NOTIFIED:
        if obj.get(list_key) is None:
            continue
        items = obj[list_key].get(object_key) if isinstance(obj[list_key], dict) else None
        if not isinstance(items, list):
            reasons.append(f"{list_key} must be {{{object_key!r}: [...]}}")
            continue
        for i, item in enumerate(items):
            inner = (
                check(item, deployment_rules=deployment_rules)
                if isinstance(item, dict)
                else ["not an object"]
            )
            reasons += [f"{object_key}[{i}].{r}" for r in inner]
    return reasons
