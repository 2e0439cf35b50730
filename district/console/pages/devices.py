"""设备 (Devices): every device of the compounds in scope, offline first, with why and last seen.

Registered devices that never reported are offline "从未上报"; the summary gives the registry's
total, and each compound's online rate is over its registry (the ``devices`` query's rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from district.console.device_commands import command_parts, panel
from district.console.page import ConsolePage, PageContext
from district.queries.devices import DeviceReport
from district.query_model import EventPage, Role
from foundation.errors import OperatorError
from foundation.events import DeviceStatusPayload, EventKind, utc_now

MAX_REASONS = 200  # devices whose reason one page load looks up (the events request's device limit)

WHY_ZH = {
    "reported online": "设备上报在线",
    "reported offline": "设备上报离线",
    "reporting": "正常上报",
    "never reported": "从未上报",
}


def why_zh(why: str) -> str:
    """The devices query's reason in Chinese ("silent for 2 h 5 min" -> "静默 2 h 5 min")."""
    if why in WHY_ZH:
        return WHY_ZH[why]
    if why.startswith("silent for over "):
        return "静默超过 " + why.removeprefix("silent for over ")
    if why.startswith("silent for "):
        return "静默 " + why.removeprefix("silent for ")
    return why


async def offline_reasons(ctx: PageContext, report: DeviceReport) -> dict[str, str]:
    """What the devices that reported themselves offline said (their last status event's reason).

    One ``events`` request (audited like any) over the span of those reports; best effort: when it
    is refused (a span longer than the allowed range) the page shows the reasons it has, none.
    """
    reported = [d for d in report.devices if d.why == "reported offline"][:MAX_REASONS]
    seen = [d.last_seen for d in reported if d.last_seen is not None]
    if not seen:
        return {}
    params = {
        "kinds": [EventKind.DEVICE_STATUS.value],
        "devices": sorted({d.device_id for d in reported}),
        "start": (min(seen) - timedelta(seconds=1)).isoformat(),
        "end": (max(seen) + timedelta(seconds=1)).isoformat(),
        "limit": MAX_REASONS,
    }
    try:
        page: EventPage = await ctx.ask("events", params)
    except OperatorError:
        return {}
    reasons: dict[str, str] = {}
    for event in page.events:  # newest first: the first of a device is its last word
        payload = event.payload
        if isinstance(payload, DeviceStatusPayload) and payload.reason:
            reasons.setdefault(event.device_id, payload.reason)
    return reasons


async def load(ctx: PageContext) -> Mapping[str, Any]:
    """The ``devices`` action's answer, offline devices first, then by compound and device."""
    report: DeviceReport = await ctx.ask("devices", {})
    reasons = await offline_reasons(ctx, report)
    rows = sorted(report.devices, key=lambda d: (d.status != "offline", d.compound_id, d.device_id))
    # "未登记" only where the compound has a registry to be missing from
    with_registry = {c.compound_id for c in report.compounds if c.from_registry}
    return {
        "devices": [
            {
                "compound": ctx.service.compound_name(d.compound_id),
                "device_id": d.device_id,
                "dialect": d.dialect,
                "name": d.name,
                "kind": d.kind,
                "place": d.place,
                "unregistered": not d.registered and d.compound_id in with_registry,
                "online": d.status == "online",
                "why": why_zh(d.why),
                "reason": reasons.get(d.device_id) if d.status == "offline" else None,
                "last_seen": ctx.local(d.last_seen) if d.last_seen else None,
            }
            for d in rows
        ],
        "compounds": report.compounds,
        "offline": sum(d.status == "offline" for d in rows),
        # the registry's total: registered devices of the compounds that published one
        "registered": sum(c.devices for c in report.compounds if c.from_registry),
        "unregistered": sum(c.unregistered for c in report.compounds),
        "now": utc_now(),
        **panel(ctx, rows),
    }


COMMAND_ACTION, COMMAND_STATE = command_parts("/devices")

PAGE = ConsolePage(
    name="devices",
    path="/devices",
    title="设备",
    role=Role.VIEWER,
    order=10,
    template="devices.html",
    load=load,
    actions=(COMMAND_ACTION,),
    routes=(COMMAND_STATE,),
)
