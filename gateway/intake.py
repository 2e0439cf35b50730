"""From a raw payload on any transport to an outbox operation: stored events, or a dead letter.

The transports (MQTT intake, HTTP receiver) only move bytes; this module resolves the device, runs
its dialect, and turns every failure into a specific rejection: which device, which field, why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

import structlog
from pydantic import ValidationError

from adapters import DIALECTS
from adapters.base import DeviceContext, Dialect, MediaBlob, RawMessage, Transport
from foundation.errors import PayloadRejected, Rejection
from foundation.events import Event, utc_now
from foundation.identity import Pseudonymizer
from foundation.logging import worth_logging
from gateway.config import DeviceConfig, GatewayConfig
from gateway.outbox import DeadLetter, EventRow, Operation, StoreEvents
from gateway.rate_limits import PeerRateLimiter
from gateway.watch_subjects import watch_work_for

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the intake decided for one payload (picklable: it may come from a parser process)."""

    operation: Operation
    rejection: Rejection | None = None
    device: str | None = None
    sequence: int | None = None  # the device's own number of this payload (``Dialect.sequence``)

    @property
    def event_ids(self) -> list[str]:
        """Ids of the events this payload carries (none for a dead letter)."""
        if isinstance(self.operation, StoreEvents):
            return [row.event_id for row in self.operation.events]
        return []


@dataclass(frozen=True, slots=True)
class IntakeItem:
    """One raw payload and where it came from, as handed to the parser (possibly another process)."""

    transport: Literal["mqtt", "http_device", "http_platform", "internal"]
    raw: RawMessage
    max_bytes: int
    target: str | None = None  # the device id of /push/<id>, the dialect of /platform/<dialect>
    oversized: bool = False  # refused before reading: the body exceeded max_bytes
    declared_size: int | None = None
    attachments: tuple[MediaBlob, ...] = ()  # internal events: pictures to keep with them


