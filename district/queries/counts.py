"""``counts``: events per hour, (local) day or (local) month, grouped by compound, kind and/or device.

Months are the stores' day counts (roll-ups where they serve) added up here: a store counts per
hour and day only, and the local days of a month are exactly its local days, so the sums are exact.
A month request may span a year (``YEAR_DAYS``): it reads 366 day rows per group at most.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import Field

from district.operator_output import Presenter, Table
from district.queries.context import QueryContext
from district.queries.spec import QuerySpec, Route
from district.query_model import CliFlag, CountRow, Ranged, Role
from foundation.events import EventKind, GbId

YEAR_DAYS = 366
"""The longest range of a request by month (a year of statistics), whatever ``max_range_days`` says."""


class CountsRequest(Ranged):
    """Event counts per interval, grouped by compound, kind and/or device."""

    interval: Literal["hour", "day", "month"] = "hour"
    group_by: Annotated[tuple[Literal["compound", "kind", "device"], ...], CliFlag("--by")] = ("compound",)
    kinds: tuple[EventKind, ...] = ()
    devices: tuple[GbId, ...] = Field(default=(), max_length=200)


def month_of(bucket: datetime, zone: ZoneInfo) -> datetime:
    """The local month a bucket falls in: midnight of its first day in ``zone``."""
    local = bucket.astimezone(zone)
    return datetime(local.year, local.month, 1, tzinfo=zone)


def fold_months(rows: Iterable[CountRow], zone: ZoneInfo) -> list[CountRow]:
    """Day rows added up per local month and group, in time then group order."""
    totals: dict[tuple[datetime, str | None, str | None, str | None], int] = {}
    for row in rows:
        key = (month_of(row.bucket, zone), row.compound_id, row.kind, row.device_id)
        totals[key] = totals.get(key, 0) + row.count
    return [
        CountRow(bucket=month, count=count, compound_id=compound, kind=kind, device_id=device)
        for (month, compound, kind, device), count in sorted(
            totals.items(), key=lambda item: (item[0][0], *(v or "" for v in item[0][1:]))
        )
    ]


async def counts(ctx: QueryContext, request: CountsRequest) -> list[CountRow]:
    """The non-empty buckets, in time then group order."""
    monthly = request.interval == "month"
    selection = ctx.selection(
        request,
        kinds=ctx.kinds(request.kinds),
        devices=request.devices,
        max_days=max(YEAR_DAYS, ctx.api.max_range_days) if monthly else None,
    )
    interval = "day" if monthly else request.interval
    rows = await ctx.backend.count(selection, interval=interval, group_by=request.group_by, zone=ctx.zone)
    return fold_months(rows, ctx.zone) if monthly else rows


def _tables(view: Presenter, rows: list[CountRow]) -> list[Table]:
    return [view.counts(rows)]


SPEC = QuerySpec(
    name="counts",
    request=CountsRequest,
    result=list[CountRow],
    role=Role.VIEWER,
    route=Route("GET", "/counts", "Event counts per hour, day or month, by compound, kind and/or device"),
    run=counts,
    rows=len,
    tables=_tables,
)
