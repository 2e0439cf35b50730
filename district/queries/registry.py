"""Every operator action, by name: the one list the service, the CLI and the API are built from.

A new query is a module next to this one with a ``SPEC``, added below (and, if it asks the store
something new, a ``StoreQuery`` with one method per backend in that module).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from district.queries import (
    alarm_action,
    alarm_counts,
    alarms,
    audit,
    barrier,
    city_status,
    commands,
    compare,
    counts,
    device_changes,
    devices,
    events,
    evidence,
    overview,
)
from district.queries.spec import QuerySpec


def index(specs: Iterable[QuerySpec[Any, Any]]) -> dict[str, QuerySpec[Any, Any]]:
    """Specs by name; refuses two specs with one name, one route or one ``query`` subcommand."""
    by_name: dict[str, QuerySpec[Any, Any]] = {}
    routes: set[tuple[str, str]] = set()
    commands: set[str] = set()
    for spec in specs:
        route = (spec.route.method, spec.route.path)
        if spec.name in by_name or route in routes or (spec.cli and spec.cli in commands):
            raise ValueError(f"{spec.name}: its name, route or subcommand is another spec's")
        by_name[spec.name] = spec
        routes.add(route)
        if spec.cli:
            commands.add(spec.cli)
    return by_name


QUERIES: dict[str, QuerySpec[Any, Any]] = index(
    [
        events.SPEC,
        counts.SPEC,
        compare.SPEC,
        barrier.SPEC,
        devices.SPEC,
        device_changes.SPEC,
        alarms.SPEC,
        alarm_counts.SPEC,
        alarm_action.SPEC,
        audit.SPEC,
        *evidence.SPECS,
        *commands.SPECS,
        overview.SPEC,
        city_status.SPEC,
    ]
)
"""Action name -> spec. Tests may add a spec for their duration (``monkeypatch.setitem``)."""
