"""设备 (Devices): every device of the compounds in scope, offline first, with why and last seen."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from district.console.page import ConsolePage, PageContext
from district.queries.devices import DeviceReport
from district.query_model import Role
from foundation.events import utc_now

WHY_ZH = {
    "reported online": "设备上报在线",
    "reported offline": "设备上报离线",
    "reporting": "正常上报",
}


def why_zh(why: str) -> str:
    """The devices query's reason in Chinese ("silent for 2 h 5 min" -> "静默 2 h 5 min")."""
    if why in WHY_ZH:
        return WHY_ZH[why]
    if why.startswith("silent for "):
        return "静默 " + why.removeprefix("silent for ")
    return why


async def load(ctx: PageContext) -> Mapping[str, Any]:
    """The ``devices`` action's answer, offline devices first, then by compound and device."""
    report: DeviceReport = await ctx.ask("devices", {})
    rows = sorted(report.devices, key=lambda d: (d.status != "offline", d.compound_id, d.device_id))
    return {
        "devices": [
            {
                "compound": ctx.service.compound_name(d.compound_id),
                "device_id": d.device_id,
                "dialect": d.dialect,
                "online": d.status == "online",
                "why": why_zh(d.why),
                "last_seen": ctx.local(d.last_seen),
            }
            for d in rows
        ],
        "compounds": report.compounds,
        "offline": sum(d.status == "offline" for d in rows),
        "now": utc_now(),
    }


PAGE = ConsolePage(
    name="devices",
    path="/devices",
    title="设备",
    role=Role.VIEWER,
    order=10,
    template="devices.html",
    load=load,
)
