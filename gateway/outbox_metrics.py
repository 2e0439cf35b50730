"""The outbox's depth, age and counters as Prometheus metric families."""

from __future__ import annotations

from datetime import datetime

from foundation.health import MetricFamilies, Sample
from gateway.outbox import OutboxStats


def write_outbox_metrics(families: MetricFamilies, stats: OutboxStats, now: datetime) -> None:
    """The outbox's depth, age, and the counters it keeps in its file."""

    def age(iso: str | None) -> float:
        return max(0.0, (now - datetime.fromisoformat(iso)).total_seconds()) if iso else 0.0

    families.gauge("cgw_outbox_pending_events", "events waiting for the uplink", stats.pending)
    families.gauge("cgw_outbox_pending_alarms", "alarms waiting for the uplink", stats.pending_alarms)
    families.gauge("cgw_outbox_pending_bytes", "bytes held against the outbox budget", stats.pending_bytes)
    families.gauge(
        "cgw_outbox_oldest_pending_age_seconds",
        "age of the oldest event not yet sent",
        age(stats.oldest_pending_received_at),
    )
    families.gauge(
        "cgw_outbox_sent_awaiting_receipt",
        "events the district broker took but the district has not confirmed",
        stats.sent,
    )
    families.gauge(
        "cgw_uplink_lag_seconds",
        "age of the oldest event the district has not confirmed",
        [({"sink": "district"}, age(stats.oldest_unconfirmed_received_at))],
    )
    families.gauge("cgw_outbox_dead_letters", "rejected payloads kept for inspection", stats.dead_letters)
    counted = {
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
    for counter, (name, help_text, (label_a, label_b)) in counted.items():
        samples: list[Sample] = []
        for (kind, a, b), value in sorted(stats.counters.items()):
            if kind == counter:
                labels = {label_a: a} | ({label_b: b} if label_b != "_" else {})
                samples.append((labels, float(value)))
        families.counter(name, help_text, samples)
