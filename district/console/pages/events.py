"""事件 (Events): search by compound, kind, device and time; plate and person lookups; CSV export.

Every search is the ``events`` action (scope, role and audit apply; a plate or person lookup needs
the operator role and a reason, which the service refuses without — the page shows that refusal in
Chinese). The CSV export asks the same action page by page and writes UTF-8 with a BOM (Excel opens
it as UTF-8 only then), through ``foundation.tables.render_csv``, which prefixes cells starting with
= + - @ against formula injection.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from district.console.page import ConsolePage, ConsoleRoute, PageContext, RouteView, attachment
from district.console.pages.overview import KIND_ZH
from district.operator_output import event_summary
from district.query_model import EventPage, Role
from foundation.errors import ForbiddenError, InvalidQueryError, OperatorError, StoreUnavailableError
from foundation.events import Event, VehiclePassPayload, utc_now
from foundation.tables import render_csv

PAGE_SIZE = 50
CSV_PAGE, CSV_PAGES = 500, 40
"""Rows of one page the CSV export asks for (within the default ``max_page``), and pages at most."""
BOM = "\ufeff"
FORM_TIME = "%Y-%m-%dT%H:%M"  # what <input type="datetime-local"> sends

DIRECTION_ZH = {"in": "入", "out": "出", "unknown": "未知"}
CSV_HEADERS = ["时间", "小区", "设备", "类型", "内容", "来源", "事件编号"]


def form_time(ctx: PageContext, name: str, default: datetime) -> datetime:
    """A ``datetime-local`` field read in the district's zone (the default when empty)."""
    text = ctx.query.get(name, "").strip()
    if not text:
        return default
    try:
        return datetime.strptime(text[:16], FORM_TIME).replace(tzinfo=ctx.zone)
    except ValueError:
        raise InvalidQueryError(f"时间 {text[:20]!r} 格式不对，应为 年-月-日T时:分", field=name) from None


def form_value(dt: datetime, ctx: PageContext) -> str:
    """A moment as a ``datetime-local`` field shows it (district zone)."""
    return ctx.local(dt).strftime(FORM_TIME)


def refusal_zh(exc: OperatorError) -> str:
    """A refusal of the operator service, in words an operator reads (the service's own words kept)."""
    if exc.field == "reason":
        text = "按车牌或人员查询必须先填写查询事由（至少 4 个字），查询已拒绝并记入审计日志。"
    elif isinstance(exc, ForbiddenError):
        text = "您的角色无权进行此查询（按车牌或人员查询需值班员或管理员），已拒绝并记入审计日志。"
    elif isinstance(exc, StoreUnavailableError):
        text = "数据存储暂时无法应答，请缩小范围或稍后重试。"
    elif isinstance(exc, InvalidQueryError):
        text = f"查询条件有误（{exc.field or '请求'}）。"
    else:
        text = "查询未能完成。"
    return f"{text}（{exc.message}）"


def vehicle_text(p: VehiclePassPayload) -> str:
    """The plate as read (the camera's raw text when no plate was read, else 无牌)."""
    return p.plate or (f"未识别：{p.plate_raw}" if p.plate_raw else "无牌")


def summary_zh(e: Event) -> str:
    """The few words about an event (plates and directions in Chinese)."""
    p = e.payload
    if isinstance(p, VehiclePassPayload):
        return f"{vehicle_text(p)} {DIRECTION_ZH.get(p.direction.value, p.direction.value)}"
    return event_summary(e)


