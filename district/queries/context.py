"""What a query runs with: the caller's principal, the store, the operations database, the limits.

The helpers here are the rules every query shares: a requested compound must be registered and in
the token's scope (otherwise the token's scope is the default), a range may not exceed
``max_range_days``, a page may not exceed ``max_page`` rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from district.config import CompoundEntry, DistrictConfig, OperatorApiConfig
from district.device_registry import DeviceRegistry
from district.operations import OperationsDb, Principal
from district.query_backends import QueryBackend
from district.query_model import EventPage, Ranged, Role, Selection
from foundation.errors import ForbiddenError, InvalidQueryError
from foundation.events import EventKind
from uplink.lineprotocol import EPOCH, point_time_ns


def to_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch (the stores' time)."""
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


def authorise_role(principal: Principal, needed: Role, what: str) -> None:
    """Refuse (403) a principal whose role does not include ``needed``."""
    if not principal.role.allows(needed):
        raise ForbiddenError(
            f"{what} needs the {needed.value} role; token {principal.name!r} is {principal.role.value}"
        )


@dataclass(frozen=True)
class QueryContext:
    """One authorised request's view of the district."""

    principal: Principal
    backend: QueryBackend
    operations: OperationsDb
    config: DistrictConfig
    registry: Mapping[str, CompoundEntry]
    zone: ZoneInfo
    clock: Callable[[], datetime]
    device_registry: DeviceRegistry | None = None
    """The device registry (None where it is not open: ``devices`` lists what reported, as before)."""

    @property
    def api(self) -> OperatorApiConfig:
        """The operator API's limits."""
        return self.config.api

    def compound_name(self, compound_id: str) -> str:
        """The registered name of a compound (its id when unregistered)."""
        entry = self.registry.get(compound_id)
        return entry.name if entry else compound_id

    def scope(self, requested: tuple[str, ...]) -> tuple[str, ...] | None:
        """The compounds a request may see: the requested ones, each checked, or the token's scope."""
        for compound in requested:
            entry = self.registry.get(compound)
            if entry is None and self.registry:
                raise InvalidQueryError(
                    f"unknown compound {compound}: not in the district's registry", field="compounds"
                )
            district = self.config.compound_district(entry) if entry else self.config.district_id
            if not self.principal.covers(district, compound):
                raise ForbiddenError(
                    f"compound {compound} is outside the scope of token {self.principal.name!r}"
                )
        if requested:
            return requested
        return self.principal.compounds or None

    def districts_compounds(self) -> tuple[str, ...]:
        """The registered compounds of the principal's district."""
        return tuple(
            c.id
            for c in self.registry.values()
            if self.config.compound_district(c) == self.principal.district_id
        )

    def check_limit(self, limit: int) -> None:
        """Refuse a page larger than ``max_page``."""
        if limit > self.api.max_page:
            raise InvalidQueryError(
                f"limit {limit} is above the {self.api.max_page} rows of one page", field="limit"
            )

    def selection(
        self, request: Ranged, *, limit: int | None = None, max_days: int | None = None, **filters: Any
    ) -> Selection:
        """The store selection of a ranged request: span and page checked, compounds scoped.

        ``max_days``: the longest span of this request (default ``max_range_days``).
        """
        request.check_span(max_days or self.api.max_range_days)
        if limit is not None:
            self.check_limit(limit)
        return Selection(
            district_id=self.principal.district_id,
            compounds=self.scope(request.compounds),
            start_ns=to_ns(request.start),
            end_ns=to_ns(request.end),
            **filters,
        )

    @staticmethod
    def kinds(requested: tuple[EventKind, ...], only: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """The requested kinds, narrowed to ``only`` (the kinds that carry a filter) when given."""
        kinds = tuple(k.value for k in requested)
        if only is None:
            return kinds
        narrowed = tuple(k for k in (kinds or only) if k in only)
        if not narrowed:
            raise InvalidQueryError(f"kinds {', '.join(kinds)} never carry this filter", field="kinds")
        return narrowed

    async def event_page(
        self, selection: Selection, *, newest_first: bool, limit: int, cursor: str | None
    ) -> EventPage:
        """A page of events; its ``next_cursor`` is set when the page is full."""
        self.check_limit(limit)
        events = await self.backend.find(
            selection, newest_first=newest_first, limit=limit, cursor_ns=int(cursor) if cursor else None
        )
        next_cursor = str(point_time_ns(events[-1])) if len(events) == limit else None
        return EventPage(events=events, next_cursor=next_cursor)
