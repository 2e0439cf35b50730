"""管理 (Admin): the audit log, tokens and watch lists (admin role only).

Three tabs (``?tab=audit|tokens|lists``), each loading only what it shows:

* 审计日志: the ``audit`` action (so reading the log is itself audited), newest first, 50 a page,
  filtered by actor, action, outcome and time; ``?verify=1`` walks the hash chain (``audit_verify``)
  and shows whether it is intact. The walk reads every entry, so it runs when asked, not on
  every page load.
* 令牌: the district's tokens; issuing one (its secret shown once, on the answer page, never stored
  or logged) and revoking one (its console sessions end at their next request).
* 布控名单: the watch lists with their first entries; enrolling a face from an uploaded photo (the
  district keeps the embedding, never the photo), listing a plate, taking an entry off, publishing
  a new version (retained on the district broker, as ``watchlist publish`` does).

Every action is a ``district.queries.admin`` spec run through the operator service (admin role,
a reason of at least 4 characters, one audit entry each); the console checks the session's role
and CSRF token before that.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from district.console.page import ConsoleAction, ConsolePage, PageContext
from district.queries import admin as actions
from district.queries.admin import AdminState, ChainStatus, IssuedToken, Published
from district.queries.audit import SPEC as AUDIT_SPEC
from district.query_model import Role
from foundation.errors import (
    ConflictError,
    ForbiddenError,
    InvalidQueryError,
    NotFoundError,
    OperatorError,
    StoreUnavailableError,
)
from foundation.events import utc_now

PAGE_SIZE = 50
FORM_TIME = "%Y-%m-%dT%H:%M"  # what <input type="datetime-local"> sends
TABS = {"audit": "审计日志", "tokens": "令牌", "lists": "布控名单"}
ROLE_ZH: dict[str, str] = {Role.VIEWER: "查看员", Role.OPERATOR: "值班员", Role.ADMIN: "管理员"}
KIND_ZH = {"face": "人脸", "plate": "车牌"}
OUTCOME_ZH = {"ok": "成功"}


def refusal_zh(exc: OperatorError) -> OperatorError:
    """The service's refusal in words an administrator reads (its own words kept in brackets)."""
    if exc.field == "reason":
        text = "必须填写事由（至少 4 个字），操作已拒绝并记入审计日志。"
    elif exc.code == "face_count":
        text = "照片中必须恰好有一张人脸：请上传只有该人员一人的正面照片。"
    elif exc.code == "not_a_picture":
        text = "无法读取该照片：请上传 JPEG 或 PNG 图片。"
    elif isinstance(exc, ForbiddenError):
        text = "您的权限不足，操作已拒绝并记入审计日志。"
    elif isinstance(exc, NotFoundError):
        text = "没有找到要操作的令牌、名单或条目。"
    elif isinstance(exc, StoreUnavailableError):
        text = "服务暂时无法应答（如区级消息服务器未连通），请稍后重试。"
    elif exc.field == "name":
        text = "令牌名称有误或已被使用，请换一个名称。"
    elif exc.field == "plate":
        text = "车牌格式不对（如 赣A12345）。"
    elif isinstance(exc, InvalidQueryError | ConflictError):
        text = f"填写的内容有误（{exc.field or '请求'}）。"
    else:
        text = "操作未能完成。"
    refused = type(exc)(f"{text}（{exc.message}）", field=exc.field)
    refused.code = exc.code
    return refused


async def _ask(ctx: PageContext, spec: Any, params: Mapping[str, Any]) -> Any:
    try:
        return await ctx.ask(spec.name, params, spec=spec)
    except OperatorError as exc:  # already audited by the service
        raise refusal_zh(exc) from None


def _form_time(ctx: PageContext, name: str) -> datetime | None:
    text = ctx.query.get(name, "").strip()
    if not text:
        return None
    try:
        return datetime.strptime(text[:16], FORM_TIME).replace(tzinfo=ctx.zone)
    except ValueError:
        raise InvalidQueryError(f"时间 {text[:20]!r} 格式不对，应为 年-月-日T时:分", field=name) from None


