"""Liveness, readiness and Prometheus metrics of a running gateway or ingester.

Transports report up/down transitions to a ``Health`` registry (the supervisor does it); the
HTTP endpoints read it together with the outbox's own figures. Metrics are rendered in the
Prometheus text format by hand: a handful of families does not justify a client library.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


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
