"""``command``, ``commands``, ``command_status``: order a compound's device, and follow what came of it.

A command (open a barrier for an ambulance, a door for a visitor) is a security action: a reason
the audit log keeps, and either the operator role or a token scoped to exactly the device's
compound (property staff of that compound). The device's compound is the district's word (its
events of the last month), else the one given; it must be inside the token's scope. Rate limits
(``[commands] per_token_per_minute``, ``per_compound_per_minute``) refuse a burst with 429.

The action writes the command into the command book; the command desk (``district.command_desk``)
publishes it and records the compound's reports (``docs/commands.md``). The issuer may choose the
``command_id``: the same id with the same content again returns the command already there (a
retry after a lost answer never orders twice); with other content it is 409.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import AwareDatetime, Field

from district.command_book import (
    BookState,
    CommandAccess,
    CommandRecord,
    Issued,
    Limits,
    ListFilter,
    ReportRecord,
)
from district.operator_output import Presenter, Table
from district.queries.context import QueryContext
from district.queries.evidence import EvidenceContext, device_compound
from district.queries.spec import Paging, QuerySpec, Route
from district.query_model import Cursor, Model, Reason, Role
from foundation.commands import ActuatorState, CommandAction, CommandId
from foundation.errors import (
    ConflictError,
    ForbiddenError,
    InvalidQueryError,
    NotFoundError,
    RateLimitedError,
    StoreUnavailableError,
)
from foundation.events import GbId


@dataclass(frozen=True)
class CommandContext(EvidenceContext):
    """A query context that also reaches the command book (None where it is not open)."""

    commands: CommandAccess | None = None


def _access(ctx: QueryContext) -> CommandAccess:
    if not isinstance(ctx, CommandContext) or ctx.commands is None:
        raise StoreUnavailableError("the command book is not open in this process")
    return ctx.commands


# ---- models ----------------------------------------------------------------------------------


class CommandView(Model):
    """One command and where it stands (without the reason: the audit log keeps that)."""

    command_id: str
    compound_id: str
    device_id: str
    action: CommandAction
    channel: int
    issued_by: str
    role: str
    issued_at: datetime
    expires_at: datetime
    published: bool = Field(description="the order reached the district broker")
    state: BookState = Field(
        description="pending (not yet taken up by the compound), the compound's last reported state,"
        " or no_answer (past its expiry and the grace without a final report)"
    )
    updated_at: datetime | None = None
    detail: str | None = Field(default=None, description="why it failed, expired or was refused")
    rule: str | None = Field(default=None, description="the compound's policy rule that refused it")
    observed: ActuatorState | None = Field(default=None, description="the state read back from the device")
    device_code: str | None = None
    repeated: bool = Field(
        default=False, description="this id was issued before with the same content: that command"
    )


class ReportView(Model):
    """One state the compound reported (each kept once, however often it came)."""

    state: BookState
    at: datetime = Field(description="when the compound reached it")
    received_at: datetime
    reason: str | None = None
    rule: str | None = None
    device_code: str | None = None
    observed: ActuatorState | None = None


class CommandStatus(Model):
    """One command and its report history, in the order the compound reached the states."""

    command: CommandView
    reports: list[ReportView]


class CommandPage(Model):
    """A page of commands, newest first, and the cursor of the next one."""

    commands: list[CommandView]
    next_cursor: str | None = Field(description="give it as `before` of the next request")

    def joined(self, later: CommandPage) -> CommandPage:
        """This page followed by a later one."""
        return CommandPage(commands=self.commands + later.commands, next_cursor=later.next_cursor)


def command_view(ctx: QueryContext, record: CommandRecord, *, repeated: bool = False) -> CommandView:
    """The operator's view of a command as the book holds it."""
    grace = timedelta(seconds=ctx.config.commands.no_answer_grace_s)
    return CommandView(
        command_id=record.command_id,
        compound_id=record.compound_id,
        device_id=record.device_id,
        action=record.action,
        channel=record.channel,
        issued_by=record.issued_by,
        role=record.role,
        issued_at=record.issued_at,
        expires_at=record.expires_at,
        published=record.published_at is not None,
        state=record.shown_state(ctx.clock(), grace),
        updated_at=record.updated_at,
        detail=record.detail,
        rule=record.rule,
        observed=record.observed,
        device_code=record.device_code,
        repeated=repeated,
    )


def _report_view(record: ReportRecord) -> ReportView:
    return ReportView(
        state=record.state,
        at=record.at,
        received_at=record.received_at,
        reason=record.reason,
        rule=record.rule,
        device_code=record.device_code,
        observed=record.observed,
    )


