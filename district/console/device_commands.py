"""设备指令 (device commands) on the console: the panel, the ``command`` action and the live state.

The devices page and the alarm page each add ``ConsoleAction("command", Role.VIEWER, issue)`` and
``ConsoleRoute("command", Role.VIEWER, state)`` and include ``command_panel.html`` with
``panel(ctx, devices)``. The panel shows only to whoever may command (the operator role, or a token
scoped to exactly one compound: property staff); the ``command`` service action checks that again,
with the reason, the device's compound in scope and the rate limits, and audits it. The answer is
the command's state, which htmx then follows (``GET .../command?id=``, every second) until it is
final: pending, queued, sent, acknowledged, then verified or failed / expired / refused / no answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from adapters import COMMAND_ENCODERS
from district.command_book import FINAL, BookState
from district.console.page import ConsoleAction, ConsoleRoute, PageContext, Reply, RouteView
from district.queries.commands import DISTRICT_ACTIONS, CommandStatus, CommandView
from district.queries.devices import DeviceRow
from district.query_model import Role
from foundation.commands import CommandAction

ACTION_ZH: dict[CommandAction, str] = {
    CommandAction.BARRIER_OPEN: "抬杆",
    CommandAction.BARRIER_CLOSE: "落杆",
    CommandAction.BARRIER_HOLD_OPEN: "常开",
    CommandAction.BARRIER_RELEASE: "恢复（落杆）",
    CommandAction.DOOR_OPEN: "开门",
    CommandAction.SIREN_ON: "鸣响报警",
    CommandAction.SIREN_OFF: "停止报警",
    CommandAction.BROADCAST: "播放语音",
}
"""Actions as operators name them."""

STATE_ZH: dict[BookState, str] = {
    BookState.PENDING: "待发送",
    BookState.QUEUED: "小区已受理",
    BookState.SENT: "已下发设备",
    BookState.ACKNOWLEDGED: "设备已应答，核实中",
    BookState.VERIFIED: "已执行（回读核实）",
    BookState.FAILED: "失败",
    BookState.EXPIRED: "已过期，未执行",
    BookState.REFUSED: "被拒绝",
    BookState.NO_ANSWER: "小区无应答",
}
"""Command states as operators read them."""


def may_command(ctx: PageContext) -> bool:
    """Whether the session's token may issue commands at all (the service decides each one)."""
    principal = ctx.principal
    return principal.role.allows(Role.OPERATOR) or len(principal.compounds) == 1


def panel(ctx: PageContext, devices: Iterable[DeviceRow]) -> dict[str, Any]:
    """The panel's variables: the devices in view that take commands, each with its actions."""
    rows = []
    for d in devices:
        encoder = COMMAND_ENCODERS.get(d.dialect)
        if encoder is None:
            continue
        actions = [
            (a.value, ACTION_ZH[a]) for a in CommandAction if a in encoder.actions and a in DISTRICT_ACTIONS
        ]
        if actions:
            label = f"{ctx.service.compound_name(d.compound_id)} · {d.device_id} ({d.dialect})"
            rows.append({"device_id": d.device_id, "label": label, "actions": actions})
    offered = {value for row in rows for value, _ in row["actions"]}
    return {
        "command_devices": rows if may_command(ctx) else [],
        # every action some device here takes; one a device does not take is refused by the service
        "command_actions": [(a.value, ACTION_ZH[a]) for a in CommandAction if a.value in offered],
    }


def _state(view: CommandView) -> dict[str, Any]:
    return {
        "command_id": view.command_id,
        "device_id": view.device_id,
        "action": ACTION_ZH.get(view.action, view.action.value),
        "state": view.state.value,
        "state_zh": STATE_ZH.get(view.state, view.state.value),
        "final": view.state in FINAL or view.state is BookState.NO_ANSWER,
        "detail": view.detail,
        "rule": view.rule,
    }


def command_parts(page_path: str) -> tuple[ConsoleAction, ConsoleRoute]:
    """The ``command`` action and the ``command`` state route of the page at ``page_path``.

    Both at the viewer role: who may command is the ``command`` service action's rule (the operator
    role, or a token scoped to exactly the device's compound), checked there and audited.
    """

    async def issue(ctx: PageContext, fields: Mapping[str, str]) -> Reply | str:
        """Issue the command; its state as a fragment that follows it."""
        params: dict[str, Any] = {
            "device": fields.get("device", "").strip(),
            "action": fields.get("action", ""),
            "reason": fields.get("reason", "").strip(),
        }
        if fields.get("channel", "").strip():
            params["channel"] = fields["channel"].strip()
        view: CommandView = await ctx.ask("command", params)
        message = (
            f"指令 {view.command_id} 已提交：{ACTION_ZH.get(view.action, view.action.value)} {view.device_id}"
        )
        return Reply(message, "command_state.html", {"c": _state(view), "page_path": page_path})

    async def state(view: RouteView) -> web.StreamResponse:
        """One command's state as a fragment that keeps polling until the state is final."""
        status: CommandStatus = await view.ctx.ask(
            "command_status", {"command_id": view.ctx.query.get("id", "")}
        )
        html = view.fragment("command_state.html", c=_state(status.command), page_path=page_path, message="")
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    return ConsoleAction("command", Role.VIEWER, issue), ConsoleRoute("command", Role.VIEWER, state)