async def _audit_tab(ctx: PageContext) -> dict[str, Any]:
    q = ctx.query
    form = {k: q.get(k, "").strip()[:64] for k in ("actor", "action", "outcome", "start", "end")}
    variables: dict[str, Any] = {"form": form, "records": [], "next": None, "chain": None, "error": None}
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    try:
        for name in ("actor", "action", "outcome"):
            if form[name]:
                params[name] = form[name]
        for name in ("start", "end"):
            if (moment := _form_time(ctx, name)) is not None:
                params[name] = moment.isoformat()
        if q.get("before", "").isdigit():
            params["before_seq"] = int(q["before"])
        records = await _ask(ctx, AUDIT_SPEC, params)
        if q.get("verify") == "1":
            chain: ChainStatus = await _ask(ctx, actions.VERIFY, {})
            variables["chain"] = {"text": chain_text(chain), "ok": chain.broken_at is None}
    except OperatorError as exc:
        variables["error"] = exc.message
        return variables
    variables["records"] = [
        {
            "seq": r.seq,
            "at": ctx.local(datetime.fromisoformat(r.at)).strftime("%Y-%m-%d %H:%M:%S"),
            "actor": r.entry.actor or "-",
            "role": r.entry.role or "",
            "channel": r.entry.channel,
            "client": r.entry.client or "",
            "action": r.entry.action,
            "outcome": OUTCOME_ZH.get(r.entry.outcome, r.entry.outcome),
            "ok": r.entry.outcome == "ok",
            "status": r.entry.status,
            "rows": "" if r.entry.rows is None else r.entry.rows,
            "reason": r.entry.reason or "",
            "detail": r.entry.detail or "",
        }
        for r in records
    ]
    if len(records) == PAGE_SIZE:
        kept = {k: v for k, v in form.items() if v}
        variables["next"] = urlencode({"tab": "audit", **kept, "before": records[-1].seq})
    return variables


async def load(ctx: PageContext) -> Mapping[str, Any]:
    """The chosen tab's data (only that tab's actions are asked, each audited)."""
    tab = ctx.query.get("tab", "audit")
    if tab not in TABS:
        raise InvalidQueryError(f"tab {tab[:20]!r}: one of {', '.join(TABS)}", field="tab")
    variables: dict[str, Any] = {
        "tab": tab,
        "tabs": TABS,
        "roles": ROLE_ZH,
        "kinds": KIND_ZH,
        "compounds": sorted(
            (c, ctx.service.compound_name(c)) for c in ctx.principal.compounds or ctx.service.registry
        ),
        "now": utc_now(),
    }
    if tab == "audit":
        return variables | await _audit_tab(ctx)
    state: AdminState = await _ask(ctx, actions.STATE, {})

    def local(text: str | None) -> str:
        return ctx.local(datetime.fromisoformat(text)).strftime("%Y-%m-%d %H:%M") if text else ""

    return variables | {
        "tokens": [
            {
                "name": t.name,
                "role": ROLE_ZH.get(t.role, t.role),
                "scope": "、".join(ctx.service.compound_name(c) for c in t.compounds) or "全区",
                "created": local(t.created_at),
                "created_by": t.created_by,
                "revoked": local(t.revoked_at),
                "mine": t.name == ctx.principal.name,
            }
            for t in state.tokens
        ],
        "lists": [
            {
                "id": w.list_id,
                "kind": w.kind,
                "kind_zh": KIND_ZH.get(w.kind, w.kind),
                "version": w.version,
                "size": w.size,
                "published": local(w.published_at) or "从未发布",
                "entries": w.entries,
            }
            for w in state.lists
        ],
        "max_entries": actions.MAX_ENTRIES,
    }


# ---- actions ----------------------------------------------------------------------------------


