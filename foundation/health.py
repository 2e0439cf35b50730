"""Liveness, readiness and Prometheus metrics of a running daemon (gateway, ingester, operator API).

Transports report up/down transitions to a ``Health`` registry (the supervisor does it); the HTTP
endpoints read it. Components publish their figures through a small port that knows nothing of the
client library: ``expose`` for one counter, ``writers`` for families with labels, and ``gatherers``
for figures that need I/O to read (awaited before each scrape). At scrape time everything is turned
into prometheus-client metric families and rendered by ``generate_latest``, so values are exact
(a counter of 1234567891 is not rounded) and escaping follows the library.

Each ``Health`` has its own ``CollectorRegistry``: several daemons run in one test process, and the
library's global registry would mix their figures.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Content-Type of ``Health.scrape``'s answer."""

Sample = tuple[Mapping[str, str], float]
"""One sample of a family: its labels and its value."""


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


class MetricFamilies:
    """What components write their figures into: counter and gauge families, with labelled samples.

    The port between the components and prometheus-client: components call ``counter``/``gauge``
    with plain names, labels and numbers, and never see the library's types.
    """

    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def counter(self, name: str, help_text: str, samples: Iterable[Sample] | float) -> None:
        """A counter family; ``name`` ends in ``_total`` (the name the exposition shows).

        Args:
            name: the full metric name, e.g. ``cgw_events_stored_total``.
            help_text: the HELP line.
            samples: ``(labels, value)`` pairs (every sample with the same label names), or one
                unlabelled value.
        """
        if not name.endswith("_total"):
            # the library appends _total to a counter's name; ours must already carry it
            raise ValueError(f"counter {name!r} must end in _total")
        self._add(CounterMetricFamily, name, help_text, samples)

    def gauge(self, name: str, help_text: str, samples: Iterable[Sample] | float) -> None:
        """A gauge family (arguments as for ``counter``)."""
        self._add(GaugeMetricFamily, name, help_text, samples)

    def _add(
        self,
        kind: type[CounterMetricFamily | GaugeMetricFamily],
        name: str,
        help_text: str,
        samples: Iterable[Sample] | float,
    ) -> None:
        pairs: list[Sample] = [({}, samples)] if isinstance(samples, int | float) else list(samples)
        label_names = sorted(pairs[0][0]) if pairs else []
        family = kind(name, help_text, labels=label_names)
        for labels, value in pairs:
            if sorted(labels) != label_names:
                raise ValueError(f"{name}: samples carry labels {sorted(labels)} and {label_names}")
            family.add_metric([labels[key] for key in label_names], float(value))
        self.metrics.append(family)


Writer = Callable[[MetricFamilies], None]
Gatherer = Callable[[MetricFamilies], Awaitable[None]]


class Health:
    """What the endpoints report: transports, and the figures the components keep."""

    def __init__(self) -> None:
        self.started = time.time()
        self.transports: dict[str, TransportState] = {}
        self.sources: list[CounterSource] = []
        self.writers: list[Writer] = []
        self.gatherers: list[Gatherer] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Families(self.write_metrics))
        # process_* (CPU, resident memory, open files, start time) of this process, read from /proc
        ProcessCollector(registry=self.registry)

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

    def up(self, name: str) -> bool:
        """Whether a transport is connected now (False if it never reported)."""
        state = self.transports.get(name)
        return state is not None and state.up

    def expose(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Publish a component's counter (``read`` is called at each scrape)."""
        self.sources.append(CounterSource(name, help_text, read))

    def write_metrics(self, families: MetricFamilies) -> None:
        """Transport states, the exposed counters and the writers' families."""
        states = sorted(self.transports.items())
        families.gauge(
            "cgw_transport_up",
            "1 while the transport is connected",
            [({"transport": n}, float(s.up)) for n, s in states],
        )
        families.counter(
            "cgw_transport_connects_total",
            "successful connections (reconnects = connects - 1)",
            [({"transport": n}, s.connects) for n, s in states],
        )
        for source in self.sources:
            families.counter(source.name, source.help_text, source.read())
        for writer in self.writers:
            writer(families)

    async def scrape(self) -> bytes:
        """The exposition (``METRICS_CONTENT_TYPE``): the gatherers are awaited first, then all is rendered.

        Rendering is synchronous and cheap (it reads counters in memory); only the gatherers do I/O.
        """
        gathered = MetricFamilies()
        for gather in self.gatherers:
            await gather(gathered)
        return generate_latest(_Scrape(self.registry, gathered.metrics))


class _Families(Collector):
    """A collector that asks a writer for its families at each collection."""

    def __init__(self, write: Writer) -> None:
        self._write = write

    def collect(self) -> Iterator[Metric]:
        families = MetricFamilies()
        self._write(families)
        return iter(families.metrics)


class _Scrape(Collector):
    """One scrape: the daemon's registry plus what was gathered for this scrape alone.

    A separate object per scrape, so two scrapes at once never see each other's figures.
    """

    def __init__(self, registry: CollectorRegistry, gathered: list[Metric]) -> None:
        self._registry = registry
        self._gathered = gathered

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._gathered
