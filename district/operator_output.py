"""How operator answers look: JSON documents (API, ``--format json``), CSV, and tables for people.

Tables measure text in terminal columns, not characters: Chinese (East Asian wide) characters take
two columns, combining marks none, so a compound called 青云谱示范小区 lines up with one called
Block 7.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import Enum
from typing import Any

from district.operations import AuditRecord
from district.query_model import (
    AlarmAction,
    AlarmCountRow,
    AlarmPage,
    CountRow,
    DeviceReport,
    EventPage,
)
from foundation.events import (
    EbikeShedPayload,
    Event,
    FaceAccessPayload,
    ThrownObjectPayload,
    VehiclePassPayload,
    VehicleWatchHitPayload,
    WatchlistHitPayload,
)

Table = tuple[list[str], list[list[str]]]


def to_jsonable(value: Any) -> Any:
    """Results as JSON-ready data (events in their canonical JSON form)."""
    if isinstance(value, Event):
        return value.model_dump(mode="json")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if hasattr(type(value), "rate"):
            data["rate"] = round(value.rate, 4)  # type: ignore[attr-defined]
        return data
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


def event_summary(event: Event) -> str:
    """The few words about an event a person scans for."""
    p = event.payload
    if isinstance(p, VehiclePassPayload):
        return f"{p.plate or '无牌'} {p.plate_color.value} {p.direction.value} {p.barrier_action.value}"
    if isinstance(p, FaceAccessPayload):
        return f"{p.person_ref or '-'} {p.result.value} {p.direction.value}"
    if isinstance(p, ThrownObjectPayload):
        floor = f" from floor {p.start_floor}" if p.start_floor is not None else ""
        return f"thrown object {p.building or ''}{floor}".strip()
    if isinstance(p, EbikeShedPayload):
        temperature = f" {p.temperature_c:g}°C" if p.temperature_c is not None else ""
        return f"{p.condition.value}{temperature}"
    if isinstance(p, WatchlistHitPayload):
        return f"watch list {p.list_id}: {p.person_ref} at distance {p.distance:.2f}"
    if isinstance(p, VehicleWatchHitPayload):
        return (
            f"watch list {p.list_id}: {p.plate} {p.direction.value}{' (' + p.label + ')' if p.label else ''}"
        )
    return f"{p.state.value}{' (' + p.reason + ')' if p.reason else ''}"


class Presenter:
    """Turns answers into tables, with times in the district's zone and compounds by name."""

    def __init__(self, zone: Any, compound_name: Callable[[str], str]) -> None:
        self._zone = zone
        self._name = compound_name

    def _time(self, moment: datetime) -> str:
        return moment.astimezone(self._zone).strftime("%Y-%m-%d %H:%M:%S")

    def table(self, result: Any) -> Table:
        """Headers and rows of any answer."""
        if isinstance(result, EventPage):
            return self.events(result.events)
        if isinstance(result, AlarmPage):
            return (
                ["occurred", "compound", "device", "kind", "state", "what", "event id"],
                [
                    [
                        self._time(a.event.occurred_at),
                        self._name(a.event.compound_id),
                        a.event.device_id,
                        a.event.kind.value,
                        a.state.value,
                        event_summary(a.event),
                        a.event.event_id,
                    ]
                    for a in result.alarms
                ],
            )
        if isinstance(result, DeviceReport):
            return (
                ["compound", "device", "dialect", "status", "why", "last seen"],
                [
                    [
                        self._name(d.compound_id),
                        d.device_id,
                        d.dialect,
                        d.status,
                        d.why,
                        self._time(d.last_seen),
                    ]
                    for d in result.devices
                ],
            )
        if isinstance(result, list) and result and isinstance(result[0], CountRow):
            return self.counts(result)
        if isinstance(result, list) and result and isinstance(result[0], AlarmCountRow):
            return (
                ["period", "compound", "alarms", "confirmed", "false", "open"],
                [
                    [
                        r.bucket.strftime("%Y-%m-%d"),
                        self._name(r.compound_id),
                        str(r.total),
                        str(r.confirmed),
                        str(r.false_alarm),
                        str(r.open),
                    ]
                    for r in result
                ],
            )
        if isinstance(result, list) and result and isinstance(result[0], AuditRecord):
            return (
                ["seq", "at", "actor", "channel", "action", "outcome", "rows", "reason"],
                [
                    [
                        str(r.seq),
                        self._time(datetime.fromisoformat(r.at)),
                        r.entry.actor or "-",
                        r.entry.channel,
                        r.entry.action,
                        r.entry.outcome,
                        "" if r.entry.rows is None else str(r.entry.rows),
                        r.entry.reason or "",
                    ]
                    for r in result
                ],
            )
        if isinstance(result, AlarmAction):
            return (
                ["state", "by", "at", "note"],
                [[result.state.value, result.actor, self._time(result.at), result.note]],
            )
        return (["result"], [] if not result else [[str(result)]])

    def events(self, events: Sequence[Event]) -> Table:
        """Events, one row each."""
        return (
            ["occurred", "compound", "device", "kind", "what", "event id"],
            [
                [
                    self._time(e.occurred_at),
                    self._name(e.compound_id),
                    e.device_id,
                    e.kind.value,
                    event_summary(e),
                    e.event_id,
                ]
                for e in events
            ],
        )

    def counts(self, rows: Sequence[CountRow]) -> Table:
        """Counts, with only the grouping columns the request asked for."""
        show_compound = any(r.compound_id for r in rows)
        show_kind = any(r.kind for r in rows)
        show_device = any(r.device_id for r in rows)
        headers = ["interval start"]
        headers += ["compound"] if show_compound else []
        headers += ["kind"] if show_kind else []
        headers += ["device"] if show_device else []
        body = []
        for r in rows:
            row = [self._time(r.bucket)]
            row += [self._name(r.compound_id or "")] if show_compound else []
            row += [r.kind or ""] if show_kind else []
            row += [r.device_id or ""] if show_device else []
            body.append([*row, str(r.count)])
        return [*headers, "events"], body
