"""``events``: events of the scope, newest first, a page at a time; plate or person lookups need a reason."""

from __future__ import annotations

from pydantic import Field

from district.operator_output import Presenter, Table
from district.queries.context import QueryContext
from district.queries.spec import NeedsReason, QuerySpec, Route, event_pages
from district.query_model import Cursor, EventPage, PersonRef, Plate, Ranged, Reason, Role
from foundation.events import EventKind, GbId, Severity

PERSON_KINDS = (EventKind.FACE_ACCESS.value, EventKind.WATCHLIST_HIT.value)
PLATE_KINDS = (EventKind.VEHICLE_PASS.value, EventKind.VEHICLE_WATCH_HIT.value)


class EventsRequest(Ranged):
    """Events, newest first, a page at a time."""

    kinds: tuple[EventKind, ...] = ()
    devices: tuple[GbId, ...] = Field(default=(), max_length=200)
    plate: Plate | None = None
    person_ref: PersonRef | None = None
    severity: Severity | None = None
    limit: int = Field(default=100, ge=1)
    before: Cursor | None = Field(default=None, description="the next_cursor of the previous page")
    reason: Reason | None = Field(default=None, description="required for plate or person lookups")


def _is_lookup(request: EventsRequest) -> bool:
    return bool(request.plate or request.person_ref)


async def events(ctx: QueryContext, request: EventsRequest) -> EventPage:
    """The page of events the request selects."""
    only: tuple[str, ...] | None = None
    if _is_lookup(request):
        only = PLATE_KINDS if request.plate else PERSON_KINDS
    selection = ctx.selection(
        request,
        limit=request.limit,
        kinds=ctx.kinds(request.kinds, only),
        devices=request.devices,
        plate=request.plate,
        person_ref=request.person_ref,
        severity=request.severity.value if request.severity else None,
    )
    return await ctx.event_page(selection, newest_first=True, limit=request.limit, cursor=request.before)


def event_rows(page: EventPage) -> int:
    """The events of a page."""
    return len(page.events)


def event_tables(view: Presenter, page: EventPage) -> list[Table]:
    """One row per event."""
    return [view.events(page.events)]


SPEC = QuerySpec(
    name="events",
    request=EventsRequest,
    result=EventPage,
    role=Role.VIEWER,
    route=Route("GET", "/events", "Events, newest first, a page at a time"),
    run=events,
    rows=event_rows,
    tables=event_tables,
    needs_reason=NeedsReason("a plate or person lookup", when=_is_lookup),
    paging=event_pages("before"),
)
