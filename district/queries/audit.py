"""``audit``: the audit log, newest first (admins only)."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, Field, model_validator

from district.operations import AuditRecord
from district.operator_output import Presenter, Table
from district.queries.context import QueryContext
from district.queries.spec import QuerySpec, Route
from district.query_model import Model, Role


class AuditRequest(Model):
    """The audit log, newest first (admins only)."""

    limit: int = Field(default=100, ge=1, le=10_000)
    before_seq: int | None = Field(default=None, ge=1)
    actor: str | None = Field(default=None, max_length=64)
    action: str | None = Field(default=None, max_length=64, description='e.g. "events", "token_create"')
    outcome: str | None = Field(default=None, max_length=64, description='"ok" or an error code')
    start: AwareDatetime | None = Field(default=None, description="entries at or after this time")
    end: AwareDatetime | None = Field(default=None, description="entries before this time")

    @model_validator(mode="after")
    def _ordered(self) -> AuditRequest:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end.isoformat()}) must be after start ({self.start.isoformat()})")
        return self


async def audit(ctx: QueryContext, request: AuditRequest) -> list[AuditRecord]:
    """The entries before ``before_seq`` (or the newest), narrowed by actor, action, outcome and time."""
    return await ctx.operations.audit_records(
        limit=request.limit,
        before_seq=request.before_seq,
        actor=request.actor,
        action=request.action,
        outcome=request.outcome,
        since=request.start,
        until=request.end,
    )


def _tables(view: Presenter, records: list[AuditRecord]) -> list[Table]:
    return [
        (
            ["seq", "at", "actor", "channel", "action", "outcome", "rows", "reason"],
            [
                [
                    str(r.seq),
                    view.time(datetime.fromisoformat(r.at)),
                    r.entry.actor or "-",
                    r.entry.channel,
                    r.entry.action,
                    r.entry.outcome,
                    "" if r.entry.rows is None else str(r.entry.rows),
                    r.entry.reason or "",
                ]
                for r in records
            ],
        )
    ]


SPEC = QuerySpec(
    name="audit",
    request=AuditRequest,
    result=list[AuditRecord],
    role=Role.ADMIN,
    route=Route("GET", "/audit", "The audit log, newest first (admin)"),
    run=audit,
    rows=len,
    tables=_tables,
)