class Intake:
    """Resolves devices and dialects and runs the parsers; pure CPU, no I/O."""

    def __init__(self, config: GatewayConfig, pseudonymizer: Pseudonymizer) -> None:
        self._config = config
        self._pseudonymizer = pseudonymizer
        self._tz = ZoneInfo(config.compound.timezone)
        self._by_id = {device.id: device for device in config.devices}
        self._by_ref = {(d.dialect, d.ref): d for d in config.devices if d.ref is not None}
        self._by_topic_prefix = {
            dialect.topic_filter.split("/", 1)[0]: dialect
            for dialect in DIALECTS.values()
            if dialect.topic_filter is not None
        }
        self.accepted: Counter[tuple[str, str]] = Counter()  # (device id, kind)
        # MQTT devices: the compound broker has already taken their messages, so a flood cannot be
        # refused at the door as HTTP pushes are; beyond the rate they become dead letters (kept,
        # counted) instead of events, so one broken device cannot fill the outbox or the district.
        self._mqtt_rates = PeerRateLimiter(config.mqtt.device_rate_per_s, config.mqtt.device_burst)
        self.rejected: Counter[tuple[str, str]] = Counter()  # (device, reason)

    def classify(self, item: IntakeItem) -> Outcome:
        """Dispatch one item to the entry point of its transport."""
        if item.oversized:
            device = item.target if item.transport == "http_device" else None
            return self.oversized("http", device, item.declared_size, item.max_bytes)
        if item.transport == "mqtt":
            return self.from_mqtt(item.raw, item.max_bytes)
        if item.transport == "internal":
            return self.from_gateway(item.raw, item.attachments)
        if item.transport == "http_device":
            return self.from_http_device(item.raw, item.target or "", item.max_bytes)
        return self.from_http_platform(item.raw, item.target or "", item.max_bytes)

    def mqtt_topic_filters(self) -> list[str]:
        """Topic filters of the MQTT dialects that the inventory uses."""
        used = {device.dialect for device in self._config.devices}
        return sorted(
            d.topic_filter for name, d in DIALECTS.items() if name in used and d.topic_filter is not None
        )

    def uses_mqtt(self) -> bool:
        """Whether any device in the inventory speaks over MQTT."""
        return bool(self.mqtt_topic_filters())

    # --- entry points per transport -----------------------------------------------------------------

    def from_mqtt(self, raw: RawMessage, max_bytes: int) -> Outcome:
        """A message from the device broker; the topic's first segment names the dialect."""
        prefix = (raw.topic or "").split("/", 1)[0]
        dialect = self._by_topic_prefix.get(prefix)
        if dialect is None:
            return self._reject(
                raw,
                "mqtt",
                None,
                None,
                PayloadRejected("unknown_dialect", f"no dialect publishes under {prefix!r}/"),
            )
        return self._shared(raw, "mqtt", dialect, max_bytes)

    def from_gateway(self, raw: RawMessage, attachments: tuple[MediaBlob, ...]) -> Outcome:
        """An event the gateway made itself (a watch-list hit): validated like any other."""
        try:
            event = Event.model_validate_json(raw.body)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            return self._reject(
                raw, "internal", None, None, PayloadRejected("invalid_event", first["msg"], field=field)
            )
        self.accepted[(event.device_id, event.kind.value)] += 1
        return Outcome(StoreEvents([_row(event)], media=attachments), device=event.device_id)

    def from_http_device(self, raw: RawMessage, device_id: str, max_bytes: int) -> Outcome:
        """A push to ``/push/<device id>``."""
        device = self._by_id.get(device_id)
        if device is None:
            return self._reject(
                raw,
                "http",
                None,
                device_id,
                PayloadRejected("unknown_device", f"no device {device_id!r} in the inventory"),
            )
        dialect = DIALECTS[device.dialect]
        if dialect.transport is not Transport.HTTP_DEVICE:
            return self._reject(
                raw,
                "http",
                dialect,
                device_id,
                PayloadRejected(
                    "wrong_transport", f"device {device_id} speaks {dialect.name} over {dialect.transport}"
                ),
            )
        if len(raw.body) > max_bytes:
            return self._too_large(raw, "http", dialect, device_id, max_bytes)
        return self._parse(raw, "http", dialect, device)

    def from_http_platform(self, raw: RawMessage, dialect_name: str, max_bytes: int) -> Outcome:
        """A push from a vendor platform to ``/platform/<dialect>``."""
        dialect = DIALECTS.get(dialect_name)
        if dialect is None or dialect.transport is not Transport.HTTP_PLATFORM:
            return self._reject(
                raw,
                "http",
                None,
                None,
                PayloadRejected("unknown_dialect", f"no platform dialect {dialect_name!r}"),
            )
        return self._shared(raw, "http", dialect, max_bytes)

    def oversized(self, transport: str, device: str | None, declared: int | None, limit: int) -> Outcome:
        """A body refused before it was read because it exceeds the transport's limit."""
        size = f"{declared} bytes" if declared is not None else "a body"
        return self._reject(
            RawMessage(b""),
            transport,
            None,
            device,
            PayloadRejected("payload_too_large", f"{size} > {limit}"),
        )

    # --- common path --------------------------------------------------------------------------------

    def _shared(self, raw: RawMessage, transport: str, dialect: Dialect, max_bytes: int) -> Outcome:
        if len(raw.body) > max_bytes:
            return self._too_large(raw, transport, dialect, None, max_bytes)
        try:
            ref = dialect.device_ref(raw)
        except PayloadRejected as exc:
            return self._reject(raw, transport, dialect, None, exc)
        device = self._by_ref.get((dialect.name, ref))
        if device is None:
            return self._reject(
                raw,
                transport,
                dialect,
                ref,
                PayloadRejected(
                    "unknown_device", f"no {dialect.name} device with ref {ref!r} in the inventory"
                ),
            )
        if transport == "mqtt" and self._mqtt_rates.admit(device.id) is not None:
            limits = self._mqtt_rates
            return self._reject(
                raw,
                transport,
                dialect,
                device.id,
                PayloadRejected(
                    "rate_limited",
                    f"more than {limits.rate:g} messages/s (burst {limits.burst}) from this device",
                ),
            )
        return self._parse(raw, transport, dialect, device)

    def _parse(self, raw: RawMessage, transport: str, dialect: Dialect, device: DeviceConfig) -> Outcome:
        ctx = DeviceContext(
            district_id=self._config.compound.district_id,
            compound_id=self._config.compound.compound_id,
            device_id=device.id,
            received_at=utc_now(),
            local_tz=self._tz,
            pseudonymizer=self._pseudonymizer,
            location=device.location,
            forward_is_in=device.forward_is_in,
        )
        try:
            result = dialect.parse(raw, ctx)
        except PayloadRejected as exc:
            return self._reject(raw, transport, dialect, device.id, exc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return self._reject(
                raw,
                transport,
                dialect,
                device.id,
                PayloadRejected("invalid_event", first["msg"], field=where),
            )
        except Exception as exc:
            log.exception("parser_crashed", dialect=dialect.name, device=device.id)
            return self._reject(
                raw,
                transport,
                dialect,
                device.id,
                PayloadRejected("parser_error", f"{type(exc).__name__} in parser"),
            )
        for event in result.events:
            self.accepted[(device.id, event.kind.value)] += 1
        media: tuple[MediaBlob, ...] = result.media
        rows = [_row(event) for event in result.events]
        return Outcome(StoreEvents(rows, media), device=device.id, sequence=result.sequence)

    def _too_large(
        self, raw: RawMessage, transport: str, dialect: Dialect, device: str | None, limit: int
    ) -> Outcome:
        return self._reject(
            raw,
            transport,
            dialect,
            device,
            PayloadRejected("payload_too_large", f"{len(raw.body)} bytes > {limit}"),
        )

    def _reject(
        self,
        raw: RawMessage,
        transport: str,
        dialect: Dialect | None,
        device: str | None,
        exc: PayloadRejected,
    ) -> Outcome:
        rejection = exc.rejection
        key = (device or "(unknown)", rejection.reason)
        self.rejected[key] += 1
        count = self.rejected[key]
        if worth_logging(count):
            log.warning(
                "payload_rejected",
                transport=transport,
                dialect=dialect.name if dialect else None,
                device=device,
                topic=raw.topic,
                reason=rejection.reason,
                field=rejection.field,
                detail=rejection.detail,
                count=count,
            )
        letter = DeadLetter(
            transport=transport,
            dialect=dialect.name if dialect else None,
            device=device,
            reason=rejection.reason,
            field=rejection.field,
            detail=rejection.detail if raw.topic is None else f"{rejection.detail} (topic {raw.topic})",
            payload=raw.body,
        )
        return Outcome(
            letter, rejection=rejection, device=device, sequence=self._sequence(dialect, device, raw)
        )

    def _sequence(self, dialect: Dialect | None, device: str | None, raw: RawMessage) -> int | None:
        """A refused payload's sequence number: it arrived (as a dead letter), so it is no gap."""
        if dialect is None or dialect.sequence is None or device not in self._by_id:
            return None
        try:
            return dialect.sequence.read(raw)
        except Exception:  # a reader bug must not turn a dead letter into a crash
            log.exception("sequence_reader_crashed", dialect=dialect.name, device=device)
            return None


def _row(event: Event) -> EventRow:
    # the watch side decides what the matcher looks at; the outbox queues it with the event
    return EventRow.from_event(event, watch=watch_work_for(event))
