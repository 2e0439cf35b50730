"""Valid GA/T 1400 objects built from the reference's samples (§5.3, §5.4, §5.7, §5.8), for tests.

Each builder returns a fresh dict that the double accepts; a test breaks one field to see a refusal.
Ids follow §5.5: a capture's 41-char image id is device + 02 + time + seq, its semantic id that +
subtype (02 vehicle, 06 face) + seq.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from tests.viid_double.validation import Obj

DISTRICT_ID = "33010600015030000001"  # the lower platform (district VIID, type 503)
FACE_DEVICE = "33010600011190000001"  # a face access terminal (APE, 119)
ANPR_DEVICE = "33010600011190000101"  # a barrier camera (APE, 119)
TOLLGATE = "33010600011210000001"  # its vehicle entrance (tollgate, 121)
SHOT = "20250612083015"
PICTURE = base64.b64encode(b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9").decode()


def image_id(device: str, seq: int, shot: str = SHOT) -> str:
    """A 41-char image id: device (20) + 02 + shot time (14) + seq (5)."""
    return f"{device}02{shot}{seq:05d}"


def sub_image(device: str, seq: int, image_type: str, *, event_sort: int = 10, shot: str = SHOT) -> Obj:
    """One SubImageInfoObject with base64 data."""
    return {
        "ImageID": image_id(device, seq, shot),
        "EventSort": event_sort,
        "DeviceID": device,
        "StoragePath": "",
        "Type": image_type,
        "FileFormat": "Jpeg",
        "ShotTime": shot,
        "Width": 1920,
        "Height": 1080,
        "Data": PICTURE,
    }


def face(seq: int = 1, *, device: str = FACE_DEVICE, shot: str = SHOT) -> Obj:
    """A FaceObject with a scene (14) and a crop (11); FaceID = scene id + 06 + seq."""
    scene = image_id(device, 2 * seq - 1, shot)
    return {
        "FaceID": f"{scene}06{seq:05d}",
        "InfoKind": 1,
        "SourceID": scene,
        "DeviceID": device,
        "LeftTopX": 512,
        "LeftTopY": 369,
        "RightBtmX": 749,
        "RightBtmY": 707,
        "LocationMarkTime": shot,
        "FaceAppearTime": shot,
        "FaceDisAppearTime": shot,
        "ShotTime": shot,
        "GenderCode": "1",
        "IsDriver": 2,
        "IsForeigner": 2,
        "IsSuspectedTerrorist": 2,
        "IsCriminalInvolved": 2,
        "IsDetainees": 2,
        "IsVictim": 2,
        "IsSuspiciousPerson": 2,
        "SubImageList": {
            "SubImageInfoObject": [
                sub_image(device, 2 * seq - 1, "14", shot=shot),
                sub_image(device, 2 * seq, "11", shot=shot),
            ]
        },
    }


def motor_vehicle(
    seq: int = 1, *, device: str = ANPR_DEVICE, tollgate: str = TOLLGATE, shot: str = SHOT
) -> Obj:
    """A MotorVehicleObject with the vehicle (01) and plate (02) pictures; id = big picture id + 02 + seq."""
    big = image_id(device, 2 * seq - 1, shot)
    return {
        "MotorVehicleID": f"{big}02{seq:05d}",
        "InfoKind": 1,
        "SourceID": big,
        "TollgateID": tollgate,
        "DeviceID": device,
        "StorageUrl1": "http://gw.local/img/scene.jpg",
        "LeftTopX": 0,
        "LeftTopY": 0,
        "RightBtmX": 0,
        "RightBtmY": 0,
        "LaneNo": 1,
        "HasPlate": "1",
        "PlateClass": "02",
        "PlateColor": "5",
        "PlateNo": "浙A12345",
        "VehicleClass": "K33",
        "VehicleColor": "1",
        "PassTime": shot,
        "Speed": "0",
        "Direction": "",
        "SubImageList": {
            "SubImageInfoObject": [
                sub_image(device, 2 * seq - 1, "01", event_sort=13, shot=shot),
                sub_image(device, 2 * seq, "02", event_sort=13, shot=shot),
            ]
        },
    }


def ape(ape_id: str = FACE_DEVICE, *, name: str = "东门人脸门禁1", online: str = "1") -> Obj:
    """An APEObject as in §5.7 (all §5.10 fields present)."""
    return {
        "ApeID": ape_id,
        "Name": name,
        "Model": "DS-K1T671",
        "IPAddr": "10.1.2.31",
        "IPV6Addr": "",
        "Port": "80",
        "Longitude": 120.123456,
        "Latitude": 30.123456,
        "PlaceCode": "330106000000000000000",
        "Place": "东门",
        "OrgCode": "330106000000",
        "CapDirection": 0,
        "MonitorDirection": "",
        "MonitorAreaDesc": "",
        "IsOnline": online,
        "OwnerApsID": "",
        "UserId": "",
        "Password": "",
        "FunctionType": "2",
        "PositionType": "",
    }


def notification(
    seq: int, subscribe_id: str, *, faces: Sequence[Obj] = (), vehicles: Sequence[Obj] = ()
) -> Obj:
    """A SubscribeNotificationObject (§5.8) carrying the given objects; NotificationID org + 04 + time + seq."""
    ids = [f["FaceID"] for f in faces] + [v["MotorVehicleID"] for v in vehicles]
    return {
        "NotificationID": f"33010600000004{SHOT}{seq:05d}",
        "SubscribeID": subscribe_id,
        "Title": "区级人脸数据订阅",
        "TriggerTime": SHOT,
        "InfoIDs": ",".join(ids),
        "ExecuteOperation": 1,
        "FaceObjectList": {"FaceObject": list(faces)},
        "MotorVehicleObjectList": {"MotorVehicleObject": list(vehicles)},
    }
