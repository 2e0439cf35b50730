"""Canonical events as a gateway would have made them, for loads that start past the gateway.

The uplink and scale-out benchmarks and the ingester's tests feed uplink batches or stores
directly; they need many valid events cheaply, without running a simulator through an adapter.
"""

from __future__ import annotations

from datetime import datetime

from device_sims.inventory import DISTRICT_ID
from foundation.events import EbikeShedPayload, Event, EventKind, Provenance, Severity, ShedCondition
from foundation.identity import event_id


def shed_heartbeat(
    compound_id: str, device_id: str, key: str, at: datetime, *, scope: str = "bench"
) -> Event:
    """An e-bike shed sensor's routine heartbeat; the event id derives from (device, scope, key)."""
    return Event(
        event_id=event_id(device_id, scope, key),
        kind=EventKind.EBIKE_SHED,
        district_id=DISTRICT_ID,
        compound_id=compound_id,
        device_id=device_id,
        occurred_at=at,
        received_at=at,
        severity=Severity.INFO,
        source=Provenance(vendor="huaqiang", dialect="shed-mqtt"),
        payload=EbikeShedPayload(
            condition=ShedCondition.HEARTBEAT, temperature_c=21.5, battery_pct=88.0, smoke_level=0.4
        ),
    )
