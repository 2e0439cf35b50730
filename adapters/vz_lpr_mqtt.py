"""Barrier/LPR camera, MQTT JSON (臻识-style ``AlarmInfoPlate`` results).

Topics: ``vzlpr/<serialno>/result`` for plate results, ``vzlpr/<serialno>/status`` for birth/will.
Quirks: numeric colour and direction codes, the time as a ``Timeval`` (seconds + microseconds), the
result nested three levels deep, and list/barrier information in the camera's own vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.base import (
    DeviceContext,
    ParseResult,
    RawMessage,
    Transport,
    build_event,
    parse_epoch,
    read_mqtt_json,
    status_event,
    topic_parts,
)
from adapters.plates import normalize_plate
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


@dataclass(frozen=True)
class VzLprMqtt:
    """Licence-plate camera publishing AlarmInfoPlate JSON over MQTT."""

    name: str = "vz-lpr-mqtt"
    vendor: str = "vzenith"
    kind: EventKind = EventKind.VEHICLE_PASS
    transport: Transport = Transport.MQTT
    description: str = "Barrier LPR camera, MQTT JSON AlarmInfoPlate results (vzlpr/<serialno>/result)"
    topic_filter: str | None = f"{PREFIX}/+/+"

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
        plate, new_energy = normalize_plate(result.opt_text("license", max_len=32), result.path("license"))
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
            plate=plate,
            new_energy=new_energy,
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
        return ParseResult(events=(event,))


DIALECT = VzLprMqtt()