def _command_table(view: Presenter, commands: list[CommandView]) -> Table:
    return (
        [
            "command",
            "compound",
            "device",
            "action",
            "ch",
            "state",
            "by",
            "issued",
            "observed",
            "rule",
            "detail",
        ],
        [
            [
                c.command_id,
                view.name(c.compound_id),
                c.device_id,
                c.action.value,
                str(c.channel),
                c.state.value,
                c.issued_by,
                view.time(c.issued_at),
                c.observed.value if c.observed else "",
                c.rule or "",
                c.detail or "",
            ]
            for c in commands
        ],
    )


# ---- command ---------------------------------------------------------------------------------


class CommandRequest(Model):
    """Order one device of a compound to do something (open a barrier, a door...)."""

    device: GbId
    action: CommandAction
    reason: Reason
    channel: int = Field(default=1, ge=1, le=64, description="which barrier or door, counted from 1")
    command_id: CommandId | None = Field(
        default=None,
        description="the issuer's id (retries with the same id and content return the same command);"
        " default: a new one",
    )
    lifetime_s: int | None = Field(
        default=None,
        ge=1,
        description="never executed later than this after issue (default [commands] lifetime_s)",
    )
    compound: GbId | None = Field(
        default=None, description="the device's compound, if the district does not know the device"
    )


DISTRICT_ACTIONS = frozenset(CommandAction) - {CommandAction.BROADCAST}
"""What the district may order (a broadcast needs its preset clip, which the book does not carry yet)."""


def _new_command_id() -> str:
    return "cmd_" + secrets.token_urlsafe(12)


def _authorise(ctx: QueryContext, compound: str) -> None:
    principal = ctx.principal
    if principal.role.allows(Role.OPERATOR) or principal.compounds == (compound,):
        return
    raise ForbiddenError(
        f"a command needs the operator role or a token scoped to exactly compound {compound};"
        f" token {principal.name!r} is {principal.role.value}"
        + (f" for {', '.join(principal.compounds)}" if principal.compounds else " for the whole district")
    )


def _district_of(ctx: QueryContext, compound: str) -> str:
    entry = ctx.registry.get(compound)
    return ctx.config.compound_district(entry) if entry else ctx.config.district_id


async def issue_command(ctx: QueryContext, request: CommandRequest) -> CommandView:
    """Write the command into the book; the desk sends it (now, or when the broker answers)."""
    access = _access(ctx)
    settings = ctx.config.commands
    if request.action not in DISTRICT_ACTIONS:
        # a broadcast needs a preset clip, which the district's command book does not carry yet
        raise InvalidQueryError(
            "a broadcast is not issued from the district yet; the compound's local rules can broadcast",
            field="action",
        )
    now = ctx.clock()
    compound = await device_compound(ctx, request.device, now, request.compound)  # 404, 403 outside scope
    _authorise(ctx, compound)
    lifetime = request.lifetime_s or settings.lifetime_s
    if lifetime > settings.max_lifetime_s:
        raise InvalidQueryError(
            f"lifetime_s {lifetime} is above the {settings.max_lifetime_s} s a command may wait",
            field="lifetime_s",
        )
    record = CommandRecord(
        command_id=request.command_id or _new_command_id(),
        district_id=_district_of(ctx, compound),
        compound_id=compound,
        device_id=request.device,
        action=request.action,
        channel=request.channel,
        issued_by=ctx.principal.name,
        role=ctx.principal.role.value,
        reason=request.reason,
        issued_at=now,
        expires_at=now + timedelta(seconds=lifetime),
    )
    limits = Limits(settings.per_token_per_minute, settings.per_compound_per_minute)
    outcome, held = await access.book.issue(record, limits)
    match outcome:
        case Issued.EXISTING:
            return command_view(ctx, held, repeated=True)
        case Issued.CONFLICT:
            # what it was is told only to whoever may see that compound's commands
            seen = ctx.principal.covers(held.district_id, held.compound_id)
            what = f" ({held.action.value} of device {held.device_id} by {held.issued_by})" if seen else ""
            raise ConflictError(
                f"command {record.command_id} was issued before for something else{what}; choose another id",
                field="command_id",
            )
        case Issued.TOKEN_LIMIT:
            raise RateLimitedError(
                f"token {ctx.principal.name!r} issued {limits.per_token} commands in the last minute;"
                " wait before the next one"
            )
        case Issued.COMPOUND_LIMIT:
            raise RateLimitedError(
                f"compound {compound} was sent {limits.per_compound} commands in the last minute;"
                " wait before the next one"
            )
    access.new_command.set()
    return command_view(ctx, held)


