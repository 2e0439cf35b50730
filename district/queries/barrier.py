"""``barrier``: every vehicle through one barrier (a vehicle-pass device) in a window."""

from __future__ import annotations

from pydantic import Field

from district.queries.context import QueryContext
from district.queries.events import event_rows, event_tables
from district.queries.spec import NeedsReason, QuerySpec, Route, event_pages
from district.query_model import Cursor, EventPage, Ranged, Reason, Role
from foundation.events import EventKind, GbId


class BarrierRequest(Ranged):
    """Every vehicle through one barrier (a vehicle-pass device) in a window, in time order."""

    device: GbId
    limit: int = Field(default=1000, ge=1)
    after: Cursor | None = Field(default=None, description="the next_cursor of the previous page")
    reason: Reason


async def barrier(ctx: QueryContext, request: BarrierRequest) -> EventPage:
    """The barrier's passages, oldest first."""
    selection = ctx.selection(
        request, limit=request.limit, kinds=(EventKind.VEHICLE_PASS.value,), devices=(request.device,)
    )
    return await ctx.event_page(selection, newest_first=False, limit=request.limit, cursor=request.after)


SPEC = QuerySpec(
    name="barrier",
    request=BarrierRequest,
    result=EventPage,
    role=Role.OPERATOR,
    route=Route("GET", "/barrier", "Every vehicle through one barrier in a window, in time order"),
    run=barrier,
    rows=event_rows,
    tables=event_tables,
    needs_reason=NeedsReason("a barrier window"),
    paging=event_pages("after"),
)
