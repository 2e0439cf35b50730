"""统计 (Statistics): events per kind and alarm outcomes per local day of a month, or per month of a year.

``?month=YYYY-MM`` (the default: this month) shows a row per local day; ``?year=YYYY`` a row per
month; ``compound`` narrows the token's scope to one compound. Above the table: the confirmed
thrown-object alarms of this year and the confirmed alarms of this month (scope and compound
filter applied), whichever period is shown.

Everything comes from the ``counts`` (by kind, per day or month) and ``alarm_counts`` actions:
roll-up counts and the operations database, never a scan of raw events. Ranges are whole local
days, so the stores' roll-ups answer them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from district.console.page import ConsolePage, PageContext
from district.console.pages.overview import KIND_ZH
from district.queries.alarm_counts import AlarmCountRow
from district.query_model import CountRow, Role
from foundation.errors import InvalidQueryError
from foundation.events import EventKind, utc_now

MONTH = re.compile(r"^(\d{4})-(\d{2})$")
YEAR = re.compile(r"^(\d{4})$")


def add_months(first: date, months: int) -> date:
    """The first day of the month ``months`` after ``first``'s month."""
    index = first.year * 12 + first.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


@dataclass(frozen=True)
class Period:
    """The period shown: a month (rows per day) or a year (rows per month), ``[first, after)``."""

    by: str  # "month" or "year"
    first: date
    after: date

    @property
    def interval(self) -> str:
        """The actions' interval of one row."""
        return "day" if self.by == "month" else "month"

    def rows(self, today: date) -> list[date]:
        """The rows' periods, oldest first, none after today's."""
        out: list[date] = []
        at = self.first
        while at < self.after and at <= today:
            out.append(at)
            at = at + timedelta(days=1) if self.by == "month" else add_months(at, 1)
        return out

    def label(self) -> str:
        """The period in words (the heading)."""
        return f"{self.first.year}年{self.first.month}月" if self.by == "month" else f"{self.first.year}年"


def period_of(query: Mapping[str, str], today: date) -> Period:
    """The period a request asks for (``month=YYYY-MM`` or ``year=YYYY``; default: this month)."""
    month, year = query.get("month", "").strip(), query.get("year", "").strip()
    if year and not month:
        found = YEAR.match(year)
        if not found or not 2000 <= int(found[1]) <= 2999:
            raise InvalidQueryError(f"year {year!r}: four digits like {today.year}", field="year")
        first = date(int(found[1]), 1, 1)
        return Period("year", first, date(first.year + 1, 1, 1))
    if not month:
        first = today.replace(day=1)
    else:
        found = MONTH.match(month)
        if not found or not 2000 <= int(found[1]) <= 2999 or not 1 <= int(found[2]) <= 12:
            raise InvalidQueryError(f"month {month!r}: like {today:%Y-%m}", field="month")
        first = date(int(found[1]), int(found[2]), 1)
    return Period("month", first, add_months(first, 1))


def _span(ctx: PageContext, first: date, after: date, compound: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "start": datetime.combine(first, time(0), tzinfo=ctx.zone).isoformat(),
        "end": datetime.combine(after, time(0), tzinfo=ctx.zone).isoformat(),
    }
    if compound:
        params["compounds"] = [compound]
    return params


def _key(bucket: datetime, ctx: PageContext, by: str) -> date:
    local = ctx.local(bucket).date()
    return local if by == "month" else local.replace(day=1)


@dataclass
class Row:
    """One row of the table: a local day or month."""

    period: date
    label: str
    href: str | None
    kinds: dict[str, int]
    alarms: int = 0
    confirmed: int = 0
    false_alarm: int = 0
    open: int = 0

    @property
    def total(self) -> int:
        """Events of every kind."""
        return sum(self.kinds.values())


