"""What evidence may leave the compound: a small table of named rules, evaluated here, in the compound.

The district's evidence desk checks its operators too, but the compound never relies on that: a
request is judged again against this table before a single byte is read. Rules are checked in
table order and the first that decides names the decision (``Decision.rule``), which goes into the
answer, the compound's audit and the ``cgw_evidence_requests_total`` metric (a bounded label).

==================  ===================================================================================
rule                decides
==================  ===================================================================================
role_required       the request's role must be ``operator`` or higher (the district's ``Role`` names)
reason_required     an empty or blank reason is refused
face_gate_never     pictures of passers (face gates, watch-list hits) never leave; a hit's cropped face
                    already travels in the hit event itself, its full picture never does
alarm_evidence      snapshot, trajectory, clip and scene of thrown-object events and of fire alarms in
                    e-bike sheds (critical ``ebike_shed`` events) may leave on request
barrier_window      plate and scene pictures of ONE vehicle camera of this compound, in a window of at
                    most ``barrier_window_max_s``, with a reason
default_deny        anything else (other kinds, other roles of an alarm's media, unknown devices)
not_found           no rule: the event is unknown here (only said after role and reason passed, so
                    nobody without a role learns which events exist)
==================  ===================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, get_args

from adapters import DIALECTS
from foundation.events import EventKind, Severity
from uplink.evidence import BarrierWindow, EvidenceRequest, MediaRole

ROLE_REQUIRED: Final = "role_required"
REASON_REQUIRED: Final = "reason_required"
FACE_GATE_NEVER: Final = "face_gate_never"
ALARM_EVIDENCE: Final = "alarm_evidence"
BARRIER_WINDOW: Final = "barrier_window"
DEFAULT_DENY: Final = "default_deny"
NOT_FOUND: Final = "not_found"
RULES: Final = (
    ROLE_REQUIRED,
    REASON_REQUIRED,
    FACE_GATE_NEVER,
    ALARM_EVIDENCE,
    BARRIER_WINDOW,
    DEFAULT_DENY,
    NOT_FOUND,
)
"""Every rule name a decision can carry (the metric's label values)."""

ROLES: Final = ("viewer", "operator", "admin")
"""The district's role names, lowest first (``district.query_model.Role``; the layers keep us apart)."""
MIN_ROLE: Final = "operator"

ALL_MEDIA_ROLES: Final[frozenset[MediaRole]] = frozenset(get_args(MediaRole))
ALARM_MEDIA: Final[frozenset[MediaRole]] = frozenset({"snapshot", "trajectory", "clip", "scene"})
BARRIER_MEDIA: Final[frozenset[MediaRole]] = frozenset({"plate", "scene"})
PASSER_KINDS: Final = frozenset({EventKind.FACE_ACCESS, EventKind.WATCHLIST_HIT})


@dataclass(frozen=True)
class EventFacts:
    """What the policy needs to know about the event a request names."""

    kind: EventKind
    severity: Severity


@dataclass(frozen=True)
class Decision:
    """Whether the media may leave, which rule said so, why, and which media roles."""

    allowed: bool
    rule: str
    detail: str
    roles: frozenset[MediaRole] = frozenset()


def _refuse(rule: str, detail: str) -> Decision:
    return Decision(allowed=False, rule=rule, detail=detail)


def is_alarm_evidence(facts: EventFacts) -> bool:
    """Thrown objects (every one is an alarm) and fire alarms of e-bike sheds."""
    if facts.kind is EventKind.THROWN_OBJECT:
        return True
    return facts.kind is EventKind.EBIKE_SHED and facts.severity is Severity.CRITICAL


def decide(
    request: EvidenceRequest,
    *,
    event: EventFacts | None,
    devices: Mapping[str, str],
    barrier_window_max_s: int,
) -> Decision:
    """Judge one request.

    Args:
        request: as it arrived (its expiry is the service's business, not a rule).
        event: the named event's facts, or None when the compound does not know it (ignored for a
            barrier window).
        devices: this compound's devices, id -> dialect.
        barrier_window_max_s: the longest barrier window allowed.
    """
    role = request.role.strip().lower()
    if role not in ROLES or ROLES.index(role) < ROLES.index(MIN_ROLE):
        return _refuse(ROLE_REQUIRED, f"role {request.role!r} may not ask for evidence (needs {MIN_ROLE})")
    if not request.reason.strip():
        return _refuse(REASON_REQUIRED, "a request needs a reason")
    subject = request.subject
    if isinstance(subject, BarrierWindow):
        return _barrier(subject, devices, barrier_window_max_s)
    if event is None:
        return _refuse(NOT_FOUND, f"no event {subject.event_id} in this compound")
    if event.kind in PASSER_KINDS:
        return _refuse(FACE_GATE_NEVER, f"pictures of {event.kind} events never leave the compound")
    if not is_alarm_evidence(event):
        return _refuse(DEFAULT_DENY, f"no rule lets media of {event.severity} {event.kind} events leave")
    asked = frozenset(subject.roles) or ALARM_MEDIA
    if not asked <= ALARM_MEDIA:
        other = ", ".join(sorted(asked - ALARM_MEDIA))
        return _refuse(DEFAULT_DENY, f"{other} of an alarm is not alarm evidence")
    return Decision(allowed=True, rule=ALARM_EVIDENCE, detail=f"{event.kind} alarm", roles=asked)


def _barrier(window: BarrierWindow, devices: Mapping[str, str], max_s: int) -> Decision:
    dialect = devices.get(window.device_id)
    if dialect is None or dialect not in DIALECTS or DIALECTS[dialect].kind is not EventKind.VEHICLE_PASS:
        return _refuse(DEFAULT_DENY, f"{window.device_id} is no vehicle camera of this compound")
    length = (window.until - window.since).total_seconds()
    if length <= 0:
        return _refuse(BARRIER_WINDOW, "the window ends before it starts")
    if length > max_s:
        return _refuse(BARRIER_WINDOW, f"a window of {length:.0f} s is longer than {max_s} s")
    return Decision(allowed=True, rule=BARRIER_WINDOW, detail=f"{length:.0f} s", roles=BARRIER_MEDIA)
