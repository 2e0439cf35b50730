"""道闸查询 (Barrier window): the vehicles through one barrier camera in a time range — the scratch-dispute view.

The passes are the ``barrier`` action (operator role and a reason, audited). Pictures: the district
holds vehicle pictures only after an evidence request for a barrier window, so the page offers
"request the pictures of this window" (the ``evidence_barrier`` action, a POST with a reason) and,
on 显示已调取的图片 (``pictures=1``: one audited ``evidence`` action per pass, so not by default)
lists per pass the verified files held, shown through the page's own ``media`` route
(``evidence_media``: operator role, the form's reason, audited per file).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from district.console.evidence_file import evidence_file, media_query
from district.console.page import ConsoleAction, ConsolePage, ConsoleRoute, PageContext
from district.console.pages.events import DIRECTION_ZH, form_time, form_value, refusal_zh, vehicle_text
from district.queries.evidence import EvidenceStatus, RequestView
from district.query_model import EventPage, Role
from foundation.errors import OperatorError
from foundation.events import VehiclePassPayload, utc_now

LIMIT = 1000
PICTURE_LOOKUPS = 100
"""Passes whose held pictures are looked up at most (one ``evidence`` action each)."""

CLASS_ZH = {
    "civil": "普通", "new_energy": "新能源", "police": "警用", "embassy": "使馆", "consulate": "领馆",
    "emergency": "应急", "armed_police": "武警", "coach": "教练", "trailer": "挂车",
    "hong_kong": "港", "macau": "澳", "unplated": "无牌", "other": "其他", "unknown": "未知",
}  # fmt: skip
VEHICLE_ZH = {
    "car": "轿车", "suv_mpv": "SUV/MPV", "van": "面包车", "bus": "客车", "truck": "货车",
    "motorcycle": "摩托车", "other": "其他", "unknown": "未知",
}  # fmt: skip
ACTION_ZH = {"opened": "抬杆", "refused": "拒绝", "manual": "人工", "none": "未动作", "unknown": "未知"}


def _window(ctx: PageContext) -> tuple[datetime, datetime]:
    # the form's range; empty fields: the last hour
    now = utc_now()
    return form_time(ctx, "start", now - timedelta(hours=1)), form_time(ctx, "end", now)


async def _pictures(ctx: PageContext, event_id: str, reason: str) -> list[dict[str, str]]:
    status: EvidenceStatus = await ctx.ask("evidence", {"event_id": event_id})
    return [
        {
            "role": f.role,
            "query": media_query(event_id, f.sha256, reason),
            "sha": f.sha256[:12],
            "image": str(f.content_type in {"image/jpeg", "image/png"}),
        }
        for f in status.held
        if f.verified
    ]


async def load(ctx: PageContext) -> Mapping[str, Any]:
    """The form (default: the last hour), and once a device and reason are given, its passes."""
    q = ctx.query
    device, reason = q.get("device", "").strip(), q.get("reason", "").strip()
    variables: dict[str, Any] = {"rows": [], "error": None, "asked": False, "more": False}
    try:
        start, end = _window(ctx)
    except OperatorError as exc:
        variables["error"] = refusal_zh(exc)
        end = utc_now()
        start = end - timedelta(hours=1)
    window = {"start": start.isoformat(), "end": end.isoformat()}
    variables["form"] = {
        "device": device,
        "reason": reason,
        "start": form_value(start, ctx),
        "end": form_value(end, ctx),
        "since": window["start"],
        "until": window["end"],
    }
    if not device or variables["error"]:
        return variables
    variables["asked"] = True
    params: dict[str, Any] = {"device": device, "limit": LIMIT, **window}
    if reason:
        params["reason"] = reason
    try:
        page: EventPage = await ctx.ask("barrier", params)
    except OperatorError as exc:  # audited by the service
        variables["error"] = refusal_zh(exc).replace("按车牌或人员查询", "道闸查询")
        return variables
    # one audited ``evidence`` request per pass: only when the operator asks to see the pictures
    pictures = ctx.service.evidence is not None and q.get("pictures") == "1"
    for i, e in enumerate(page.events):
        p = e.payload
        if not isinstance(p, VehiclePassPayload):
            continue
        held: list[dict[str, str]] = []
        if pictures and i < PICTURE_LOOKUPS:
            try:
                held = await _pictures(ctx, e.event_id, reason)
            except OperatorError:
                held = []
        variables["rows"].append(
            {
                "event_id": e.event_id,
                "time": ctx.local(e.occurred_at).strftime("%Y-%m-%d %H:%M:%S"),
                "plate": vehicle_text(p),
                "plate_class": CLASS_ZH.get(p.plate_class.value, p.plate_class.value),
                "vehicle": VEHICLE_ZH.get(p.vehicle_type.value, p.vehicle_type.value),
                "direction": DIRECTION_ZH.get(p.direction.value, p.direction.value),
                "action": ACTION_ZH.get(p.barrier_action.value, p.barrier_action.value),
                "pictures": held,
            }
        )
    variables["more"] = page.next_cursor is not None
    variables["pictures_on"] = pictures
    variables["evidence_on"] = ctx.service.evidence is not None
    return variables


async def request_pictures(ctx: PageContext, fields: Mapping[str, str]) -> str:
    """Ask the barrier's compound for its pictures of the window (``evidence_barrier``, audited).

    A refusal of the service (already audited) is the answer's text, in Chinese: htmx swaps only
    successful answers into the page, and the operator must see why nothing was requested.
    """
    params = {
        "device": fields.get("device", "").strip(),
        "since": fields.get("since", ""),
        "until": fields.get("until", ""),
        "reason": fields.get("reason", "").strip(),
    }
    try:
        view: RequestView = await ctx.ask("evidence_barrier", params)
    except OperatorError as exc:
        return "未能调取：" + refusal_zh(exc).replace("按车牌或人员查询", "调取图片")
    name = ctx.service.compound_name(view.compound_id)
    return f"已向{name}请求该时段的车辆图片（请求编号 {view.request_id}），图片到达后可在本页显示。"


PAGE = ConsolePage(
    name="barrier",
    path="/barrier",
    title="道闸查询",
    role=Role.OPERATOR,
    order=30,
    template="barrier.html",
    load=load,
    actions=(ConsoleAction("request", Role.OPERATOR, request_pictures),),
    routes=(ConsoleRoute("media", Role.OPERATOR, evidence_file),),
)
