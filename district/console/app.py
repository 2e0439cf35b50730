"""The console's routes inside the operator API's aiohttp application.

``mount_console`` adds ``/console/...`` (login, logout, one route per registered page and action,
static files) and ``/`` redirecting there. Every page and action resolves the session first
(expired, idle or revoked-token sessions end here, audited), checks the page's least role
server-side (403, audited, whatever the navigation showed), and every POST other than the login
must carry the session's CSRF token (403, audited, without it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from aiohttp import BodyPartReader, web
from jinja2 import Environment, PackageLoader, StrictUndefined

from district.config import OperatorApiConfig
from district.console.page import ConsoleAction, ConsolePage, ConsoleRoute, PageContext, Reply, RouteView
from district.console.registry import PAGES
from district.console.sessions import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    LoginLimiter,
    csrf_matches,
    csrf_token,
    new_session_id,
    open_token,
    seal_token,
    session_hash,
)
from district.operations import AuditEntry, Principal
from district.operator_service import Caller, OperatorService
from district.queries.context import authorise_role
from foundation.errors import ForbiddenError, InvalidQueryError, OperatorError
from foundation.health import Health

log = structlog.get_logger(__name__)

PREFIX = "/console"
STATIC = Path(__file__).parent / "static"
MAX_SESSIONS = 10_000
TOKEN_MAX = 200
MAX_PARTS = 20  # fields of one upload form
# htmx's indicator styles are inline; the policy forbids inline style and script (htmx-config turns them off)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
ROLE_ZH = {"viewer": "查看员", "operator": "值班员", "admin": "管理员"}


@dataclass(frozen=True)
class Session:
    """A signed-in browser: the cookie's id, the token it opened, who that is."""

    session_id: str
    token: str
    principal: Principal


def _same_origin(request: web.Request) -> bool:
    # browsers send Origin with every POST; a request without one (a script, curl) is not a browser's CSRF
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


def _redirect(location: str, status: int = 303) -> web.Response:
    return web.Response(status=status, headers={"Location": location, "Cache-Control": "no-store"})


async def _no_icon(request: web.Request) -> web.Response:
    # browsers ask for it whatever the page says; an empty answer rather than a logged 404
    return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})


def _local_time(value: datetime, zone: Any) -> str:
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


