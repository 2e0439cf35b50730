"""告警 (Alarms): the live alarm queue operators leave open, the lifecycle actions, and one alarm's page.

* The queue: open alarms (new, acknowledged) first, then the rest, newest first within each;
  filters by state, kind and compound (the ``alarms`` action: scope, role and audit apply).
* Live: ``GET /console/alarms/stream`` is a server-sent event stream per session. The process's
  ``AlarmFeed`` (started with the API, ``serve_api``) hands each new alarm in the session's scope
  to the connection's bounded queue; the stream sends it as an ``alarm`` event carrying the row
  rendered by the console's (autoescaping) jinja2 environment, which htmx's SSE extension inserts
  at the top of the queue. A ``missed`` event (the browser fell behind and the queue dropped
  alarms) makes the page reload the queue. A comment every ``HEARTBEAT_S`` keeps proxies from
  closing the stream; at each heartbeat the session is checked again, and an ended or revoked
  session ends the stream. Every alarm of the feed is critical: the page plays a sound and shows
  a browser notification for each (``static/alarms.js``).
* Actions: acknowledge, confirm, false alarm, resolve, each with a note (the ``alarm_action``
  action, operator role: viewers get no buttons and the server refuses their POST anyway).
* ``GET /console/alarms/alarm?id=...``: the event, its history, its evidence (the snapshot with the
  thrown object's trajectory drawn over it, the clip), media only after a reason is given
  (``evidence_media``: operator role, audited), and asking the compound for the clip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog
from aiohttp import web

from district.alarm_feed import AlarmFeed
from district.console.device_commands import command_parts, panel
from district.console.evidence_file import evidence_file
from district.console.page import ConsoleAction, ConsolePage, ConsoleRoute, PageContext, RouteView
from district.evidence_store import OPEN_STATES, RequestState
from district.operator_output import event_summary
from district.queries.alarms import AlarmPage, AlarmRow
from district.queries.evidence import EvidenceStatus
from district.query_model import AlarmState, Role
from foundation.errors import InvalidQueryError, NotFoundError, OperatorError
from foundation.events import Event, EventKind, ThrownObjectPayload, utc_now

log = structlog.get_logger(__name__)

FEED: web.AppKey[AlarmFeed] = web.AppKey("alarm_feed", AlarmFeed)
"""The API process's alarm feed (``serve_api`` sets it; without it the stream answers 503)."""

HEARTBEAT_S = 15.0
QUEUE_DAYS = 30  # the queue shows the alarms of the last month
QUEUE_LIMIT = 200

KIND_ZH = {
    EventKind.FACE_ACCESS: "人脸门禁",
    EventKind.VEHICLE_PASS: "车辆通行",
    EventKind.THROWN_OBJECT: "高空抛物",
    EventKind.EBIKE_SHED: "电动车棚火警",
    EventKind.DEVICE_STATUS: "设备状态",
    EventKind.WATCHLIST_HIT: "重点人员布控",
    EventKind.VEHICLE_WATCH_HIT: "重点车辆布控",
    EventKind.RULE_FIRED: "本地联动",
}
STATE_ZH = {
    AlarmState.NEW: "新告警",
    AlarmState.ACKNOWLEDGED: "已接警",
    AlarmState.CONFIRMED: "已确认",
    AlarmState.FALSE_ALARM: "误报",
    AlarmState.RESOLVED: "已处置",
}
REQUEST_ZH = {
    RequestState.PENDING: "待小区应答",
    RequestState.WAITING: "小区取证中",
    RequestState.SENDING: "传输中",
    RequestState.COMPLETE: "已到达",
    RequestState.REFUSED: "小区拒绝",
    RequestState.NOT_FOUND: "小区无此证据",
    RequestState.FAILED: "失败",
    RequestState.EXPIRED: "已过期",
}
"""Evidence request states as operators read them (the English value stays in the row's title)."""
OPEN = frozenset({AlarmState.NEW, AlarmState.ACKNOWLEDGED})
# the buttons of each state: (action name, label); the service checks the transition again (409)
STEPS: dict[AlarmState, tuple[tuple[str, str], ...]] = {
    AlarmState.NEW: (("acknowledge", "接警"),),
    AlarmState.ACKNOWLEDGED: (("confirm", "确认属实"), ("false_alarm", "误报")),
    AlarmState.CONFIRMED: (("resolve", "处置完毕"),),
    AlarmState.FALSE_ALARM: (("resolve", "处置完毕"),),
    AlarmState.RESOLVED: (),
}
ACTION_STATE = {
    "acknowledge": AlarmState.ACKNOWLEDGED,
    "confirm": AlarmState.CONFIRMED,
    "false_alarm": AlarmState.FALSE_ALARM,
    "resolve": AlarmState.RESOLVED,
}


