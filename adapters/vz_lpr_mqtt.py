"""Barrier/LPR camera, MQTT JSON (臻识-style ``AlarmInfoPlate`` results), and its barrier commands.

Topics: ``vzlpr/<serialno>/result`` for plate results, ``vzlpr/<serialno>/status`` for birth/will.
Quirks: numeric colour and direction codes, the time as a ``Timeval`` (seconds + microseconds), the
result nested three levels deep, and list/barrier information in the camera's own vocabulary.

Barrier commands (``VzBarrierCommands``), in the same vendor style:

- ``vzlpr/<serialno>/cmd/req``: ``{"cmd": "gate_ctrl", "id": <command id>, "gate": 0, "ctrl": 1}``,
  ``ctrl`` 1 = open, 2 = close; ``gate`` counts from 0 (our channels count from 1).
- ``vzlpr/<serialno>/cmd/resp``: ``{"cmd": "gate_ctrl", "id": <echoed>, "state_code": 200,
  "err_msg": ""}``; any other ``state_code`` is a refusal, ``err_msg`` the camera's reason.
- ``vzlpr/<serialno>/state/req``: ``{"cmd": "get_gate_state", "id": <query id>, "gate": 0}``.
- ``vzlpr/<serialno>/state/resp``: ``{"cmd": "get_gate_state", "id": <echoed>, "state_code": 200,
  "gate": 0, "gate_state": 2}``, ``gate_state`` 0 = no signal, 1 = closed, 2 = open, 3 = moving
  (the codes of ISAPI's ``barrierGateStatus``, plus moving).

The command topics have four levels on purpose: the gateway's event subscription ``vzlpr/+/+`` then
never receives its own requests or the camera's answers. Like the rest of this dialect, the field
names are modelled on public descriptions of such cameras (``shared/reference/device-protocols.md``,
``downlink-console-scale.md``), not taken from a verified device; a real installation's names belong
here, and nowhere else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from adapters.base import (
    DeviceContext,
    DeviceTopics,
    Fields,
    JsonSequence,
    ParseResult,
    RawMessage,
    Transport,
    build_event,
    load_json_object,
    parse_epoch,
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

PREFIX = "vzlpr"
COLOR_TYPES = {
    0: PlateColor.UNKNOWN,
    1: PlateColor.BLUE,
    2: PlateColor.YELLOW,
    3: PlateColor.WHITE,
    4: PlateColor.BLACK,
    5: PlateColor.GREEN,
    6: PlateColor.YELLOW_GREEN,
}
CAR_TYPES = {
    0: VehicleType.UNKNOWN,
    1: VehicleType.CAR,
    2: VehicleType.SUV_MPV,
    3: VehicleType.VAN,
    4: VehicleType.BUS,
    5: VehicleType.TRUCK,
    6: VehicleType.MOTORCYCLE,
}
# Plate movement in the image: 4 = down the frame (towards the camera), 3 = up (away).
TOWARDS_CAMERA, AWAY_FROM_CAMERA = 4, 3
LIST_TYPES = {
    "white": ListType.ALLOW,
    "black": ListType.BLOCK,
    "temp": ListType.TEMPORARY,
    "visitor": ListType.VISITOR,
}
GATE_ACTIONS = {
    0: BarrierAction.NONE,
    1: BarrierAction.OPENED,
    2: BarrierAction.REFUSED,
    3: BarrierAction.MANUAL,
}

# --- barrier commands ------------------------------------------------------------------------------

GATE_CTRL, GET_GATE_STATE = "gate_ctrl", "get_gate_state"
CTRL_CODES = {CommandAction.BARRIER_OPEN: 1, CommandAction.BARRIER_CLOSE: 2}
GATE_STATES = {
    0: ActuatorState.UNKNOWN,  # the position sensor gives no signal
    1: ActuatorState.CLOSED,
    2: ActuatorState.OPEN,
    3: ActuatorState.MOVING,
}
STATE_OK = 200
# What the camera's refusal codes mean when it leaves err_msg empty.
REFUSAL_CODES = {
    400: "malformed or unknown request",
    403: "the barrier is under the camera's own control",
    404: "no such gate",
    500: "the camera failed to drive the relay",
}
_TOPIC_UNSAFE = re.compile(r"[/+#\x00-\x1f]")


def _doc(raw: RawMessage, channel: str, cmd: str) -> tuple[Fields, str]:
    """The answer document on ``vzlpr/<serial>/<channel>/resp`` and the id it echoes, or reject."""
    parts = (raw.topic or "").split("/")
    if len(parts) != 4 or parts[0] != PREFIX or not parts[1] or parts[2:] != [channel, "resp"]:
        raise PayloadRejected("bad_topic", f"expected {PREFIX}/<serial>/{channel}/resp, got {raw.topic!r}")
    doc = Fields(load_json_object(raw.body, what="answer"))
    if doc.raw("cmd") != cmd:
        raise PayloadRejected("bad_field", f"expected {cmd!r}, got {doc.raw('cmd')!r}", field="cmd")
    echoed = doc.text("id", max_len=64)
    if not is_valid_id(echoed):
        raise PayloadRejected("bad_field", "not a command or query id we send", field="id")
    return doc, echoed


def _refusal(doc: Fields, code: int) -> str:
    """The camera's reason; a blank ``err_msg`` (firmware pads it) falls back to the code's meaning."""
    fallback = REFUSAL_CODES.get(code, f"state code {code}")
    message = doc.raw("err_msg")
    if isinstance(message, str) and not message.strip():
        return fallback
    return doc.opt_text("err_msg", max_len=200) or fallback


@dataclass(frozen=True)
class VzBarrierCommands:
    """Opens and closes the camera's barrier, and reads its state back, over the camera's MQTT link."""

    actions: frozenset[CommandAction] = frozenset(CTRL_CODES)

    def _base(self, device_ref: str) -> str:
        if not device_ref or len(device_ref) > 64 or _TOPIC_UNSAFE.search(device_ref):
            raise CommandNotSupportedError(
                "vz-lpr-mqtt", f"serial {device_ref[:70]!r} cannot be used in an MQTT topic"
            )
        return f"{PREFIX}/{device_ref}"

    def request(self, command: Command, device_ref: str) -> MqttRequest:
        """``gate_ctrl`` on ``vzlpr/<serial>/cmd/req``; the answer comes on ``.../cmd/resp``."""
        ctrl = CTRL_CODES.get(command.action)
        if ctrl is None:
            raise CommandNotSupportedError("vz-lpr-mqtt", f"the camera has no {command.action.value}")
        base = self._base(device_ref)
        body = {"cmd": GATE_CTRL, "id": command.command_id, "gate": command.channel - 1, "ctrl": ctrl}
        return MqttRequest(
            topic=f"{base}/cmd/req",
            payload=json.dumps(body).encode(),
            reply_topic=f"{base}/cmd/resp",
            correlation_id=command.command_id,
        )

    def decode_reply(self, raw: RawMessage, sent: DeviceRequest | None = None) -> CommandReply:
        """``state_code`` 200 is OK; any other code is a refusal with ``err_msg`` as the reason.

        ``sent`` is not needed: the answer echoes the command id.
        """
        doc, echoed = _doc(raw, "cmd", GATE_CTRL)
        code = doc.integer("state_code", lo=0, hi=999)
        if code == STATE_OK:
            return CommandReply(command_id=echoed, status=ReplyStatus.OK, device_code=str(code))
        return CommandReply(
            command_id=echoed, status=ReplyStatus.REFUSED, reason=_refusal(doc, code), device_code=str(code)
        )

    def state_request(self, query_id: str, channel: int, device_ref: str) -> MqttRequest:
        """``get_gate_state`` on ``vzlpr/<serial>/state/req``; the answer comes on ``.../state/resp``."""
        if not is_valid_id(query_id):
            raise CommandNotSupportedError("vz-lpr-mqtt", f"query id {query_id[:70]!r} is not a valid id")
        if not 1 <= channel <= 64:
            raise CommandNotSupportedError("vz-lpr-mqtt", f"channel {channel} is outside 1..64")
        base = self._base(device_ref)
        body = {"cmd": GET_GATE_STATE, "id": query_id, "gate": channel - 1}
        return MqttRequest(
            topic=f"{base}/state/req",
            payload=json.dumps(body).encode(),
            reply_topic=f"{base}/state/resp",
            correlation_id=query_id,
        )

    def decode_state(self, raw: RawMessage, sent: DeviceRequest | None = None) -> StateReading:
        """``gate_state`` mapped to open / closed / moving / unknown; a refused query reads unknown."""
        doc, echoed = _doc(raw, "state", GET_GATE_STATE)
        code = doc.integer("state_code", lo=0, hi=999)
        gate = doc.integer("gate", lo=0, hi=63)
        if code != STATE_OK:
            refused = f"the camera refused the query: {_refusal(doc, code)}"
            return StateReading(echoed, gate + 1, ActuatorState.UNKNOWN, refused)
        value = doc.integer("gate_state", lo=0, hi=99)
        state = GATE_STATES.get(value)
        if state is None:
            return StateReading(echoed, gate + 1, ActuatorState.UNKNOWN, f"unknown gate_state {value}")
        detail = "the position sensor gives no signal" if value == 0 else None
        return StateReading(echoed, gate + 1, state, detail)


@dataclass(frozen=True)
class VzLprMqtt:
    """Licence-plate camera publishing AlarmInfoPlate JSON over MQTT."""

    name: str = "vz-lpr-mqtt"
    vendor: str = "vzenith"
    kind: EventKind = EventKind.VEHICLE_PASS
    transport: Transport = Transport.MQTT
    description: str = "Barrier LPR camera, MQTT JSON AlarmInfoPlate results (vzlpr/<serialno>/result)"
    topic_filter: str | None = f"{PREFIX}/+/+"
    device_topics: DeviceTopics = field(default_factory=lambda: DeviceTopics.under_prefix(PREFIX))
    commands: VzBarrierCommands = field(default_factory=VzBarrierCommands)
    # the camera numbers its recognitions (plateid); a reboot starts again
    sequence: JsonSequence = field(
        default_factory=lambda: JsonSequence(("AlarmInfoPlate", "result", "PlateResult", "plateid"))
    )

    def device_ref(self, raw: RawMessage) -> str:
        """The camera serial number in the topic."""
        return topic_parts(raw, PREFIX)[0]

    def parse(self, raw: RawMessage, ctx: DeviceContext) -> ParseResult:
        """A plate result -> one vehicle_pass event; a status message -> device_status."""
        serial, channel, doc = read_mqtt_json(raw, PREFIX, "result")
        if channel == "status":
            return ParseResult(events=(status_event(ctx, self, serial, doc, "online"),))
        alarm = doc.sub("AlarmInfoPlate")
        result = alarm.sub("result").sub("PlateResult")
        timeval = result.sub("timeStamp").sub("Timeval")
        seconds = timeval.integer("sec", lo=0, hi=2**33)
        micros = timeval.opt_integer("usec", lo=0, hi=999_999) or 0
        occurred_at = parse_epoch(
            seconds + micros / 1e6, "AlarmInfoPlate.result.PlateResult.timeStamp.Timeval.sec"
        )
        read = normalize_plate(result.opt_text("license", max_len=32), result.path("license"))
        color = result.integer("colorType", lo=0, hi=99)
        move = result.opt_integer("direction", lo=0, hi=9)
        if move in {TOWARDS_CAMERA, AWAY_FROM_CAMERA}:
            towards = move == TOWARDS_CAMERA
            direction = Direction.IN if towards == ctx.forward_is_in else Direction.OUT
        else:
            direction = Direction.UNKNOWN
        list_token = (result.opt_text("listType", max_len=16) or "").lower()
        plate_id = result.integer("plateid", lo=0)
        gate = result.opt_integer("gateAction", lo=0, hi=9)
        payload = VehiclePassPayload(
            plate=read.plate,
            plate_class=read.plate_class,
            plate_raw=read.raw,
            new_energy=read.new_energy,
            plate_color=COLOR_TYPES.get(color, PlateColor.OTHER),
            vehicle_type=CAR_TYPES.get(result.opt_integer("carType", lo=0, hi=99) or 0, VehicleType.OTHER),
            direction=direction,
            barrier_action=BarrierAction.UNKNOWN
            if gate is None
            else GATE_ACTIONS.get(gate, BarrierAction.UNKNOWN),
            list_type=LIST_TYPES.get(list_token, ListType.UNKNOWN),
            confidence=result.number("confidence", lo=0, hi=100) / 100,
            lane=alarm.opt_integer("channel", lo=0, hi=64),
        )
        event = build_event(
            ctx,
            self,
            vendor_key=f"{plate_id}|{seconds}.{micros:06d}",
            payload=payload,
            severity=Severity.WARNING if payload.list_type is ListType.BLOCK else Severity.INFO,
            occurred_at=occurred_at,
            event_code=f"trigger/{result.opt_integer('triggerType', lo=0, hi=1 << 16)}",
            device_ref=serial,
        )
        return ParseResult(events=(event,), sequence=plate_id)


DIALECT = VzLprMqtt()
