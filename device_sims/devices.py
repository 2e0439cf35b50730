"""Simulated vendor devices: each produces the exact bytes its real counterpart sends.

One class per dialect, all with the same small interface: ``routine`` (an everyday event),
``alarm`` (the dialect's alarm), ``malformed`` (broken payloads of the kinds seen in the field),
and, for MQTT devices, ``status`` (the birth / last-will message). Every method takes the simulated
time and a seeded ``random.Random`` so a scenario is reproducible.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import ClassVar, Literal, Protocol
from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

CST = timezone(timedelta(hours=8))
PROVINCES = "浙京沪粤苏赣鄂湘川"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
DIGITS = "0123456789"


def asset(name: str) -> bytes:
    """Bytes of a picture shipped with the simulators."""
    return resources.files("device_sims").joinpath("assets", name).read_bytes()


@dataclass(frozen=True)
class PushCredentials:
    """How a device or platform authenticates its HTTP pushes (gateway/push_auth.py checks them)."""

    scheme: Literal["digest", "basic", "hmac-sha256"]
    username: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class HttpPost:
    """A device's HTTP push, and the credentials its sender presents (None: it presents none)."""

    path: str
    body: bytes
    content_type: str
    credentials: PushCredentials | None = None

    def variant(self, body: bytes, content_type: str) -> HttpPost:
        """Another push from the same sender (a broken one, say)."""
        return replace(self, body=body, content_type=content_type)


@dataclass(frozen=True)
class MqttPublish:
    """A device's MQTT publish (QoS 1 unless stated)."""

    topic: str
    payload: bytes
    qos: int = 1


Outgoing = HttpPost | MqttPublish