async def issue_token(ctx: PageContext, form: Mapping[str, str]) -> str:
    """Issue a token; its secret is in this answer only."""
    # one compound or the whole scope (a token over several chosen compounds: ``compound-gateway token``)
    compounds = [form["compound"]] if form.get("compound") else []
    params = {
        "name": form.get("name", ""),
        "role": form.get("role", ""),
        "compounds": compounds,
        "reason": form.get("reason", ""),
    }
    issued: IssuedToken = await _ask(ctx, actions.TOKEN_CREATE, params)
    return (
        f"已签发令牌「{issued.name}」（{ROLE_ZH[issued.role]}）。令牌只显示这一次、不会保存，"
        f"请立即复制交给使用人：{issued.secret}"
    )


async def revoke_token(ctx: PageContext, form: Mapping[str, str]) -> str:
    """Revoke a token (its sessions end at their next request)."""
    params = {"name": form.get("name", ""), "reason": form.get("reason", "")}
    await _ask(ctx, actions.TOKEN_REVOKE, params)
    return f"令牌「{params['name']}」已吊销，使用它的控制台会话将在下一次请求时结束。"


async def enroll(ctx: PageContext, form: Mapping[str, str]) -> str:
    """Enrol the one face of the uploaded photo (the photo itself is not kept)."""
    upload = ctx.files.get("photo")
    if upload is None or not upload[1]:
        raise InvalidQueryError("请选择一张照片上传", field="photo")
    filename, data = upload
    list_id, subject_id = form.get("list_id", "").strip(), form.get("subject_id", "").strip()
    params = {
        "list_id": list_id,
        "subject_id": subject_id,
        "label": form.get("label", "").strip() or None,
        "photo": data,
        "photo_name": filename[-200:] or "photo",
        "reason": form.get("reason", ""),
    }
    await _ask(ctx, actions.ENROLL, params)
    return f"已将人员「{subject_id}」的人脸加入名单 {list_id}（只保存特征值，不保存照片）；发布后生效。"


async def add_plate(ctx: PageContext, form: Mapping[str, str]) -> str:
    """List a plate."""
    params = {
        "list_id": form.get("list_id", "").strip(),
        "plate": form.get("plate", "").strip(),
        "label": form.get("label", "").strip() or None,
        "reason": form.get("reason", ""),
    }
    await _ask(ctx, actions.PLATE, params)
    return f"已将车牌 {params['plate']} 加入名单 {params['list_id']}；发布后生效。"


async def remove(ctx: PageContext, form: Mapping[str, str]) -> str:
    """Take a subject or plate off a list."""
    params = {
        "list_id": form.get("list_id", ""),
        "ref": form.get("ref", ""),
        "reason": form.get("reason", ""),
    }
    await _ask(ctx, actions.REMOVE, params)
    return f"已从名单 {params['list_id']} 移除「{params['ref']}」；发布后生效。"


async def publish(ctx: PageContext, form: Mapping[str, str]) -> str:
    """Publish the list's next version to every compound."""
    params = {"list_id": form.get("list_id", ""), "reason": form.get("reason", "")}
    published: Published = await _ask(ctx, actions.PUBLISH, params)
    return (
        f"名单 {published.list_id} 已发布第 {published.version} 版（{published.entries} 条），"
        "各小区网关连接区级平台后即生效。"
    )


PAGE = ConsolePage(
    name="admin",
    path="/admin",
    title="管理",
    role=Role.ADMIN,
    order=90,
    template="admin.html",
    load=load,
    actions=(
        ConsoleAction("issue_token", Role.ADMIN, issue_token),
        ConsoleAction("revoke_token", Role.ADMIN, revoke_token),
        ConsoleAction("enroll", Role.ADMIN, enroll, upload_limit=actions.MAX_PHOTO + 64 * 1024),
        ConsoleAction("add_plate", Role.ADMIN, add_plate),
        ConsoleAction("remove", Role.ADMIN, remove),
        ConsoleAction("publish", Role.ADMIN, publish),
    ),
)


def chain_text(chain: ChainStatus) -> str:
    """The hash chain's state in words."""
    if chain.broken_at is None:
        return f"哈希链完整：已校验 {chain.checked} 条"
    return f"哈希链在第 {chain.broken_at} 条处断裂（之前 {chain.checked} 条完好）"
