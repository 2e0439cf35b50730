"""The canonical, versioned event model every adapter produces and the district consumes.

One envelope (identity, provenance, time, severity, media references) carries one payload per event
kind. The payload union is discriminated by ``kind``; the envelope repeats ``kind`` so that stores
and queries can filter without opening the payload. ``docs/event-schema.json`` is generated from
these models (``compound-gateway schema``) and checked by the tests.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

SCHEMA_VERSION: Literal["1.3"] = "1.3"
"""1.3 added the ``rule_fired`` kind (the compound's local rules), 1.2 the plate class and the raw
plate text of vehicle passes, 1.1 the watch-list hit kinds; 1.0 to 1.2 events (without them) are
still read."""

GbId = Annotated[str, StringConstraints(pattern=r"^[0-9]{20}$")]
"""A 20-digit GB/T 28181 style identifier (centre code 8, industry 2, type 3, network 1, serial 6)."""

# Every string and list an event carries is bounded: the district takes events from hundreds of
# compounds, and a field without a bound is a way to fill its store.
Code = Annotated[str, StringConstraints(max_length=64)]
"""Identifiers and codes: vendor event codes, device refs, person refs, dialect names."""
Name = Annotated[str, StringConstraints(max_length=64)]
"""Short names: buildings, units, gates."""
Text = Annotated[str, StringConstraints(max_length=256)]
"""Free text from a device or the inventory: descriptions, reasons, fault details."""
MAX_TRAJECTORY_POINTS = 512
MAX_MEDIA_PER_EVENT = 8

_PROVINCE = "[京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼]"
_ISSUER = "[A-HJ-NP-Z]"
_SERIAL = "[A-HJ-NP-Z0-9]"


class PlateClass(StrEnum):
    """What kind of plate a vehicle carries (号牌种类), as far as the plate text tells."""

    CIVIL = "civil"
    NEW_ENERGY = "new_energy"
    POLICE = "police"
    EMBASSY = "embassy"
    CONSULATE = "consulate"
    EMERGENCY = "emergency"
    ARMED_POLICE = "armed_police"
    COACH = "coach"
    TRAILER = "trailer"
    HONG_KONG = "hong_kong"
    MACAU = "macau"
    UNPLATED = "unplated"
    OTHER = "other"
    UNKNOWN = "unknown"

    @property
    def ga1400_code(self) -> str:
        """The GA 24.7 号牌种类 code GA/T 1400 ``PlateClass`` carries (99 where none is known)."""
        return _GA1400_PLATE_CLASS[self]


# Codes from docs/reference (device-protocols.md §2.4, GA 24.7): 02 小型汽车, 15 挂车, 16 教练汽车,
# 23 警用汽车, 31 武警, 41 无号牌, 52 小型新能源汽车 (51/52 are in conflict across sources: verify
# against GA 24.7). A civil plate does not say whether the vehicle is large (01) or small (02); 02 is
# the common case at a compound barrier. The reference gives no code for embassy, consulate,
# emergency, Hong Kong and Macau plates, so they go up as 99 (其他) until the codes are verified.
_GA1400_PLATE_CLASS = {
    PlateClass.CIVIL: "02",
    PlateClass.NEW_ENERGY: "52",
    PlateClass.POLICE: "23",
    PlateClass.EMBASSY: "99",
    PlateClass.CONSULATE: "99",
    PlateClass.EMERGENCY: "99",
    PlateClass.ARMED_POLICE: "31",
    PlateClass.COACH: "16",
    PlateClass.TRAILER: "15",
    PlateClass.HONG_KONG: "99",
    PlateClass.MACAU: "99",
    PlateClass.UNPLATED: "41",
    PlateClass.OTHER: "99",
    PlateClass.UNKNOWN: "99",
}

# One pattern per readable class, tried in this order. Every alternative is anchored, at most 8
# characters long and made only of province characters, the class characters and A-Z/0-9 without
# I and O, so a plate can never carry markup, separators or control characters.
_PLATE_CLASS_PATTERNS: dict[PlateClass, re.Pattern[str]] = {
    PlateClass.CIVIL: re.compile(f"^{_PROVINCE}{_ISSUER}{_SERIAL}{{5}}$"),
    PlateClass.NEW_ENERGY: re.compile(f"^{_PROVINCE}{_ISSUER}{_SERIAL}{{6}}$"),
    PlateClass.POLICE: re.compile(f"^{_PROVINCE}{_ISSUER}{_SERIAL}{{4}}警$"),
    # Embassy plates lead with 使 and a numeric serial (使014578); some cameras read them 京A1234使.
    PlateClass.EMBASSY: re.compile(f"^(?:使{_SERIAL}{{6}}|{_PROVINCE}{_ISSUER}{_SERIAL}{{4}}使)$"),
    PlateClass.CONSULATE: re.compile(f"^(?:领{_SERIAL}{{6}}|{_PROVINCE}{_ISSUER}{_SERIAL}{{4}}领)$"),
    PlateClass.EMERGENCY: re.compile(f"^{_PROVINCE}{_ISSUER}{_SERIAL}{{4}}应急$"),
    # WJ, an optional province character (the 2012 format), then five letters or digits.
    PlateClass.ARMED_POLICE: re.compile(f"^WJ{_PROVINCE}?{_SERIAL}{{5}}$"),
    PlateClass.COACH: re.compile(f"^{_PROVINCE}{_ISSUER}{_SERIAL}{{4}}学$"),
    PlateClass.TRAILER: re.compile(f"^{_PROVINCE}{_ISSUER}{_SERIAL}{{4}}挂$"),
    PlateClass.HONG_KONG: re.compile(f"^{_PROVINCE}{_ISSUER}{_SERIAL}{{4}}港$"),
    PlateClass.MACAU: re.compile(f"^{_PROVINCE}{_ISSUER}{_SERIAL}{{4}}澳$"),
}

PLATE_PATTERN = re.compile(
    "^(?:"
    + "|".join(p.pattern.removeprefix("^").removesuffix("$") for p in _PLATE_CLASS_PATTERNS.values())
    + ")$"
)
"""Every plate we accept: civil (7 characters), new-energy (8), police, embassy, consulate, emergency,
armed-police, coach, trailer, Hong Kong and Macau plates."""

PLATE_RAW_PATTERN = "^[0-9A-Za-z\u4e00-\u9fff·_?* -]{1,32}$"
"""The camera's own text of a plate we could not read: letters, digits, CJK and a few separators."""


def classify_plate(plate: str) -> PlateClass | None:
    """The class of a normalized plate, or None when it is no plate we accept."""
    for plate_class, pattern in _PLATE_CLASS_PATTERNS.items():
        if pattern.match(plate):
            return plate_class
    return None


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EventKind(StrEnum):
    """What happened, at the coarsest level."""

    FACE_ACCESS = "face_access"
    VEHICLE_PASS = "vehicle_pass"
    THROWN_OBJECT = "thrown_object"
    EBIKE_SHED = "ebike_shed"
    DEVICE_STATUS = "device_status"
    WATCHLIST_HIT = "watchlist_hit"
    VEHICLE_WATCH_HIT = "vehicle_watch_hit"
    RULE_FIRED = "rule_fired"


class Severity(StrEnum):
    """How urgent the event is. ``critical`` events are alarms: never shed, sent first."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Direction(StrEnum):
    """Movement relative to the compound."""

    IN = "in"
    OUT = "out"
    UNKNOWN = "unknown"


# --- face access -----------------------------------------------------------------------------------


class AccessResult(StrEnum):
    """Outcome of a verification at a pedestrian gate."""

    GRANTED = "granted"
    DENIED = "denied"
    STRANGER = "stranger"


class VerifyMode(StrEnum):
    """How the person was verified (one vocabulary across vendors)."""

    FACE = "face"
    CARD = "card"
    FINGERPRINT = "fingerprint"
    PASSWORD = "password"
    QR_CODE = "qr_code"
    ID_CARD = "id_card"
    REMOTE = "remote"
    COMBINED = "combined"
    UNKNOWN = "unknown"


class PersonType(StrEnum):
    """The role the device has on file for the person."""

    RESIDENT = "resident"
    VISITOR = "visitor"
    BLOCKLIST = "blocklist"
    ADMIN = "admin"
    UNKNOWN = "unknown"


class FaceAccessPayload(_Model):
    """A verification at a face-recognition pedestrian gate."""

    kind: Literal[EventKind.FACE_ACCESS] = EventKind.FACE_ACCESS
    result: AccessResult
    direction: Direction
    verify_mode: VerifyMode
    person_ref: Code | None = Field(
        default=None,
        description="Pseudonymized person identifier (keyed hash of the device's person id); never a name.",
    )
    person_type: PersonType = PersonType.UNKNOWN
    similarity: float | None = Field(default=None, ge=0.0, le=1.0)
    mask: bool | None = None
    door: int | None = Field(default=None, ge=0)


# --- vehicle pass ----------------------------------------------------------------------------------


class PlateColor(StrEnum):
    """Plate colour, one enumeration across every vendor's code table."""

    BLUE = "blue"
    YELLOW = "yellow"
    WHITE = "white"
    BLACK = "black"
    GREEN = "green"
    YELLOW_GREEN = "yellow_green"
    OTHER = "other"
    UNKNOWN = "unknown"

    @property
    def ga1400_code(self) -> str:
        """The GA/T 1400 ColorType code (5 blue, 6 yellow, 2 white, 1 black, 9 green, 99 other)."""
        return _GA1400_PLATE_COLOR[self]


_GA1400_PLATE_COLOR = {
    PlateColor.BLACK: "1",
    PlateColor.WHITE: "2",
    PlateColor.BLUE: "5",
    PlateColor.YELLOW: "6",
    PlateColor.GREEN: "9",
    PlateColor.YELLOW_GREEN: "99",
    PlateColor.OTHER: "99",
    PlateColor.UNKNOWN: "99",
}


class VehicleType(StrEnum):
    """Body class of the vehicle."""

    CAR = "car"
    SUV_MPV = "suv_mpv"
    VAN = "van"
    BUS = "bus"
    TRUCK = "truck"
    MOTORCYCLE = "motorcycle"
    OTHER = "other"
    UNKNOWN = "unknown"


class BarrierAction(StrEnum):
    """What the barrier did for this pass."""

    OPENED = "opened"
    REFUSED = "refused"
    MANUAL = "manual"
    NONE = "none"
    UNKNOWN = "unknown"


class ListType(StrEnum):
    """Which list the plate matched on the barrier."""

    ALLOW = "allow"
    BLOCK = "block"
    TEMPORARY = "temporary"
    VISITOR = "visitor"
    UNKNOWN = "unknown"


class VehiclePassPayload(_Model):
    """A vehicle seen by a licence-plate camera at a barrier gate."""

    kind: Literal[EventKind.VEHICLE_PASS] = EventKind.VEHICLE_PASS
    plate: Annotated[str, StringConstraints(pattern=PLATE_PATTERN.pattern)] | None = Field(
        default=None,
        description="Normalized plate (7 characters, 8 for new-energy, emergency and some armed-police"
        " plates); null when no plate was read.",
    )
    plate_class: PlateClass = Field(
        default=PlateClass.UNKNOWN,
        description="The class the plate text shows; derived from the plate when absent (events before 1.2)."
        " unplated: the camera saw no plate; unknown: it read text that is no plate we accept.",
    )
    plate_raw: Annotated[str, StringConstraints(pattern=PLATE_RAW_PATTERN)] | None = Field(
        default=None, description="The camera's text when no plate could be read from it (sanitized)."
    )
    new_energy: bool = False
    plate_color: PlateColor
    vehicle_type: VehicleType
    direction: Direction
    barrier_action: BarrierAction
    list_type: ListType
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    lane: int | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _derive_plate_class(cls, data: object) -> object:
        # Events before 1.2 carry no class: the plate text tells it, as it does for new events.
        if isinstance(data, dict) and "plate_class" not in data and isinstance(data.get("plate"), str):
            derived = classify_plate(data["plate"])
            if derived is not None:
                return {**data, "plate_class": derived}
        return data

    @model_validator(mode="after")
    def _class_matches_plate(self) -> VehiclePassPayload:
        if self.new_energy and (self.plate is None or len(self.plate) != 8):
            raise ValueError("new_energy plates have 8 characters")
        if self.plate is None:
            if self.plate_class not in {PlateClass.UNPLATED, PlateClass.UNKNOWN}:
                raise ValueError(f"plate_class {self.plate_class} needs a plate")
        elif classify_plate(self.plate) is not self.plate_class:
            raise ValueError(f"plate_class {self.plate_class} does not match the plate")
        if self.new_energy != (self.plate_class is PlateClass.NEW_ENERGY):
            raise ValueError("new_energy is set exactly for new-energy plates")
        return self


# --- thrown object ---------------------------------------------------------------------------------


class TrajectoryPoint(_Model):
    """One point of an object's track; coordinates normalized to 0..1 of the frame."""

    t_ms: int = Field(ge=0)
    x: float = Field(ge=0.0, le=1.0)
    y: float = Field(ge=0.0, le=1.0)


class ThrownObjectPayload(_Model):
    """An object falling from height (高空抛物) seen by a facade camera."""

    kind: Literal[EventKind.THROWN_OBJECT] = EventKind.THROWN_OBJECT
    building: Name | None = None
    unit: Name | None = None
    start_floor: int | None = Field(default=None, ge=-5, le=200, description="estimated start floor")
    floor_range: tuple[int, int] | None = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    trajectory: tuple[TrajectoryPoint, ...] = Field(default=(), max_length=MAX_TRAJECTORY_POINTS)
    frames: int | None = Field(default=None, ge=0)


# --- e-bike shed -----------------------------------------------------------------------------------


class ShedCondition(StrEnum):
    """What an e-bike shed fire/smoke sensor reported."""

    FIRE_ALARM = "fire_alarm"
    HIGH_TEMPERATURE = "high_temperature"
    FAULT = "fault"
    TAMPER = "tamper"
    LOW_BATTERY = "low_battery"
    SELF_TEST = "self_test"
    RECOVERY = "recovery"
    HEARTBEAT = "heartbeat"


class EbikeShedPayload(_Model):
    """A reading or alarm from a fire/smoke/temperature sensor in an e-bike shed."""

    kind: Literal[EventKind.EBIKE_SHED] = EventKind.EBIKE_SHED
    condition: ShedCondition
    smoke_level: float | None = Field(default=None, ge=0.0, description="vendor smoke concentration reading")
    temperature_c: float | None = Field(default=None, ge=-60.0, le=500.0)
    battery_pct: float | None = Field(default=None, ge=0.0, le=100.0)
    fault_detail: Text | None = None


# --- device status ---------------------------------------------------------------------------------


class DeviceState(StrEnum):
    """Whether a device can currently report."""

    ONLINE = "online"
    OFFLINE = "offline"
    FAULT = "fault"


class DeviceStatusPayload(_Model):
    """A device came online, went offline, or reported a fault."""

    kind: Literal[EventKind.DEVICE_STATUS] = EventKind.DEVICE_STATUS
    state: DeviceState
    reason: Text | None = None


# --- watch-list hits (matched inside the compound) ------------------------------------------------


class WatchlistHitPayload(_Model):
    """A face at a gate matched a subject of a district watch list (重点人员).

    Only hits leave the compound: the subject is the district's own reference, the snapshot (when the
    compound's policy sends it) is the matched face cropped from the gate picture, never the whole
    frame and never an embedding.
    """

    kind: Literal[EventKind.WATCHLIST_HIT] = EventKind.WATCHLIST_HIT
    list_id: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    list_version: int = Field(ge=1)
    person_ref: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9:_\-]{0,79}$", description="the district's subject reference"
    )
    distance: float = Field(ge=0.0, le=2.0, description="embedding distance (smaller is closer)")
    threshold: float = Field(gt=0.0, le=2.0)
    source_event_id: str = Field(min_length=8, max_length=64, description="the face_access event matched")
    snapshot_jpeg_b64: str | None = Field(
        default=None,
        max_length=262_144,
        description="the matched face, cropped (absent when policy withholds it)",
    )


