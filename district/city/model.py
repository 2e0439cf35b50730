"""What the city link's parts hand each other: objects to push, their outcomes, the link's state."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Category(StrEnum):
    """A GA/T 1400 collection the district pushes, named as in its list object (``<name>ListObject``)."""

    MOTOR_VEHICLE = "MotorVehicle"
    FACE = "Face"
    APE = "APE"

    @property
    def resource(self) -> str:
        """The collection's path on a VIID server."""
        return _RESOURCES[self]

    @property
    def id_field(self) -> str:
        """The field of an object of this collection that holds its id."""
        return _ID_FIELDS[self]


_RESOURCES = {
    Category.MOTOR_VEHICLE: "/VIID/MotorVehicles",
    Category.FACE: "/VIID/Faces",
    Category.APE: "/VIID/APEs",
}
_ID_FIELDS = {Category.MOTOR_VEHICLE: "MotorVehicleID", Category.FACE: "FaceID", Category.APE: "ApeID"}


@dataclass(frozen=True)
class CityObject:
    """One GA/T 1400 object, built once (its id is fixed then) and sent as built, however often.

    ``source`` says what it was built from: an event id, or ``device:<id>@<registry version>`` for an
    APE. ``body`` is the JSON object as the standard names its fields. ``kind`` is what it was built
    from (an event kind: ``face_access``, ``watchlist_hit``, ``vehicle_pass``; ``device`` for an
    APE): the queue judges a queued object by the ``[city.privacy]`` in force when it is taken.
    """

    category: Category
    object_id: str
    source: str
    body: dict[str, object]
    occurred_at: datetime
    kind: str


@dataclass(frozen=True)
class QueuedObject:
    """An object taken from the queue to be sent: ``seq`` is its place in the queue (increasing)."""

    seq: int
    attempts: int
    obj: CityObject


class Outcome(StrEnum):
    """What the city said of one object."""

    ACCEPTED = "accepted"  # StatusCode 0: done, never sent again
    REFUSED = "refused"  # a non-zero StatusCode: kept with its reason, retried later
    UNANSWERED = "unanswered"  # no answer for it (outage, lost answer): sent again as it was


@dataclass(frozen=True)
class ObjectResult:
    """The outcome of one object of a batch."""

    seq: int
    outcome: Outcome
    reason: str | None = None  # the StatusCode and StatusString of a refusal, or why unanswered


@dataclass(frozen=True)
class LinkState:
    """The link as ``city status`` and the console show it (written by the service, read by others)."""

    registered: bool = False
    registered_at: datetime | None = None
    last_keepalive_at: datetime | None = None
    last_error: str | None = None
    clock_skew_s: float | None = None  # the city's clock minus ours at the last time check
    backlog: dict[str, int] = field(default_factory=dict)  # pending objects per category
    refused: dict[str, int] = field(default_factory=dict)  # objects whose last answer was a refusal
    accepted_total: int = 0
    updated_at: datetime | None = None
