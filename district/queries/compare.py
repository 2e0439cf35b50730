"""``compare`` (查询比对): every passage of one plate or person reference across the compounds."""

from __future__ import annotations

from pydantic import Field, model_validator

from district.queries.context import QueryContext
from district.queries.events import PERSON_KINDS, PLATE_KINDS, event_rows, event_tables
from district.queries.spec import NeedsReason, QuerySpec, Route, event_pages
from district.query_model import Cursor, EventPage, PersonRef, Plate, Ranged, Reason, Role


class CompareRequest(Ranged):
    """查询比对: every passage of one plate or person reference across the compounds, in time order."""

    plate: Plate | None = None
    person_ref: PersonRef | None = None
    limit: int = Field(default=1000, ge=1)
    after: Cursor | None = Field(default=None, description="the next_cursor of the previous page")
    reason: Reason

    @model_validator(mode="after")
    def _one_subject(self) -> CompareRequest:
        if (self.plate is None) == (self.person_ref is None):
            raise ValueError("give exactly one of plate or person_ref")
        return self


async def compare(ctx: QueryContext, request: CompareRequest) -> EventPage:
    """The subject's passages, oldest first."""
    selection = ctx.selection(
        request,
        limit=request.limit,
        kinds=PLATE_KINDS if request.plate else PERSON_KINDS,
        plate=request.plate,
        person_ref=request.person_ref,
    )
    return await ctx.event_page(selection, newest_first=False, limit=request.limit, cursor=request.after)


SPEC = QuerySpec(
    name="compare",
    request=CompareRequest,
    result=EventPage,
    role=Role.OPERATOR,
    route=Route(
        "GET",
        "/compare",
        "查询比对: one plate's or person reference's passages across compounds, in time order",
    ),
    run=compare,
    rows=event_rows,
    tables=event_tables,
    needs_reason=NeedsReason("a plate or person comparison"),
    paging=event_pages("after"),
)
