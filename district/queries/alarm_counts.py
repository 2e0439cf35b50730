"""``alarm_counts``: alarms per compound (and kind) and local day or month, by lifecycle outcome.

Never reads an alarm back from the event store. The totals are the store's counts of critical
events per local day (roll-ups where they serve), added up per month here; the outcomes come from
the operations database, whose alarm actions carry their alarm's kind and time
(``OperationsDb.alarm_outcomes``), grouped by the alarm's local day or month. ``open`` keeps its
meaning: the alarms not resolved (the total less the resolved ones).

Alarm actions recorded before they carried the alarm's kind and time count by their first action's
time and under no kind (see ``district.operations``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import Field

from district.operations import AlarmOutcome
from district.operator_output import Presenter, Table
from district.queries.context import QueryContext
from district.queries.counts import YEAR_DAYS, fold_months, month_of
from district.queries.spec import QuerySpec, Route
from district.query_model import CountRow, Model, Ranged, Role
from foundation.events import EventKind, Severity


class AlarmCountsRequest(Ranged):
    """Alarms per compound and period, by lifecycle outcome (confirmed ones are what reports count).

    A request by month may span a year (366 days), a request by day ``max_range_days``.
    """

    interval: Literal["day", "month"] = "day"
    kinds: tuple[EventKind, ...] = ()
    by_kind: bool = Field(
        default=False, description="a row per kind too (else kind is null and the row is every kind's)"
    )


class AlarmCountRow(Model):
    """Alarms of one compound (and kind, when asked by kind) in one period, by state."""

    bucket: datetime
    compound_id: str
    kind: str | None = None
    total: int
    confirmed: int
    false_alarm: int
    open: int = Field(description="not resolved: total less the resolved ones")


Key = tuple[datetime, str, str | None]


def _bucket(moment: datetime, interval: str, zone: ZoneInfo) -> datetime:
    local = moment.astimezone(zone)
    if interval == "month":
        return month_of(local, zone)
    return datetime(local.year, local.month, local.day, tzinfo=zone)


def tally(
    totals: Iterable[CountRow],
    outcomes: Iterable[AlarmOutcome],
    *,
    interval: str,
    zone: ZoneInfo,
    by_kind: bool,
) -> list[AlarmCountRow]:
    """Rows from the totals per period and the recorded outcomes, in period, compound, kind order."""
    counted: dict[Key, list[int]] = {}  # total, confirmed, false alarm, resolved
    for row in totals:
        key = (_bucket(row.bucket, interval, zone), row.compound_id or "", row.kind if by_kind else None)
        counted.setdefault(key, [0, 0, 0, 0])[0] += row.count
    for alarm in outcomes:
        key = (_bucket(alarm.occurred_at, interval, zone), alarm.compound_id, alarm.kind if by_kind else None)
        figures = counted.setdefault(key, [0, 0, 0, 0])
        figures[1] += alarm.confirmed
        figures[2] += alarm.false_alarm
        figures[3] += alarm.resolved
    return [
        AlarmCountRow(
            bucket=bucket,
            compound_id=compound,
            kind=kind,
            total=total,
            confirmed=confirmed,
            false_alarm=false_alarm,
            open=max(total - resolved, 0),
        )
        for (bucket, compound, kind), (total, confirmed, false_alarm, resolved) in sorted(
            counted.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or "")
        )
    ]


async def alarm_counts(ctx: QueryContext, request: AlarmCountsRequest) -> list[AlarmCountRow]:
    """Every alarm of the range tallied by local day or month and compound (and kind)."""
    monthly = request.interval == "month"
    kinds = ctx.kinds(request.kinds)
    selection = ctx.selection(
        request,
        kinds=kinds,
        severity=Severity.CRITICAL.value,
        max_days=max(YEAR_DAYS, ctx.api.max_range_days) if monthly else None,
    )
    group_by = ("compound", "kind") if request.by_kind else ("compound",)
    days = await ctx.backend.count(selection, interval="day", group_by=group_by, zone=ctx.zone)
    totals = fold_months(days, ctx.zone) if monthly else days
    # outcomes of the compounds in scope: a compound belongs to one district, so for a whole
    # district that is its registered compounds and any other with alarms counted above
    compounds = selection.compounds
    if compounds is None:
        compounds = tuple(sorted({*ctx.districts_compounds(), *(r.compound_id or "" for r in days)}))
    outcomes = await ctx.operations.alarm_outcomes(compounds, request.start, request.end)
    if kinds:
        outcomes = [o for o in outcomes if o.kind in kinds]
    return tally(totals, outcomes, interval=request.interval, zone=ctx.zone, by_kind=request.by_kind)


def _tables(view: Presenter, rows: list[AlarmCountRow]) -> list[Table]:
    by_kind = any(r.kind for r in rows)
    return [
        (
            ["period", "compound", *(["kind"] if by_kind else []), "alarms", "confirmed", "false", "open"],
            [
                [
                    r.bucket.strftime("%Y-%m-%d"),
                    view.name(r.compound_id),
                    *([r.kind or ""] if by_kind else []),
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
        "GET",
        "/alarm-counts",
        "Alarms per compound (and kind) and day or month: total, confirmed, false, open",
    ),
    run=alarm_counts,
    rows=len,
    tables=_tables,
)
