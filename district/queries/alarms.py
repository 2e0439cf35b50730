"""``alarms``: critical events (fire, thrown objects, watch-list hits) with lifecycle state and history."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from district.operator_output import Presenter, Table, event_summary
from district.queries.context import QueryContext
from district.queries.spec import Paging, QuerySpec, Route
from district.query_model import AlarmAction, AlarmState, CliFlag, Cursor, Model, Ranged, Role
from foundation.events import Event, EventKind, Severity
from uplink.lineprotocol import point_time_ns

MAX_STORE_PAGES = 50  # with a state filter, store pages read for one answer page at most


class AlarmsRequest(Ranged):
    """Alarms (critical events: fire, thrown objects, watch-list hits) with their lifecycle state."""

    kinds: tuple[EventKind, ...] = ()
    states: Annotated[tuple[AlarmState, ...], CliFlag("--state")] = ()
    limit: int = Field(default=200, ge=1)
    before: Cursor | None = Field(default=None, description="the next_cursor of the previous page")


class AlarmRow(Model):
    """An alarm: the event, its current state and its history."""

    event: Event
    state: AlarmState
    history: list[AlarmAction]


class AlarmPage(Model):
    """A page of alarms."""

    alarms: list[AlarmRow]
    next_cursor: str | None = Field(description="give it as the cursor of the next request")

    def joined(self, later: AlarmPage) -> AlarmPage:
        """This page followed by a later one."""
        return AlarmPage(alarms=self.alarms + later.alarms, next_cursor=later.next_cursor)


async def alarms(ctx: QueryContext, request: AlarmsRequest) -> AlarmPage:
    """A page of alarms, newest first, in the requested states."""
    selection = ctx.selection(
        request, limit=request.limit, kinds=ctx.kinds(request.kinds), severity=Severity.CRITICAL.value
    )
    wanted = set(request.states)
    found: list[AlarmRow] = []
    cursor = int(request.before) if request.before else None
    last_cursor: str | None = None
    # with a state filter, pages of the store are read until the page is full or the range ends
    for _ in range(MAX_STORE_PAGES):
        events = await ctx.backend.find(selection, newest_first=True, limit=request.limit, cursor_ns=cursor)
        histories = await ctx.operations.alarm_histories([e.event_id for e in events])
        for event in events:
            history = histories.get(event.event_id, [])
            state = history[-1].state if history else AlarmState.NEW
            last_cursor = str(point_time_ns(event))
            if not wanted or state in wanted:
                found.append(AlarmRow(event=event, state=state, history=history))
                if len(found) == request.limit:
                    return AlarmPage(alarms=found, next_cursor=last_cursor)
        if len(events) < request.limit:
            return AlarmPage(alarms=found, next_cursor=None)
        cursor = point_time_ns(events[-1])
    return AlarmPage(alarms=found, next_cursor=last_cursor)


def _tables(view: Presenter, page: AlarmPage) -> list[Table]:
    return [
        (
            ["occurred", "compound", "device", "kind", "state", "what", "event id"],
            [
                [
                    view.time(a.event.occurred_at),
                    view.name(a.event.compound_id),
                    a.event.device_id,
                    a.event.kind.value,
                    a.state.value,
                    event_summary(a.event),
                    a.event.event_id,
                ]
                for a in page.alarms
            ],
        )
    ]


def _rows(page: AlarmPage) -> int:
    return len(page.alarms)


def _next(page: AlarmPage) -> str | None:
    return page.next_cursor


SPEC = QuerySpec(
    name="alarms",
    request=AlarmsRequest,
    result=AlarmPage,
    role=Role.VIEWER,
    route=Route("GET", "/alarms", "Alarms (critical events) with their lifecycle state and history"),
    run=alarms,
    rows=_rows,
    tables=_tables,
    paging=Paging(cursor="before", next_cursor=_next, join=AlarmPage.joined),
)
