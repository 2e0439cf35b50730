"""What one console page is: the single description the router, the navigation and the role check read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from aiohttp import web

from district.operations import Principal
from district.operator_service import Caller, OperatorService
from district.queries.spec import QuerySpec
from district.query_model import Role


@dataclass(frozen=True)
class PageContext:
    """One request of a signed-in operator: the service, the session's token and principal, the zone."""

    service: OperatorService
    token: str
    principal: Principal
    caller: Caller
    zone: ZoneInfo
    query: Mapping[str, str]
    files: Mapping[str, tuple[str, bytes]] = field(default_factory=dict)
    """An upload action's files by field: (the name the browser gave, the bytes)."""

    async def ask(
        self, action: str, params: Mapping[str, Any], *, spec: QuerySpec[Any, Any] | None = None
    ) -> Any:
        """Run an operator action through the service (scope, role and audit apply); its result.

        ``spec``: an action outside the registry (the binary ``evidence_media``). Raises the
        service's ``OperatorError`` (already audited) when refused.
        """
        answer = await self.service.handle(self.token, action, params, self.caller, spec=spec)
        return answer.result

    def local(self, moment: datetime) -> datetime:
        """A time in the district's zone (what people read)."""
        return moment.astimezone(self.zone)


PageLoader = Callable[[PageContext], Awaitable[Mapping[str, Any]]]
"""Loads a page's template variables."""


@dataclass(frozen=True)
class Reply:
    """An action's answer that is more than a message: ``template`` rendered with ``variables`` and ``message``.

    (A command's answer carries its state, which the page then follows live.)
    """

    message: str
    template: str
    variables: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConsoleAction:
    """A state-changing request of a page: ``POST /console<page path>/<name>``, CSRF-checked.

    ``run`` answers with a short zh-CN message shown to the operator, or a ``Reply`` (a fragment of
    its own). ``upload_limit`` > 0: the
    action takes a ``multipart/form-data`` form with files (in ``PageContext.files``) of up to that
    many bytes in all; other actions take ordinary forms within the API's small body limit.
    """

    name: str
    role: Role
    run: Callable[[PageContext, Mapping[str, str]], Awaitable[str | Reply]]
    upload_limit: int = 0


@dataclass(frozen=True)
class RouteView:
    """What a page's extra route gets: the request, its context, and the console's rendering.

    ``fragment`` renders a template to text (the console's jinja2 environment, autoescaped);
    ``page`` renders a whole page inside the console's frame; ``alive`` asks again whether the
    session still stands (a long-lived stream ends when it does not).
    """

    request: web.Request
    ctx: PageContext
    fragment: Callable[..., str]
    page: Callable[..., web.Response]
    alive: Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class ConsoleRoute:
    """A further GET of a page: ``GET /console<page path>/<name>`` (a detail page, a file, a stream).

    The console resolves the session and checks the page's and this route's least role first
    (403, audited); ``OperatorError`` raised by ``handle`` is shown as the error page.
    """

    name: str
    role: Role
    handle: Callable[[RouteView], Awaitable[web.StreamResponse]]


def attachment(filename: str, content_type: str, body: bytes) -> web.Response:
    """A file the browser saves (never renders), named in UTF-8 (Chinese) with an ASCII fallback."""
    ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return web.Response(
        body=body,
        headers={
            "Content-Type": content_type,
            # RFC 6266/5987
            "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@dataclass(frozen=True, kw_only=True)
class ConsolePage:
    """One page of the console.

    Attributes:
        name: the page's id (audit log, navigation).
        path: where it answers under ``/console`` (``/devices``).
        title: the zh-CN title (navigation and heading).
        role: the least role that may open it; the server refuses it (403, audited) below that.
        order: its place in the navigation (smallest first).
        template: the jinja2 template under ``district/console/templates``.
        load: the template's variables.
        actions: the page's state-changing requests (each with its own least role).
        routes: the page's further GETs (detail pages, files, server-sent event streams).
    """

    name: str
    path: str
    title: str
    role: Role
    order: int
    template: str
    load: PageLoader
    actions: tuple[ConsoleAction, ...] = field(default=())
    routes: tuple[ConsoleRoute, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.path.startswith("/") or self.path.endswith("/") or self.path.count("/") != 1:
            raise ValueError(
                f"console page {self.name}: path {self.path!r} must be one segment like /devices"
            )
