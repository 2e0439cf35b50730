"""总览 (Overview): every compound in scope with its online rate, today's counts, open alarms and trend.

Everything comes from the ``overview`` action (roll-up counts, never a scan of raw events); the
7-day trend is drawn here as a small inline SVG bar chart (no chart library: a few rectangles).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from district.console.page import ConsolePage, PageContext
from district.queries.overview import DayCount, Figures, Overview
from district.query_model import Role
from foundation.events import EventKind

KIND_ZH: dict[str, str] = {
    EventKind.FACE_ACCESS.value: "人脸通行",
    EventKind.VEHICLE_PASS.value: "车辆通行",
    EventKind.THROWN_OBJECT.value: "高空抛物",
    EventKind.EBIKE_SHED.value: "电动车棚",
    EventKind.DEVICE_STATUS.value: "设备状态",
    EventKind.WATCHLIST_HIT.value: "重点人员",
    EventKind.VEHICLE_WATCH_HIT.value: "布控车辆",
    EventKind.RULE_FIRED.value: "本地联动",
}
"""Event kinds as operators name them."""

BAR_W, GAP, HEIGHT = 10, 3, 28


@dataclass(frozen=True)
class Bar:
    """One day's bar of a trend chart (SVG user units)."""

    x: int
    y: int
    height: int
    day: str
    count: int


def bars(trend: Sequence[DayCount]) -> list[Bar]:
    """The trend as bars scaled to the busiest day (a day with events is at least 1 unit tall)."""
    top = max((d.count for d in trend), default=0)
    out = []
    for i, d in enumerate(trend):
        height = 0 if not top or not d.count else max(1, round(d.count / top * HEIGHT))
        out.append(Bar(i * (BAR_W + GAP), HEIGHT - height, height, f"{d.day:%m-%d}", d.count))
    return out


def _figures(f: Figures) -> dict[str, Any]:
    return {
        "devices": f.devices,
        "online": f.online,
        "rate": f"{f.rate:.0%}",
        "today": {k.kind.value: k.count for k in f.today},
        "today_total": f.today_total,
        "open_alarms": f.open_alarms,
        "bars": bars(f.trend),
        "trend_text": "，".join(f"{d.day:%m-%d} {d.count}" for d in f.trend),
    }


async def load(ctx: PageContext) -> Mapping[str, Any]:
    """The ``overview`` action's answer, shaped for the table."""
    result: Overview = await ctx.ask("overview", {})
    return {
        "day": result.day,
        "kinds": list(KIND_ZH.items()),
        "compounds": [{"id": c.compound_id, "name": c.name, **_figures(c)} for c in result.compounds],
        "district": _figures(result.district),
        "complete": result.open_alarms_complete,
        "chart": {"width": len(result.district.trend) * (BAR_W + GAP), "height": HEIGHT, "bar": BAR_W},
    }


PAGE = ConsolePage(
    name="overview",
    path="/overview",
    title="总览",
    role=Role.VIEWER,
    order=1,
    template="overview.html",
    load=load,
)
