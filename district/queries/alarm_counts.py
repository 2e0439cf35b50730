"""``alarm_counts``: alarms per compound and day or month, by lifecycle outcome."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from district.operator_output import Presenter, Table
from district.queries.context import QueryContext
from district.queries.spec import QuerySpec, Route
from district.query_model import AlarmState, Model, Ranged, Role
from foundation.events import Severity
from uplink.lineprotocol import point_time_ns


class AlarmCountsRequest(Ranged):
    """Alarms per compound and period, by lifecycle outcome (confirmed ones are what reports count)."""

    interval: Literal["day", "month"] = "day"


class AlarmCountRow(Model):
    """Alarms of one compound in one period, by state."""

    bucket: datetime
    compound_id: str
    total: int
    confirmed: int
    false_alarm: int
    open: int


async def alarm_counts(ctx: QueryContext, request: AlarmCountsRequest) -> list[AlarmCountRow]:
    """Every alarm of the range tallied by local day or month and compound."""
    selection = ctx.selection(request, severity=Severity.CRITICAL.value)
    counts: dict[tuple[datetime, str], list[int]] = {}
    cursor: int | None = None
    while True:
        events = await ctx.backend.find(
            selection, newest_first=True, limit=ctx.api.max_page, cursor_ns=cursor
        )
        histories = await ctx.operations.alarm_histories([e.event_id for e in events])
        for event in events:
            local = event.occurred_at.astimezone(ctx.zone)
            day = local.replace(hour=0, minute=0, second=0, microsecond=0)
            bucket = day if request.interval == "day" else day.replace(day=1)
            states = {a.state for a in histories.get(event.event_id, [])}
            tally = counts.setdefault((bucket, event.compound_id), [0, 0, 0, 0])
            tally[0] += 1
            if AlarmState.CONFIRMED in states:
                tally[1] += 1
            elif AlarmState.FALSE_ALARM in states:
                tally[2] += 1
            if AlarmState.RESOLVED not in states:
                tally[3] += 1
        if len(events) < ctx.api.max_page:
            break
        cursor = point_time_ns(events[-1])
    return [
        AlarmCountRow(
            bucket=bucket,
            compound_id=compound,
            total=total,
            confirmed=confirmed,
            false_alarm=false_alarm,
            open=open_,
        )
        for (bucket, compound), (total, confirmed, false_alarm, open_) in sorted(counts.items())
    ]


def _tables(view: Presenter, rows: list[AlarmCountRow]) -> list[Table]:
    return [
        (
            ["period", "compound", "alarms", "confirmed", "false", "open"],
            [
                [
                    r.bucket.strftime("%Y-%m-%d"),
                    view.name(r.compound_id),
                    str(r.total),
                    str(r.confirmed),
                    str(r.false_alarm),
                    str(r.open),
                ]
                for r in rows
            ],
        )
    ]


SPEC = QuerySpec(
    name="alarm_counts",
    request=AlarmCountsRequest,
    result=list[AlarmCountRow],
    role=Role.VIEWER,
    route=Route(
        "GET", "/alarm-counts", "Alarms per compound and day or month: total, confirmed, false, open"
    ),
    run=alarm_counts,
    rows=len,
    tables=_tables,
)
