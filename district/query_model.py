"""What district operators can ask, and what they get back: validated requests and result rows.

Requests are frozen pydantic models with ``extra="forbid"``: an unknown filter, a malformed plate,
an inverted or over-long time range is refused with the field to blame before any store is
touched. Every value that reaches a store is either one of our enumerations or passes a strict
pattern, and the stores bind it as a parameter; nothing a user types is pasted into a query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from foundation.errors import InvalidQueryError
from foundation.events import PLATE_PATTERN, Event, EventKind, GbId, Severity

_PERSON_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_\-]{0,79}$")


def _plate(value: str) -> str:
    if not PLATE_PATTERN.match(value):
        raise ValueError(
            f"{value[:20]!r} is not a civil Chinese plate: a province character, a letter, then 5 letters or"
            " digits (6 for new-energy plates), e.g. 赣A12345"
        )
    return value


def _person_ref(value: str) -> str:
    if not _PERSON_REF.match(value):
        raise ValueError(
            "a person reference is up to 80 letters, digits, ':', '_' or '-' (as events carry it, e.g. p1:3fa9...)"
        )
    return value


Plate = Annotated[str, AfterValidator(_plate)]
PersonRef = Annotated[str, AfterValidator(_person_ref)]
Cursor = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=4, max_length=500)]


class Role(StrEnum):
    """What a token may do; each role includes the ones before it."""

    VIEWER = "viewer"  # counts, devices, alarm lists, event lists
    OPERATOR = "operator"  # + plate/person lookups and barrier windows (with a reason), alarm actions
    ADMIN = "admin"  # + reading the audit log

    def allows(self, needed: Role) -> bool:
        """Whether this role includes ``needed``."""
        order = list(Role)
        return order.index(self) >= order.index(needed)


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Ranged(_Request):
    start: AwareDatetime
    end: AwareDatetime
    compounds: tuple[GbId, ...] = Field(default=(), max_length=500, description="default: the token's scope")

    @model_validator(mode="after")
    def _ordered(self) -> _Ranged:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end.isoformat()}) must be after start ({self.start.isoformat()})")
        return self

    def check_span(self, max_days: int) -> None:
        """Refuse a range longer than the configured maximum (``InvalidQueryError`` on ``end``)."""
        if self.end - self.start > timedelta(days=max_days):
            raise InvalidQueryError(
                f"time range of {(self.end - self.start).days} days is longer than the {max_days} allowed;"
                " split the query",
                field="end",
            )


class EventsRequest(_Ranged):
    """Events, newest first, a page at a time."""

    kinds: tuple[EventKind, ...] = ()
    devices: tuple[GbId, ...] = Field(default=(), max_length=200)
    plate: Plate | None = None
    person_ref: PersonRef | None = None
    severity: Severity | None = None
    limit: int = Field(default=100, ge=1)
    before: Cursor | None = Field(default=None, description="the next_cursor of the previous page")
    reason: Reason | None = Field(default=None, description="required for plate or person lookups")


class CountsRequest(_Ranged):
    """Event counts per interval, grouped by compound, kind and/or device."""

    interval: Literal["hour", "day"] = "hour"
    group_by: tuple[Literal["compound", "kind", "device"], ...] = ("compound",)
    kinds: tuple[EventKind, ...] = ()
    devices: tuple[GbId, ...] = Field(default=(), max_length=200)


class CompareRequest(_Ranged):
    """查询比对: every passage of one plate or person reference across the compounds, in time order."""

    plate: Plate | None = None
    person_ref: PersonRef | None = None
    limit: int = Field(default=1000, ge=1)
    after: Cursor | None = None
    reason: Reason

    @model_validator(mode="after")
    def _one_subject(self) -> CompareRequest:
        if (self.plate is None) == (self.person_ref is None):
            raise ValueError("give exactly one of plate or person_ref")
        return self


class BarrierRequest(_Ranged):
    """Every vehicle through one barrier (a vehicle-pass device) in a window, in time order."""

    device: GbId
    limit: int = Field(default=1000, ge=1)
    after: Cursor | None = None
    reason: Reason


class DevicesRequest(_Request):
    """The device inventory with online status; optionally only offline devices."""

    compounds: tuple[GbId, ...] = Field(default=(), max_length=500)
    only_offline: bool = False


class AlarmState(StrEnum):
    """An alarm's lifecycle: new -> acknowledged -> confirmed | false_alarm -> resolved."""

    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    CONFIRMED = "confirmed"
    FALSE_ALARM = "false_alarm"
    RESOLVED = "resolved"


