"""What committed payloads say about each device: when it was last heard, and what it numbered but lost.

The intake pipeline hands every committed batch's results (``ItemResult``: device, sequence number)
to ``DeviceWatch.observe`` in the gateway process, in commit order, which for one MQTT session is
arrival order. Only inventory devices are tracked (a flood of made-up device refs cannot grow the
state), and only committed payloads: one whose batch was not committed comes again.

For dialects whose devices number their messages, ``gateway/sequence_gaps.py`` decides what each
number means; for the others the device's silence (``cgw_device_last_heard_timestamp_seconds``) is
what shows a loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import structlog

from adapters import DIALECTS
from adapters.base import Transport
from foundation.fault_switches import FaultSwitch, fault_on
from foundation.health import MetricFamilies, Sample
from foundation.logging import worth_logging
from gateway.broker_drops import BROKER_CONFIG
from gateway.config import GatewayConfig
from gateway.pipeline import ItemResult
from gateway.sequence_gaps import DeviceSequence, Observation, SequenceTracker, Verdict

log = structlog.get_logger(__name__)

GAP_HINTS = {
    Transport.MQTT: (
        "these messages never reached the gateway. If cgw_device_broker_dropped_messages rose too, the "
        "device broker dropped them because its queue for the gateway was full while the gateway was "
        "down or behind: raise max_queued_messages and max_queued_bytes on the device broker (see "
        f"{BROKER_CONFIG}). Otherwise the device or its network lost them (check the device's own log)."
    ),
    Transport.HTTP_DEVICE: (
        "these pushes never reached the gateway: the network lost them or the device gave up after "
        "failed attempts (503s while the gateway was overloaded, cgw_payloads_rejected_total). Fetch "
        "them from the device's own event log."
    ),
}


class DeviceWatch:
    """Last-heard times and sequence bookkeeping for the inventory's devices, with their metrics."""

    def __init__(self, config: GatewayConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._dialect_of = {device.id: device.dialect for device in config.devices}
        self.tracker = SequenceTracker()
        self.last_heard: dict[str, float] = {}
        # the teeth test's switch: without sequence numbers, lost messages go unnoticed again
        self._sequences = not fault_on(FaultSwitch.SEQUENCE_GAPS_IGNORED)

    def observe(self, results: Sequence[ItemResult]) -> None:
        """Record one committed batch's results (called in commit order)."""
        now = self._clock()
        for result in results:
            device = result.device
            if device is None or device not in self._dialect_of:
                continue
            self.last_heard[device] = now
            if result.sequence is None or not self._sequences:
                continue
            seen = self.tracker.observe(device, result.sequence)
            if seen.verdict is Verdict.GAP:
                self._log_gap(device, seen)
            elif seen.verdict is Verdict.RESTART:
                log.info(
                    "device_sequence_restarted",
                    device=device,
                    dialect=self._dialect_of[device],
                    previous_expected=seen.expected,
                    now_at=seen.number,
                )

    def _log_gap(self, device: str, seen: Observation) -> None:
        state = self.tracker.devices[device]
        if not worth_logging(state.gaps):
            return
        dialect = DIALECTS[self._dialect_of[device]]
        expected = seen.expected if seen.expected is not None else seen.number
        log.warning(
            "device_sequence_gap",
            device=device,
            dialect=dialect.name,
            field=dialect.sequence.field if dialect.sequence is not None else None,
            missing_from=expected,
            missing_to=seen.number - 1,
            missing=seen.skipped,
            missing_total=state.missing,
            outstanding=state.outstanding,
            gaps=state.gaps,
            hint=GAP_HINTS.get(dialect.transport, GAP_HINTS[Transport.MQTT]),
        )

    def write_metrics(self, families: MetricFamilies) -> None:
        """Per-device last-heard times and sequence counters."""
        families.gauge(
            "cgw_device_last_heard_timestamp_seconds",
            "when the gateway last committed anything from the device (event, heartbeat, status or "
            "rejected payload); time() minus this is how long it has been silent",
            [({"device": device}, at) for device, at in sorted(self.last_heard.items())],
        )
        devices = sorted(self.tracker.devices.items())

        def per_device(read: Callable[[DeviceSequence], int]) -> list[Sample]:
            return [({"device": device}, float(read(state))) for device, state in devices]

        families.counter(
            "cgw_device_sequence_gaps_total",
            "gaps in the device's own message numbering (each gap is one or more missing numbers)",
            per_device(lambda s: s.gaps),
        )
        families.counter(
            "cgw_device_sequence_missing_total",
            "message numbers skipped by the device's messages as they arrived",
            per_device(lambda s: s.missing),
        )
        families.counter(
            "cgw_device_sequence_late_total",
            "skipped numbers that arrived afterwards, out of order (QoS 1 redelivery)",
            per_device(lambda s: s.late),
        )
        families.gauge(
            "cgw_device_sequence_outstanding",
            "skipped numbers that have not arrived (missing - late): messages lost so far",
            per_device(lambda s: s.outstanding),
        )
        families.counter(
            "cgw_device_sequence_duplicates_total",
            "numbers that arrived again (redelivery of a message that had arrived)",
            per_device(lambda s: s.duplicates),
        )
        families.counter(
            "cgw_device_sequence_restarts_total",
            "times the device started counting again (reboot, counter wrap)",
            per_device(lambda s: s.restarts),
        )
