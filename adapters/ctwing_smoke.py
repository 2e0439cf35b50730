"""E-bike shed smoke alarm, NB-IoT via a carrier IoT platform (CTWing / OceanConnect HTTP push).

The platform POSTs ``deviceDataChanged`` (one report) or ``deviceDatasChanged`` (several) JSON for
all of the compound's NB-IoT alarms to one URL, ``/platform/ctwing-smoke``; the device is the
``devId`` inside the report. Quirks: temperature in tenths of a degree, state codes as strings whose
spelling differs by model (NB-306 ``1``..``5``/``f``, NB-301 ``01``/``02``/``10``/``11``), times as
``yyyyMMddTHHmmssZ`` in UTC, and ``devState`` != 0 meaning a device fault.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.base import (
    DeviceContext,
    Fields,
    ParseResult,
    RawMessage,
    Transport,
    build_event,
    load_json_object,
    parse_compact_time,
)
from adapters.shed_mqtt import SEVERITY
from foundation.errors import PayloadRejected
from foundation.events import EbikeShedPayload, Event, EventKind, ShedCondition

CMD_VALUES = {
    "1": ShedCondition.FIRE_ALARM,
    "01": ShedCondition.FIRE_ALARM,
    "2": ShedCondition.HIGH_TEMPERATURE,
    "3": ShedCondition.TAMPER,
    "4": ShedCondition.LOW_BATTERY,
    "02": ShedCondition.LOW_BATTERY,
    "5": ShedCondition.SELF_TEST,
    "10": ShedCondition.SELF_TEST,
    "f": ShedCondition.RECOVERY,
    "11": ShedCondition.RECOVERY,
    "0": ShedCondition.HEARTBEAT,
    "00": ShedCondition.HEARTBEAT,
}
MAX_SERVICES = 32


@dataclass(frozen=True)
class CtwingSmoke:
    """NB-IoT smoke alarm reports pushed by a carrier IoT platform."""

    name: str = "ctwing-smoke"
    vendor: str = "wanlin"
    kind: EventKind = EventKind.EBIKE_SHED
    transport: Transport = Transport.HTTP_PLATFORM
    description: str = "E-bike shed NB-IoT smoke alarm via CTWing/OceanConnect HTTP push (deviceDataChanged)"
    topic_filter: str | None = None
    device_topics: None = None  # not an MQTT dialect
    commands: None = None  # its devices take no commands
    sequence: None = None  # no per-device message sequence: only their silence shows a loss

    def device_ref(self, raw: RawMessage) -> str:
        """The alarm's own id (``devId``), falling back to the platform's device id."""
        doc = Fields(load_json_object(raw.body))
        services = _services(doc)
        data = services[0][0].opt_sub("data")
        ref = data.opt_text("devId", max_len=64) if data is not None else None
        return ref or doc.text("deviceId", max_len=64)

    def parse(self, raw: RawMessage, ctx: DeviceContext) -> ParseResult:
        """One push -> one event per service report."""
        doc = Fields(load_json_object(raw.body))
        platform_id = doc.text("deviceId", max_len=64)
        events: list[Event] = []
        for service, prefix in _services(doc):
            occurred_at = parse_compact_time(
                service.text("eventTime", max_len=20), f"{prefix}.eventTime", ctx.local_tz
            )
            data = service.sub("data")
            cmd = (data.opt_text("cmdValue", max_len=4) or "0").lower()
            if cmd not in CMD_VALUES:
                raise PayloadRejected(
                    "bad_field", f"unknown state code {cmd!r}", field=f"{prefix}.data.cmdValue"
                )
            condition = CMD_VALUES[cmd]
            dev_state = data.opt_integer("devState", lo=0, hi=255) or 0
            if dev_state and condition is ShedCondition.HEARTBEAT:
                condition = ShedCondition.FAULT
            temperature = data.opt_number("temperature", lo=-600, hi=5000)
            payload = EbikeShedPayload(
                condition=condition,
                smoke_level=data.opt_number("smokescope", lo=0, hi=10_000),
                temperature_c=None if temperature is None else temperature / 10,
                battery_pct=data.opt_number("electricQuantity", lo=0, hi=100),
                fault_detail=f"devState {dev_state}" if condition is ShedCondition.FAULT else None,
            )
            dev_id = data.opt_text("devId", max_len=64) or platform_id
            events.append(
                build_event(
                    ctx,
                    self,
                    vendor_key=f"{platform_id}|{occurred_at.isoformat()}|{cmd}|{service.opt_text('serviceId')}",
                    payload=payload,
                    severity=SEVERITY[condition],
                    occurred_at=occurred_at,
                    event_code=f"cmdValue/{cmd}",
                    device_ref=dev_id,
                )
            )
        return ParseResult(events=tuple(events))


def _services(doc: Fields) -> list[tuple[Fields, str]]:
    notify = doc.text("notifyType", max_len=32)
    if notify == "deviceDataChanged":
        return [(doc.sub("service"), "service")]
    if notify == "deviceDatasChanged":
        services = doc.items("services")
        if not 1 <= len(services) <= MAX_SERVICES:
            raise PayloadRejected("bad_field", f"expected 1..{MAX_SERVICES} reports", field="services")
        return [(s, f"services[{i}]") for i, s in enumerate(services)]
    raise PayloadRejected(
        "unsupported_event", f"{notify!r} is not a device data notification", field="notifyType"
    )


DIALECT = CtwingSmoke()
