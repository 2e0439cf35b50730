"""``device_changes``: the device registry's history, newest first (added, changed, removed, when).

Each row is one difference between two inventories a compound's gateway published, with the
district's time of receipt; a change names the fields that changed, old and new. Rows older than
``[retention] device_changes_days`` are gone.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, Field

from district.device_registry import Change, DeviceRegistry
from district.operator_output import Presenter, Table
from district.queries.context import QueryContext
from district.queries.spec import QuerySpec, Route
from district.query_model import Model, Role
from foundation.errors import StoreUnavailableError
from foundation.events import GbId


class DeviceChangesRequest(Model):
    """History rows of the compounds in scope (or one compound or device), newest first."""

    compounds: tuple[GbId, ...] = Field(default=(), max_length=500)
    device: GbId | None = None
    since: AwareDatetime | None = Field(default=None, description="received at or after")
    limit: int = Field(default=200, ge=1)


class DeviceChangeRow(Model):
    """One device added, changed or removed."""

    at: datetime = Field(description="when the district received the inventory that did it")
    compound_id: str
    device_id: str
    change: Change
    fields: dict[str, list[Any]] = Field(
        description="field -> [old, new] (added: old is null; removed: new is null)"
    )
    version: str = Field(description="the inventory version that did it")


class DeviceChanges(Model):
    """The history answer."""

    changes: list[DeviceChangeRow]


def _registry(ctx: QueryContext) -> DeviceRegistry:
    if ctx.device_registry is None:
        raise StoreUnavailableError("the device registry is not open in this process")
    return ctx.device_registry


async def device_changes(ctx: QueryContext, request: DeviceChangesRequest) -> DeviceChanges:
    """The registry's history in the caller's scope."""
    ctx.check_limit(request.limit)
    compounds = ctx.scope(request.compounds)
    rows = await _registry(ctx).changes(
        ctx.principal.district_id,
        compounds,
        since=request.since,
        device_id=request.device,
        limit=request.limit,
    )
    return DeviceChanges(
        changes=[
            DeviceChangeRow(
                at=r.at.astimezone(ctx.zone),
                compound_id=r.compound_id,
                device_id=r.device_id,
                change=r.change,
                fields=r.fields,
                version=r.version,
            )
            for r in rows
        ]
    )


def _fields(row: DeviceChangeRow) -> str:
    if row.change is Change.CHANGED:
        return "; ".join(
            f"{name}: {json.dumps(old, ensure_ascii=False)} -> {json.dumps(new, ensure_ascii=False)}"
            for name, (old, new) in row.fields.items()
        )
    side = 1 if row.change is Change.ADDED else 0
    return ", ".join(f"{name}={v[side]}" for name, v in row.fields.items() if name in {"name", "kind"})


def _tables(view: Presenter, result: DeviceChanges) -> list[Table]:
    return [
        (
            ["at", "compound", "device", "change", "fields"],
            [
                [view.time(r.at), view.name(r.compound_id), r.device_id, r.change.value, _fields(r)]
                for r in result.changes
            ],
        )
    ]


SPEC = QuerySpec(
    name="device_changes",
    request=DeviceChangesRequest,
    result=DeviceChanges,
    role=Role.VIEWER,
    route=Route("GET", "/device-changes", "The device registry's history: devices added, changed, removed"),
    run=device_changes,
    rows=lambda result: len(result.changes),
    tables=_tables,
)
