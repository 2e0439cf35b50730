"""Face gate, MQTT JSON (a second vendor; 宇泛-style terminals that publish recognition records).

Topics: ``uface/<sn>/event`` for recognition records, ``uface/<sn>/status`` for the device's
birth/last-will message. Device quirks handled here: local time without a zone, similarity on a
0-100 scale, numeric code tables, an optional base64 JPEG in ``data.image``.

Door commands (``UfaceDoorCommands``), in the terminal's own envelope (``msgId``, ``sn``,
``type``, ``data``) on the command topics every MQTT dialect has (``DeviceTopics.under_prefix``):

- ``uface/<sn>/cmd/req``: ``{"msgId": <command id>, "sn": <sn>, "type": "remote_open",
  "data": {"doorNo": 1}}``: the terminal drives its door relay for its configured hold time.
- ``uface/<sn>/cmd/resp``: ``{"msgId": <echoed>, "sn": <sn>, "type": "remote_open_ack",
  "data": {"code": 0, "msg": "success"}}``; any other ``code`` is a refusal, ``msg`` the reason.
- ``uface/<sn>/state/req``: ``{"msgId": <query id>, "sn": <sn>, "type": "door_state",
  "data": {"doorNo": 1}}``.
- ``uface/<sn>/state/resp``: ``{"msgId": <echoed>, "sn": <sn>, "type": "door_state_ack",
  "data": {"code": 0, "doorNo": 1, "relay": 1}}``, ``relay`` 1 = unlocked (open), 0 = locked.

The reference documents no such terminal's command set (``downlink-console-scale.md`` notes there
is no MQTT standard: peers use a request topic and a response topic carrying the request id); the
names follow this dialect's event messages and are ours until a real terminal's are known.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field

from adapters.base import (
    DeviceContext,
    DeviceTopics,
    Fields,
    MediaBlob,
    ParseResult,
    RawMessage,
    Transport,
    build_event,
    load_json_object,
    parse_iso_time,
    read_mqtt_json,
    status_event,
    topic_parts,
)
from adapters.commands import (
    ActuatorState,
    Command,
    CommandAction,
    CommandNotSupportedError,
    CommandReply,
    DeviceRequest,
    MqttRequest,
    ReplyStatus,
    StateReading,
    is_valid_id,
)
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

PREFIX = "uface"
RESULTS = {1: AccessResult.GRANTED, 2: AccessResult.DENIED, 3: AccessResult.STRANGER}
PERSON_TYPES = {1: PersonType.RESIDENT, 2: PersonType.VISITOR, 3: PersonType.BLOCKLIST, 4: PersonType.ADMIN}
DIRECTIONS = {1: Direction.IN, 2: Direction.OUT}
VERIFY_MODES = {
    "face": VerifyMode.FACE,
    "card": VerifyMode.CARD,
    "face_card": VerifyMode.COMBINED,
    "qrcode": VerifyMode.QR_CODE,
    "password": VerifyMode.PASSWORD,
    "remote": VerifyMode.REMOTE,
    "idcard": VerifyMode.ID_CARD,
}
MAX_IMAGE_B64 = (MAX_PICTURE_BYTES * 4) // 3 + 4

# --- door commands ---------------------------------------------------------------------------------

NAME = "uface-mqtt"
REMOTE_OPEN, DOOR_STATE = "remote_open", "door_state"
CODE_OK = 0
RELAY_STATES = {0: ActuatorState.CLOSED, 1: ActuatorState.OPEN}
_TOPIC_UNSAFE = re.compile(r"[/+#\x00-\x1f]")


def _answer(raw: RawMessage, channel: str, request_type: str) -> tuple[Fields, Fields, str]:
    """(envelope, data, echoed id) of an answer on ``uface/<sn>/<channel>/resp``, or reject."""
    parts = (raw.topic or "").split("/")
    if len(parts) != 4 or parts[0] != PREFIX or not parts[1] or parts[2:] != [channel, "resp"]:
        raise PayloadRejected("bad_topic", f"expected {PREFIX}/<sn>/{channel}/resp, got {raw.topic!r}")
    doc = Fields(load_json_object(raw.body, what="answer"))
    expected = f"{request_type}_ack"
    if doc.raw("type") != expected:
        raise PayloadRejected("bad_field", f"expected {expected!r}, got {doc.raw('type')!r}", field="type")
    echoed = doc.text("msgId", max_len=64)
    if not is_valid_id(echoed):
        raise PayloadRejected("bad_field", "not a command or query id we send", field="msgId")
    return doc, doc.sub("data"), echoed


def _reason(data: Fields, code: int) -> str:
    """The terminal's ``msg``; a blank one (firmware pad it) falls back to the code."""
    message = data.raw("msg")
    if isinstance(message, str) and not message.strip():
        return f"code {code}"
    return data.opt_text("msg", max_len=200) or f"code {code}"