def sample_secret(name: str) -> str:
    """The demo's secret of a device, platform or the gateway: derived from its name, never random.

    The demo, the tests and the benchmarks write these into the sample compound's secrets file and
    the simulators present them, like installers configure each device with its own. Anyone can
    compute them: they protect nothing outside a demo.
    """
    return hashlib.sha256(f"compound-gateway sample secret:{name}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class SimDevice:
    """The inventory entry a simulator impersonates, with the secret it authenticates with."""

    id: str
    dialect: str
    ref: str | None = None
    push_auth: Literal["digest", "basic"] = "digest"
    password: str | None = field(default=None, repr=False)
    """Its secret as the gateway's secrets file has it; None: the sample compound's (``sample_secret``)."""

    @property
    def secret(self) -> str:
        """Its password: HTTP push (digest or basic) or its account on the compound broker."""
        return self.password if self.password is not None else sample_secret(self.id)

    @property
    def username(self) -> str:
        """The name it authenticates as: its ref on the broker (MQTT), its id in HTTP pushes."""
        return self.ref or self.id

    @property
    def credentials(self) -> PushCredentials:
        """What it authenticates its HTTP pushes with: its id (the gateway's default user name) and secret."""
        return PushCredentials(self.push_auth, self.id, self.secret)


class DeviceSim(Protocol):
    """What every simulated device can send."""

    device: SimDevice
    transport: str

    def routine(self, at: datetime, rng: random.Random) -> Outgoing:
        """An everyday message of this device."""
        ...

    def alarm(self, at: datetime, rng: random.Random) -> Outgoing:
        """The device's alarm (or its most urgent event)."""
        ...

    def malformed(self, rng: random.Random) -> list[Outgoing]:
        """Broken payloads of the kinds seen in the field."""
        ...


def random_plate(rng: random.Random, *, new_energy: bool = False) -> str:
    """A plausible civil plate (7 characters, 8 for new-energy)."""
    head = rng.choice(PROVINCES) + rng.choice(LETTERS)
    if new_energy:
        return head + rng.choice("DF") + "".join(rng.choice(DIGITS) for _ in range(5))
    return head + "".join(rng.choice(LETTERS + DIGITS) for _ in range(5))


def _multipart(
    parts: Sequence[tuple[str, str | None, str, bytes]], boundary: str = "MIME_boundary"
) -> tuple[bytes, str]:
    chunks = []
    for name, filename, ctype, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {ctype}\r\n\r\n"
        chunks.append(head.encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _mac_for(device_id: str, oui: str) -> str:
    tail = int(device_id[-6:]) % (1 << 24)
    return f"{oui}:{tail >> 16:02x}:{(tail >> 8) & 0xFF:02x}:{tail & 0xFF:02x}"


def _json(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


Clock = Callable[[], float]
"""Seconds on a monotonic clock; acting simulators take one so tests can move time on by hand."""


@dataclass(frozen=True)
class HttpAnswer:
    """An ISAPI device's answer: HTTP status, content type and the exact bytes."""

    status: int
    content_type: str
    body: bytes


ISAPI_XMLNS = "http://www.isapi.org/ver20/XMLSchema"


def isapi_status(
    url: str, code: int, text: str, sub: str, *, http_status: int | None = None, json_form: bool = False
) -> HttpAnswer:
    """A ``ResponseStatus`` as ISAPI devices answer commands (``statusCode`` 1 = OK)."""
    status = http_status or (200 if code == 1 else 400)
    if json_form:
        doc = {"requestURL": url, "statusCode": code, "statusString": text, "subStatusCode": sub}
        return HttpAnswer(status, "application/json", _json(doc))
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ResponseStatus version="2.0" xmlns="{ISAPI_XMLNS}">'
        f"<requestURL>{url}</requestURL><statusCode>{code}</statusCode>"
        f"<statusString>{text}</statusString><subStatusCode>{sub}</subStatusCode></ResponseStatus>"
    )
    return HttpAnswer(status, "application/xml", xml.encode())


def _isapi_xml(body: bytes) -> Element | None:
    """A request's XML root (namespaces dropped), or None when it does not parse or is not allowed."""
    try:
        root = fromstring(body, forbid_dtd=True)
    except (DefusedXmlException, ParseError, LookupError, ValueError):
        return None
    for element in root.iter():
        element.tag = element.tag.rsplit("}", 1)[-1]
    return root


class HikAcsSim:
    """Face gate posting ISAPI AccessControllerEvent multipart pushes, with doors that open on command.

    The doors (``doors`` of them): ``PUT /ISAPI/AccessControl/RemoteControl/door/<n>`` with
    ``<cmd>open</cmd>`` unlocks door n for ``hold_s`` seconds of ``clock``, then it locks again;
    ``GET /ISAPI/AccessControl/AcsWorkStatus?format=json`` reports ``doorLockStatus`` per door
    (1 unlocked, 0 locked). Each opening is reported as the controller does: a remote-open event
    (minor 0x400) when it unlocks and a door-locked event (minor 0x16) when the hold ends, taken
    with ``door_reports``. Faults to switch on: ``remote_disabled`` (refuses remote opening,
    statusCode 4), ``garbled_replies`` (unreadable answers). ``answer`` is plain logic (request in,
    answer out); ``device_sims.isapi_server`` serves it over HTTP with digest authentication.
    """

    transport = "http"

    def __init__(self, device: SimDevice, *, clock: Clock = time.monotonic) -> None:
        self.device = device
        self.mac = _mac_for(device.id, "a4:d5:c2")
        self.serial = 100
        self.clock = clock
        self.doors = 2
        self.hold_s = 5.0
        self.remote_disabled = False
        self.garbled_replies = False
        self.commands_executed = 0  # how often a lock was actually driven
        self._unlocked_until: dict[int, float] = {}
        self._reports: list[int] = []  # minor codes still to post, in order

    def _locked_again(self) -> None:
        """Doors whose hold ended lock, and the lock is reported."""
        now = self.clock()
        for door, until in sorted(self._unlocked_until.items()):
            if now >= until:
                del self._unlocked_until[door]
                self._reports.append(0x16)

    def door_unlocked(self, door: int) -> bool:
        """Whether door n's lock is open now."""
        self._locked_again()
        return door in self._unlocked_until

    def answer(self, method: str, path: str, body: bytes) -> HttpAnswer:
        """The controller's answer to one ISAPI request (authentication already checked)."""
        self._locked_again()
        if method == "GET" and path == "/ISAPI/AccessControl/AcsWorkStatus?format=json":
            return self._work_status(path)
        prefix = "/ISAPI/AccessControl/RemoteControl/door/"
        if method != "PUT" or not path.startswith(prefix):
            return isapi_status(path, 4, "Invalid Operation", "notSupport", http_status=404)
        if self.garbled_replies:
            return HttpAnswer(
                200, "application/xml", b"<ResponseStatus><statusCode>OK</statusCode></ResponseStatus>"
            )
        number = path.removeprefix(prefix)
        door = int(number) if number.isdigit() and len(number) < 3 else 0
        root = _isapi_xml(body)
        if root is None or root.tag != "RemoteControlDoor":
            return isapi_status(path, 5, "Invalid XML Format", "badXmlFormat")
        if not 1 <= door <= self.doors:
            return isapi_status(path, 6, "Invalid XML Content", "badParameters")
        if root.findtext("cmd") != "open":
            return isapi_status(path, 6, "Invalid XML Content", "badXmlContent")
        if self.remote_disabled:
            return isapi_status(path, 4, "Invalid Operation", "remoteOpenDoorDisabled", http_status=403)
        self._unlocked_until[door] = self.clock() + self.hold_s
        self.commands_executed += 1
        self._reports.append(0x400)
        return isapi_status(path, 1, "OK", "ok")

    def _work_status(self, path: str) -> HttpAnswer:
        if self.garbled_replies:
            return HttpAnswer(200, "application/json", _json({"AcsWorkStatus": {"doorLockStatus": ["open"]}}))
        locks = [1 if door in self._unlocked_until else 0 for door in range(1, self.doors + 1)]
        doc = {
            "AcsWorkStatus": {
                "doorLockStatus": locks,
                "doorStatus": [4] * self.doors,  # normal mode (not remain-open / remain-closed)
                "magneticStatus": [0] * self.doors,  # nobody pushed the door: its contact stays closed
                "antiSneakStatus": "close",
            }
        }
        return HttpAnswer(200, "application/json", _json(doc))

    def door_reports(self, at: datetime, rng: random.Random) -> list[HttpPost]:
        """The event posts of openings and lockings since the last call, in order."""
        self._locked_again()
        reports, self._reports = self._reports, []
        return [self._post(at, minor, None, rng, picture=False) for minor in reports]

    def _post(
        self,
        at: datetime,
        sub_event: int,
        employee: str | None,
        rng: random.Random,
        *,
        picture: bool = True,
        photo: tuple[bytes, str] | None = None,
    ) -> HttpPost:
        self.serial += 1
        acs: dict[str, object] = {
            "deviceName": "Access Controller",
            "majorEventType": 5,
            "subEventType": sub_event,
            "cardReaderKind": 1,
            "cardReaderNo": rng.choice([1, 2]),
            "doorNo": 1,
            "verifyNo": rng.randint(1, 999),
            "serialNo": self.serial,
            "currentVerifyMode": "cardOrFaceOrFp",
            "currentEvent": True,
            "frontSerialNo": self.serial - 1,
            "attendanceStatus": "undefined",
            "statusValue": 0,
            "mask": rng.choice(["yes", "no"]),
            "picturesNumber": 1 if picture else 0,
            "purePwdVerifyEnable": True,
        }
        if employee is not None:
            acs |= {"employeeNoString": employee, "name": "张三", "userType": "normal"}
        document = {
            "ipAddress": "192.168.1.11",
            "portNo": 80,
            "protocol": "HTTP",
            "macAddress": self.mac,
            "channelID": 1,
            "dateTime": at.astimezone(CST).isoformat(timespec="seconds"),
            "activePostCount": 1,
            "eventType": "AccessControllerEvent",
            "eventState": "active",
            "eventDescription": "Access Controller Event",
            "AccessControllerEvent": acs,
        }
        parts: list[tuple[str, str | None, str, bytes]] = [
            ("event_log", None, "application/json", _json(document))
        ]
        if photo is not None:
            data, content_type = photo
            parts.append(("Picture", "Picture.jpg", content_type, data))
        elif picture:
            parts.append(("Picture", "Picture.jpg", "image/jpeg", asset("gate-snapshot.jpg")))
        body, ctype = _multipart(parts)
        return HttpPost(f"/push/{self.device.id}", body, ctype, self.device.credentials)

    def face_seen(
        self, at: datetime, rng: random.Random, photo: bytes, content_type: str = "image/jpeg"
    ) -> Outgoing:
        """A face at the gate, with the camera's picture of it (a recognition failure: no employee number)."""
        return self._post(at, 0x50, None, rng, photo=(photo, content_type))

    def routine(self, at: datetime, rng: random.Random) -> Outgoing:
        """A resident's face verified (minor 0x4b)."""
        return self._post(at, 0x4B, f"{rng.randint(100000, 100400)}", rng)

    def alarm(self, at: datetime, rng: random.Random) -> Outgoing:
        """A stranger at the gate (minor 0x50)."""
        return self._post(at, 0x50, None, rng)

    def malformed(self, rng: random.Random) -> list[Outgoing]:
        """Broken pushes: truncated JSON, wrong type, missing part, bad picture, no boundary."""
        good = self._post(datetime(2025, 6, 12, 8, 30, tzinfo=CST), 0x4B, "100123", rng)
        out: list[Outgoing] = []
        doc_bytes = good.body.split(b"\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0]
        bad_type = _json(
            json.loads(doc_bytes) | {"AccessControllerEvent": {"majorEventType": "five", "subEventType": 75}}
        )
        out = []
        variants: tuple[Sequence[tuple[str, str | None, str, bytes]], ...] = (
            [("event_log", None, "application/json", doc_bytes[: len(doc_bytes) // 2])],
            [("event_log", None, "application/json", bad_type)],
            [("Picture", "Picture.jpg", "image/jpeg", asset("gate-snapshot.jpg"))],
            [
                ("event_log", None, "application/json", doc_bytes),
                ("Picture", "Picture.jpg", "image/jpeg", b"GIF89a...."),
            ],
        )
        for parts in variants:
            body, ctype = _multipart(parts)
            out.append(good.variant(body, ctype))
        out.append(good.variant(good.body, "multipart/form-data"))
        return out


class HikAnprSim:
    """Barrier camera posting ISAPI ANPR EventNotificationAlert XML with pictures, and a barrier that moves.

    The barrier (channel 1): ``PUT /ISAPI/Parking/channels/1/barrierGate`` with ``ctrlMode`` open,
    close, lock (hold open) or unlock (release, the arm comes down) starts the arm moving; it gets
    there ``travel_s`` seconds of ``clock`` later. ``GET .../barrierGate/barrierGateStatus``
    reports 1 closed, 2 open, and 0 (no signal) while the arm is between its limit switches.
    While held open the camera answers open and close with statusCode 1 and does not move, as the
    reference reports of a locked unit. Faults to switch on: ``stuck`` (answers OK, never moves),
    ``camera_control`` (barrier mode "by camera": refuses platform commands), ``garbled_replies``.
    ``answer`` is plain logic; ``device_sims.isapi_server`` serves it with digest authentication.
    """

    transport = "http"

    def __init__(self, device: SimDevice, *, clock: Clock = time.monotonic) -> None:
        self.device = device
        self.mac = _mac_for(device.id, "44:a6:42")
        self.clock = clock
        self.travel_s = 3.0
        self.stuck = False
        self.camera_control = False
        self.garbled_replies = False
        self.held = False
        self.commands_executed = 0  # how often the arm was actually driven
        self._open = False  # where the arm is going (or is)
        self._arrives = 0.0  # when it gets there

    def _drive(self, open_arm: bool) -> None:
        if open_arm != self._open:
            self._open = open_arm
            self._arrives = self.clock() + self.travel_s
        self.commands_executed += 1

    def barrier_status(self) -> int:
        """``barrierGateStatus``: 0 moving (no limit switch), 1 closed, 2 open."""
        if self.clock() < self._arrives:
            return 0
        return 2 if self._open else 1

    def answer(self, method: str, path: str, body: bytes) -> HttpAnswer:
        """The camera's answer to one ISAPI request (authentication already checked)."""
        base = "/ISAPI/Parking/channels/1/barrierGate"
        if method == "GET" and path == f"{base}/barrierGateStatus":
            if self.garbled_replies:
                text = "<BarrierGateStatus><channelID>1</channelID><barrierGateStatus>up</barrierGateStatus></BarrierGateStatus>"
                return HttpAnswer(200, "application/xml", text.encode())
            xml = (
                f'<?xml version="1.0" encoding="UTF-8"?>\n<BarrierGateStatus version="2.0" xmlns="{ISAPI_XMLNS}">'
                f"<channelID>1</channelID><barrierGateStatus>{self.barrier_status()}</barrierGateStatus>"
                "</BarrierGateStatus>"
            )
            return HttpAnswer(200, "application/xml", xml.encode())
        if method == "GET" and path.endswith("/barrierGate/barrierGateStatus"):
            return isapi_status(path, 4, "Invalid Operation", "invalidChannel")
        if method != "PUT" or not path.endswith("/barrierGate"):
            return isapi_status(path, 4, "Invalid Operation", "notSupport", http_status=404)
        if self.garbled_replies:
            return HttpAnswer(
                200, "application/xml", b"<ResponseStatus><statusCode>OK</statusCode></ResponseStatus>"
            )
        root = _isapi_xml(body)
        if root is None or root.tag != "BarrierGate":
            return isapi_status(path, 5, "Invalid XML Format", "badXmlFormat")
        if path != base:
            return isapi_status(path, 4, "Invalid Operation", "invalidChannel")
        mode = root.findtext("ctrlMode")
        if mode not in {"open", "close", "lock", "unlock"}:
            return isapi_status(path, 6, "Invalid XML Content", "badXmlContent")
        if self.camera_control:
            return isapi_status(path, 4, "Invalid Operation", "barrierControlledByCamera", http_status=403)
        if self.stuck:
            return isapi_status(path, 1, "OK", "ok")
        if mode == "lock":
            self.held = True
            self._drive(True)
        elif mode == "unlock":
            self.held = False
            self._drive(False)
        elif not self.held:  # a held barrier says OK to open and close and stays where it is
            self._drive(mode == "open")
        return isapi_status(path, 1, "OK", "ok")

    def plate_seen(self, at: datetime, rng: random.Random, plate: str) -> Outgoing:
        """A given plate at the barrier (an allowed car)."""
        return self._post(at, plate, "blue", "whiteList", rng)

    def _post(self, at: datetime, plate: str, color: str, list_type: str, rng: random.Random) -> HttpPost:
        event_uuid = uuid.UUID(int=rng.getrandbits(128), version=4)
        xml = f"""<?xml version="1.0" encoding="utf-8"?>
<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">
<ipAddress>172.20.16.40</ipAddress><protocol>HTTP</protocol><macAddress>{self.mac}</macAddress>
<channelID>1</channelID><dateTime>{at.astimezone(CST).isoformat(timespec="milliseconds")}</dateTime>
<activePostCount>1</activePostCount><eventType>ANPR</eventType><eventState>active</eventState>
<eventDescription>ANPR</eventDescription><channelName>IP CAPTURE CAMERA</channelName><deviceID>88</deviceID>
<ANPR><country>..</country><licensePlate>{plate}</licensePlate><line>1</line>
<direction>{rng.choice(["forward", "reverse"])}</direction><confidenceLevel>{rng.randint(80, 99)}</confidenceLevel>
<plateType>unknown</plateType><plateColor>{color}</plateColor><licenseBright>173</licenseBright>
<vehicleType>{rng.choice(["vehicle", "SUVMPV", "van"])}</vehicleType><detectDir>8</detectDir><detectType>2</detectType>
<barrierGateCtrlType>1</barrierGateCtrlType><alarmDataType>0</alarmDataType>
<pictureInfoList><pictureInfo><fileName>detectionPicture.jpg</fileName><type>detectionPicture</type></pictureInfo>
<pictureInfo><fileName>licensePlatePicture.jpg</fileName><type>licensePlatePicture</type></pictureInfo></pictureInfoList>
<listType>{list_type}</listType><originalLicensePlate>{plate}</originalLicensePlate></ANPR>
<UUID>{event_uuid}</UUID><picNum>2</picNum><deviceUUID>DS-TCG405-E 20220323AIJ67694167</deviceUUID>
</EventNotificationAlert>"""
        body, ctype = _multipart(
            [
                ("anpr.xml", "anpr.xml", "text/xml", xml.encode()),
                ("detectionPicture.jpg", "detectionPicture.jpg", "image/jpeg", asset("vehicle-scene.jpg")),
                ("licensePlatePicture.jpg", "licensePlatePicture.jpg", "image/jpeg", asset("plate.jpg")),
            ],
            boundary="boundary",
        )
        return HttpPost(f"/push/{self.device.id}", body, ctype, self.device.credentials)

    def routine(self, at: datetime, rng: random.Random) -> Outgoing:
        """A resident's car on the allow list (one in five new-energy)."""
        new_energy = rng.random() < 0.2
        return self._post(
            at, random_plate(rng, new_energy=new_energy), "green" if new_energy else "blue", "whiteList", rng
        )

    def alarm(self, at: datetime, rng: random.Random) -> Outgoing:
        """A block-listed plate."""
        return self._post(at, random_plate(rng), "yellow", "blackList", rng)

    def malformed(self, rng: random.Random) -> list[Outgoing]:
        """Broken pushes: truncated XML, an XML bomb, an over-long plate, a wrong root.

        An unreadable but short plate text is no longer broken (it is kept as ``plate_raw``), so the
        plate case is text no camera sends for a plate.
        """
        good = self._post(datetime(2025, 6, 12, 8, 35, tzinfo=CST), "浙A12345", "blue", "whiteList", rng)
        bomb = b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><EventNotificationAlert>&lol2;</EventNotificationAlert>'
        return [
            good.variant(good.body[: len(good.body) // 3], good.content_type),
            good.variant(bomb, "application/xml"),
            good.variant(
                good.body.replace("浙A12345".encode(), b"DROP TABLE plates; -- " * 3), good.content_type
            ),
            good.variant(b"<Alert><eventType>ANPR</eventType></Alert>", "text/xml"),
        ]


class _MqttJsonSim:
    """Shared pieces of the MQTT JSON devices."""

    transport = "mqtt"
    prefix: ClassVar[str]
    event_channel: ClassVar[str]

    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self.seq = 0
        if device.ref is None:
            raise ValueError(f"{device.dialect} simulator needs the device ref")
        self.ref: str = device.ref

    def restart(self) -> None:
        """The device reboots: its message count (shed ``seq``, LPR ``plateid``) starts again from 1."""
        self.seq = 0

    def topic(self, channel: str) -> str:
        """The device's topic for a channel."""
        return f"{self.prefix}/{self.ref}/{channel}"

    def status(self, *, online: bool, session: str) -> MqttPublish:
        """Birth (online) or last-will (offline) message."""
        return MqttPublish(self.topic("status"), _json({"online": online, "session": session}))

    def malformed(self, rng: random.Random) -> list[Outgoing]:
        """Broken messages common to the JSON dialects."""
        return [
            MqttPublish(self.topic(self.event_channel), b'{"type": "face_rec", "msgId": '),
            MqttPublish(self.topic(self.event_channel), b"\xff\xfe not utf-8"),
            MqttPublish(self.topic(self.event_channel), b"[1, 2, 3]"),
            MqttPublish(self.topic(self.event_channel), b"[" * 5000 + b"]" * 5000),
            MqttPublish(f"{self.prefix}/UNKNOWN-{rng.randint(1000, 9999)}/{self.event_channel}", b"{}"),
        ]


class UfaceSim(_MqttJsonSim):
    """Face terminal publishing recognition records over MQTT, with a door relay that opens on command.

    ``remote_open`` on ``uface/<sn>/cmd/req`` unlocks the door (``doorNo`` 1) for ``hold_s``
    seconds of ``clock``, answered on ``.../cmd/resp``; ``door_state`` on ``.../state/req`` is
    answered on ``.../state/resp`` with ``relay`` 1 (unlocked) or 0. Faults to switch on:
    ``remote_disabled`` (code 1001, as when remote opening is turned off in the terminal's
    settings), ``garbled_replies``. The logic is plain methods; tests wire them to a broker.
    """

    prefix = "uface"
    event_channel = "event"

    def __init__(self, device: SimDevice, *, clock: Clock = time.monotonic) -> None:
        super().__init__(device)
        self.clock = clock
        self.hold_s = 5.0
        self.remote_disabled = False
        self.garbled_replies = False
        self.commands_executed = 0
        self._unlocked_until = float("-inf")

    @property
    def request_topics(self) -> tuple[str, str]:
        """Where the terminal listens for commands and state queries."""
        return self.topic("cmd/req"), self.topic("state/req")

    def handle(self, message: MqttPublish) -> MqttPublish | None:
        """The terminal's answer to a message on one of its request topics (None for other topics)."""
        if message.topic == self.topic("cmd/req"):
            return MqttPublish(self.topic("cmd/resp"), self._answer(message.payload, "remote_open"))
        if message.topic == self.topic("state/req"):
            return MqttPublish(self.topic("state/resp"), self._answer(message.payload, "door_state"))
        return None

    def _answer(self, body: bytes, kind: str) -> bytes:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            doc = {}
        doc = doc if isinstance(doc, dict) else {}
        msg_id = doc.get("msgId") if isinstance(doc.get("msgId"), str) else ""
        data = doc.get("data")
        data = data if isinstance(data, dict) else {}
        answer: dict[str, object] = {"msgId": msg_id, "sn": self.ref, "type": f"{kind}_ack"}
        if self.garbled_replies:
            return _json(answer | {"data": {"code": "success", "doorNo": 1, "relay": "on"}})
        if doc.get("type") != kind or not msg_id:
            return _json(answer | {"data": {"code": 400, "msg": "bad request"}})
        if data.get("doorNo") != 1:  # this terminal drives one door
            return _json(answer | {"data": {"code": 1002, "msg": "no such door", "doorNo": 1}})
        now = self.clock()
        if kind == "door_state":
            relay = 1 if now < self._unlocked_until else 0
            return _json(answer | {"data": {"code": 0, "doorNo": 1, "relay": relay}})
        if self.remote_disabled:
            return _json(answer | {"data": {"code": 1001, "msg": "remote open disabled"}})
        self._unlocked_until = now + self.hold_s
        self.commands_executed += 1
        return _json(answer | {"data": {"code": 0, "msg": "success"}})

    def _record(
        self, at: datetime, result: int, person: str | None, rng: random.Random, photo: bytes | None = None
    ) -> MqttPublish:
        self.seq += 1
        data: dict[str, object] = {
            "recResult": result,
            "similarity": round(rng.uniform(85, 99), 1) if person else round(rng.uniform(20, 50), 1),
            "mask": rng.choice([0, 1]),
            "direction": rng.choice([1, 2]),
            "verifyMode": "face",
            "image": base64.b64encode(photo or asset("gate-snapshot.jpg")).decode(),
        }
        if person is not None:
            data |= {"personId": person, "personName": "李四", "personType": 1}
        doc = {
            "msgId": f"{self.ref}-{self.seq:08d}-{rng.getrandbits(32):08x}",
            "sn": self.ref,
            "type": "face_rec",
            "time": at.astimezone(CST).strftime("%Y-%m-%d %H:%M:%S"),
            "data": data,
        }
        return MqttPublish(self.topic("event"), _json(doc))

    def routine(self, at: datetime, rng: random.Random) -> Outgoing:
        """A resident passes."""
        return self._record(at, 1, f"R{rng.randint(1000, 1400)}", rng)

    def alarm(self, at: datetime, rng: random.Random) -> Outgoing:
        """A stranger (result 3)."""
        return self._record(at, 3, None, rng)

    def face_seen(self, at: datetime, rng: random.Random, photo: bytes) -> Outgoing:
        """A stranger, with the terminal's picture of the face."""
        return self._record(at, 3, None, rng, photo)


class VzLprSim(_MqttJsonSim):
    """LPR camera publishing AlarmInfoPlate results over MQTT, with a barrier that answers commands.

    The barrier: ``gate_ctrl`` requests on ``vzlpr/<serial>/cmd/req`` open (``ctrl`` 1) or close
    (``ctrl`` 2) gate 0 and are answered on ``.../cmd/resp``; ``get_gate_state`` on ``.../state/req``
    is answered on ``.../state/resp`` (``gate_state`` 1 closed, 2 open). Faults to switch on:
    ``stuck`` (answers OK, does not move), ``camera_control`` (refuses platform commands with 403, as
    a camera in "by camera" barrier mode may), ``garbled_replies`` (answers with unreadable fields).
    The logic is plain methods (request bytes in, answer bytes out); tests wire them to a broker.
    """

    prefix = "vzlpr"
    event_channel = "result"

    def __init__(self, device: SimDevice) -> None:
        super().__init__(device)
        self.gate_open = False
        self.stuck = False
        self.camera_control = False
        self.garbled_replies = False
        self.commands_executed = 0  # how often the relay was actually driven

    @property
    def request_topics(self) -> tuple[str, str]:
        """Where the camera listens for commands and state queries."""
        return self.topic("cmd/req"), self.topic("state/req")

    def handle(self, message: MqttPublish) -> MqttPublish | None:
        """The camera's answer to a message on one of its request topics (None for other topics)."""
        if message.topic == self.topic("cmd/req"):
            return MqttPublish(self.topic("cmd/resp"), self.answer_command(message.payload))
        if message.topic == self.topic("state/req"):
            return MqttPublish(self.topic("state/resp"), self.answer_state_query(message.payload))
        return None

    @staticmethod
    def _request(body: bytes, cmd: str) -> tuple[dict[str, object], str, tuple[int, str] | None]:
        """(document, echoed id, (refusal code, reason) or None) of a request."""
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}, "", (400, "bad request")
        if not isinstance(doc, dict):
            return {}, "", (400, "bad request")
        echoed = doc.get("id")
        if not isinstance(echoed, str) or not echoed or doc.get("cmd") != cmd:
            return doc, echoed if isinstance(echoed, str) else "", (400, "bad request")
        if doc.get("gate") != 0:  # this camera drives one barrier
            return doc, echoed, (404, "no such gate")
        return doc, echoed, None

    def answer_command(self, body: bytes) -> bytes:
        """Execute a ``gate_ctrl`` request (unless stuck or under camera control) and answer it."""
        doc, echoed, refusal = self._request(body, "gate_ctrl")
        ctrl = doc.get("ctrl")
        if refusal is None and ctrl not in {1, 2}:
            refusal = (400, f"unknown ctrl {ctrl!r}")
        if refusal is None and self.camera_control:
            refusal = (403, "gate controlled by camera")
        answer: dict[str, object] = {"cmd": "gate_ctrl", "id": echoed}
        if self.garbled_replies:
            return _json(answer | {"state_code": "OK!"})
        if refusal is not None:
            return _json(answer | {"state_code": refusal[0], "err_msg": refusal[1]})
        if not self.stuck:
            self.gate_open = ctrl == 1
            self.commands_executed += 1
        return _json(answer | {"state_code": 200, "err_msg": ""})

    def answer_state_query(self, body: bytes) -> bytes:
        """Answer a ``get_gate_state`` request with the barrier's real position."""
        _, echoed, refusal = self._request(body, "get_gate_state")
        answer: dict[str, object] = {"cmd": "get_gate_state", "id": echoed, "gate": 0}
        if self.garbled_replies:
            return _json(answer | {"state_code": 200, "gate_state": "up"})
        if refusal is not None:
            return _json(answer | {"state_code": refusal[0], "err_msg": refusal[1]})
        return _json(answer | {"state_code": 200, "gate_state": 2 if self.gate_open else 1})

    def _result(  # noqa: PLR0917 - private builder mirroring the payload's fields
        self, at: datetime, plate: str, color: int, list_type: str, gate: int, rng: random.Random
    ) -> MqttPublish:
        self.seq += 1
        ts = at.timestamp()
        doc = {
            "AlarmInfoPlate": {
                "channel": 0,
                "deviceName": "IVS",
                "ipaddr": "192.168.1.100",
                "serialno": self.ref,
                "result": {
                    "PlateResult": {
                        "license": plate,
                        "colorType": color,
                        "type": 1,
                        "confidence": rng.randint(85, 99),
                        "direction": rng.choice([3, 4]),
                        "triggerType": 8,
                        "plateid": self.seq,
                        "carType": rng.choice([1, 2, 3]),
                        "listType": list_type,
                        "gateAction": gate,
                        "timeStamp": {"Timeval": {"sec": int(ts), "usec": int((ts % 1) * 1e6)}},
                    }
                },
            }
        }
        return MqttPublish(self.topic("result"), _json(doc))

    def routine(self, at: datetime, rng: random.Random) -> Outgoing:
        """An allow-listed car; the barrier opens."""
        new_energy = rng.random() < 0.2
        return self._result(
            at, random_plate(rng, new_energy=new_energy), 5 if new_energy else 1, "white", 1, rng
        )

    def alarm(self, at: datetime, rng: random.Random) -> Outgoing:
        """A block-listed car; the barrier stays shut."""
        return self._result(at, random_plate(rng), 2, "black", 2, rng)


class HighTossSim(_MqttJsonSim):
    """Facade camera publishing thrown-object detections over MQTT."""

    prefix = "hightoss"
    event_channel = "alarm"

    def routine(self, at: datetime, rng: random.Random) -> Outgoing:
        """A heartbeat (the camera's everyday traffic)."""
        return MqttPublish(self.topic("alarm"), _json({"Code": "Heartbeat", "UTC": int(at.timestamp())}))

    def alarm(self, at: datetime, rng: random.Random) -> Outgoing:
        """An object falling from an estimated floor, with its track."""
        self.seq += 1
        floor = rng.randint(3, 28)
        x0 = rng.randint(2000, 6000)
        track = [[i * 80, x0 + rng.randint(-20, 20), min(8191, 1000 + i * i * 60)] for i in range(12)]
        doc = {
            "Code": "HighTossDetect",
            "Action": "Pulse",
            "EventID": self.seq,
            "UTC": int(at.timestamp()),
            "UTCMS": at.microsecond // 1000,
            "Channel": 0,
            "GroupID": self.seq,
            "IndexInGroup": 1,
            "CountInGroup": 4,
            "Objects": [
                {
                    "ObjectID": 1,
                    "ObjectType": "Unknown",
                    "Confidence": rng.randint(70, 98),
                    "BoundingBox": [x0, 1000, 120, 160],
                    "Track": track,
                }
            ],
            "FloorInfo": {
                "Building": "7幢",
                "Unit": "2单元",
                "StartFloor": floor,
                "FloorRange": [floor - 1, floor + 1],
                "Confidence": rng.randint(60, 90),
            },
            "Snapshot": f"hat/{at:%Y/%m/%d}/{self.seq}-1.jpg",
            "TrajectoryImage": f"hat/{at:%Y/%m/%d}/{self.seq}-trajectory.jpg",
            "Clip": f"hat/{at:%Y/%m/%d}/{self.seq}.mp4",
        }
        return MqttPublish(self.topic("alarm"), _json(doc))

    @staticmethod
    def media_keys(alarm: Outgoing) -> dict[str, str]:
        """The keys an alarm names in the camera's storage, by role (snapshot, trajectory, clip).

        ``device_sims.media_server`` serves them under our download API.
        """
        doc = json.loads(alarm.payload if isinstance(alarm, MqttPublish) else alarm.body)
        names = {"snapshot": "Snapshot", "trajectory": "TrajectoryImage", "clip": "Clip"}
        return {role: doc[name] for role, name in names.items() if name in doc}


class ShedSim(_MqttJsonSim):
    """E-bike shed smoke/temperature sensor publishing JSON reports over MQTT."""

    prefix = "shed"
    event_channel = "up"

    def report(
        self, at: datetime, kind: str, alert: int, *, smoke: float, temp: float, battery: float
    ) -> MqttPublish:
        """One report with the given alert bits."""
        self.seq += 1
        doc = {
            "imei": self.ref,
            "seq": self.seq,
            "ts": int(at.timestamp() * 1000),
            "type": kind,
            "alert": alert,
            "devCode": 0,
            "smoke": smoke,
            "temp": temp,
            "battPct": battery,
            "volt": 3.03,
            "rsrp": -89,
        }
        return MqttPublish(self.topic("up"), _json(doc))

    def routine(self, at: datetime, rng: random.Random) -> Outgoing:
        """A heartbeat with readings."""
        return self.report(
            at,
            "heartbeat",
            0,
            smoke=round(rng.uniform(0, 2), 1),
            temp=round(rng.uniform(15, 30), 1),
            battery=rng.randint(60, 100),
        )

    def alarm(self, at: datetime, rng: random.Random) -> Outgoing:
        """Smoke and over-temperature together."""
        return self.report(
            at,
            "alarm",
            0x03,
            smoke=round(rng.uniform(20, 60), 1),
            temp=round(rng.uniform(60, 90), 1),
            battery=rng.randint(60, 100),
        )


class SirenSim(_MqttJsonSim):
    """Alarm output (siren / broadcast speaker) on MQTT: sounds on command and reports what it does.

    ``alarm_on``, ``alarm_off`` and ``play`` (a preset clip 1..``clips``) on ``siren/<sn>/cmd/req``
    are answered on ``.../cmd/resp``; ``get_output`` on ``.../state/req`` on ``.../state/resp``
    (``mode`` idle / alarm / clip). It stops by itself after ``max_sound_s`` seconds of ``clock``.
    Every change is reported on ``siren/<sn>/report`` (``sounding``, ``silent``; take them with
    ``take_reports``). Faults to switch on: ``speaker_fault`` (refuses to sound, ret 3, and its
    alarm is the fault report), ``garbled_replies``.
    """

    prefix = "siren"
    event_channel = "report"

    def __init__(self, device: SimDevice, *, clock: Clock = time.monotonic) -> None:
        super().__init__(device)
        self.clock = clock
        self.clips = 8
        self.max_sound_s = 180.0
        self.speaker_fault = False
        self.garbled_replies = False
        self.commands_executed = 0
        self.mode = "idle"
        self.clip: int | None = None
        self._until = float("-inf")
        self._reports: list[tuple[str, dict[str, object]]] = []

    @property
    def request_topics(self) -> tuple[str, str]:
        """Where the device listens for commands and state queries."""
        return self.topic("cmd/req"), self.topic("state/req")

    def _timed_out(self) -> None:
        if self.mode != "idle" and self.clock() >= self._until:
            self._set("idle", None, "timeout")

    def _set(self, mode: str, clip: int | None, cause: str) -> None:
        if (mode, clip) == (self.mode, self.clip):
            return
        self.mode, self.clip = mode, clip
        if mode == "idle":
            self._reports.append(("silent", {"cause": cause}))
        else:
            self._until = self.clock() + self.max_sound_s
            self._reports.append(("sounding", {"cause": cause} | ({"clip": clip} if clip else {})))

    def handle(self, message: MqttPublish) -> MqttPublish | None:
        """The device's answer to a message on one of its request topics (None for other topics)."""
        self._timed_out()
        if message.topic == self.topic("cmd/req"):
            return MqttPublish(self.topic("cmd/resp"), self._command(message.payload))
        if message.topic == self.topic("state/req"):
            return MqttPublish(self.topic("state/resp"), self._state(message.payload))
        return None

    @staticmethod
    def _request(body: bytes) -> tuple[dict[str, object], str]:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}, ""
        if not isinstance(doc, dict):
            return {}, ""
        echoed = doc.get("id")
        return doc, echoed if isinstance(echoed, str) else ""

    def _command(self, body: bytes) -> bytes:
        doc, echoed = self._request(body)
        op = doc.get("op")
        answer: dict[str, object] = {"id": echoed, "op": op}
        if self.garbled_replies:
            return _json(answer | {"ret": "ok"})
        if op not in {"alarm_on", "alarm_off", "play"} or not echoed:
            return _json(answer | {"ret": 1, "msg": "bad request"})
        if doc.get("output") != 1:  # one output on this device
            return _json(answer | {"ret": 2, "msg": "no such output"})
        clip = doc.get("clip")
        if op == "play" and not (isinstance(clip, int) and 1 <= clip <= self.clips):
            return _json(answer | {"ret": 2, "msg": f"no such clip {clip!r}"})
        if self.speaker_fault and op != "alarm_off":
            return _json(answer | {"ret": 3, "msg": "speaker open circuit"})
        self.commands_executed += 1
        if op == "alarm_off":
            self._set("idle", None, "remote")
        else:
            chosen = clip if op == "play" and isinstance(clip, int) else None
            self._set("clip" if chosen else "alarm", chosen, "remote")
        return _json(answer | {"ret": 0, "msg": ""})

    def _state(self, body: bytes) -> bytes:
        doc, echoed = self._request(body)
        answer: dict[str, object] = {"id": echoed, "op": "get_output", "output": 1}
        if self.garbled_replies:
            return _json(answer | {"ret": 0, "mode": "LOUD"})
        if doc.get("op") != "get_output" or not echoed:
            return _json(answer | {"ret": 1, "msg": "bad request"})
        if doc.get("output") != 1:
            return _json(answer | {"ret": 2, "msg": "no such output", "output": doc.get("output")})
        return _json(answer | {"ret": 0, "mode": self.mode})

    def report(self, at: datetime, event: str, **fields: object) -> MqttPublish:
        """One report on ``siren/<sn>/report``."""
        self.seq += 1
        doc: dict[str, object] = {"sn": self.ref, "seq": self.seq, "ts": int(at.timestamp() * 1000)}
        return MqttPublish(self.topic("report"), _json(doc | {"event": event, "output": 1} | fields))

    def take_reports(self, at: datetime) -> list[MqttPublish]:
        """The reports of what changed since the last call, in order."""
        self._timed_out()
        reports, self._reports = self._reports, []
        return [self.report(at, event, **fields) for event, fields in reports]

    def routine(self, at: datetime, rng: random.Random) -> Outgoing:
        """A heartbeat."""
        return self.report(at, "heartbeat", mode=self.mode)

    def alarm(self, at: datetime, rng: random.Random) -> Outgoing:
        """The speaker's circuit broke: a fault report."""
        return self.report(
            at, "fault", fault="speaker_open", detail=f"impedance {rng.randint(900, 5000)} ohm"
        )

    def malformed(self, rng: random.Random) -> list[Outgoing]:
        """Broken reports: the common ones, an unknown event, a fault without its cause."""
        good = json.loads(
            self.report(datetime(2026, 6, 1, 8, 0, tzinfo=CST), "fault", fault="amp_overheat").payload
        )
        return [
            *super().malformed(rng),
            MqttPublish(self.topic("report"), _json(good | {"event": "explode"})),
            MqttPublish(self.topic("report"), _json({k: v for k, v in good.items() if k != "fault"})),
        ]


class CtwingSim:
    """An IoT platform pushing NB-IoT smoke alarm reports for one device."""

    transport = "http"

    def __init__(self, device: SimDevice) -> None:
        if device.ref is None:
            raise ValueError("ctwing-smoke simulator needs the device ref (devId)")
        self.device = device
        self.platform_id = str(uuid.uuid5(uuid.NAMESPACE_OID, device.ref))
        # the platform signs its pushes with the platform's secret (its devices have none of their
        # own): ``password`` carries it when it comes from a real secrets file
        secret = device.password if device.password is not None else sample_secret(device.dialect)
        self.credentials = PushCredentials("hmac-sha256", device.dialect, secret)

    def report(
        self, at: datetime, cmd: str, *, temp_tenths: int, smoke: int, battery: int, dev_state: int = 0
    ) -> HttpPost:
        """One deviceDataChanged push."""
        doc = {
            "notifyType": "deviceDataChanged",
            "deviceId": self.platform_id,
            "gatewayId": self.platform_id,
            "service": {
                "serviceId": "Report",
                "serviceType": "Report",
                "eventTime": at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ"),
                "data": {
                    "devId": self.device.ref,
                    "electricQuantity": battery,
                    "devState": dev_state,
                    "temperature": temp_tenths,
                    "signal": 12,
                    "cmdValue": cmd,
                    "smokescope": smoke,
                },
            },
        }
        return HttpPost("/platform/ctwing-smoke", _json(doc), "application/json", self.credentials)

    def routine(self, at: datetime, rng: random.Random) -> Outgoing:
        """A heartbeat."""
        return self.report(at, "0", temp_tenths=rng.randint(150, 300), smoke=0, battery=rng.randint(50, 100))

    def alarm(self, at: datetime, rng: random.Random) -> Outgoing:
        """A fire alarm (state code 1)."""
        return self.report(
            at,
            "1",
            temp_tenths=rng.randint(550, 800),
            smoke=rng.randint(30, 90),
            battery=rng.randint(50, 100),
        )

    def malformed(self, rng: random.Random) -> list[Outgoing]:
        """Broken pushes: unknown code, NaN, wrong notify type, unknown device."""
        good = self.report(
            datetime(2025, 6, 12, 8, 0, tzinfo=UTC), "1", temp_tenths=600, smoke=50, battery=90
        )
        doc = json.loads(good.body)
        unknown_code = json.loads(good.body)
        unknown_code["service"]["data"]["cmdValue"] = "zz"
        unknown_device = json.loads(good.body)
        unknown_device["service"]["data"]["devId"] = f"NOPE{rng.randint(1000, 9999)}"
        return [
            good.variant(_json(unknown_code), good.content_type),
            good.variant(good.body.replace(b'"temperature": 600', b'"temperature": NaN'), good.content_type),
            good.variant(_json(doc | {"notifyType": "commandRsp"}), good.content_type),
            good.variant(_json(unknown_device), good.content_type),
        ]


SIMULATORS: dict[
    str,
    type[HikAcsSim]
    | type[HikAnprSim]
    | type[UfaceSim]
    | type[VzLprSim]
    | type[HighTossSim]
    | type[ShedSim]
    | type[SirenSim]
    | type[CtwingSim],
] = {
    "hik-isapi-acs": HikAcsSim,
    "hik-isapi-anpr": HikAnprSim,
    "uface-mqtt": UfaceSim,
    "vz-lpr-mqtt": VzLprSim,
    "hightoss-mqtt": HighTossSim,
    "shed-mqtt": ShedSim,
    "siren-mqtt": SirenSim,
    "ctwing-smoke": CtwingSim,
}


def build_sim(device: SimDevice) -> DeviceSim:
    """The simulator for a device's dialect."""
    try:
        factory = SIMULATORS[device.dialect]
    except KeyError:
        raise ValueError(f"no simulator for dialect {device.dialect!r}") from None
    return factory(device)