class Console:
    """The console's handlers over one ``OperatorService``."""

    def __init__(self, service: OperatorService, api: OperatorApiConfig) -> None:
        self._service = service
        self._ops = service.operations
        self._lifetime = timedelta(hours=api.console_session_hours)
        self._idle = timedelta(minutes=api.console_idle_minutes)
        self.limiter = LoginLimiter(api.console_login_attempts)
        self.outcomes: Counter[tuple[str, str]] = Counter()
        """Console entries audited (logins, logouts, refusals, ended sessions) by (action, outcome)."""
        self._env = Environment(
            loader=PackageLoader("district.console", "templates"),
            autoescape=True,  # everything from devices and events is text, never markup
            undefined=StrictUndefined,
            auto_reload=False,
        )
        self._env.filters["localtime"] = lambda value: _local_time(value, service.zone)
        self._env.globals |= {"role_zh": ROLE_ZH, "zone": str(service.zone), "csrf_field": CSRF_FIELD}
        # compiled once here, at start, so no request reads a template file on the event loop
        self._templates = {
            name: self._env.get_template(name) for name in self._env.list_templates(extensions=["html"])
        }

    # ---- rendering ------------------------------------------------------------------------

    def render(self, template: str, status: int = 200, **variables: Any) -> web.Response:
        """A page as HTML, never cached, under the console's content security policy."""
        body = self._templates[template].render(**variables)
        response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
        response.headers.update(
            {
                "Cache-Control": "no-store",
                "Content-Security-Policy": CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
            }
        )
        return response

    def _frame(self, session: Session, current: str | None) -> dict[str, Any]:
        navigation = sorted(
            (p for p in PAGES.values() if session.principal.role.allows(p.role)), key=lambda p: p.order
        )
        return {
            "nav": navigation,
            "current": current,
            "principal": session.principal,
            "csrf": csrf_token(session.session_id),
            "prefix": PREFIX,
        }

    # ---- audit ----------------------------------------------------------------------------

    async def audit(
        self,
        request: web.Request,
        action: str,
        principal: Principal | None,
        *,
        status: int = 200,
        outcome: str = "ok",
        detail: str | None = None,
        actor: str | None = None,
    ) -> None:
        """Append one console entry (channel ``console``) to the audit log."""
        await self._ops.audit(
            AuditEntry(
                actor=principal.name if principal else actor,
                role=principal.role.value if principal else None,
                channel="console",
                client=request.remote,
                action=action,
                filters={"path": request.path[:200]},
                outcome=outcome,
                status=status,
                detail=detail,
            )
        )
        self.outcomes[(action, outcome)] += 1
        log.info("console_request", action=action, outcome=outcome, status=status)

    # ---- sessions -------------------------------------------------------------------------

    async def session(self, request: web.Request) -> Session | None:
        """The request's live session, or None; a session that has ended is deleted and audited."""
        session_id = request.cookies.get(COOKIE)
        if not session_id or len(session_id) > 100:
            return None
        found = await self._ops.touch_session(session_hash(session_id), self._idle)
        if found.state == "unknown":
            return None
        token = open_token(session_id, found.sealed_token) if found.state == "live" else None
        principal = await self._ops.principal(token) if token else None
        if principal is None:
            ended = found.state if found.state != "live" else "revoked"
            if found.state == "live":  # revoked between the two reads, or an unopenable row
                await self._ops.end_session(session_hash(session_id))
            await self.audit(
                request,
                "console.session_end",
                None,
                status=401,
                outcome=ended,
                actor=found.token_name,
                detail=f"the session ended: {ended}",
            )
            return None
        return Session(session_id, token or "", principal)

    def _to_login(self, request: web.Request) -> web.Response:
        # htmx follows HX-Redirect; a plain navigation follows the 303
        if request.headers.get("HX-Request"):
            response = web.Response(status=401, headers={"HX-Redirect": f"{PREFIX}/login"})
        else:
            response = _redirect(f"{PREFIX}/login")
        response.del_cookie(COOKIE, path=PREFIX)
        return response

    async def _csrf_ok(self, request: web.Request, session: Session, form: Mapping[str, Any]) -> bool:
        given = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
        if csrf_matches(session.session_id, given if isinstance(given, str) else None):
            return True
        await self.audit(
            request,
            "console.csrf",
            session.principal,
            status=403,
            outcome="forbidden",
            detail="a state-changing request without the session's CSRF token",
        )
        return False

    # ---- handlers -------------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.Response:
        """``/`` and ``/console``: to the console's start."""
        return _redirect(f"{PREFIX}/", 302)

    async def start(self, request: web.Request) -> web.Response:
        """``/console/``: the first page the role may open, or the login."""
        session = await self.session(request)
        if session is None:
            return self._to_login(request)
        frame = self._frame(session, None)
        if not frame["nav"]:  # not to the login page: it would send a live session straight back here
            return self.render("error.html", 403, message="您的角色没有可打开的页面", **frame)
        return _redirect(PREFIX + frame["nav"][0].path, 302)

    async def login_form(self, request: web.Request) -> web.Response:
        """The login page."""
        if await self.session(request) is not None:
            return _redirect(f"{PREFIX}/", 302)
        return self.render("login.html", prefix=PREFIX, error=None)

    async def login(self, request: web.Request) -> web.Response:
        """Exchange a token for a session (rate-limited per client address, audited either way)."""
        client = request.remote or "unknown"
        if not _same_origin(request):
            # no session yet, so no CSRF token: a login posted from another site is refused by its Origin
            await self.audit(
                request,
                "console.csrf",
                None,
                status=403,
                outcome="forbidden",
                detail="a login from another origin",
            )
            return self.render("login.html", 403, prefix=PREFIX, error="请从控制台登录页登录")
        if self.limiter.blocked(client):
            await self.audit(
                request,
                "console.login",
                None,
                status=429,
                outcome="rate_limited",
                detail="too many failed logins",
            )
            return self.render("login.html", 429, prefix=PREFIX, error="登录失败次数过多，请 15 分钟后再试")
        form = await request.post()
        token = form.get("token")
        token = token.strip() if isinstance(token, str) else ""
        # checked exactly as the API checks a bearer token
        principal = await self._ops.principal(token) if 0 < len(token) <= TOKEN_MAX else None
        session_id = new_session_id()
        if principal is None or not await self._ops.open_session(
            session_hash(session_id),
            token,
            seal_token(session_id, token),
            self._lifetime,
            max_sessions=MAX_SESSIONS,
        ):
            self.limiter.failed(client)
            await self.audit(
                request,
                "console.login",
                None,
                status=401,
                outcome="unauthenticated",
                detail="unknown or revoked token",
            )
            return self.render("login.html", 401, prefix=PREFIX, error="令牌无效或已吊销")
        await self.audit(request, "console.login", principal)
        response = _redirect(f"{PREFIX}/")
        response.set_cookie(
            COOKIE,
            session_id,
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            max_age=int(self._lifetime.total_seconds()),
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """End the session (CSRF-checked, audited)."""
        session = await self.session(request)
        if session is None:
            return self._to_login(request)
        if not await self._csrf_ok(request, session, await request.post()):
            return self.render(
                "error.html", 403, message="请求缺少安全令牌（CSRF），已拒绝", **self._frame(session, None)
            )
        await self._ops.end_session(session_hash(session.session_id))
        await self.audit(request, "console.logout", session.principal)
        return self._to_login(request)

    def page_handler(self, page: ConsolePage) -> Callable[[web.Request], Awaitable[web.Response]]:
        """The GET handler of one page."""

        async def handle(request: web.Request) -> web.Response:
            session = await self.session(request)
            if session is None:
                return self._to_login(request)
            frame = self._frame(session, page.name)
            try:
                authorise_role(session.principal, page.role, f"the {page.name} page")
                variables = await page.load(self._context(request, session))
            except OperatorError as exc:
                if isinstance(exc, ForbiddenError):
                    await self.audit(
                        request,
                        f"console.{page.name}",
                        session.principal,
                        status=403,
                        outcome=exc.code,
                        detail=exc.message,
                    )
                return self.render("error.html", exc.status, message=exc.message, **frame)
            return self.render(page.template, page=page, **frame, **variables)

        return handle

    def action_handler(
        self, page: ConsolePage, action: ConsoleAction
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """The POST handler of one page action (CSRF and role checked first)."""

        async def handle(request: web.Request) -> web.Response:
            session = await self.session(request)
            if session is None:
                return self._to_login(request)
            frame = self._frame(session, page.name)
            try:
                form, files = await _read_form(request, action.upload_limit)
            except OperatorError as exc:
                return self.render("error.html", exc.status, message=exc.message, **frame)
            if not await self._csrf_ok(request, session, form):
                return self.render("error.html", 403, message="请求缺少安全令牌（CSRF），已拒绝", **frame)
            what = f"console.{page.name}.{action.name}"
            try:
                authorise_role(session.principal, page.role, f"the {page.name} page")
                authorise_role(session.principal, action.role, what)
                fields = {k: v for k, v in form.items() if k != CSRF_FIELD}
                message = await action.run(self._context(request, session, files), fields)
            except OperatorError as exc:
                if isinstance(exc, ForbiddenError):
                    await self.audit(
                        request, what, session.principal, status=403, outcome=exc.code, detail=exc.message
                    )
                return self.render("error.html", exc.status, message=exc.message, **frame)
            if isinstance(message, Reply):
                return self.render(message.template, message=message.message, **message.variables, **frame)
            return self.render("message.html", message=message, **frame)

        return handle

    def route_handler(
        self, page: ConsolePage, route: ConsoleRoute
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The GET handler of one further route of a page (role checked first, as for the page)."""

        async def handle(request: web.Request) -> web.StreamResponse:
            session = await self.session(request)
            if session is None:
                return self._to_login(request)
            frame = self._frame(session, page.name)
            what = f"console.{page.name}.{route.name}"

            def whole(template: str, status: int = 200, **variables: Any) -> web.Response:
                return self.render(template, status, page=page, **frame, **variables)

            def fragment(template: str, **variables: Any) -> str:
                return self._templates[template].render(prefix=PREFIX, **variables)

            async def alive() -> bool:
                return await self.session(request) is not None

            try:
                authorise_role(session.principal, page.role, f"the {page.name} page")
                authorise_role(session.principal, route.role, what)
                view = RouteView(request, self._context(request, session), fragment, whole, alive)
                return await route.handle(view)
            except OperatorError as exc:
                if isinstance(exc, ForbiddenError):
                    await self.audit(
                        request, what, session.principal, status=403, outcome=exc.code, detail=exc.message
                    )
                return self.render("error.html", exc.status, message=exc.message, **frame)

        return handle

    def _context(
        self, request: web.Request, session: Session, files: Mapping[str, tuple[str, bytes]] | None = None
    ) -> PageContext:
        return PageContext(
            self._service,
            session.token,
            session.principal,
            Caller("console", request.remote),
            self._service.zone,
            request.query,
            files or {},
        )


async def _read_form(
    request: web.Request, upload_limit: int
) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """A POST's text fields and, for an upload action, its files (``InvalidQueryError`` when too big).

    The application's body limit is small (JSON requests); an upload action reads its multipart
    form part by part up to its own limit instead.
    """
    if upload_limit <= 0 or request.content_type != "multipart/form-data":
        posted = await request.post()
        return {k: v for k, v in posted.items() if isinstance(v, str)}, {}
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    total = 0
    reader = await request.multipart()
    for _ in range(MAX_PARTS):
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise InvalidQueryError("表单格式不对（嵌套的 multipart）", field="form")
        data = bytearray()
        while chunk := await part.read_chunk(64 * 1024):
            total += len(chunk)
            if total > upload_limit:
                raise InvalidQueryError(
                    f"上传内容超过 {upload_limit // (1024 * 1024)} MB，已拒绝", field="photo"
                )
            data += chunk
        if part.filename is not None:
            files[part.name or ""] = (part.filename, bytes(data))
        else:
            fields[part.name or ""] = data.decode("utf-8", "replace")
    else:
        raise InvalidQueryError("表单字段过多", field="form")
    return fields, files


def mount_console(
    app: web.Application, service: OperatorService, api: OperatorApiConfig, health: Health
) -> Console:
    """Add the console's routes (and ``/`` -> ``/console/``) to the operator API's application.

    ``/metrics`` gains ``cgw_console_requests_total`` (logins, logouts, refusals and ended sessions
    by action and outcome; the pages' data reads are in ``cgw_api_requests_total``).
    """
    console = Console(service, api)
    health.writers.append(
        lambda families: families.counter(
            "cgw_console_requests_total",
            "console logins, logouts, refusals and ended sessions, by action and outcome",
            [({"action": a, "outcome": o}, n) for (a, o), n in sorted(console.outcomes.items())],
        )
    )
    app.router.add_get("/", console.root)
    app.router.add_get(PREFIX, console.root)
    app.router.add_get("/favicon.ico", _no_icon)
    app.router.add_get(f"{PREFIX}/", console.start)
    app.router.add_get(f"{PREFIX}/login", console.login_form)
    app.router.add_post(f"{PREFIX}/login", console.login)
    app.router.add_post(f"{PREFIX}/logout", console.logout)
    for page in PAGES.values():
        app.router.add_get(PREFIX + page.path, console.page_handler(page))
        for action in page.actions:
            app.router.add_post(f"{PREFIX}{page.path}/{action.name}", console.action_handler(page, action))
        for route in page.routes:
            app.router.add_get(f"{PREFIX}{page.path}/{route.name}", console.route_handler(page, route))
    app.router.add_static(f"{PREFIX}/static/", STATIC, append_version=False)
    return console
