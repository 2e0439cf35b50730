"""``overview``: the console's first screen — per compound in scope and for the district as a whole.

Per compound: the device online rate (the ``devices`` query's rule, by calling it), today's event
counts per kind (today = the district's local day in ``[api] timezone``), the open alarms (critical
events of the trend range still new or acknowledged in the operations database) and the daily event
totals of the last ``days`` local days, zero-filled. The district's figures are the sums.

Counts come from ``backend.count`` only (roll-ups where the store keeps them), never from reading
events. Open alarms are the one place events are read: the critical events of the range, newest
first, at most ``MAX_ALARM_PAGES`` pages of ``max_page``; past that the answer says it is a lower
bound (``open_alarms_complete`` false) rather than reading on.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, time, timedelta

from pydantic import Field, computed_field

from district.operator_output import Presenter, Table
from district.queries.context import QueryContext, to_ns
from district.queries.devices import DevicesRequest, devices
from district.queries.spec import QuerySpec, Route
from district.query_model import AlarmState, CountRow, Model, Role, Selection
from foundation.errors import InvalidQueryError
from foundation.events import EventKind, GbId, Severity
from uplink.lineprotocol import point_time_ns

MAX_ALARM_PAGES = 10
"""Pages of ``max_page`` critical events read for open alarms at most (10 000 alarms by default)."""

OPEN_STATES = frozenset({AlarmState.NEW, AlarmState.ACKNOWLEDGED})


class OverviewRequest(Model):
    """Every compound in scope at a glance: online rate, today's counts, open alarms, daily trend."""

    compounds: tuple[GbId, ...] = Field(default=(), max_length=500, description="default: the token's scope")
    days: int = Field(default=7, ge=1, le=31, description="local days of the trend, today included")


class KindCount(Model):
    """Events of one kind."""

    kind: EventKind
    count: int


class DayCount(Model):
    """Events of one local day."""

    day: date
    count: int


class Figures(Model):
    """The overview's figures of one compound or of the district."""

    devices: int = Field(
        description="registered devices (a compound without a registry: those that reported within"
        " inventory_lookback_days); the devices query's count"
    )
    online: int = Field(description="of those, online by the devices query's rule")
    today: list[KindCount] = Field(description="today's events per kind (local day), every kind listed")
    open_alarms: int = Field(description="critical events of the trend range still new or acknowledged")
    trend: list[DayCount] = Field(description="events per local day, oldest first, zero-filled")

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented idiom; mypy dislikes decorated properties
    @property
    def rate(self) -> float:
        """Share of devices online, to 4 places (0 when there are none yet)."""
        return round(self.online / self.devices, 4) if self.devices else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def today_total(self) -> int:
        """Today's events of every kind."""
        return sum(k.count for k in self.today)


class CompoundOverview(Figures):
    """One compound's figures."""

    compound_id: str
    name: str


class Overview(Model):
    """The overview answer: each compound in scope and the sum of them."""

    day: date = Field(description="today, the district's local day")
    timezone: str
    compounds: list[CompoundOverview]
    district: Figures = Field(description="the sums over the compounds listed (the scope's totals)")
    open_alarms_complete: bool = Field(
        description="false when more critical events than the read bound: open alarms are then a lower bound"
    )


def _midnight(day: date, ctx: QueryContext) -> datetime:
    return datetime.combine(day, time(0), tzinfo=ctx.zone)


async def _open_alarms(ctx: QueryContext, selection: Selection) -> tuple[dict[str, int], bool]:
    """Open alarms per compound, and whether every critical event of the range was read."""
    open_: dict[str, int] = {}
    cursor: int | None = None
    for _ in range(MAX_ALARM_PAGES):
        events = await ctx.backend.find(
            selection, newest_first=True, limit=ctx.api.max_page, cursor_ns=cursor
        )
        histories = await ctx.operations.alarm_histories([e.event_id for e in events])
        for event in events:
            history = histories.get(event.event_id)
            if (history[-1].state if history else AlarmState.NEW) in OPEN_STATES:
                open_[event.compound_id] = open_.get(event.compound_id, 0) + 1
        if len(events) < ctx.api.max_page:
            return open_, True
        cursor = point_time_ns(events[-1])
    return open_, False