class VehicleWatchHitPayload(_Model):
    """A plate at a barrier matched a district plate watch list."""

    kind: Literal[EventKind.VEHICLE_WATCH_HIT] = EventKind.VEHICLE_WATCH_HIT
    list_id: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    list_version: int = Field(ge=1)
    plate: Annotated[str, StringConstraints(pattern=PLATE_PATTERN.pattern)]
    label: str | None = Field(default=None, max_length=120, description="why the plate is listed")
    direction: Direction
    source_event_id: str = Field(min_length=8, max_length=64, description="the vehicle_pass event matched")


# --- local rules (decided inside the compound) -----------------------------------------------------


class RulePhase(StrEnum):
    """Which edge of a rule fired: its match, or its clear condition."""

    FIRED = "fired"
    CLEARED = "cleared"


class RuleActionKind(StrEnum):
    """What a rule's action does."""

    COMMAND = "command"
    MQTT = "mqtt"
    HTTP = "http"


class RuleActionRef(_Model):
    """One action a firing started: what, and where (a device id, a topic or a URL without query)."""

    kind: RuleActionKind
    target: Text


class RuleFiredPayload(_Model):
    """A local rule of the compound fired (or cleared) on an event, without waiting for the district.

    The envelope's device and location are the triggering event's; the actions' outcomes are logged
    and counted by the gateway (a command's own states come from the command plumbing).
    """

    kind: Literal[EventKind.RULE_FIRED] = EventKind.RULE_FIRED
    rule: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="the rule's name in the config"
    )
    phase: RulePhase
    trigger_event_id: str = Field(min_length=8, max_length=64, description="the event that fired it")
    trigger_kind: EventKind
    matched_events: int = Field(
        ge=1, description="matching events counted by the debounce, this one included"
    )
    actions: tuple[RuleActionRef, ...] = Field(default=(), max_length=16)


