"""上级平台 (City link): the GA/T 1400 link to the city as the city service last saw it.

A page of its own rather than a panel on 总览 or 设备: the link is the district's, not any
compound's, and what it shows (the city's refusals with object ids, the upper platform's
subscriptions and their addresses) is for operators, while 总览 and 设备 are open to viewers.
Everything comes from the ``city_status`` action (audited like any): registered or not and since
when, the last keepalive, the backlog, refused and parked objects per collection, the newest
refusals with the city's reasons, and the subscriptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from district.console.page import ConsolePage, PageContext
from district.queries.city_status import CityStatus
from district.query_model import Role
from foundation.events import utc_now

CATEGORY_ZH = {"MotorVehicle": "机动车", "Face": "人脸", "APE": "采集设备"}
STATE_ZH = {"active": "订阅中", "cancelled": "已取消", "expired": "已到期"}
DETAIL_ZH = {3: "采集设备目录", 4: "采集设备状态", 12: "人脸", 13: "机动车"}


async def load(ctx: PageContext) -> Mapping[str, Any]:
    """The ``city_status`` action's answer, in the district's zone and in Chinese names."""
    status: CityStatus = await ctx.ask("city_status", {})
    return {
        "link": status,
        "categories": [
            {"zh": CATEGORY_ZH.get(c.category, c.category), "figures": c} for c in status.categories
        ],
        "refused_total": sum(c.refused for c in status.categories),
        "subscriptions": [
            {
                "view": s,
                "state_zh": STATE_ZH.get(s.state, s.state),
                "details_zh": "、".join(DETAIL_ZH.get(d, str(d)) for d in s.details),
            }
            for s in status.subscriptions
        ],
        "category_zh": CATEGORY_ZH,
        "now": utc_now(),
    }


PAGE = ConsolePage(
    name="city",
    path="/city",
    title="上级平台",
    role=Role.OPERATOR,
    order=50,
    template="city.html",
    load=load,
)