async def overview(ctx: QueryContext, request: OverviewRequest) -> Overview:
    """Each compound in scope (registered ones, and any other that has data) and the district's sums."""
    if request.days > ctx.api.max_range_days:
        raise InvalidQueryError(
            f"a trend of {request.days} days is longer than the {ctx.api.max_range_days} days of one query",
            field="days",
        )
    scope = ctx.scope(request.compounds)
    today = ctx.clock().astimezone(ctx.zone).date()
    days = [today - timedelta(days=n) for n in range(request.days - 1, -1, -1)]
    day_start, range_start, range_end = (
        _midnight(today, ctx),
        _midnight(days[0], ctx),
        _midnight(today + timedelta(days=1), ctx),
    )

    def select(start: datetime, severity: str | None = None) -> Selection:
        return Selection(
            district_id=ctx.principal.district_id,
            compounds=scope,
            start_ns=to_ns(start),
            end_ns=to_ns(range_end),
            severity=severity,
        )

    async with asyncio.TaskGroup() as group:
        online_task = group.create_task(
            devices(ctx, DevicesRequest(compounds=request.compounds)), name="overview-online"
        )
        today_task = group.create_task(
            ctx.backend.count(
                select(day_start), interval="day", group_by=("compound", "kind"), zone=ctx.zone
            ),
            name="overview-today",
        )
        trend_task = group.create_task(
            ctx.backend.count(select(range_start), interval="day", group_by=("compound",), zone=ctx.zone),
            name="overview-trend",
        )
        alarms_task = group.create_task(
            _open_alarms(ctx, select(range_start, severity=Severity.CRITICAL.value)), name="overview-alarms"
        )
    online = {c.compound_id: c for c in online_task.result().compounds}
    today_counts: dict[str, dict[str, int]] = {}
    for row in today_task.result():
        per_kind = today_counts.setdefault(_compound(row), {})
        per_kind[row.kind or ""] = per_kind.get(row.kind or "", 0) + row.count
    trend_counts: dict[str, dict[date, int]] = {}
    for row in trend_task.result():
        per_day = trend_counts.setdefault(_compound(row), {})
        day = row.bucket.astimezone(ctx.zone).date()
        per_day[day] = per_day.get(day, 0) + row.count
    open_alarms, complete = alarms_task.result()

    listed = set(scope if scope is not None else ctx.districts_compounds())
    listed |= set(online) | set(today_counts) | set(trend_counts) | set(open_alarms)
    compounds = [
        CompoundOverview(
            compound_id=compound,
            name=ctx.compound_name(compound),
            devices=online[compound].devices if compound in online else 0,
            online=online[compound].online if compound in online else 0,
            today=[
                KindCount(kind=k, count=today_counts.get(compound, {}).get(k.value, 0)) for k in EventKind
            ],
            open_alarms=open_alarms.get(compound, 0),
            trend=[DayCount(day=d, count=trend_counts.get(compound, {}).get(d, 0)) for d in days],
        )
        for compound in sorted(listed)
    ]
    district = Figures(
        devices=sum(c.devices for c in compounds),
        online=sum(c.online for c in compounds),
        today=[
            KindCount(kind=kind, count=sum(c.today[i].count for c in compounds))
            for i, kind in enumerate(EventKind)
        ],
        open_alarms=sum(c.open_alarms for c in compounds),
        trend=[DayCount(day=d, count=sum(c.trend[i].count for c in compounds)) for i, d in enumerate(days)],
    )
    return Overview(
        day=today,
        timezone=ctx.api.timezone,
        compounds=compounds,
        district=district,
        open_alarms_complete=complete,
    )


def _compound(row: CountRow) -> str:
    return row.compound_id or ""


def _row(label: str, figures: Figures) -> list[str]:
    # no spaces inside a cell: the columns stay apart for readers that split on whitespace
    by_kind = ",".join(f"{k.kind.value}={k.count}" for k in figures.today if k.count)
    return [
        label,
        f"{figures.online}/{figures.devices}",
        f"{figures.rate:.0%}",
        str(figures.today_total),
        by_kind or "-",
        str(figures.open_alarms),
        ",".join(str(d.count) for d in figures.trend),
    ]


def _tables(view: Presenter, result: Overview) -> list[Table]:
    alarms = "open alarms" if result.open_alarms_complete else "open alarms (at least)"
    first, last = result.district.trend[0].day, result.district.trend[-1].day
    header = [
        "compound",
        "online",
        "rate",
        f"today {result.day:%m-%d}",
        "today by kind",
        alarms,
        f"trend {first:%m-%d}..{last:%m-%d}",
    ]
    rows = [_row(c.name, c) for c in result.compounds]
    rows.append(_row("total", result.district))
    return [(header, rows)]


def _rows(result: Overview) -> int:
    return len(result.compounds)


SPEC = QuerySpec(
    name="overview",
    request=OverviewRequest,
    result=Overview,
    role=Role.VIEWER,
    route=Route(
        "GET",
        "/overview",
        "Each compound in scope: device online rate, today's counts per kind, open alarms, daily trend;"
        " the district's totals",
    ),
    run=overview,
    rows=_rows,
    tables=_tables,
)