@dataclass(frozen=True)
class UfaceDoorCommands:
    """Opens the terminal's door and reads its relay back, over the terminal's MQTT link."""

    actions: frozenset[CommandAction] = frozenset({CommandAction.DOOR_OPEN})

    def _base(self, sn: str) -> str:
        if not sn or len(sn) > 64 or _TOPIC_UNSAFE.search(sn):
            raise CommandNotSupportedError(NAME, f"serial {sn[:70]!r} cannot be used in an MQTT topic")
        return f"{PREFIX}/{sn}"

    def _publish(self, sn: str, channel: str, msg_id: str, request_type: str, door: int) -> MqttRequest:
        base = self._base(sn)
        body = {"msgId": msg_id, "sn": sn, "type": request_type, "data": {"doorNo": door}}
        return MqttRequest(
            topic=f"{base}/{channel}/req",
            payload=json.dumps(body).encode(),
            reply_topic=f"{base}/{channel}/resp",
            correlation_id=msg_id,
        )

    def request(self, command: Command, device_ref: str) -> MqttRequest:
        """``remote_open`` on ``uface/<sn>/cmd/req``; the answer comes on ``.../cmd/resp``."""
        if command.action not in self.actions:
            raise CommandNotSupportedError(NAME, f"the terminal has no {command.action.value}")
        return self._publish(device_ref, "cmd", command.command_id, REMOTE_OPEN, command.channel)

    def decode_reply(self, raw: RawMessage, sent: DeviceRequest | None = None) -> CommandReply:
        """``data.code`` 0 is OK; any other code is a refusal with ``data.msg`` as the reason (``sent`` unused)."""
        _, data, echoed = _answer(raw, "cmd", REMOTE_OPEN)
        code = data.integer("code", lo=0, hi=99_999)
        if code == CODE_OK:
            return CommandReply(echoed, ReplyStatus.OK, device_code=str(code))
        return CommandReply(echoed, ReplyStatus.REFUSED, reason=_reason(data, code), device_code=str(code))

    def state_request(self, query_id: str, channel: int, device_ref: str) -> MqttRequest:
        """``door_state`` on ``uface/<sn>/state/req``; the answer comes on ``.../state/resp``."""
        if not is_valid_id(query_id):
            raise CommandNotSupportedError(NAME, f"query id {query_id[:70]!r} is not a valid id")
        if not 1 <= channel <= 64:
            raise CommandNotSupportedError(NAME, f"channel {channel} is outside 1..64")
        return self._publish(device_ref, "state", query_id, DOOR_STATE, channel)

    def decode_state(self, raw: RawMessage, sent: DeviceRequest | None = None) -> StateReading:
        """``data.relay`` as open / closed; a refused query reads unknown with the terminal's reason."""
        _, data, echoed = _answer(raw, "state", DOOR_STATE)
        code = data.integer("code", lo=0, hi=99_999)
        door = data.integer("doorNo", lo=1, hi=64)
        if code != CODE_OK:
            detail = f"the terminal refused the query: {_reason(data, code)}"
            return StateReading(echoed, door, ActuatorState.UNKNOWN, detail)
        relay = data.integer("relay", lo=0, hi=99)
        state = RELAY_STATES.get(relay)
        if state is None:
            return StateReading(echoed, door, ActuatorState.UNKNOWN, f"unknown relay state {relay}")
        return StateReading(echoed, door, state)


