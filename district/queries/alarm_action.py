"""``alarm_action``: move one alarm along new -> acknowledged -> confirmed | false_alarm -> resolved."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, model_validator

from district.operator_output import Presenter, Table
from district.queries.context import QueryContext, to_ns
from district.queries.spec import NeedsReason, QuerySpec, Route
from district.query_model import AlarmAction, AlarmState, Model, Reason, Role, Selection
from foundation.errors import NotFoundError
from foundation.events import Severity

ALARM_LOOKBACK = timedelta(days=366)


class AlarmActionRequest(Model):
    """Move one alarm along its lifecycle."""

    event_id: str = Field(pattern=r"^[0-9a-f\-]{8,64}$")
    to: AlarmState
    note: Reason

    @model_validator(mode="after")
    def _not_new(self) -> AlarmActionRequest:
        if self.to is AlarmState.NEW:
            raise ValueError("an alarm cannot be moved back to new")
        return self


async def alarm_action(ctx: QueryContext, request: AlarmActionRequest) -> AlarmAction:
    """Record the step if the alarm is in scope and its state allows it (404, 409 otherwise)."""
    now = ctx.clock()
    selection = Selection(
        district_id=ctx.principal.district_id,
        compounds=ctx.principal.compounds or None,
        start_ns=to_ns(now - ALARM_LOOKBACK),
        end_ns=to_ns(now + timedelta(minutes=5)),
        severity=Severity.CRITICAL.value,
        event_id=request.event_id,
    )
    found = await ctx.backend.find(selection, newest_first=True, limit=1, cursor_ns=None)
    if not found:
        raise NotFoundError(
            f"no alarm {request.event_id} in the scope of token {ctx.principal.name!r}", field="event_id"
        )
    alarm = found[0]
    return await ctx.operations.move_alarm(
        request.event_id,
        alarm.compound_id,
        request.to,
        ctx.principal.name,
        request.note,
        kind=alarm.kind.value,
        occurred_at=alarm.occurred_at,
    )


def _tables(view: Presenter, action: AlarmAction) -> list[Table]:
    return [
        (
            ["state", "by", "at", "note"],
            [[action.state.value, action.actor, view.time(action.at), action.note]],
        )
    ]


def _one(_: AlarmAction) -> int:
    return 1


SPEC = QuerySpec(
    name="alarm_action",
    request=AlarmActionRequest,
    result=AlarmAction,
    role=Role.OPERATOR,
    route=Route(
        "POST",
        "/alarms/{event_id}/actions",
        "Move an alarm along new -> acknowledged -> confirmed | false_alarm -> resolved",
    ),
    run=alarm_action,
    rows=_one,
    tables=_tables,
    needs_reason=NeedsReason("an alarm action"),
    reason_field="note",
    responses={404: "No such alarm in the token's scope", 409: "The alarm's state does not allow this step"},
    cli=None,  # `compound-gateway alarm ack|confirm|false-alarm|resolve <event id> --note ...`
)