Payload = Annotated[
    FaceAccessPayload
    | VehiclePassPayload
    | ThrownObjectPayload
    | EbikeShedPayload
    | DeviceStatusPayload
    | WatchlistHitPayload
    | VehicleWatchHitPayload
    | RuleFiredPayload,
    Field(discriminator="kind"),
]


# --- envelope --------------------------------------------------------------------------------------


class Provenance(_Model):
    """Where the event came from, in the vendor's own terms (for audits and debugging)."""

    vendor: Code
    dialect: Code
    event_code: Code | None = None
    device_ref: Code | None = Field(default=None, description="the device's own identity (MAC, serial, IMEI)")


class MediaRef(_Model):
    """A picture or clip that belongs to the event; bytes stay in the compound unless a rule says so."""

    role: Literal["face", "scene", "plate", "trajectory", "clip", "snapshot"]
    ref: Text = Field(description="local:<path in the media store> or device:<vendor key>")
    content_type: Code | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    size: int | None = Field(default=None, ge=0)


class Location(_Model):
    """Where the device stands, from the inventory."""

    building: Name | None = None
    unit: Name | None = None
    gate: Name | None = None
    description: Text | None = None


class Event(_Model):
    """The canonical event: one envelope, one payload."""

    schema_version: Literal["1.0", "1.1", "1.2", "1.3"] = SCHEMA_VERSION
    event_id: str = Field(min_length=8, max_length=64)
    kind: EventKind
    district_id: GbId
    compound_id: GbId
    device_id: GbId
    occurred_at: AwareDatetime
    received_at: AwareDatetime
    severity: Severity
    source: Provenance
    location: Location | None = None
    media: tuple[MediaRef, ...] = Field(default=(), max_length=MAX_MEDIA_PER_EVENT)
    payload: Payload

    @model_validator(mode="after")
    def _kind_matches_payload(self) -> Event:
        if self.payload.kind != self.kind:
            raise ValueError(f"envelope kind {self.kind} does not match payload kind {self.payload.kind}")
        return self

    @property
    def is_alarm(self) -> bool:
        """Alarms (fire, thrown object, watch-list hits) are never shed and go up first."""
        return self.severity is Severity.CRITICAL


def event_json_schema() -> dict[str, object]:
    """The JSON Schema of the canonical event, as published in ``docs/event-schema.json``."""
    schema = Event.model_json_schema()
    schema["$id"] = f"https://compound-gateway.invalid/schema/event/{SCHEMA_VERSION}"
    schema["title"] = f"compound-gateway canonical event {SCHEMA_VERSION}"
    return schema


def utc_now() -> datetime:
    """The current time, time-zone aware (the one clock the runtime reads)."""
    return datetime.now(UTC)
