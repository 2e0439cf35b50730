"""The compound's evidence policy: every event kind x severity x role, barrier windows, reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest

from district.query_model import Role
from foundation.events import EventKind, Severity
from gateway.evidence_policy import (
    ALARM_MEDIA,
    BARRIER_MEDIA,
    ROLES,
    RULES,
    EventFacts,
    decide,
)
from uplink.evidence import BarrierWindow, EventEvidence, EvidenceRequest, MediaRole

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
DEVICES = {
    "31010100001320000001": "vz-lpr-mqtt",
    "31010100001320000002": "hik-isapi-anpr",
    "31010100001240000001": "uface-mqtt",
    "31010100001320000003": "hightoss-mqtt",
}
LPR, ANPR, FACE_GATE, THROWN_CAM = DEVICES
MAX_WINDOW_S = 3600
ROLE_NAMES = (*ROLES, "root", "Viewer", "")

# The table, written out independently of the module: (kind, severity) -> rule for an operator.
EXPECTED_FOR_OPERATOR = {
    (EventKind.THROWN_OBJECT, Severity.INFO): "alarm_evidence",
    (EventKind.THROWN_OBJECT, Severity.WARNING): "alarm_evidence",
    (EventKind.THROWN_OBJECT, Severity.CRITICAL): "alarm_evidence",
    (EventKind.EBIKE_SHED, Severity.CRITICAL): "alarm_evidence",
    (EventKind.EBIKE_SHED, Severity.WARNING): "default_deny",
    (EventKind.EBIKE_SHED, Severity.INFO): "default_deny",
    **{(EventKind.FACE_ACCESS, s): "face_gate_never" for s in Severity},
    **{(EventKind.WATCHLIST_HIT, s): "face_gate_never" for s in Severity},
    **{(EventKind.VEHICLE_PASS, s): "default_deny" for s in Severity},
    **{(EventKind.VEHICLE_WATCH_HIT, s): "default_deny" for s in Severity},
    **{(EventKind.DEVICE_STATUS, s): "default_deny" for s in Severity},
    **{(EventKind.RULE_FIRED, s): "default_deny" for s in Severity},
}


def request(
    subject: EventEvidence | BarrierWindow, *, role: str = "operator", reason: str = "case 2026-114"
) -> EvidenceRequest:
    return EvidenceRequest(
        request_id="req-00000001",
        subject=subject,
        operator="officer-wang",
        role=role,
        reason=reason,
        requested_at=NOW,
        expires_at=NOW + timedelta(hours=1),
    )


def event(roles: tuple[MediaRole, ...] = ()) -> EventEvidence:
    return EventEvidence(event_id="evt-000000000001", roles=roles)


def window(device: str, seconds: float) -> BarrierWindow:
    return BarrierWindow(device_id=device, since=NOW, until=NOW + timedelta(seconds=seconds))


def test_the_expected_table_covers_every_kind_and_severity() -> None:
    """A new EventKind or Severity must be placed in the table (and so in the policy) before it ships."""
    assert set(EXPECTED_FOR_OPERATOR) == {(k, s) for k in EventKind for s in Severity}


def test_role_names_are_the_districts() -> None:
    """The policy's role ladder is the district's ``Role`` in the same order (renaming one there fails here)."""
    assert tuple(r.value for r in Role) == ROLES


@pytest.mark.parametrize("role", ROLE_NAMES)
@pytest.mark.parametrize(("kind", "severity"), sorted(EXPECTED_FOR_OPERATOR))
def test_every_kind_severity_and_role(kind: EventKind, severity: Severity, role: str) -> None:
    """Operator and admin get the kind's rule; anyone else is refused by role_required, whatever the kind.

    Broken on purpose: letting ``viewer`` through (``MIN_ROLE = "viewer"``) fails the viewer rows;
    dropping EBIKE_SHED's severity check fails the non-critical shed rows.
    """
    decision = decide(
        request(event(), role=role),
        event=EventFacts(kind, severity),
        devices=DEVICES,
        barrier_window_max_s=MAX_WINDOW_S,
    )
    expected = EXPECTED_FOR_OPERATOR[kind, severity] if role in {"operator", "admin"} else "role_required"
    assert decision.rule == expected
    assert decision.allowed == (expected == "alarm_evidence")
    assert decision.roles == (ALARM_MEDIA if decision.allowed else frozenset())
    assert decision.rule in RULES


@pytest.mark.parametrize("role", sorted(get_args(MediaRole)))
def test_alarm_roles_one_by_one(role: MediaRole) -> None:
    """Of an alarm, snapshot/trajectory/clip/scene may leave; its face or plate may not."""
    decision = decide(
        request(event((role,))),
        event=EventFacts(EventKind.THROWN_OBJECT, Severity.CRITICAL),
        devices=DEVICES,
        barrier_window_max_s=MAX_WINDOW_S,
    )
    assert decision.allowed == (role in ALARM_MEDIA)
    assert decision.rule == ("alarm_evidence" if role in ALARM_MEDIA else "default_deny")
    assert decision.roles == (frozenset({role}) if decision.allowed else frozenset())


@pytest.mark.parametrize("reason", [" ", "\t\n  "])
def test_blank_reason_refused(reason: str) -> None:
    """A reason of only white space is no reason, for an alarm as for a barrier window."""
    for subject, facts in (
        (event(), EventFacts(EventKind.THROWN_OBJECT, Severity.CRITICAL)),
        (window(LPR, 60), None),
    ):
        decision = decide(
            request(subject, reason=reason), event=facts, devices=DEVICES, barrier_window_max_s=MAX_WINDOW_S
        )
        assert (decision.allowed, decision.rule) == (False, "reason_required")


def test_unknown_event_is_not_found_only_for_a_role() -> None:
    """An unknown event is NOT_FOUND for an operator; a viewer learns nothing (role_required)."""
    for role, rule in (("operator", "not_found"), ("viewer", "role_required")):
        decision = decide(
            request(event(), role=role), event=None, devices=DEVICES, barrier_window_max_s=MAX_WINDOW_S
        )
        assert (decision.allowed, decision.rule) == (False, rule)


@pytest.mark.parametrize(
    ("device", "seconds", "allowed", "rule"),
    [
        (LPR, 60, True, "barrier_window"),
        (ANPR, MAX_WINDOW_S, True, "barrier_window"),
        (LPR, MAX_WINDOW_S + 1, False, "barrier_window"),
        (LPR, 0, False, "barrier_window"),
        (LPR, -60, False, "barrier_window"),
        (FACE_GATE, 60, False, "default_deny"),
        (THROWN_CAM, 60, False, "default_deny"),
        ("31010100001320000099", 60, False, "default_deny"),
    ],
)
def test_barrier_windows(device: str, seconds: float, allowed: bool, rule: str) -> None:
    """One vehicle camera of this compound, a window of at most the maximum; faces gates and unknown devices never.

    Broken on purpose: ``length > max_s * 2`` lets the one-second-too-long row through; ``>=`` refuses
    the exactly-maximal one.
    """
    decision = decide(
        request(window(device, seconds)), event=None, devices=DEVICES, barrier_window_max_s=MAX_WINDOW_S
    )
    assert (decision.allowed, decision.rule) == (allowed, rule)
    assert decision.roles == (BARRIER_MEDIA if allowed else frozenset())


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_barrier_window_needs_a_role(role: str) -> None:
    """A barrier window is an operator's (or admin's) request like any other."""
    decision = decide(
        request(window(LPR, 60), role=role), event=None, devices=DEVICES, barrier_window_max_s=MAX_WINDOW_S
    )
    assert decision.allowed == (role in {"operator", "admin"})
    assert decision.rule == ("barrier_window" if decision.allowed else "role_required")