def table(
    period: Period,
    today: date,
    counts: Sequence[CountRow],
    alarms: Sequence[AlarmCountRow],
    *,
    ctx: PageContext,
    link: Mapping[str, str],
) -> list[Row]:
    """A row per period of the view, zero-filled, with its events per kind and its alarms."""
    rows: dict[date, Row] = {}
    for at in period.rows(today):
        month_href = "?" + urlencode({**link, "month": f"{at:%Y-%m}"})
        label, href = (f"{at:%m-%d}", None) if period.by == "month" else (f"{at:%Y-%m}", month_href)
        rows[at] = Row(at, label, href, dict.fromkeys(KIND_ZH, 0))
    for c in counts:
        row = rows.get(_key(c.bucket, ctx, period.by))
        if row is not None and c.kind in row.kinds:
            row.kinds[c.kind] += c.count
    for a in alarms:
        row = rows.get(_key(a.bucket, ctx, period.by))
        if row is not None:
            row.alarms += a.total
            row.confirmed += a.confirmed
            row.false_alarm += a.false_alarm
            row.open += a.open
    return list(rows.values())


async def headline(ctx: PageContext, today: date, compound: str) -> tuple[int, int]:
    """(Confirmed thrown-object alarms this year, confirmed alarms this month) in the scope."""
    year: list[AlarmCountRow] = await ctx.ask(
        "alarm_counts",
        {
            **_span(ctx, date(today.year, 1, 1), date(today.year + 1, 1, 1), compound),
            "interval": "month",
            "by_kind": True,
        },
    )
    this_month = today.replace(day=1)
    thrown = sum(r.confirmed for r in year if r.kind == EventKind.THROWN_OBJECT.value)
    month = sum(r.confirmed for r in year if ctx.local(r.bucket).date() == this_month)
    return thrown, month


async def load(ctx: PageContext) -> Mapping[str, Any]:
    """The period's table, the navigation between periods and the year's headline figures."""
    today = ctx.local(utc_now()).date()
    period = period_of(ctx.query, today)
    compounds = {
        c.id: c.name
        for c in ctx.service.registry.values()
        if (c.district_id or ctx.principal.district_id) == ctx.principal.district_id
        and (not ctx.principal.compounds or c.id in ctx.principal.compounds)
    }
    compound = ctx.query.get("compound", "").strip()
    if compound and compound not in compounds:
        raise InvalidQueryError(f"compound {compound!r} is not one of this token's", field="compound")
    span = _span(ctx, period.first, period.after, compound)
    counts: list[CountRow] = await ctx.ask(
        "counts", {**span, "interval": period.interval, "group_by": ["kind"]}
    )
    alarms: list[AlarmCountRow] = await ctx.ask("alarm_counts", {**span, "interval": period.interval})
    thrown_year, confirmed_month = await headline(ctx, today, compound)
    link = {"compound": compound} if compound else {}
    rows = table(period, today, counts, alarms, ctx=ctx, link=link)
    if period.by == "month":
        nav = {
            "prev": {**link, "month": f"{add_months(period.first, -1):%Y-%m}"},
            "next": {**link, "month": f"{period.after:%Y-%m}"},
            "other": {**link, "year": str(period.first.year)},
        }
    else:
        nav = {
            "prev": {**link, "year": str(period.first.year - 1)},
            "next": {**link, "year": str(period.first.year + 1)},
            "other": {
                **link,
                "month": f"{today:%Y-%m}" if today.year == period.first.year else f"{period.first:%Y-%m}",
            },
        }
    return {
        "period": period,
        "label": period.label(),
        "kinds": list(KIND_ZH.items()),
        "rows": rows,
        "totals": {
            "kinds": {k: sum(r.kinds[k] for r in rows) for k in KIND_ZH},
            "total": sum(r.total for r in rows),
            "alarms": sum(r.alarms for r in rows),
            "confirmed": sum(r.confirmed for r in rows),
            "false_alarm": sum(r.false_alarm for r in rows),
            "open": sum(r.open for r in rows),
        },
        "compounds": compounds,
        "compound": compound,
        "month_value": f"{period.first:%Y-%m}",
        "links": {name: "?" + urlencode(params) for name, params in nav.items()},
        "year": today.year,
        "thrown_year": thrown_year,
        "confirmed_month": confirmed_month,
    }


PAGE = ConsolePage(
    name="statistics",
    path="/statistics",
    title="统计",
    role=Role.VIEWER,
    order=40,
    template="statistics.html",
    load=load,
)
