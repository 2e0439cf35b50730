"""The vocabulary every operator query shares: roles, validated filter types, pages and store rows.

Requests are frozen pydantic models with ``extra="forbid"``: an unknown filter, a malformed plate,
an inverted or over-long time range is refused with the field to blame before any store is
touched. Every value that reaches a store is either one of our enumerations or passes a strict
pattern, and the stores bind it as a parameter; nothing a user types is pasted into a query.

Each query's own request and result models live with its spec in ``district/queries/``; what
several queries or the store backends share lives here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
    with_config,
)

from foundation.errors import InvalidQueryError
from foundation.events import PLATE_PATTERN, Event, GbId

_PERSON_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_\-]{0,79}$")


@dataclass(frozen=True)
class CliFlag:
    """Names a request field's command-line option where the derived name reads badly.

    Attached as ``Annotated`` metadata; the derived name is ``--`` + the field name with ``-`` for
    ``_`` (a tuple field drops its plural ``s``: ``compounds`` -> ``--compound``, repeatable).
    """

    flag: str


def _plate(value: str) -> str:
    if not PLATE_PATTERN.match(value):
        raise ValueError(
            f"{value[:20]!r} is not a Chinese plate: a province character, a letter, then 5 letters or"
            " digits (6 for new-energy plates), e.g. 赣A12345, or a special plate (京A1234警, 粤Z1234港,"
            " 使014578, WJ京12345, 京A1234应急)"
        )
    return value


def _person_ref(value: str) -> str:
    if not _PERSON_REF.match(value):
        raise ValueError(
            "a person reference is up to 80 letters, digits, ':', '_' or '-' (as events carry it, e.g. p1:3fa9...)"
        )
    return value


Plate = Annotated[str, AfterValidator(_plate)]
PersonRef = Annotated[str, AfterValidator(_person_ref), CliFlag("--person")]
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


class Model(BaseModel):
    """Base of request and result models: frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Ranged(Model):
    """A request over a time range of some compounds (by default the token's whole scope)."""

    start: AwareDatetime
    end: AwareDatetime
    compounds: tuple[GbId, ...] = Field(default=(), max_length=500, description="default: the token's scope")

    @model_validator(mode="after")
    def _ordered(self) -> Ranged:
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


class AlarmAction(Model):
    """One step of an alarm's lifecycle."""

    state: AlarmState
    actor: str
    at: datetime
    note: str


# ---- shared results ----------------------------------------------------------------------------


class EventPage(Model):
    """A page of events and the cursor of the next one (``None`` when this was the last)."""

    events: list[Event]
    next_cursor: str | None = Field(description="give it as the cursor of the next request")

    def joined(self, later: EventPage) -> EventPage:
        """This page followed by a later one (what an export of every page prints)."""
        return EventPage(events=self.events + later.events, next_cursor=later.next_cursor)


# A plain dataclass, not a model: a month of hourly counts per compound is 144k rows, built from store
# values of known types, and validating each one (a zoned datetime) doubled the query's Python time.
# Its JSON schema and serialization still come from pydantic (``TypeAdapter``).
@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True, slots=True)
class CountRow:
    """Events in one interval for one group (``None`` where the request did not group by it)."""

    bucket: datetime
    count: int
    compound_id: str | None = None
    kind: str | None = None
    device_id: str | None = None


# ---- what the store backends take and give ----------------------------------------------------


class DeviceActivity(Model):
    """What a store knows of one device: when it last reported and its last status report."""

    compound_id: str
    device_id: str
    dialect: str
    last_seen_ns: int
    status_state: str | None = None
    status_ns: int | None = None


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

    def equal_to(self) -> list[tuple[str, str]]:
        """The single-value filters that are set, as (column, value): both stores name them alike."""
        given = {
            "plate": self.plate,
            "person_ref": self.person_ref,
            "severity": self.severity,
            "event_id": self.event_id,
        }
        return [(column, value) for column, value in given.items() if value is not None]
