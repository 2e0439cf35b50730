"""Every operator action, by name: the one list the service, the CLI and the API are built from.

A new query is a module next to this one with a ``SPEC``, added below (and, if it asks the store
something new, a ``StoreQuery`` with one method per backend in that module).
"""

from __future__ import annotations

from typing import Any

from district.queries import (
    alarm_action,
    alarm_counts,
    alarms,
    audit,
    barrier,
    compare,
    counts,
    devices,
    events,
)
from district.queries.spec import QuerySpec

QUERIES: dict[str, QuerySpec[Any, Any]] = {
    spec.name: spec
    for spec in (
        events.SPEC,
        counts.SPEC,
        compare.SPEC,
        barrier.SPEC,
        devices.SPEC,
        alarms.SPEC,
        alarm_counts.SPEC,
        alarm_action.SPEC,
        audit.SPEC,
    )
}
"""Action name -> spec. Tests may add a spec for their duration (``monkeypatch.setitem``)."""
