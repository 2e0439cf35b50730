"""The one door to district data: authenticate, validate, authorise, run, audit.

The CLI and the HTTP API both call ``OperatorService.handle``; nothing else reads the store for an
operator. Every call is audited exactly once, whatever its outcome (refused tokens, bad filters,
scope violations and store failures included), before the answer is returned.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import structlog
from pydantic import BaseModel, ValidationError

from district.config import CompoundEntry, DistrictConfig
from district.operations import AuditEntry, OperationsDb, Principal
from district.query_backends import InfluxQueries, QueryBackend, SqliteQueries
from district.query_model import (
    AlarmAction,
    AlarmActionRequest,
    AlarmCountRow,
    AlarmCountsRequest,
    AlarmPage,
    AlarmRow,
    AlarmsRequest,
    AlarmState,
    AuditRequest,
    BarrierRequest,
    CompareRequest,
    CompoundOnline,
    CountsRequest,
    DeviceReport,
    DeviceRow,
    DevicesRequest,
    EventPage,
    EventsRequest,
    Role,
    Selection,
)
from foundation.errors import (
    ForbiddenError,
    InvalidQueryError,
    NotFoundError,
    OperatorError,
    StoreUnavailableError,
    UnauthenticatedError,
)
from foundation.events import Event, EventKind, Severity, utc_now
from uplink.config import InfluxV1StoreConfig, SqliteStoreConfig
from uplink.lineprotocol import EPOCH, point_time_ns
from uplink.stores import InfluxV1Store, InfluxV2Store, SqliteStore, StoreError

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=BaseModel)
ALARM_LOOKBACK = timedelta(days=366)
PERSON_KINDS = (EventKind.FACE_ACCESS.value, EventKind.WATCHLIST_HIT.value)
PLATE_KINDS = (EventKind.VEHICLE_PASS.value, EventKind.VEHICLE_WATCH_HIT.value)


def _ns(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


@dataclass(frozen=True)
class Caller:
    """Where a request comes from: ``channel`` is "api" or "cli"; ``client`` an address or local user."""

    channel: str
    client: str | None


@dataclass(frozen=True)
class Answer:
    """A handled request: the result and how many rows it holds (what the audit log records)."""

    result: Any
    rows: int


@dataclass(frozen=True)
class _Action:
    model: type[BaseModel]
    role: Role


ACTIONS: dict[str, _Action] = {
    "events": _Action(EventsRequest, Role.VIEWER),
    "counts": _Action(CountsRequest, Role.VIEWER),
    "compare": _Action(CompareRequest, Role.OPERATOR),
    "barrier": _Action(BarrierRequest, Role.OPERATOR),
    "devices": _Action(DevicesRequest, Role.VIEWER),
    "alarms": _Action(AlarmsRequest, Role.VIEWER),
    "alarm_counts": _Action(AlarmCountsRequest, Role.VIEWER),
    "alarm_action": _Action(AlarmActionRequest, Role.OPERATOR),
    "audit": _Action(AuditRequest, Role.ADMIN),
}
"""Every operator request: its model and the least role that may make it."""


def _invalid(exc: ValidationError) -> InvalidQueryError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return InvalidQueryError(f"{where or 'request'}: {message}{more}", field=where)


def _loggable(params: Mapping[str, Any]) -> dict[str, Any]:
    # what the audit log keeps of a request: the filters, bounded, without the free-text reason/note
    kept: dict[str, Any] = {}
    for key, value in list(params.items())[:40]:
        if key in {"reason", "note"}:
            continue
        text = value if isinstance(value, str | int | float | bool | None) else str(value)
        kept[str(key)[:64]] = text[:200] if isinstance(text, str) else text
    return kept


class OperatorService:
    """Queries and alarm actions for district operators, on one store backend."""

    def __init__(
        self,
        config: DistrictConfig,
        backend: QueryBackend,
        operations: OperationsDb,
        clock: Callable[[], datetime] = utc_now,
        store_ping: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._config = config
        self._api = config.api
        self._backend = backend
        self._ops = operations
        self._clock = clock
        self.zone = ZoneInfo(config.api.timezone)
        self.registry: dict[str, CompoundEntry] = {c.id: c for c in config.compounds}
        self._store_ping = store_ping
        self.requests: Counter[tuple[str, str]] = Counter()
        """Audited requests by (action, outcome): ``ok`` or the error code (the API's metrics)."""

    def compound_name(self, compound_id: str) -> str:
        """The registered name of a compound (its id when unregistered)."""
        entry = self.registry.get(compound_id)
        return entry.name if entry else compound_id

    async def handle(
        self, token: str | None, action: str, params: Mapping[str, Any], caller: Caller
    ) -> Answer:
        """Run one request end to end; raises an ``OperatorError`` (already audited) when refused."""
        principal: Principal | None = None
        error: OperatorError
        try:
            if action not in ACTIONS:
                raise InvalidQueryError(
                    f"unknown request {action!r}; one of {', '.join(ACTIONS)}", field="action"
                )
            principal = await self._authenticate(token)
            spec = ACTIONS[action]
            try:
                request = spec.model.model_validate(dict(params))
            except ValidationError as exc:
                raise _invalid(exc) from None
            self._authorise_role(principal, spec.role, action)
            async with asyncio.timeout(self._api.timeout_s):
                answer = await self._run(principal, request)
        except OperatorError as exc:
            error = exc
        except TimeoutError:
            error = StoreUnavailableError(f"the query took longer than {self._api.timeout_s:g} s; narrow it")
        except StoreError as exc:
            error = StoreUnavailableError(f"the district store did not answer: {exc}")
        else:
            await self._audit(principal, action, params, caller, rows=answer.rows)
            return answer
        await self._audit(principal, action, params, caller, error=error)
        raise error

    async def refuse(
        self, token: str | None, action: str, params: Mapping[str, Any], caller: Caller, error: OperatorError
    ) -> None:
        """Audit a request refused before it reached ``handle`` (an unparsable query string)."""
        principal = await self._ops.principal(token) if token else None
        await self._audit(principal, action, params, caller, error=error)

    async def ping_operations(self) -> None:
        """The operations database answers (readiness); raises ``sqlite3.Error`` if not."""
        await self._ops.ping()

    async def ping_store(self) -> None:
        """The store answers (readiness); raises ``StoreError`` if not (no-op without a ``store_ping``)."""
        if self._store_ping is not None:
            await self._store_ping()

    async def _audit(
        self,
        principal: Principal | None,
        action: str,
        params: Mapping[str, Any],
        caller: Caller,
        *,
        rows: int | None = None,
        error: OperatorError | None = None,
    ) -> None:
        reason = params.get("reason") or params.get("note")
        entry = AuditEntry(
            actor=principal.name if principal else None,
            role=principal.role.value if principal else None,
            channel=caller.channel,
            client=caller.client,
            action=action[:64],
            filters=_loggable(params),
            outcome=error.code if error else "ok",
            status=error.status if error else 200,
            rows=rows,
            reason=str(reason)[:500] if reason else None,
            detail=error.message if error else None,
        )
        await self._ops.audit(entry)
        self.requests[(entry.action, entry.outcome)] += 1
        log.info("operator_request", action=entry.action, actor=entry.actor, outcome=entry.outcome, rows=rows)

    async def _authenticate(self, token: str | None) -> Principal:
        if not token:
            raise UnauthenticatedError("no token: send 'Authorization: Bearer <token>' (CLI: CGW_TOKEN)")
        principal = await self._ops.principal(token)
        if principal is None:
            raise UnauthenticatedError("unknown or revoked token")
        return principal

    @staticmethod
    def _authorise_role(principal: Principal, needed: Role, action: str) -> None:
        if not principal.role.allows(needed):
            raise ForbiddenError(
                f"{action} needs the {needed.value} role; token {principal.name!r} is {principal.role.value}"
            )

    def _scope(self, principal: Principal, requested: tuple[str, ...]) -> tuple[str, ...] | None:
        """The compounds a request may see: the requested ones, each checked, or the token's scope."""
        for compound in requested:
            entry = self.registry.get(compound)
            if entry is None and self.registry:
                raise InvalidQueryError(
                    f"unknown compound {compound}: not in the district's registry", field="compounds"
                )
            district = self._config.compound_district(entry) if entry else self._config.district_id
            if not principal.covers(district, compound):
                raise ForbiddenError(f"compound {compound} is outside the scope of token {principal.name!r}")
        if requested:
            return requested
        return principal.compounds or None

    def _selection(self, principal: Principal, request: Any, **filters: Any) -> Selection:
        request.check_span(self._api.max_range_days)
        limit = getattr(request, "limit", None)
        if limit is not None and limit > self._api.max_page:
            raise InvalidQueryError(
                f"limit {limit} is above the {self._api.max_page} rows of one page", field="limit"
            )
        return Selection(
            district_id=principal.district_id,
            compounds=self._scope(principal, request.compounds),
            start_ns=_ns(request.start),
            end_ns=_ns(request.end),
            **filters,
        )

    @staticmethod
    def _kinds(requested: tuple[EventKind, ...], only: tuple[str, ...] | None) -> tuple[str, ...]:
        kinds = tuple(k.value for k in requested)
        if only is None:
            return kinds
        narrowed = tuple(k for k in (kinds or only) if k in only)
        if not narrowed:
            raise InvalidQueryError(f"kinds {', '.join(kinds)} never carry this filter", field="kinds")
        return narrowed

    async def _run(self, principal: Principal, request: BaseModel) -> Answer:
        match request:
            case EventsRequest():
                return await self._events(principal, request)
            case CountsRequest():
                selection = self._selection(
                    principal, request, kinds=self._kinds(request.kinds, None), devices=request.devices
                )
                rows = await self._backend.count(
                    selection, interval=request.interval, group_by=request.group_by, zone=self.zone
                )
                return Answer(rows, len(rows))
            case CompareRequest():
                only = PLATE_KINDS if request.plate else PERSON_KINDS
                selection = self._selection(
                    principal,
                    request,
                    kinds=only,
                    plate=request.plate,
                    person_ref=request.person_ref,
                )
                return await self._page_ascending(selection, request.limit, request.after)
            case BarrierRequest():
                selection = self._selection(
                    principal, request, kinds=(EventKind.VEHICLE_PASS.value,), devices=(request.device,)
                )
                return await self._page_ascending(selection, request.limit, request.after)
            case DevicesRequest():
                return await self._devices(principal, request)
            case AlarmsRequest():
                return await self._alarms(principal, request)
            case AlarmCountsRequest():
                return await self._alarm_counts(principal, request)
            case AlarmActionRequest():
                return await self._alarm_action(principal, request)
            case AuditRequest():
                records = await self._ops.audit_records(
                    limit=request.limit, before_seq=request.before_seq, actor=request.actor
                )
                return Answer(records, len(records))
        raise InvalidQueryError(f"no handler for {type(request).__name__}")

    async def _events(self, principal: Principal, request: EventsRequest) -> Answer:
        only: tuple[str, ...] | None = None
        if request.plate or request.person_ref:
            self._authorise_role(principal, Role.OPERATOR, "a plate or person lookup")
            if not request.reason:
                raise InvalidQueryError("a reason is required for plate or person lookups", field="reason")
            only = PLATE_KINDS if request.plate else PERSON_KINDS
        selection = self._selection(
            principal,
            request,
            kinds=self._kinds(request.kinds, only),
            devices=request.devices,
            plate=request.plate,
            person_ref=request.person_ref,
            severity=request.severity.value if request.severity else None,
        )
        cursor = int(request.before) if request.before else None
        events = await self._backend.find(selection, newest_first=True, limit=request.limit, cursor_ns=cursor)
        next_cursor = str(point_time_ns(events[-1])) if len(events) == request.limit else None
        return Answer(EventPage(events, next_cursor), len(events))

    async def _page_ascending(self, selection: Selection, limit: int, after: str | None) -> Answer:
        if limit > self._api.max_page:
            raise InvalidQueryError(
                f"limit {limit} is above the {self._api.max_page} rows of one page", field="limit"
            )
        events = await self._backend.find(
            selection, newest_first=False, limit=limit, cursor_ns=int(after) if after else None
        )
        next_cursor = str(point_time_ns(events[-1])) if len(events) == limit else None
        return Answer(EventPage(events, next_cursor), len(events))

    async def _devices(self, principal: Principal, request: DevicesRequest) -> Answer:
        now = self._clock()
        compounds = self._scope(principal, request.compounds)
        selection = Selection(
            district_id=principal.district_id,
            compounds=compounds,
            start_ns=_ns(now - timedelta(days=self._api.inventory_lookback_days)),
            end_ns=_ns(now + timedelta(minutes=5)),
        )
        silent_after = timedelta(seconds=self._api.device_silent_after_s)
        rows: list[DeviceRow] = []
        for activity in await self._backend.device_activity(selection):
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
                    last_seen=last_seen.astimezone(self.zone),
                )
            )
        rows.sort(key=lambda r: (r.compound_id, r.device_id))
        per_compound: dict[str, list[DeviceRow]] = {}
        for row in rows:
            per_compound.setdefault(row.compound_id, []).append(row)
        listed = (
            compounds
            if compounds is not None
            else tuple(
                c.id
                for c in self.registry.values()
                if self._config.compound_district(c) == principal.district_id
            )
        )
        for compound in listed:
            per_compound.setdefault(compound, [])
        summary = [
            CompoundOnline(
                compound_id=compound,
                name=self.compound_name(compound),
                devices=len(devices),
                online=sum(d.status == "online" for d in devices),
            )
            for compound, devices in sorted(per_compound.items())
        ]
        if request.only_offline:
            rows = [r for r in rows if r.status == "offline"]
        return Answer(DeviceReport(rows, summary), len(rows))

    async def _alarm_events(self, selection: Selection, *, limit: int, cursor: int | None) -> list[Event]:
        return await self._backend.find(selection, newest_first=True, limit=limit, cursor_ns=cursor)

    async def _alarms(self, principal: Principal, request: AlarmsRequest) -> Answer:
        selection = self._selection(
            principal, request, kinds=self._kinds(request.kinds, None), severity=Severity.CRITICAL.value
        )
        wanted = set(request.states)
        found: list[AlarmRow] = []
        cursor = int(request.before) if request.before else None
        last_cursor: str | None = None
        # with a state filter, pages of the store are read until the page is full or the range ends
        for _ in range(50):
            events = await self._alarm_events(selection, limit=request.limit, cursor=cursor)
            histories = await self._ops.alarm_histories([e.event_id for e in events])
            for event in events:
                history = histories.get(event.event_id, [])
                state = history[-1].state if history else AlarmState.NEW
                last_cursor = str(point_time_ns(event))
                if not wanted or state in wanted:
                    found.append(AlarmRow(event, state, history))
                    if len(found) == request.limit:
                        return Answer(AlarmPage(found, last_cursor), len(found))
            if len(events) < request.limit:
                return Answer(AlarmPage(found, None), len(found))
            cursor = point_time_ns(events[-1])
        return Answer(AlarmPage(found, last_cursor), len(found))

    async def _alarm_counts(self, principal: Principal, request: AlarmCountsRequest) -> Answer:
        selection = self._selection(principal, request, severity=Severity.CRITICAL.value)
        counts: dict[tuple[datetime, str], list[int]] = {}
        cursor: int | None = None
        while True:
            events = await self._alarm_events(selection, limit=self._api.max_page, cursor=cursor)
            histories = await self._ops.alarm_histories([e.event_id for e in events])
            for event in events:
                local = event.occurred_at.astimezone(self.zone)
                day = local.replace(hour=0, minute=0, second=0, microsecond=0)
                bucket = day if request.interval == "day" else day.replace(day=1)
                states = {a.state for a in histories.get(event.event_id, [])}
                tally = counts.setdefault((bucket, event.compound_id), [0, 0, 0, 0])
                tally[0] += 1
                if AlarmState.CONFIRMED in states:
                    tally[1] += 1
                elif AlarmState.FALSE_ALARM in states:
                    tally[2] += 1
                if AlarmState.RESOLVED not in states:
                    tally[3] += 1
            if len(events) < self._api.max_page:
                break
            cursor = point_time_ns(events[-1])
        rows = [
            AlarmCountRow(bucket, compound, total, confirmed, false_alarm, open_)
            for (bucket, compound), (total, confirmed, false_alarm, open_) in sorted(counts.items())
        ]
        return Answer(rows, len(rows))

    async def _alarm_action(self, principal: Principal, request: AlarmActionRequest) -> Answer:
        now = self._clock()
        selection = Selection(
            district_id=principal.district_id,
            compounds=principal.compounds or None,
            start_ns=_ns(now - ALARM_LOOKBACK),
            end_ns=_ns(now + timedelta(minutes=5)),
            severity=Severity.CRITICAL.value,
            event_id=request.event_id,
        )
        found = await self._alarm_events(selection, limit=1, cursor=None)
        if not found:
            raise NotFoundError(
                f"no alarm {request.event_id} in the scope of token {principal.name!r}", field="event_id"
            )
        action: AlarmAction = await self._ops.move_alarm(
            request.event_id, found[0].compound_id, request.to, principal.name, request.note
        )
        return Answer(action, 1)


def _span(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes // 1440} d"


@contextlib.asynccontextmanager
async def open_operator_service(config: DistrictConfig) -> AsyncIterator[OperatorService]:
    """The service on the configured store and operations database, open for the block."""
    async with AsyncExitStack() as stack:
        operations = await stack.enter_async_context(OperationsDb(config.api.ops_db))
        backend: QueryBackend
        store_config = config.store
        if isinstance(store_config, SqliteStoreConfig):
            store = await stack.enter_async_context(SqliteStore(store_config))
            backend, ping = SqliteQueries(store), store.ping
        elif isinstance(store_config, InfluxV1StoreConfig):
            v1 = await stack.enter_async_context(InfluxV1Store(store_config))

            async def run_v1(query: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
                return await v1.query(query, method="POST", params=params, epoch="ns")

            backend, ping = InfluxQueries(run_v1), v1.ping
        else:
            v2 = await stack.enter_async_context(InfluxV2Store(store_config))

            async def run_v2(query: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
                return await v2.query(query, params=params, epoch="ns")

            backend, ping = InfluxQueries(run_v2), v2.ping
        yield OperatorService(config, backend, operations, store_ping=ping)
