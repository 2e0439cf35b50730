"""What one console page is: the single description the router, the navigation and the role check read."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from district.operations import Principal
from district.operator_service import Caller, OperatorService
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

    async def ask(self, action: str, params: Mapping[str, Any]) -> Any:
        """Run an operator action through the service (scope, role and audit apply); its result.

        Raises the service's ``OperatorError`` (already audited) when refused.
        """
        answer = await self.service.handle(self.token, action, params, self.caller)
        return answer.result

    def local(self, moment: datetime) -> datetime:
        """A time in the district's zone (what people read)."""
        return moment.astimezone(self.zone)


PageLoader = Callable[[PageContext], Awaitable[Mapping[str, Any]]]
"""Loads a page's template variables."""


@dataclass(frozen=True)
class ConsoleAction:
    """A state-changing request of a page: ``POST /console<page path>/<name>``, CSRF-checked.

    ``run`` answers with a short zh-CN message shown to the operator.
    """

    name: str
    role: Role
    run: Callable[[PageContext, Mapping[str, str]], Awaitable[str]]


@dataclass(frozen=True)
class ConsoleDownload:
    """A file a page offers: ``GET /console<page path>/<name>`` (the page's query string passed on).

    ``run`` answers with (file name, content type, body); it reads through ``PageContext.ask``
    (audited) like the page itself.
    """

    name: str
    role: Role
    run: Callable[[PageContext], Awaitable[tuple[str, str, bytes]]]


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
        downloads: the files the page offers (each with its own least role).
    """

    name: str
    path: str
    title: str
    role: Role
    order: int
    template: str
    load: PageLoader
    actions: tuple[ConsoleAction, ...] = field(default=())
    downloads: tuple[ConsoleDownload, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.path.startswith("/") or self.path.endswith("/") or self.path.count("/") != 1:
            raise ValueError(
                f"console page {self.name}: path {self.path!r} must be one segment like /devices"
            )