def row(event: Event, state: AlarmState, ctx: PageContext) -> dict[str, Any]:
    """One queue row's variables (the page and the SSE fragment render the same template)."""
    return {
        "event_id": event.event_id,
        "at": event.occurred_at,
        "at_iso": event.occurred_at.isoformat(),
        "compound": ctx.service.compound_name(event.compound_id),
        "device": event.device_id,
        "kind": KIND_ZH.get(event.kind, event.kind.value),
        "state": state.value,
        "state_zh": STATE_ZH[state],
        "open": state in OPEN,
        "what": event_summary(event),
        "steps": STEPS[state] if ctx.principal.role.allows(Role.OPERATOR) else (),
    }


def _choice(ctx: PageContext, name: str, allowed: set[str]) -> str:
    value = ctx.query.get(name, "")
    if value and value not in allowed:
        raise InvalidQueryError(f"{name} {value!r}: one of {', '.join(sorted(allowed))}", field=name)
    return value


def _month_start(ctx: PageContext, now: datetime) -> datetime:
    return ctx.local(now).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def confirmed_this_month(ctx: PageContext) -> int:
    """Alarms of this local month confirmed (the ``alarm_counts`` action, by month)."""
    start = _month_start(ctx, utc_now())
    # the whole local month: whole hours, which the roll-ups answer
    end = (start + timedelta(days=32)).replace(day=1)
    counts = await ctx.ask(
        "alarm_counts", {"start": start.isoformat(), "end": end.isoformat(), "interval": "month"}
    )
    return sum(c.confirmed for c in counts)


async def load(ctx: PageContext) -> Mapping[str, Any]:
    """The queue (open first), the filters and the month's confirmed count."""
    state = _choice(ctx, "state", {s.value for s in AlarmState})
    kind = _choice(ctx, "kind", {k.value for k in KIND_ZH})
    compounds = {c: ctx.service.compound_name(c) for c in ctx.principal.compounds or ctx.service.registry}
    compound = _choice(ctx, "compound", set(compounds))
    now = utc_now()
    params: dict[str, Any] = {
        "start": (now - timedelta(days=QUEUE_DAYS)).isoformat(),
        "end": (now + timedelta(hours=1)).isoformat(),
        "limit": QUEUE_LIMIT,
    }
    if state:
        params["states"] = [state]
    if kind:
        params["kinds"] = [kind]
    if compound:
        params["compounds"] = [compound]
    page: AlarmPage = await ctx.ask("alarms", params)
    ordered = sorted(page.alarms, key=lambda a: a.state not in OPEN)  # stable: newest first within each
    return {
        "rows": [row(a.event, a.state, ctx) for a in ordered],
        "open_count": sum(a.state in OPEN for a in page.alarms),
        "confirmed": await confirmed_this_month(ctx),
        "filters": {"state": state, "kind": kind, "compound": compound},
        "states": STATE_ZH,
        "kinds": KIND_ZH,
        "compounds": compounds,
        "more": page.next_cursor is not None,
        "now": now,
    }


def _action(name: str) -> ConsoleAction:
    to = ACTION_STATE[name]

    async def run(ctx: PageContext, form: Mapping[str, str]) -> str:
        event_id = form.get("event_id", "")
        await ctx.ask("alarm_action", {"event_id": event_id, "to": to.value, "note": form.get("note", "")})
        return f"告警 {event_id[:12]}… 已改为「{STATE_ZH[to]}」"

    return ConsoleAction(name=name, role=Role.OPERATOR, run=run)


async def request_clip(ctx: PageContext, form: Mapping[str, str]) -> str:
    """Ask the alarm's compound for its clip (``evidence_request``, with the operator's reason)."""
    params = {"event_id": form.get("event_id", ""), "reason": form.get("reason", ""), "roles": ["clip"]}
    answer = await ctx.ask("evidence_request", params)
    return f"已向小区调取录像（请求 {answer.request_id}），到达后刷新本页查看"


# ---- the live stream --------------------------------------------------------------------------


def _sse(event: str, data: str) -> bytes:
    # every line of the payload its own data: line (the fragment is HTML over several lines)
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {event}\n{lines}\n".encode()


async def stream(view: RouteView) -> web.StreamResponse:
    """The session's server-sent events: ``alarm`` (a row), ``missed`` (a count), heartbeats."""
    feed = view.request.app.get(FEED)
    if feed is None:
        return web.Response(status=503, text="no alarm feed in this process")
    ctx = view.ctx
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a buffering proxy (nginx) would hold the events back
        }
    )
    await response.prepare(view.request)
    compounds = frozenset(ctx.principal.compounds) if ctx.principal.compounds else None
    log.info("console_alarm_stream_open", actor=ctx.principal.name)
    try:
        ended = await _send(view, response, feed, compounds)
    except ConnectionResetError:  # the browser left (closed the tab, navigated away)
        ended = "browser left"
    log.info("console_alarm_stream_end", actor=ctx.principal.name, reason=ended)
    return response


