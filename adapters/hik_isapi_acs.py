"""Face gate, Hikvision-ISAPI style HTTP push: ``event_log`` JSON (AccessControllerEvent) + JPEG.

The device POSTs one ``multipart/form-data`` request per event to ``/push/<device id>``: a JSON part
named ``event_log`` and, when picture upload is on, a picture part whose name varies by firmware.
Some firmware post a bare ``application/json`` body. Only verification events (major type 5 with a
verification minor code) become canonical events; door-state posts and heartbeats are acknowledged
and produce nothing, since one passage makes several posts.

Door commands (``HikDoorCommands``):

- ``PUT /ISAPI/AccessControl/RemoteControl/door/<n>`` with ``<RemoteControlDoor><cmd>open</cmd>
  </RemoteControlDoor>`` (``shared/reference/downlink-console-scale.md``): the controller unlocks
  door n for its configured hold time, then locks it again. The answer is an ISAPI
  ``ResponseStatus`` (``adapters/isapi.py``). The other ``cmd`` values (``alwaysOpen``,
  ``alwaysClose``...) change the door's mode for good and are not offered.
- Read-back: ``GET /ISAPI/AccessControl/AcsWorkStatus?format=json`` -> ``{"AcsWorkStatus":
  {"doorLockStatus": [1, 0], ...}}``, one entry per door, 0 = locked (closed), 1 = unlocked (open),
  2..4 = short-circuit, broken-circuit or exception alarm of the lock. The reference does not
  describe this resource: it is modelled on public descriptions of the access-control ISAPI, not
  taken from a device. The lock, not the door contact (``magneticStatus``), is what the command
  moves: an unlocked door that nobody pushes stays shut.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.base import (
    DeviceContext,
    Fields,
    MediaBlob,
    ParseResult,
    RawMessage,
    Transport,
    build_event,
    load_json_object,
    parse_iso_time,
    sequence_at,
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
from adapters.isapi import is_json, response_status, sent_http, xml_document
from adapters.multipart import Part, split_multipart
from adapters.pictures import MAX_PICTURE_BYTES, check_picture
from foundation.errors import PayloadRejected
from foundation.events import (
    AccessResult,
    Direction,
    EventKind,
    FaceAccessPayload,
    PersonType,
    Severity,
    VerifyMode,
)

MAJOR_EVENT = 5

# HCNetSDK minor codes under major type 5 that are a verification of a person.
MINOR_CODES: dict[int, tuple[AccessResult, VerifyMode]] = {
    0x01: (AccessResult.GRANTED, VerifyMode.CARD),  # MINOR_LEGAL_CARD_PASS
    0x06: (AccessResult.DENIED, VerifyMode.CARD),  # MINOR_CARD_NO_RIGHT
    0x09: (AccessResult.DENIED, VerifyMode.CARD),  # MINOR_INVALID_CARD
    0x26: (AccessResult.GRANTED, VerifyMode.FINGERPRINT),
    0x27: (AccessResult.DENIED, VerifyMode.FINGERPRINT),
    0x4B: (AccessResult.GRANTED, VerifyMode.FACE),  # MINOR_FACE_VERIFY_PASS
    0x4C: (AccessResult.DENIED, VerifyMode.FACE),  # MINOR_FACE_VERIFY_FAIL
    0x4D: (AccessResult.GRANTED, VerifyMode.COMBINED),  # employee no. + face
    0x50: (AccessResult.STRANGER, VerifyMode.FACE),  # MINOR_FACE_RECOGNIZE_FAIL
    0x69: (AccessResult.GRANTED, VerifyMode.ID_CARD),  # person and ID card match
    0x96: (AccessResult.DENIED, VerifyMode.PASSWORD),
    0x97: (AccessResult.DENIED, VerifyMode.PASSWORD),
    0x9C: (AccessResult.GRANTED, VerifyMode.QR_CODE),
    0x9D: (AccessResult.DENIED, VerifyMode.QR_CODE),
    0x400: (AccessResult.GRANTED, VerifyMode.REMOTE),
}

USER_TYPES = {
    "normal": PersonType.RESIDENT,
    "visitor": PersonType.VISITOR,
    "blacklist": PersonType.BLOCKLIST,
    "blocklist": PersonType.BLOCKLIST,
    "administrator": PersonType.ADMIN,
    "admin": PersonType.ADMIN,
}

MASK = {"yes": True, "no": False}
READER_DIRECTION = {1: Direction.IN, 2: Direction.OUT}
IGNORED_EVENT_TYPES = {"heartbeat", "heartBeat"}

# --- door commands ---------------------------------------------------------------------------------

NAME = "hik-isapi-acs"
WORK_STATUS_PATH = "/ISAPI/AccessControl/AcsWorkStatus?format=json"
LOCK_STATES = {0: ActuatorState.CLOSED, 1: ActuatorState.OPEN}
LOCK_ALARMS = {2: "lock short-circuit alarm", 3: "lock broken-circuit alarm", 4: "lock exception alarm"}


@dataclass(frozen=True)
class HikDoorCommands:
    """Opens a door of the access controller over ISAPI and reads its lock back (digest: the plumbing's)."""

    actions: frozenset[CommandAction] = frozenset({CommandAction.DOOR_OPEN})

    def request(self, command: Command, device_ref: str) -> HttpRequest:
        """``PUT .../RemoteControl/door/<n>`` with ``cmd`` open; the controller is addressed by host."""
        if command.action not in self.actions:
            raise CommandNotSupportedError(NAME, f"the controller has no {command.action.value}")
        return HttpRequest(
            "PUT",
            f"/ISAPI/AccessControl/RemoteControl/door/{command.channel}",
            correlation_id=command.command_id,
            channel=command.channel,
            body=xml_document("RemoteControlDoor", {"cmd": "open"}),
            content_type="application/xml",
        )

    def decode_reply(self, raw: RawMessage, sent: DeviceRequest | None = None) -> CommandReply:
        """The ``ResponseStatus``: ``statusCode`` 1 is OK, anything else a refusal with the device's words."""
        return response_status(raw, sent_http(NAME, sent))

    def state_request(self, query_id: str, channel: int, device_ref: str) -> HttpRequest:
        """``GET AcsWorkStatus`` (all doors at once; ``channel`` picks one from the answer)."""
        if not is_valid_id(query_id):
            raise CommandNotSupportedError(NAME, f"query id {query_id[:70]!r} is not a valid id")
        if not 1 <= channel <= 64:
            raise CommandNotSupportedError(NAME, f"channel {channel} is outside 1..64")
        return HttpRequest("GET", WORK_STATUS_PATH, correlation_id=query_id, channel=channel)

    def decode_state(self, raw: RawMessage, sent: DeviceRequest | None = None) -> StateReading:
        """Door n's ``doorLockStatus``: open / closed, or unknown with the lock alarm or the refusal."""
        request = sent_http(NAME, sent)
        query, door = request.correlation_id, request.channel
        document = Fields(load_json_object(raw.body, what="AcsWorkStatus")) if is_json(raw) else None
        if document is None or not document.has("AcsWorkStatus"):
            refused = response_status(raw, request)  # a ResponseStatus instead: the device said why not
            detail = f"the controller refused the query: {refused.reason or 'no reason given'}"
            return StateReading(query, door, ActuatorState.UNKNOWN, detail)
        status = document.sub("AcsWorkStatus")
        locks = status.raw("doorLockStatus")
        where = status.path("doorLockStatus")
        if not isinstance(locks, list) or len(locks) > 64:
            raise PayloadRejected("bad_field", "expected a list of at most 64 lock states", field=where)
        if door > len(locks):
            return StateReading(query, door, ActuatorState.UNKNOWN, f"the controller has {len(locks)} doors")
        value = locks[door - 1]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 99:
            raise PayloadRejected(
                "bad_field",
                f"expected a lock state 0..99, got {repr(value)[:40]}",
                field=f"{where}[{door - 1}]",
            )
        state = LOCK_STATES.get(value)
        if state is None:
            detail = LOCK_ALARMS.get(value, f"unknown doorLockStatus {value}")
            return StateReading(query, door, ActuatorState.UNKNOWN, detail)
        return StateReading(query, door, state)


@dataclass(frozen=True)
class AcsSerialNumbers:
    """``serialNo``: the controller numbers every event it logs, passages and door states alike.

    ``frontSerialNo`` (the previous number) is not used: a gap is seen from our own record of what
    arrived, which also covers posts that were lost together with their predecessor.
    """

    field: str = "AccessControllerEvent.serialNo"

    def read(self, raw: RawMessage) -> int | None:
        """The post's ``serialNo``, or None."""
        try:
            document, _ = _document(raw)
        except PayloadRejected:
            return None
        return sequence_at(document, ("AccessControllerEvent", "serialNo"))


@dataclass(frozen=True)
class HikIsapiAcs:
    """Hikvision ISAPI access-controller event push (face gate)."""

    name: str = "hik-isapi-acs"
    vendor: str = "hikvision"
    kind: EventKind = EventKind.FACE_ACCESS
    transport: Transport = Transport.HTTP_DEVICE
    description: str = (
        "Face gate, Hikvision ISAPI HTTP push: multipart event_log JSON (AccessControllerEvent) + JPEG"
    )
    topic_filter: str | None = None
    device_topics: None = None  # not an MQTT dialect
    commands: HikDoorCommands = field(default_factory=HikDoorCommands)
    sequence: AcsSerialNumbers = field(default_factory=AcsSerialNumbers)

    def device_ref(self, raw: RawMessage) -> str:
        """The MAC address the device reports."""
        return Fields(_document(raw)[0]).text("macAddress", max_len=32)

    def parse(self, raw: RawMessage, ctx: DeviceContext) -> ParseResult:
        """One access-controller post -> zero or one face_access event."""
        document, pictures = _document(raw)
        doc = Fields(document)
        event_type = doc.text("eventType", max_len=64)
        if event_type in IGNORED_EVENT_TYPES:
            return ParseResult(events=())
        if event_type != "AccessControllerEvent":
            raise PayloadRejected(
                "unsupported_event", f"{event_type!r} is not an AccessControllerEvent", field="eventType"
            )
        acs = doc.sub("AccessControllerEvent")
        major = acs.integer("majorEventType", lo=0, hi=0xFFFF)
        minor = acs.integer("subEventType", lo=0, hi=0xFFFF)
        mapped = MINOR_CODES.get(minor) if major == MAJOR_EVENT else None
        if mapped is None:
            # door state, alarm input, operation log: not a passage, but numbered like one
            return ParseResult(events=(), sequence=acs.opt_integer("serialNo", lo=0))
        result, verify_mode = mapped
        occurred_at = parse_iso_time(doc.text("dateTime", max_len=40), "dateTime", ctx.local_tz)
        serial = acs.integer("serialNo", lo=0)
        mac = doc.opt_text("macAddress", max_len=32)

        person_id = acs.opt_text("employeeNoString", max_len=64)
        if person_id is None and acs.has("employeeNo"):
            person_id = str(acs.integer("employeeNo", lo=0))
        user_type = acs.opt_text("userType", max_len=32)
        mask = acs.opt_text("mask", max_len=16)
        similarity = acs.opt_number("similarity", lo=0, hi=100)
        reader = acs.opt_integer("cardReaderNo", lo=0, hi=255)

        media = tuple(
            MediaBlob(
                "face",
                check_picture(
                    part.data, part.content_type, f"part[{part.name}]", max_bytes=MAX_PICTURE_BYTES
                ),
                part.data,
            )
            for part in pictures[:1]
        )
        payload = FaceAccessPayload(
            result=result,
            direction=READER_DIRECTION.get(reader or 0, Direction.UNKNOWN),
            verify_mode=verify_mode,
            person_ref=ctx.pseudonymizer.person_ref(person_id) if person_id else None,
            person_type=USER_TYPES.get((user_type or "").lower(), PersonType.UNKNOWN),
            similarity=None if similarity is None else (similarity / 100 if similarity > 1 else similarity),
            mask=MASK.get((mask or "").lower()),
            door=acs.opt_integer("doorNo", lo=0, hi=255),
        )
        event = build_event(
            ctx,
            self,
            vendor_key=f"{mac or ''}|{serial}|{occurred_at.isoformat()}",
            payload=payload,
            severity=Severity.INFO if result is AccessResult.GRANTED else Severity.WARNING,
            occurred_at=occurred_at,
            event_code=f"{major}/{minor}",
            device_ref=mac,
            media=media,
        )
        return ParseResult(events=(event,), media=media, sequence=serial)


def _document(raw: RawMessage) -> tuple[dict[str, object], list[Part]]:
    ctype = (raw.content_type or "").lower()
    if ctype.startswith("application/json") or (not ctype and raw.body.lstrip()[:1] == b"{"):
        return dict(load_json_object(raw.body, what="event_log")), []
    parts = split_multipart(raw.body, raw.content_type)
    json_parts = [p for p in parts if p.name == "event_log" or (p.content_type or "").endswith("json")]
    if not json_parts:
        raise PayloadRejected(
            "missing_field", "no event_log JSON part in the multipart body", field="event_log"
        )
    document = dict(load_json_object(json_parts[0].data, what="event_log"))
    return document, [p for p in parts if p.is_picture]


DIALECT = HikIsapiAcs()