ALARM_TRANSITIONS: dict[AlarmState, frozenset[AlarmState]] = {
    AlarmState.NEW: frozenset({AlarmState.ACKNOWLEDGED}),
    AlarmState.ACKNOWLEDGED: frozenset({AlarmState.CONFIRMED, AlarmState.FALSE_ALARM}),
    AlarmState.CONFIRMED: frozenset({AlarmState.RESOLVED}),
    AlarmState.FALSE_ALARM: frozenset({AlarmState.RESOLVED}),
    AlarmState.RESOLVED: frozenset(),
}


class AlarmsRequest(_Ranged):
    """Alarms (critical events: fire, thrown objects, watch-list hits) with their lifecycle state."""

    kinds: tuple[EventKind, ...] = ()
    states: tuple[AlarmState, ...] = ()
    limit: int = Field(default=200, ge=1)
    before: Cursor | None = None


class AlarmCountsRequest(_Ranged):
    """Alarms per compound and period, by lifecycle outcome (confirmed ones are what reports count)."""

    interval: Literal["day", "month"] = "day"


class AlarmActionRequest(_Request):
    """Move one alarm along its lifecycle."""

    event_id: str = Field(pattern=r"^[0-9a-f\-]{8,64}$")
    to: AlarmState
    note: Reason

    @model_validator(mode="after")
    def _not_new(self) -> AlarmActionRequest:
        if self.to is AlarmState.NEW:
            raise ValueError("an alarm cannot be moved back to new")
        return self


class AuditRequest(_Request):
    """The audit log, newest first (admins only)."""

    limit: int = Field(default=100, ge=1, le=10_000)
    before_seq: int | None = Field(default=None, ge=1)
    actor: str | None = Field(default=None, max_length=64)


# ---- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventPage:
    """A page of events and the cursor of the next one (``None`` when this was the last)."""

    events: list[Event]
    next_cursor: str | None


@dataclass(frozen=True)
class CountRow:
    """Events in one interval for one group (``None`` where the request did not group by it)."""

    bucket: datetime
    count: int
    compound_id: str | None = None
    kind: str | None = None
    device_id: str | None = None


@dataclass(frozen=True)
class DeviceActivity:
    """What a store knows of one device: when it last reported and its last status report."""

    compound_id: str
    device_id: str
    dialect: str
    last_seen_ns: int
    status_state: str | None = None
    status_ns: int | None = None


@dataclass(frozen=True)
class DeviceRow:
    """One device of the inventory."""

    compound_id: str
    device_id: str
    dialect: str
    status: Literal["online", "offline"]
    why: str  # "reported online", "reported offline", "silent for 2 h 5 min", ...
    last_seen: datetime


@dataclass(frozen=True)
class CompoundOnline:
    """Online rate of one compound's devices."""

    compound_id: str
    name: str
    devices: int
    online: int

    @property
    def rate(self) -> float:
        """Share of devices online (0 when the compound has none yet)."""
        return self.online / self.devices if self.devices else 0.0


@dataclass(frozen=True)
class DeviceReport:
    """The devices answer: per device and per compound."""

    devices: list[DeviceRow]
    compounds: list[CompoundOnline]


@dataclass(frozen=True)
class AlarmAction:
    """One step of an alarm's lifecycle."""

    state: AlarmState
    actor: str
    at: datetime
    note: str


@dataclass(frozen=True)
class AlarmRow:
    """An alarm: the event, its current state and its history."""

    event: Event
    state: AlarmState
    history: list[AlarmAction]


@dataclass(frozen=True)
class AlarmPage:
    """A page of alarms."""

    alarms: list[AlarmRow]
    next_cursor: str | None


@dataclass(frozen=True)
class AlarmCountRow:
    """Alarms of one compound in one period, by state."""

    bucket: datetime
    compound_id: str
    total: int
    confirmed: int
    false_alarm: int
    open: int


@dataclass(frozen=True)
class Selection:
    """A validated, scope-resolved selection of events, as the stores receive it.

    ``compounds`` is ``None`` for "every compound of ``district_id``".
    """

    district_id: str
    compounds: tuple[str, ...] | None
    start_ns: int
    end_ns: int
    kinds: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    plate: str | None = None
    person_ref: str | None = None
    severity: str | None = None
    event_id: str | None = None