@dataclass(frozen=True)
class UfaceMqtt:
    """Face terminal publishing JSON recognition records over MQTT."""

    name: str = "uface-mqtt"
    vendor: str = "uface"
    kind: EventKind = EventKind.FACE_ACCESS
    transport: Transport = Transport.MQTT
    description: str = "Face gate, MQTT JSON recognition records (uface/<sn>/event) with optional base64 JPEG"
    topic_filter: str | None = f"{PREFIX}/+/+"
    device_topics: DeviceTopics = field(default_factory=lambda: DeviceTopics.under_prefix(PREFIX))
    commands: UfaceDoorCommands = field(default_factory=UfaceDoorCommands)
    sequence: None = None  # msgId is an opaque string, not a count: only the terminal's silence shows a loss

    def device_ref(self, raw: RawMessage) -> str:
        """The serial number in the topic."""
        return topic_parts(raw, PREFIX)[0]

    def parse(self, raw: RawMessage, ctx: DeviceContext) -> ParseResult:
        """A recognition record -> one face_access event; a status message -> device_status."""
        sn, channel, doc = read_mqtt_json(raw, PREFIX, "event")
        if channel == "status":
            return ParseResult(events=(status_event(ctx, self, sn, doc, "online"),))
        msg_type = doc.text("type", max_len=32)
        if msg_type == "heartbeat":
            return ParseResult(events=())
        if msg_type != "face_rec":
            raise PayloadRejected(
                "unsupported_event", f"{msg_type!r} is not face_rec or heartbeat", field="type"
            )
        msg_id = doc.text("msgId", max_len=64)
        occurred_at = parse_iso_time(doc.text("time", max_len=40), "time", ctx.local_tz)
        data = doc.sub("data")
        result_code = data.integer("recResult", lo=0, hi=99)
        if result_code not in RESULTS:
            raise PayloadRejected(
                "bad_field", f"unknown recognition result {result_code}", field="data.recResult"
            )
        result = RESULTS[result_code]
        person_id = data.opt_text("personId", max_len=64)
        similarity = data.opt_number("similarity", lo=0, hi=100)
        mask = data.opt_integer("mask", lo=0, hi=1)
        verify = data.opt_text("verifyMode", max_len=16) or "face"
        media: tuple[MediaBlob, ...] = ()
        image = data.opt_text("image", max_len=MAX_IMAGE_B64)
        if image is not None:
            try:
                picture = base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError):
                raise PayloadRejected(
                    "bad_picture", "image is not valid base64", field="data.image"
                ) from None
            media = (
                MediaBlob(
                    "face", check_picture(picture, None, "data.image", max_bytes=MAX_PICTURE_BYTES), picture
                ),
            )
        payload = FaceAccessPayload(
            result=result,
            direction=DIRECTIONS.get(data.opt_integer("direction", lo=0, hi=9) or 0, Direction.UNKNOWN),
            verify_mode=VERIFY_MODES.get(verify.lower(), VerifyMode.UNKNOWN),
            person_ref=ctx.pseudonymizer.person_ref(person_id) if person_id else None,
            person_type=PERSON_TYPES.get(
                data.opt_integer("personType", lo=0, hi=99) or 0, PersonType.UNKNOWN
            ),
            similarity=None if similarity is None else similarity / 100,
            mask=None if mask is None else bool(mask),
        )
        event = build_event(
            ctx,
            self,
            vendor_key=msg_id,
            payload=payload,
            severity=Severity.INFO if result is AccessResult.GRANTED else Severity.WARNING,
            occurred_at=occurred_at,
            event_code=f"face_rec/{result_code}",
            device_ref=sn,
            media=media,
        )
        return ParseResult(events=(event,), media=media)


DIALECT = UfaceMqtt()
