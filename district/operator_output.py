"""How operator answers look to people: the pieces each query's table is made of.

Each query's spec says which columns its table has (``QuerySpec.tables``); this module gives them
times in the district's zone, compounds by name, and the few words about an event a person scans
for. JSON answers are the result models' own serialisation. Tables measure text in terminal
columns, not characters: Chinese (East Asian wide) characters take two columns, combining marks
none, so a compound called 青云谱示范小区 lines up with one called Block 7.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from district.query_model import CountRow
from foundation.events import (
    EbikeShedPayload,
    Event,
    FaceAccessPayload,
    RuleFiredPayload,
    ThrownObjectPayload,
    VehiclePassPayload,
    VehicleWatchHitPayload,
    WatchlistHitPayload,
)

Table = tuple[list[str], list[list[str]]]
"""Headers and rows."""


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
    if isinstance(p, RuleFiredPayload):
        return (
            f"rule {p.rule} {p.phase.value}, actions: {', '.join(a.kind.value for a in p.actions) or 'none'}"
        )
    return f"{p.state.value}{' (' + p.reason + ')' if p.reason else ''}"


class Presenter:
    """Table cells with times in the district's zone and compounds by name."""

    def __init__(self, zone: ZoneInfo, compound_name: Callable[[str], str]) -> None:
        self._zone = zone
        self._name = compound_name

    def time(self, moment: datetime) -> str:
        """A moment as the district reads it (its zone, to the second)."""
        return moment.astimezone(self._zone).strftime("%Y-%m-%d %H:%M:%S")

    def name(self, compound_id: str) -> str:
        """A compound's registered name."""
        return self._name(compound_id)

    def events(self, events: Sequence[Event]) -> Table:
        """Events, one row each."""
        return (
            ["occurred", "compound", "device", "kind", "what", "event id"],
            [
                [
                    self.time(e.occurred_at),
                    self.name(e.compound_id),
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
            row = [self.time(r.bucket)]
            row += [self.name(r.compound_id or "")] if show_compound else []
            row += [r.kind or ""] if show_kind else []
            row += [r.device_id or ""] if show_device else []
            body.append([*row, str(r.count)])
        return [*headers, "events"], body
