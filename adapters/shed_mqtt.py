"""E-bike shed fire/smoke sensor, MQTT JSON (decoded frames of W308-style NB/4G smoke detectors).

Topics: ``shed/<imei>/up`` for reports, ``shed/<imei>/status`` for birth/will. Reports carry an
``alert`` bitmask (bit0 smoke, bit1 over-temperature, bit2 low battery, bit3 tamper, bit7 fault;
0 = all clear), the smoke reading, temperature, battery, and a per-device sequence number. One
report can raise several conditions at once; each becomes its own event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.base import (
    DeviceContext,
    DeviceTopics,
    JsonSequence,
    ParseResult,
    RawMessage,
    Transport,
    build_event,
    parse_epoch,
    read_mqtt_json,
    status_event,
    topic_parts,
)
from foundation.errors import PayloadRejected
from foundation.events import EbikeShedPayload, Event, EventKind, Severity, ShedCondition

PREFIX = "shed"
ALERT_BITS = (
    (0x01, ShedCondition.FIRE_ALARM),
    (0x02, ShedCondition.HIGH_TEMPERATURE),
    (0x04, ShedCondition.LOW_BATTERY),
    (0x08, ShedCondition.TAMPER),
    (0x80, ShedCondition.FAULT),
)
KNOWN_BITS = 0x8F

SEVERITY = {
    ShedCondition.FIRE_ALARM: Severity.CRITICAL,
    ShedCondition.HIGH_TEMPERATURE: Severity.CRITICAL,
    ShedCondition.FAULT: Severity.WARNING,
    ShedCondition.TAMPER: Severity.WARNING,
    ShedCondition.LOW_BATTERY: Severity.WARNING,
    ShedCondition.SELF_TEST: Severity.INFO,
    ShedCondition.RECOVERY: Severity.INFO,
    ShedCondition.HEARTBEAT: Severity.INFO,
}


@dataclass(frozen=True)
class ShedMqtt:
    """Smoke/temperature sensor in an e-bike shed publishing JSON reports over MQTT."""

    name: str = "shed-mqtt"
    vendor: str = "huaqiang"
    kind: EventKind = EventKind.EBIKE_SHED
    transport: Transport = Transport.MQTT
    description: str = (
        "E-bike shed smoke/temperature sensor, MQTT JSON reports with alert bitmask (shed/<imei>/up)"
    )
    topic_filter: str | None = f"{PREFIX}/+/+"
    device_topics: DeviceTopics = field(default_factory=lambda: DeviceTopics.under_prefix(PREFIX))
    commands: None = None  # its devices take no commands
    # every report (alarm, heartbeat, self-test) takes the next seq; a reboot starts again
    sequence: JsonSequence = field(default_factory=lambda: JsonSequence(("seq",)))

    def device_ref(self, raw: RawMessage) -> str:
        """The IMEI in the topic."""
        return topic_parts(raw, PREFIX)[0]

    def parse(self, raw: RawMessage, ctx: DeviceContext) -> ParseResult:
        """One report -> one event per raised condition (or a heartbeat / recovery / self-test)."""
        imei, channel, doc = read_mqtt_json(raw, PREFIX, "up")
        if channel == "status":
            return ParseResult(events=(status_event(ctx, self, imei, doc, "online"),))
        report = doc.text("type", max_len=16)
        seq = doc.integer("seq", lo=0, hi=2**32)
        ts_ms = doc.integer("ts", lo=0, hi=2**43)
        occurred_at = parse_epoch(ts_ms / 1000, "ts")
        alert = doc.integer("alert", lo=0, hi=0xFF)
        if alert & ~KNOWN_BITS:
            raise PayloadRejected(
                "bad_field", f"unknown alert bits {alert & ~KNOWN_BITS:#04x}", field="alert"
            )
        conditions: list[ShedCondition]
        if report == "alarm":
            conditions = [cond for bit, cond in ALERT_BITS if alert & bit] or [ShedCondition.RECOVERY]
        elif report == "heartbeat":
            conditions = [ShedCondition.HEARTBEAT]
        elif report == "selftest":
            conditions = [ShedCondition.SELF_TEST]
        else:
            raise PayloadRejected(
                "unsupported_event", f"{report!r} is not alarm, heartbeat or selftest", field="type"
            )
        fault_code = doc.opt_integer("devCode", lo=0, hi=255)
        common = {
            "smoke_level": doc.opt_number("smoke", lo=0, hi=10_000),
            "temperature_c": doc.opt_number("temp", lo=-60, hi=500),
            "battery_pct": doc.opt_number("battPct", lo=0, hi=100),
        }
        events: list[Event] = []
        for condition in conditions:
            payload = EbikeShedPayload(
                condition=condition,
                fault_detail=f"devCode {fault_code}"
                if condition is ShedCondition.FAULT and fault_code
                else None,
                **common,
            )
            events.append(
                build_event(
                    ctx,
                    self,
                    vendor_key=f"{seq}|{ts_ms}|{condition}",
                    payload=payload,
                    severity=SEVERITY[condition],
                    occurred_at=occurred_at,
                    event_code=f"{report}/{alert:#04x}",
                    device_ref=imei,
                )
            )
        return ParseResult(events=tuple(events), sequence=seq)


DIALECT = ShedMqtt()