def _one(_: object) -> int:
    return 1


def _issue_tables(view: Presenter, result: CommandView) -> list[Table]:
    return [_command_table(view, [result])]


ISSUE_SPEC = QuerySpec(
    name="command",
    request=CommandRequest,
    result=CommandView,
    # a viewer token scoped to exactly the device's compound may order too (property staff); the
    # operator role otherwise: checked once the device's compound is known
    role=Role.VIEWER,
    route=Route(
        "POST",
        "/commands",
        "Order a device (operator role, or a token scoped to exactly its compound; a reason)",
    ),
    run=issue_command,
    rows=_one,
    tables=_issue_tables,
    responses={
        404: "The district knows no such device (give its compound)",
        409: "The command_id was issued before for something else",
        429: "The token's or the compound's commands per minute are used up",
    },
    cli=None,  # `compound-gateway command barrier open <device> --reason ...` (over the API)
)


# ---- commands --------------------------------------------------------------------------------


class CommandsRequest(Model):
    """Commands, newest first: of one compound, device or state, issued in a window."""

    compound: GbId | None = Field(default=None, description="default: the token's scope")
    device: GbId | None = None
    state: BookState | None = None
    since: AwareDatetime | None = Field(default=None, description="issued at or after")
    until: AwareDatetime | None = Field(default=None, description="issued before")
    limit: int = Field(default=100, ge=1)
    before: Cursor | None = Field(default=None, description="the previous page's next_cursor")


async def list_commands(ctx: QueryContext, request: CommandsRequest) -> CommandPage:
    """A page of commands in the caller's scope."""
    access = _access(ctx)
    ctx.check_limit(request.limit)
    compounds = ctx.scope((request.compound,) if request.compound else ())
    which = ListFilter(
        compounds=compounds,
        device_id=request.device,
        state=request.state,
        since=request.since,
        until=request.until,
    )
    found = await access.book.find(
        which,
        now=ctx.clock(),
        grace=timedelta(seconds=ctx.config.commands.no_answer_grace_s),
        before=int(request.before) if request.before else None,
        limit=request.limit,
    )
    cursor = str(found[-1].seq) if len(found) == request.limit else None
    return CommandPage(commands=[command_view(ctx, r) for r in found], next_cursor=cursor)


def _page_tables(view: Presenter, page: CommandPage) -> list[Table]:
    return [_command_table(view, page.commands)]


LIST_SPEC = QuerySpec(
    name="commands",
    request=CommandsRequest,
    result=CommandPage,
    role=Role.VIEWER,
    route=Route("GET", "/commands", "Commands issued to devices, newest first"),
    run=list_commands,
    rows=lambda page: len(page.commands),
    tables=_page_tables,
    paging=Paging(cursor="before", next_cursor=lambda page: page.next_cursor, join=CommandPage.joined),
)


# ---- command_status --------------------------------------------------------------------------


class CommandStatusRequest(Model):
    """One command and the states its compound reported."""

    command_id: CommandId


async def command_status(ctx: QueryContext, request: CommandStatusRequest) -> CommandStatus:
    """The command and its report history (404 when unknown or outside the token's scope)."""
    access = _access(ctx)
    record = await access.book.command(request.command_id)
    if record is None or not ctx.principal.covers(record.district_id, record.compound_id):
        # outside the scope reads as unknown: a token learns nothing of other compounds' commands
        raise NotFoundError(
            f"no command {request.command_id} in the scope of token {ctx.principal.name!r}",
            field="command_id",
        )
    reports = await access.book.reports(request.command_id)
    return CommandStatus(command=command_view(ctx, record), reports=[_report_view(r) for r in reports])


def _status_tables(view: Presenter, status: CommandStatus) -> list[Table]:
    history = (
        ["state", "at", "received", "observed", "rule", "reason"],
        [
            [
                r.state.value,
                view.time(r.at),
                view.time(r.received_at),
                r.observed.value if r.observed else "",
                r.rule or "",
                r.reason or "",
            ]
            for r in status.reports
        ],
    )
    return [_command_table(view, [status.command]), history]


STATUS_SPEC = QuerySpec(
    name="command_status",
    request=CommandStatusRequest,
    result=CommandStatus,
    role=Role.VIEWER,
    route=Route("GET", "/commands/{command_id}", "One command and the states its compound reported"),
    run=command_status,
    rows=_one,
    tables=_status_tables,
    responses={404: "No such command in the token's scope"},
)

SPECS = (ISSUE_SPEC, LIST_SPEC, STATUS_SPEC)
"""The command actions the registry lists."""
