"""``counts``: events per hour or (local) day, grouped by compound, kind and/or device."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from district.operator_output import Presenter, Table
from district.queries.context import QueryContext
from district.queries.spec import QuerySpec, Route
from district.query_model import CliFlag, CountRow, Ranged, Role
from foundation.events import EventKind, GbId


class CountsRequest(Ranged):
    """Event counts per interval, grouped by compound, kind and/or device."""

    interval: Literal["hour", "day"] = "hour"
    group_by: Annotated[tuple[Literal["compound", "kind", "device"], ...], CliFlag("--by")] = ("compound",)
    kinds: tuple[EventKind, ...] = ()
    devices: tuple[GbId, ...] = Field(default=(), max_length=200)


async def counts(ctx: QueryContext, request: CountsRequest) -> list[CountRow]:
    """The non-empty buckets, in time then group order."""
    selection = ctx.selection(request, kinds=ctx.kinds(request.kinds), devices=request.devices)
    return await ctx.backend.count(
        selection, interval=request.interval, group_by=request.group_by, zone=ctx.zone
    )


def _tables(view: Presenter, rows: list[CountRow]) -> list[Table]:
    return [view.counts(rows)]


SPEC = QuerySpec(
    name="counts",
    request=CountsRequest,
    result=list[CountRow],
    role=Role.VIEWER,
    route=Route("GET", "/counts", "Event counts per hour or day, by compound, kind and/or device"),
    run=counts,
    rows=len,
    tables=_tables,
)
