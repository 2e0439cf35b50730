"""Liveness, readiness and Prometheus metrics of a running gateway or ingester.

Transports report up/down transitions to a ``Health`` registry (the supervisor does it); the
HTTP endpoints read it together with the outbox's own figures. Metrics are rendered in the
Prometheus text format by hand: a handful of families does not justify a client library.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.outbox import OutboxStats


@dataclass
class TransportState:
    """One supervised connection."""

    up: bool = False
    since: float = field(default_factory=time.time)
    connects: int = 0


@dataclass(frozen=True)
class CounterSource:
    """A counter some component keeps; read when metrics are scraped."""

    name: str
    help_text: str
    read: Callable[[], float]


class Health:
    """What the endpoints report: transports, and counters the components keep."""

    def __init__(self) -> None:
        self.started = time.time()
        self.transports: dict[str, TransportState] = {}
        self.sources: list[CounterSource] = []
        self.writers: list[Callable[[MetricsText], None]] = []

    def transport(self, name: str) -> TransportState:
        """The state of a transport (created on first use)."""
        return self.transports.setdefault(name, TransportState())

    def mark(self, name: str, *, up: bool) -> None:
        """A transport came up or went down."""
        state = self.transport(name)
        if up:
            state.connects += 1
        if state.up != up:
            state.up = up
            state.since = time.time()

    def expose(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Publish a component's counter as a metric."""
        self.sources.append(CounterSource(name, help_text, read))

    def write_metrics(self, text: MetricsText) -> None:
        """Transport states and the exposed counters."""
        text.family(
            "cgw_transport_up",
            "gauge",
            "1 while the transport is connected",
            [({"transport": n}, float(s.up)) for n, s in sorted(self.transports.items())],
        )
        text.family(
            "cgw_transport_connects_total",
            "counter",
            "successful connections (reconnects = connects - 1)",
            [({"transport": n}, s.connects) for n, s in sorted(self.transports.items())],
        )
        for source in self.sources:
            text.family(source.name, "counter", source.help_text, [({}, source.read())])
        for writer in self.writers:
            writer(text)


def _labels(labels: Iterable[tuple[str, str]]) -> str:
    pairs = [f'{k}="{_escape(v)}"' for k, v in labels]
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsText:
    """Builds a Prometheus exposition, one family at a time."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]
    ) -> None:
        """One metric family with its samples."""
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self._lines.append(f"{name}{_labels(sorted(labels.items()))} {value:g}")

    def render(self) -> str:
        """The exposition text."""
        return "\n".join(self._lines) + "\n"


def write_outbox_metrics(text: MetricsText, stats: OutboxStats, now: datetime) -> None:
    """The outbox's depth, age, and the counters it keeps in its file."""

    def age(iso: str | None) -> float:
        return max(0.0, (now - datetime.fromisoformat(iso)).total_seconds()) if iso else 0.0

    text.family("cgw_outbox_pending_events", "gauge", "events waiting for the uplink", [({}, stats.pending)])
    text.family(
        "cgw_outbox_pending_alarms", "gauge", "alarms waiting for the uplink", [({}, stats.pending_alarms)]
    )
    text.family(
        "cgw_outbox_pending_bytes",
        "gauge",
        "bytes held against the outbox budget",
        [({}, stats.pending_bytes)],
    )
    text.family(
        "cgw_outbox_oldest_pending_age_seconds",
        "gauge",
        "age of the oldest event not yet sent",
        [({}, age(stats.oldest_pending_received_at))],
    )
    text.family(
        "cgw_outbox_sent_awaiting_receipt",
        "gauge",
        "events the district broker took but the district has not confirmed",
        [({}, stats.sent)],
    )
    text.family(
        "cgw_uplink_lag_seconds",
        "gauge",
        "age of the oldest event the district has not confirmed",
        [({"sink": "district"}, age(stats.oldest_unconfirmed_received_at))],
    )
    text.family(
        "cgw_outbox_dead_letters",
        "gauge",
        "rejected payloads kept for inspection",
        [({}, stats.dead_letters)],
    )
    families = {
        "stored": ("cgw_events_stored_total", "events accepted into the outbox", ("kind", "device")),
        "rejected": (
            "cgw_payloads_rejected_total",
            "payloads refused, by device and reason",
            ("device", "reason"),
        ),
        "duplicates": (
            "cgw_duplicate_events_total",
            "re-sent events recognised as duplicates",
            ("device", "_"),
        ),
        "shed": ("cgw_events_shed_total", "routine events shed because the outbox was full", ("kind", "_")),
    }
    for counter, (name, help_text, (label_a, label_b)) in families.items():
        samples = []
        for (kind, a, b), value in sorted(stats.counters.items()):
            if kind == counter:
                labels = {label_a: a} | ({label_b: b} if label_b != "_" else {})
                samples.append((labels, float(value)))
        text.family(name, "counter", help_text, samples)