class Search:
    """The form's fields, as given and as the ``events`` action's parameters."""

    def __init__(self, ctx: PageContext) -> None:
        q = ctx.query
        now = utc_now()
        self.compound = q.get("compound", "").strip()
        self.kind = q.get("kind", "").strip()
        self.device = q.get("device", "").strip()
        self.plate = q.get("plate", "").strip()
        self.person = q.get("person", "").strip()
        self.reason = q.get("reason", "").strip()
        self.before = q.get("before", "").strip()
        self.start = form_time(ctx, "start", now - timedelta(hours=24))
        self.end = form_time(ctx, "end", now + timedelta(minutes=1))

    def params(self, *, limit: int, before: str | None) -> dict[str, Any]:
        """The ``events`` request (empty fields left out: the service then applies its defaults)."""
        params: dict[str, Any] = {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "limit": limit,
        }
        optional = {
            "compounds": [self.compound] if self.compound else None,
            "kinds": [self.kind] if self.kind else None,
            "devices": [self.device] if self.device else None,
            "plate": self.plate or None,
            "person_ref": self.person or None,
            "reason": self.reason or None,
            "before": before or None,
        }
        params |= {k: v for k, v in optional.items() if v is not None}
        return params

    def link(self, ctx: PageContext, **changes: str) -> str:
        """The query string of this search with some fields changed (paging, export)."""
        fields = {
            "compound": self.compound,
            "kind": self.kind,
            "device": self.device,
            "start": form_value(self.start, ctx),
            "end": form_value(self.end, ctx),
            "plate": self.plate,
            "person": self.person,
            "reason": self.reason,
        } | changes
        return urlencode({k: v for k, v in fields.items() if v})


def row(ctx: PageContext, e: Event) -> dict[str, str]:
    """One event as the table and the CSV show it."""
    return {
        "time": ctx.local(e.occurred_at).strftime("%Y-%m-%d %H:%M:%S"),
        "compound": ctx.service.compound_name(e.compound_id),
        "device": e.device_id,
        "kind": KIND_ZH.get(e.kind.value, e.kind.value),
        "what": summary_zh(e),
        "source": e.source.dialect,
        "event_id": e.event_id,
        "severity": e.severity.value,
    }


async def load(ctx: PageContext) -> Mapping[str, Any]:
    """The search form, and the page of events it selects (or the refusal, in Chinese)."""
    lookups = ctx.principal.role.allows(Role.OPERATOR)
    variables: dict[str, Any] = {
        "kinds": list(KIND_ZH.items()),
        "compounds": sorted(ctx.service.registry.items()),
        "lookups": lookups,
        "rows": [],
        "error": None,
        "next": None,
        "export": None,
    }
    try:
        search = Search(ctx)
    except OperatorError as exc:
        search = None
        variables["error"] = refusal_zh(exc)
    if search is None:
        now = utc_now()
        empty = dict.fromkeys(("compound", "kind", "device", "plate", "person", "reason"), "")
        variables["form"] = empty | {
            "start": form_value(now - timedelta(hours=24), ctx),
            "end": form_value(now, ctx),
        }
        return variables
    variables["form"] = {
        "compound": search.compound,
        "kind": search.kind,
        "device": search.device,
        "plate": search.plate,
        "person": search.person,
        "reason": search.reason,
        "start": form_value(search.start, ctx),
        "end": form_value(search.end, ctx),
    }
    try:
        page: EventPage = await ctx.ask("events", search.params(limit=PAGE_SIZE, before=search.before))
    except OperatorError as exc:  # already audited by the service
        variables["error"] = refusal_zh(exc)
        return variables
    variables["rows"] = [row(ctx, e) for e in page.events]
    variables["export"] = search.link(ctx)
    if page.next_cursor:
        variables["next"] = search.link(ctx, before=page.next_cursor)
    return variables


async def _export_route(view: RouteView) -> web.StreamResponse:
    return attachment(*await export(view.ctx))


async def export(ctx: PageContext) -> tuple[str, str, bytes]:
    """Every event of the search (at most ``CSV_PAGES`` full pages) as CSV for Excel."""
    search = Search(ctx)
    rows: list[list[str]] = []
    cursor: str | None = None
    for _ in range(CSV_PAGES):
        page: EventPage = await ctx.ask("events", search.params(limit=CSV_PAGE, before=cursor))
        rows += [list(row(ctx, e).values())[:7] for e in page.events]
        cursor = page.next_cursor
        if cursor is None:
            break
    else:
        rows.append(["（导出在此截断：请缩小时间范围后分段导出）", "", "", "", "", "", ""])
    body = BOM + render_csv(CSV_HEADERS, rows)
    name = f"事件导出-{ctx.local(utc_now()):%Y%m%d-%H%M}.csv"
    return name, "text/csv; charset=utf-8", body.encode("utf-8")


PAGE = ConsolePage(
    name="events",
    path="/events",
    title="事件",
    role=Role.VIEWER,
    order=20,
    template="events.html",
    load=load,
    routes=(ConsoleRoute("export.csv", Role.VIEWER, _export_route),),
)
