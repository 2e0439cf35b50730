"""Barrier/LPR camera, Hikvision-ISAPI style ANPR push: ``EventNotificationAlert`` XML + pictures.

The camera POSTs ``multipart/form-data`` to ``/push/<device id>``: an XML part (``anpr.xml``) and the
pictures it lists in ``pictureInfoList`` (``detectionPicture.jpg``, ``licensePlatePicture.jpg``). Some
firmware post the XML alone. The namespace is either isapi.org's or hikvision.com's; we ignore it.
XML is parsed with defusedxml (no entities, no external references).
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from adapters.base import (
    DeviceContext,
    MediaBlob,
    ParseResult,
    RawMessage,
    Transport,
    build_event,
    parse_iso_time,
)
from adapters.multipart import Part, split_multipart
from adapters.pictures import MAX_PICTURE_BYTES, check_picture
from adapters.plates import normalize_plate
from foundation.errors import PayloadRejected
from foundation.events import (
    BarrierAction,
    Direction,
    EventKind,
    ListType,
    PlateColor,
    Severity,
    VehiclePassPayload,
    VehicleType,
)

MAX_XML_BYTES = 256 * 1024

PLATE_COLORS = {
    "blue": PlateColor.BLUE,
    "yellow": PlateColor.YELLOW,
    "white": PlateColor.WHITE,
    "black": PlateColor.BLACK,
    "green": PlateColor.GREEN,
    "yellowgreen": PlateColor.YELLOW_GREEN,
    "unknown": PlateColor.UNKNOWN,
    "other": PlateColor.OTHER,
    "colorful": PlateColor.OTHER,
    "color": PlateColor.OTHER,
}

VEHICLE_TYPES = {
    "vehicle": VehicleType.CAR,
    "sedan": VehicleType.CAR,
    "smallcar": VehicleType.CAR,
    "suvmpv": VehicleType.SUV_MPV,
    "van": VehicleType.VAN,
    "minibus": VehicleType.BUS,
    "largebus": VehicleType.BUS,
    "bus": VehicleType.BUS,
    "truck": VehicleType.TRUCK,
    "lighttruck": VehicleType.TRUCK,
    "pickuptruck": VehicleType.TRUCK,
    "motorcycle": VehicleType.MOTORCYCLE,
    "twowheelvehicle": VehicleType.MOTORCYCLE,
    "unknown": VehicleType.UNKNOWN,
}

LIST_TYPES = {
    "whitelist": ListType.ALLOW,
    "allowlist": ListType.ALLOW,
    "blacklist": ListType.BLOCK,
    "blocklist": ListType.BLOCK,
    "temporary": ListType.TEMPORARY,
    "visitor": ListType.VISITOR,
}

PICTURE_ROLES = {"detectionpicture": "scene", "licenseplatepicture": "plate"}


def _strip_namespaces(root: Element) -> Element:
    for element in root.iter():
        if "}" in element.tag:
            element.tag = element.tag.split("}", 1)[1]
    return root


def _text(root: Element, path: str, *, required: bool = False, max_len: int = 128) -> str | None:
    node = root.find(path)
    value = (node.text or "").strip() if node is not None else ""
    if not value:
        if required:
            raise PayloadRejected("missing_field", "required element is missing or empty", field=path)
        return None
    if len(value) > max_len or any(ord(c) < 0x20 for c in value):
        raise PayloadRejected("bad_field", f"not a short printable text (max {max_len})", field=path)
    return value


def _int(root: Element, path: str, lo: int, hi: int) -> int | None:
    value = _text(root, path, max_len=12)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise PayloadRejected("bad_field", f"expected an integer, got {value!r}", field=path) from None
    if not lo <= number <= hi:
        raise PayloadRejected("out_of_range", f"{number} is outside {lo}..{hi}", field=path)
    return number


@dataclass(frozen=True)
class HikIsapiAnpr:
    """Hikvision ISAPI ANPR event push (barrier / licence-plate camera)."""

    name: str = "hik-isapi-anpr"
    vendor: str = "hikvision"
    kind: EventKind = EventKind.VEHICLE_PASS
    transport: Transport = Transport.HTTP_DEVICE
    description: str = (
        "Barrier LPR camera, Hikvision ISAPI HTTP push: EventNotificationAlert XML (ANPR) + pictures"
    )
    topic_filter: str | None = None
    device_topics: None = None  # not an MQTT dialect
    commands: None = None  # its devices take no commands
    sequence: None = None  # no per-device message sequence: only their silence shows a loss

    def device_ref(self, raw: RawMessage) -> str:
        """The MAC address the camera reports."""
        root, _ = self._document(raw)
        return _text(root, "macAddress", required=True) or ""

    def parse(self, raw: RawMessage, ctx: DeviceContext) -> ParseResult:
        """One ANPR post -> one vehicle_pass event (heartbeats -> none)."""
        root, pictures = self._document(raw)
        event_type = _text(root, "eventType", required=True)
        if event_type is not None and event_type.lower() in {"heartbeat", "videoloss"}:
            return ParseResult(events=())
        if event_type != "ANPR":
            raise PayloadRejected(
                "unsupported_event", f"{event_type!r} is not an ANPR event", field="eventType"
            )
        anpr = root.find("ANPR")
        if anpr is None:
            raise PayloadRejected("missing_field", "ANPR block is missing", field="ANPR")
        occurred_at = parse_iso_time(_text(root, "dateTime", required=True) or "", "dateTime", ctx.local_tz)
        read = normalize_plate(_text(anpr, "licensePlate", max_len=32), "ANPR.licensePlate")
        color_token = (_text(anpr, "plateColor") or "unknown").lower()
        plate_color = PLATE_COLORS.get(color_token, PlateColor.OTHER)
        vehicle_token = (_text(anpr, "vehicleType") or "unknown").lower()
        list_type = LIST_TYPES.get((_text(anpr, "listType") or "").lower(), ListType.UNKNOWN)
        confidence = _int(anpr, "confidenceLevel", 0, 100)
        direction_token = (_text(anpr, "direction") or "").lower()
        if direction_token in {"forward", "reverse"}:
            forward = direction_token == "forward"
            direction = Direction.IN if forward == ctx.forward_is_in else Direction.OUT
        else:
            direction = Direction.UNKNOWN
        barrier = _barrier_action(list_type, _int(anpr, "barrierGateCtrlType", 0, 9))
        mac = _text(root, "macAddress", max_len=32)
        uuid = _text(root, "UUID", max_len=64)
        media = tuple(
            MediaBlob(
                PICTURE_ROLES.get(
                    (part.name or part.filename or "").lower().removesuffix(".jpg"), "snapshot"
                ),
                check_picture(
                    part.data, part.content_type, f"part[{part.name}]", max_bytes=MAX_PICTURE_BYTES
                ),
                part.data,
            )
            for part in pictures[:4]
        )
        payload = VehiclePassPayload(
            plate=read.plate,
            plate_class=read.plate_class,
            plate_raw=read.raw,
            new_energy=read.new_energy,
            plate_color=plate_color,
            vehicle_type=VEHICLE_TYPES.get(vehicle_token, VehicleType.OTHER),
            direction=direction,
            barrier_action=barrier,
            list_type=list_type,
            confidence=None if confidence is None else confidence / 100,
            lane=_int(anpr, "line", 0, 64),
        )
        event = build_event(
            ctx,
            self,
            vendor_key=uuid or f"{mac}|{occurred_at.isoformat()}|{read.plate or read.raw}",
            payload=payload,
            severity=Severity.WARNING if list_type is ListType.BLOCK else Severity.INFO,
            occurred_at=occurred_at,
            event_code="ANPR",
            device_ref=mac,
            media=media,
        )
        return ParseResult(events=(event,), media=media)

    @staticmethod
    def _document(raw: RawMessage) -> tuple[Element, list[Part]]:
        ctype = (raw.content_type or "").lower()
        if ctype.startswith("multipart/"):
            parts = split_multipart(raw.body, raw.content_type)
            xml_parts = [
                p
                for p in parts
                if (p.content_type or "").endswith("xml") or (p.filename or "").endswith(".xml")
            ]
            if not xml_parts:
                raise PayloadRejected("missing_field", "no XML part in the multipart body", field="anpr.xml")
            xml, pictures = xml_parts[0].data, [p for p in parts if p.is_picture]
        else:
            xml, pictures = raw.body, []
        if len(xml) > MAX_XML_BYTES:
            raise PayloadRejected("payload_too_large", f"XML part is {len(xml)} bytes > {MAX_XML_BYTES}")
        try:
            root = fromstring(xml, forbid_dtd=True)
        except DefusedXmlException as exc:
            raise PayloadRejected(
                "forbidden_xml", f"XML uses a forbidden construct: {type(exc).__name__}"
            ) from None
        except ParseError as exc:
            raise PayloadRejected("malformed_xml", f"XML does not parse: {exc}") from None
        except (LookupError, ValueError) as exc:  # an unknown encoding in the XML declaration, for one
            raise PayloadRejected("malformed_xml", f"XML cannot be decoded: {exc}") from None
        root = _strip_namespaces(root)
        if root.tag != "EventNotificationAlert":
            raise PayloadRejected(
                "unsupported_event", f"root element is {root.tag!r}, not EventNotificationAlert"
            )
        return root, pictures


def _barrier_action(list_type: ListType, ctrl_type: int | None) -> BarrierAction:
    # Allow-listed plates open the barrier, block-listed ones are refused; for the rest the camera
    # reports barrierGateCtrlType 1 when it drove the barrier itself (our reading of the field).
    if list_type is ListType.ALLOW:
        return BarrierAction.OPENED
    if list_type is ListType.BLOCK:
        return BarrierAction.REFUSED
    if ctrl_type == 1:
        return BarrierAction.OPENED
    return BarrierAction.UNKNOWN


DIALECT = HikIsapiAnpr()
