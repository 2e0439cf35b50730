"""Barrier/LPR camera, Hikvision-ISAPI style ANPR push: ``EventNotificationAlert`` XML + pictures.

The camera POSTs ``multipart/form-data`` to ``/push/<device id>``: an XML part (``anpr.xml``) and the
pictures it lists in ``pictureInfoList`` (``detectionPicture.jpg``, ``licensePlatePicture.jpg``). Some
firmware post the XML alone. The namespace is either isapi.org's or hikvision.com's; we ignore it.
XML is parsed with defusedxml (no entities, no external references; ``adapters/isapi.py``).

Barrier commands (``HikBarrierCommands``, ``shared/reference/downlink-console-scale.md``):

- ``PUT /ISAPI/Parking/channels/<n>/barrierGate`` with ``<BarrierGate><ctrlMode>open</ctrlMode>
  </BarrierGate>``; ``ctrlMode`` ``open``, ``close``, ``lock`` (keep the arm open: 常开) or
  ``unlock`` (release the hold). The camera answers a ``ResponseStatus`` (``statusCode`` 1 = OK).
  A camera whose barrier mode is "by camera" may refuse platform commands; a locked or stuck
  unit has been seen answering 1 without moving the relay: read the state back.
- ``GET /ISAPI/Parking/channels/<n>/barrierGate/barrierGateStatus`` -> ``<BarrierGateStatus>
  <channelID>n</channelID><barrierGateStatus>2</barrierGateStatus></BarrierGateStatus>``,
  ``barrierGateStatus`` 0 = no signal, 1 = closed, 2 = open (the reference's codes; the document's
  shape around them is our model, not taken from a device). There is no "moving" code: a barrier
  in travel touches neither limit switch and reads 0, unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from adapters.base import (
    DeviceContext,
    MediaBlob,
    ParseResult,
    RawMessage,
    Transport,
    build_event,
    parse_iso_time,
)
from adapters.commands import (
    ActuatorState,
    Command,
    CommandAction,
    CommandNotSupportedError,
    CommandReply,
    DeviceRequest,
    HttpRequest,
    StateReading,
    is_valid_id,
)
from adapters.isapi import (
    MAX_XML_BYTES,
    is_json,
    parse_xml,
    response_status,
    sent_http,
    xml_document,
    xml_int,
    xml_text,
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


# --- barrier commands ------------------------------------------------------------------------------

NAME = "hik-isapi-anpr"
CTRL_MODES = {
    CommandAction.BARRIER_OPEN: "open",
    CommandAction.BARRIER_CLOSE: "close",
    CommandAction.BARRIER_HOLD_OPEN: "lock",
    CommandAction.BARRIER_RELEASE: "unlock",
}
GATE_STATES = {0: ActuatorState.UNKNOWN, 1: ActuatorState.CLOSED, 2: ActuatorState.OPEN}


def _checked(query_id: str, channel: int) -> None:
    if not is_valid_id(query_id):
        raise CommandNotSupportedError(NAME, f"query id {query_id[:70]!r} is not a valid id")
    if not 1 <= channel <= 64:
        raise CommandNotSupportedError(NAME, f"channel {channel} is outside 1..64")


@dataclass(frozen=True)
class HikBarrierCommands:
    """Drives the camera's barrier over ISAPI and reads ``barrierGateStatus`` back (digest auth: the plumbing's)."""

    actions: frozenset[CommandAction] = frozenset(CTRL_MODES)

    def request(self, command: Command, device_ref: str) -> HttpRequest:
        """``PUT .../barrierGate`` with the action's ``ctrlMode``; the camera is addressed by host, not ref."""
        mode = CTRL_MODES.get(command.action)
        if mode is None:
            raise CommandNotSupportedError(NAME, f"the camera has no {command.action.value}")
        return HttpRequest(
            "PUT",
            f"/ISAPI/Parking/channels/{command.channel}/barrierGate",
            correlation_id=command.command_id,
            channel=command.channel,
            body=xml_document("BarrierGate", {"ctrlMode": mode}),
            content_type="application/xml",
        )

    def decode_reply(self, raw: RawMessage, sent: DeviceRequest | None = None) -> CommandReply:
        """The ``ResponseStatus``: ``statusCode`` 1 is OK, anything else a refusal with the camera's words."""
        return response_status(raw, sent_http(NAME, sent))

    def state_request(self, query_id: str, channel: int, device_ref: str) -> HttpRequest:
        """``GET .../barrierGate/barrierGateStatus`` of one channel."""
        _checked(query_id, channel)
        path = f"/ISAPI/Parking/channels/{channel}/barrierGate/barrierGateStatus"
        return HttpRequest("GET", path, correlation_id=query_id, channel=channel)

    def decode_state(self, raw: RawMessage, sent: DeviceRequest | None = None) -> StateReading:
        """``barrierGateStatus`` as open / closed / unknown; a ``ResponseStatus`` instead reads unknown."""
        request = sent_http(NAME, sent)
        if not is_json(raw):
            root = parse_xml(raw.body, what="barrierGateStatus")
            if root.tag == "BarrierGateStatus":
                channel = xml_int(root, "channelID", 1, 64, required=True) or 0
                value = xml_int(root, "barrierGateStatus", 0, 99, required=True) or 0
                state = GATE_STATES.get(value)
                if state is None:
                    unknown = f"unknown barrierGateStatus {value}"
                    return StateReading(request.correlation_id, channel, ActuatorState.UNKNOWN, unknown)
                detail = "no signal from the limit switches (moving, or not wired)" if value == 0 else None
                return StateReading(request.correlation_id, channel, state, detail)
        refused = response_status(raw, request)  # the camera would not tell: say why
        return StateReading(
            request.correlation_id,
            request.channel,
            ActuatorState.UNKNOWN,
            f"the camera refused the query: {refused.reason or 'no reason given'}",
        )


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
    commands: HikBarrierCommands = field(default_factory=HikBarrierCommands)
    sequence: None = None  # no per-device message sequence: only their silence shows a loss

    def device_ref(self, raw: RawMessage) -> str:
        """The MAC address the camera reports."""
        root, _ = self._document(raw)
        return xml_text(root, "macAddress", required=True) or ""

    def parse(self, raw: RawMessage, ctx: DeviceContext) -> ParseResult:
        """One ANPR post -> one vehicle_pass event (heartbeats -> none)."""
        root, pictures = self._document(raw)
        event_type = xml_text(root, "eventType", required=True)
        if event_type is not None and event_type.lower() in {"heartbeat", "videoloss"}:
            return ParseResult(events=())
        if event_type != "ANPR":
            raise PayloadRejected(
                "unsupported_event", f"{event_type!r} is not an ANPR event", field="eventType"
            )
        anpr = root.find("ANPR")
        if anpr is None:
            raise PayloadRejected("missing_field", "ANPR block is missing", field="ANPR")
        occurred_at = parse_iso_time(
            xml_text(root, "dateTime", required=True) or "", "dateTime", ctx.local_tz
        )
        read = normalize_plate(xml_text(anpr, "licensePlate", max_len=32), "ANPR.licensePlate")
        color_token = (xml_text(anpr, "plateColor") or "unknown").lower()
        plate_color = PLATE_COLORS.get(color_token, PlateColor.OTHER)
        vehicle_token = (xml_text(anpr, "vehicleType") or "unknown").lower()
        list_type = LIST_TYPES.get((xml_text(anpr, "listType") or "").lower(), ListType.UNKNOWN)
        confidence = xml_int(anpr, "confidenceLevel", 0, 100)
        direction_token = (xml_text(anpr, "direction") or "").lower()
        if direction_token in {"forward", "reverse"}:
            forward = direction_token == "forward"
            direction = Direction.IN if forward == ctx.forward_is_in else Direction.OUT
        else:
            direction = Direction.UNKNOWN
        barrier = _barrier_action(list_type, xml_int(anpr, "barrierGateCtrlType", 0, 9))
        mac = xml_text(root, "macAddress", max_len=32)
        uuid = xml_text(root, "UUID", max_len=64)
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
            lane=xml_int(anpr, "line", 0, 64),
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
        root = parse_xml(xml)
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