async def _send(
    view: RouteView, response: web.StreamResponse, feed: AlarmFeed, compounds: frozenset[str] | None
) -> str:
    """Send until the session ends (then say so to the page); why it stopped."""
    ctx = view.ctx
    with feed.listen(compounds) as listener:
        await response.write(b": connected\n\n")
        while True:
            try:
                # the queue's get, not an async generator over it: a timeout cancels the get
                # harmlessly, where it would close a generator for good
                async with asyncio.timeout(HEARTBEAT_S):
                    event = await listener.queue.get()
            except TimeoutError:
                if not await view.alive():
                    break
                await response.write(b": heartbeat\n\n")
                continue
            if not await view.alive():
                break
            if missed := listener.take_missed():
                await response.write(_sse("missed", str(missed)))
            fragment = view.fragment("alarm_row.html", r=row(event, AlarmState.NEW, ctx))
            await response.write(_sse("alarm", fragment))
    await response.write(b"event: ended\ndata: \n\n")
    return "session ended"


# ---- one alarm --------------------------------------------------------------------------------


async def _one(ctx: PageContext, event_id: str) -> AlarmRow:
    # the queue's link carries the alarm's time: the alarms of the minutes around it are read
    try:
        at = datetime.fromisoformat(ctx.query.get("at", ""))
    except ValueError:
        raise InvalidQueryError("the alarm's link lacks its time (at)", field="at") from None
    if at.tzinfo is None:
        raise InvalidQueryError("the alarm's time (at) needs its offset", field="at")
    page: AlarmPage = await ctx.ask(
        "alarms",
        {
            "start": (at - timedelta(minutes=1)).isoformat(),
            "end": (at + timedelta(minutes=1)).isoformat(),
            "limit": 1000,
        },
    )
    for alarm in page.alarms:
        if alarm.event.event_id == event_id:
            return alarm
    raise NotFoundError(f"范围内没有告警 {event_id}", field="id")


def _trajectory(event: Event) -> str:
    payload = event.payload
    if not isinstance(payload, ThrownObjectPayload):
        return ""
    return " ".join(f"{p.x * 1000:.1f},{p.y * 1000:.1f}" for p in payload.trajectory)


async def detail(view: RouteView) -> web.StreamResponse:
    """One alarm: the event, its history, its evidence (media only with a reason)."""
    ctx = view.ctx
    event_id = ctx.query.get("id", "")
    reason = ctx.query.get("reason", "").strip()
    alarm = await _one(ctx, event_id)
    evidence: EvidenceStatus | None = None
    evidence_error: str | None = None
    try:
        evidence = await ctx.ask("evidence", {"event_id": event_id})
    except (
        OperatorError
    ) as exc:  # no evidence store here, or the compound unknown to it: the alarm still shows
        evidence_error = exc.message
    held = {f.role: f for f in evidence.held if f.verified} if evidence else {}
    operator = ctx.principal.role.allows(Role.OPERATOR)
    pending = any(r.state in OPEN_STATES for r in evidence.requests) if evidence else False
    # the alarm's compound's devices that take commands (a siren to sound, a gate to open)
    try:
        commands = panel(ctx, (await ctx.ask("devices", {"compounds": [alarm.event.compound_id]})).devices)
    except OperatorError:  # the alarm still shows, without the command panel
        commands = panel(ctx, ())
    return view.page(
        "alarm.html",
        **commands,
        a=row(alarm.event, alarm.state, ctx),
        event=alarm.event,
        history=[(STATE_ZH[h.state], h.actor, h.at, h.note) for h in alarm.history],
        evidence=evidence,
        evidence_error=evidence_error,
        snapshot=held.get("snapshot"),
        clip=held.get("clip"),
        trajectory=_trajectory(alarm.event),
        reason=reason if len(reason) >= 4 and operator else "",
        operator=operator,
        can_request=operator and "clip" not in held and not pending,
        pending=pending,
        request_zh={state.value: zh for state, zh in REQUEST_ZH.items()},
    )


COMMAND_ACTION, COMMAND_STATE = command_parts("/alarms")

PAGE = ConsolePage(
    name="alarms",
    path="/alarms",
    title="告警",
    role=Role.VIEWER,
    order=5,
    template="alarms.html",
    load=load,
    actions=(
        *(_action(name) for name in ACTION_STATE),
        ConsoleAction(name="request_clip", role=Role.OPERATOR, run=request_clip),
        COMMAND_ACTION,
    ),
    routes=(
        ConsoleRoute(name="stream", role=Role.VIEWER, handle=stream),
        ConsoleRoute(name="alarm", role=Role.VIEWER, handle=detail),
        ConsoleRoute(name="media", role=Role.OPERATOR, handle=evidence_file),
        COMMAND_STATE,
    ),
)
