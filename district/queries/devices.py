"""``devices``: the device inventory with online status and why; the online rate per compound.

The inventory is the district's device registry (``district/device_registry.py``: what every
compound's gateway is configured with) joined with what the store saw within
``[api] inventory_lookback_days``. A compound's online rate is online / registered once its gateway
published an inventory; ``registry_with_status`` gives the city link the same answer.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import Field, computed_field

from district.city.objects import DeviceForCity
from district.config import DistrictConfig, OperatorApiConfig
from district.device_registry import DeviceRegistry
from district.operator_output import Presenter, Table
from district.queries.context import QueryContext, to_ns
from district.queries.spec import QuerySpec, Route
from district.query_backends import QueryBackend, open_query_backend
from district.query_model import CliFlag, DeviceActivity, Model, Role, Selection
from foundation.events import GbId, utc_now
from uplink.lineprotocol import EPOCH


class DevicesRequest(Model):
    """The device inventory with online status; optionally only offline devices."""

    compounds: tuple[GbId, ...] = Field(default=(), max_length=500)
    only_offline: Annotated[bool, CliFlag("--offline")] = False


class DeviceRow(Model):
    """One device: registered (in its compound's inventory), reporting, or both."""

    compound_id: str
    device_id: str
    name: str | None = Field(default=None, description="the registry's name; None: not registered")
    kind: str | None = Field(default=None, description="face_gate, lpr_camera, ...; None: not registered")
    dialect: str
    place: str | None = Field(default=None, description="where it stands, from the registry")
    registered: bool = Field(
        default=False, description="in its compound's registry (false: seen in traffic only)"
    )
    status: Literal["online", "offline"]
    why: str = Field(
        description='"reported online", "reported offline", "silent for 2 h 5 min", "never reported", ...'
    )
    last_seen: datetime | None = Field(description="its last event; None: none within the lookback")


class CompoundOnline(Model):
    """Online rate of one compound's devices: over its registry once its gateway published one."""

    compound_id: str
    name: str
    devices: int = Field(description="registered devices (without a registry: devices that reported)")
    online: int
    from_registry: bool = Field(
        default=False, description="the count is the compound's registry (false: it has published none)"
    )
    unregistered: int = Field(default=0, description="devices that report but are not in its registry")

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


NEVER_REPORTED = "never reported"


def _status(activity: DeviceActivity, now: datetime, silent_after: timedelta) -> tuple[bool, str, datetime]:
    last_seen = EPOCH + timedelta(microseconds=activity.last_seen_ns // 1000)
    if activity.status_state is not None and activity.status_ns == activity.last_seen_ns:
        # the device's last word was a status report
        return activity.status_state == "online", f"reported {activity.status_state}", last_seen
    if now - last_seen > silent_after:
        return False, f"silent for {_span(now - last_seen)}", last_seen
    return True, "reporting", last_seen


async def device_rows(
    backend: QueryBackend,
    registry: DeviceRegistry | None,
    *,
    district_id: str,
    compounds: tuple[str, ...] | None,
    api: OperatorApiConfig,
    now: datetime,
) -> tuple[list[DeviceRow], set[str]]:
    """Every device to list, and the compounds whose registry counts (the ``devices`` rule).

    A compound whose gateway published an inventory lists its registered devices, the silent ones
    included (``never reported`` when nothing came since it was registered within the lookback),
    and the devices that report without being registered (``registered`` false). A device removed
    from the registry is listed again only if it reported after its removal: a device still sending
    is a fact to show, not to hide. A compound without an inventory (a gateway before the registry,
    or the direct uplink) lists what reported within the lookback, as before.
    """
    lookback = timedelta(days=api.inventory_lookback_days)
    selection = Selection(
        district_id=district_id,
        compounds=compounds,
        start_ns=to_ns(now - lookback),
        end_ns=to_ns(now + timedelta(minutes=5)),
    )
    silent_after = timedelta(seconds=api.device_silent_after_s)
    activity = {(a.compound_id, a.device_id): a for a in await backend.device_activity(selection)}
    registered = await registry.devices(district_id, compounds) if registry is not None else []
    with_registry = await registry.registered_compounds(district_id) if registry is not None else set()
    removals = await registry.removals(district_id) if registry is not None and activity else {}
    rows: list[DeviceRow] = []
    for device in registered:
        seen = activity.pop((device.compound_id, device.device_id), None)
        last_seen: datetime | None = None
        if seen is not None:
            online, why, last_seen = _status(seen, now, silent_after)
        elif device.registered_at >= now - lookback:
            online, why = False, NEVER_REPORTED
        else:
            online, why = False, f"silent for over {api.inventory_lookback_days} d"
        rows.append(
            DeviceRow(
                compound_id=device.compound_id,
                device_id=device.device_id,
                name=device.name,
                kind=device.kind,
                dialect=device.dialect,
                place=device.place,
                registered=True,
                status="online" if online else "offline",
                why=why,
                last_seen=last_seen,
            )
        )
    for key, seen in activity.items():
        online, why, last_seen = _status(seen, now, silent_after)
        removed_at = removals.get(key)
        if removed_at is not None and last_seen <= removed_at:
            continue  # taken out of the registry, and silent since
        rows.append(
            DeviceRow(
                compound_id=seen.compound_id,
                device_id=seen.device_id,
                dialect=seen.dialect,
                status="online" if online else "offline",
                why=why,
                last_seen=last_seen,
            )
        )
    rows.sort(key=lambda r: (r.compound_id, r.device_id))
    return rows, with_registry


async def devices(ctx: QueryContext, request: DevicesRequest) -> DeviceReport:
    """Every registered device and every device that reported, and each compound's online rate."""
    compounds = ctx.scope(request.compounds)
    rows, with_registry = await device_rows(
        ctx.backend,
        ctx.device_registry,
        district_id=ctx.principal.district_id,
        compounds=compounds,
        api=ctx.api,
        now=ctx.clock(),
    )
    rows = [
        r.model_copy(update={"last_seen": r.last_seen.astimezone(ctx.zone)}) if r.last_seen else r
        for r in rows
    ]
    per_compound: dict[str, list[DeviceRow]] = {}
    for row in rows:
        per_compound.setdefault(row.compound_id, []).append(row)
    for compound in compounds if compounds is not None else ctx.districts_compounds():
        per_compound.setdefault(compound, [])
    summary = []
    for compound, listed in sorted(per_compound.items()):
        counted = [d for d in listed if d.registered] if compound in with_registry else listed
        summary.append(
            CompoundOnline(
                compound_id=compound,
                name=ctx.compound_name(compound),
                devices=len(counted),
                online=sum(d.status == "online" for d in counted),
                from_registry=compound in with_registry,
                unregistered=sum(not d.registered for d in listed) if compound in with_registry else 0,
            )
        )
    if request.only_offline:
        rows = [r for r in rows if r.status == "offline"]
    return DeviceReport(devices=rows, compounds=summary)


async def registry_with_status(config: DistrictConfig) -> list[DeviceForCity]:
    """Every registered device of the district with its online status (the city link's APE list).

    The same rule as the ``devices`` query (``device_rows``), on the configured store and device
    registry, opened for the call; devices that report without being registered are left out (the
    city's registry lists what the district registered).
    """
    async with (
        open_query_backend(config.store) as backend,
        DeviceRegistry(config.device_registry_path()) as registry,
    ):
        rows, _ = await device_rows(
            backend, registry, district_id=config.district_id, compounds=None, api=config.api, now=utc_now()
        )
    return [
        DeviceForCity(
            device_id=row.device_id,
            compound_id=row.compound_id,
            name=row.name or row.device_id,
            kind=row.kind or "",
            dialect=row.dialect,
            place=row.place,
            online=row.status == "online",
        )
        for row in rows
        if row.registered
    ]


def _tables(view: Presenter, report: DeviceReport) -> list[Table]:
    inventory = (
        ["compound", "device", "name", "kind", "status", "why", "last seen"],
        [
            [
                view.name(d.compound_id),
                d.device_id,
                d.name or "(unregistered)",
                d.kind or d.dialect,
                d.status,
                d.why,
                view.time(d.last_seen) if d.last_seen else "-",
            ]
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
        "GET",
        "/devices",
        "Registered and reporting devices with online status and last seen; online rate per compound",
    ),
    run=devices,
    rows=_rows,
    tables=_tables,
)
