"""``devices``: the device inventory with online status and why; the online rate per compound."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import Field, computed_field

from district.operator_output import Presenter, Table
from district.queries.context import QueryContext, to_ns
from district.queries.spec import QuerySpec, Route
from district.query_model import CliFlag, Model, Role, Selection
from foundation.events import GbId
from uplink.lineprotocol import EPOCH


class DevicesRequest(Model):
    """The device inventory with online status; optionally only offline devices."""

    compounds: tuple[GbId, ...] = Field(default=(), max_length=500)
    only_offline: Annotated[bool, CliFlag("--offline")] = False


class DeviceRow(Model):
    """One device of the inventory."""

    compound_id: str
    device_id: str
    dialect: str
    status: Literal["online", "offline"]
    why: str = Field(description='"reported online", "reported offline", "silent for 2 h 5 min", ...')
    last_seen: datetime


class CompoundOnline(Model):
    """Online rate of one compound's devices."""

    compound_id: str
    name: str
    devices: int
    online: int

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented idiom; mypy dislikes decorated properties
    @property
    def rate(self) -> float:
        """Share of devices online, to 4 places (0 when the compound has none yet)."""
        return round(self.online / self.devices, 4) if self.devices else 0.0


class DeviceReport(Model):
    """The devices answer: per device and per compound."""

    devices: list[DeviceRow]
    compounds: list[CompoundOnline]


def _span(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes // 1440} d"


async def devices(ctx: QueryContext, request: DevicesRequest) -> DeviceReport:
    """Every device that reported within ``inventory_lookback_days``, and each compound's rate."""
    now = ctx.clock()
    compounds = ctx.scope(request.compounds)
    selection = Selection(
        district_id=ctx.principal.district_id,
        compounds=compounds,
        start_ns=to_ns(now - timedelta(days=ctx.api.inventory_lookback_days)),
        end_ns=to_ns(now + timedelta(minutes=5)),
    )
    silent_after = timedelta(seconds=ctx.api.device_silent_after_s)
    rows: list[DeviceRow] = []
    for activity in await ctx.backend.device_activity(selection):
        last_seen = EPOCH + timedelta(microseconds=activity.last_seen_ns // 1000)
        if activity.status_state is not None and activity.status_ns == activity.last_seen_ns:
            # the device's last word was a status report
            online = activity.status_state == "online"
            why = f"reported {activity.status_state}"
        elif now - last_seen > silent_after:
            online, why = False, f"silent for {_span(now - last_seen)}"
        else:
            online, why = True, "reporting"
        rows.append(
            DeviceRow(
                compound_id=activity.compound_id,
                device_id=activity.device_id,
                dialect=activity.dialect,
                status="online" if online else "offline",
                why=why,
                last_seen=last_seen.astimezone(ctx.zone),
            )
        )
    rows.sort(key=lambda r: (r.compound_id, r.device_id))
    per_compound: dict[str, list[DeviceRow]] = {}
    for row in rows:
        per_compound.setdefault(row.compound_id, []).append(row)
    for compound in compounds if compounds is not None else ctx.districts_compounds():
        per_compound.setdefault(compound, [])
    summary = [
        CompoundOnline(
            compound_id=compound,
            name=ctx.compound_name(compound),
            devices=len(listed),
            online=sum(d.status == "online" for d in listed),
        )
        for compound, listed in sorted(per_compound.items())
    ]
    if request.only_offline:
        rows = [r for r in rows if r.status == "offline"]
    return DeviceReport(devices=rows, compounds=summary)


def _tables(view: Presenter, report: DeviceReport) -> list[Table]:
    inventory = (
        ["compound", "device", "dialect", "status", "why", "last seen"],
        [
            [view.name(d.compound_id), d.device_id, d.dialect, d.status, d.why, view.time(d.last_seen)]
            for d in report.devices
        ],
    )
    rates = (
        ["compound", "devices", "online", "rate"],
        [[c.name, str(c.devices), str(c.online), f"{c.rate:.0%}"] for c in report.compounds],
    )
    return [inventory, rates]


def _rows(report: DeviceReport) -> int:
    return len(report.devices)


SPEC = QuerySpec(
    name="devices",
    request=DevicesRequest,
    result=DeviceReport,
    role=Role.VIEWER,
    route=Route(
        "GET", "/devices", "Device inventory with online status and last seen; online rate per compound"
    ),
    run=devices,
    rows=_rows,
    tables=_tables,
)
