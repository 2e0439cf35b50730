"""The city link's reading of VIID answers: status lists, the clock, and matching statuses to objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from district.city.delivery import match_answers
from district.city.model import Category, CityObject, ObjectResult, Outcome, QueuedObject
from district.city.session import CityUnavailableError, StatusAnswer, parse_statuses, parse_system_time

SHANGHAI = ZoneInfo("Asia/Shanghai")
ID_A = "330106000111900001010220250612083512000070200001"
ID_B = "330106000111900001010220250612083512000070200002"
ID_C = "330106000111900001010220250612083512000070200003"


def _status(object_id: str, code: object, text: str = "") -> dict[str, object]:
    return {"Id": object_id, "RequestURL": "/VIID/MotorVehicles", "StatusCode": code, "StatusString": text}


def test_a_status_list_is_read_entry_by_entry() -> None:
    """``ResponseStatusListObject`` with a list: every entry, codes as strings whether sent as "0" or 0."""
    document = {
        "ResponseStatusListObject": {
            "ResponseStatusObject": [_status(ID_A, "0", "OK"), _status(ID_B, 4, "PlateNo invalid")]
        }
    }
    assert parse_statuses(document) == [
        StatusAnswer(ID_A, "0", "OK"),
        StatusAnswer(ID_B, "4", "PlateNo invalid"),
    ]


@pytest.mark.parametrize(
    "document",
    [
        {"ResponseStatusObject": _status(ID_A, "0")},
        {"ResponseStatusListObject": {"ResponseStatusObject": _status(ID_A, "0")}},
        {"ResponseStatusObject": [_status(ID_A, "0")]},
    ],
    ids=["single", "list-holding-one-object", "single-wrapper-holding-a-list"],
)
def test_a_single_status_object_is_read_too(document: dict[str, object]) -> None:
    """Servers answer a one-object batch with a bare ``ResponseStatusObject``, or wrap it oddly: all read."""
    assert parse_statuses(document) == [StatusAnswer(ID_A, "0", "")]


@pytest.mark.parametrize("document", [[], "0", {"Other": 1}, {"ResponseStatusListObject": 3}, None])
def test_an_answer_without_statuses_has_none(document: object) -> None:
    """Anything else is no status at all (the delivery then treats its objects as unanswered)."""
    assert parse_statuses(document) == []


def test_the_clock_as_fourteen_characters_in_its_zone() -> None:
    """``LocalTime`` yyyyMMddHHmmss is read in its ``TimeZone`` (UTC+8 here), else in the district's zone."""
    with_zone = {"SystemTimeObject": {"LocalTime": "20250612083000", "TimeZone": "UTC+8", "TimeMode": "0"}}
    assert parse_system_time(with_zone, ZoneInfo("UTC")) == datetime(2025, 6, 12, 0, 30, tzinfo=UTC)
    without = {"SystemTimeObject": {"LocalTime": "20250612083000"}}
    assert parse_system_time(without, SHANGHAI) == datetime(2025, 6, 12, 0, 30, tzinfo=UTC)
    west = {"SystemTimeObject": {"LocalTime": "20250612083000", "TimeZone": "GMT-05:30"}}
    assert parse_system_time(west, SHANGHAI) == datetime(2025, 6, 12, 14, 0, tzinfo=UTC)


@pytest.mark.parametrize("local", [1749688200000, "1749688200000"], ids=["number", "string"])
def test_the_clock_as_epoch_milliseconds(local: object) -> None:
    """One server sends ``LocalTime`` as epoch milliseconds (device-protocols.md §5.2 conflict)."""
    document = {"SystemTimeObject": {"LocalTime": local, "TimeZone": "UTC+8"}}
    assert parse_system_time(document, SHANGHAI) == datetime(2025, 6, 12, 0, 30, tzinfo=UTC)


def test_the_clock_under_a_top_level_system_time() -> None:
    """The Dahua client reads a top-level ``SystemTime``: accepted as well."""
    document = {"SystemTime": {"LocalTime": "20250612083000", "TimeZone": "UTC+8"}}
    assert parse_system_time(document, SHANGHAI) == datetime(2025, 6, 12, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"SystemTimeObject": {"LocalTime": "2025-06-12T08:30:00"}},
        {"SystemTimeObject": {"LocalTime": "20251312083000"}},
        {"SystemTimeObject": {"LocalTime": True}},
        {"SystemTimeObject": "20250612083000"},
        {"SystemTimeObject": {"LocalTime": "20250612083000", "TimeZone": "UTC+24"}},
        {"SystemTimeObject": {"LocalTime": 10**20}},
        {"SystemTimeObject": {"LocalTime": -(10**20)}},
        {"SystemTimeObject": {"LocalTime": float("nan")}},
        {"SystemTimeObject": {"LocalTime": float("inf")}},
    ],
)
def test_an_unreadable_clock_is_no_answer(document: object) -> None:
    """RFC 3339 times (the unreliable simulator's), impossible dates or zones, epoch ms past any date.

    Every one of them is ``CityUnavailableError``, which the keeper takes as "no answer". Checked to
    fail: without the ``ValueError``/``OverflowError``/``OSError`` catch in ``parse_system_time``,
    "UTC+24" raised ValueError and 10**20 OverflowError, which ended the keeper and the service.
    """
    with pytest.raises(CityUnavailableError):
        parse_system_time(document, SHANGHAI)


def _queued(seq: int, object_id: str) -> QueuedObject:
    body: dict[str, object] = {"MotorVehicleID": object_id}
    at = datetime(2025, 6, 12, tzinfo=UTC) + timedelta(seconds=seq)
    return QueuedObject(
        seq, 0, CityObject(Category.MOTOR_VEHICLE, object_id, f"event-{seq}", body, at, "vehicle_pass")
    )


def test_each_object_gets_the_status_naming_its_id() -> None:
    """Matched by Id, not by position: 0 accepted, other codes refused with code and text, silence unanswered.

    The answer lists B before A and names an id the batch never held (ignored). Checked to fail:
    matching by position instead of by Id settles A with B's refusal.
    """
    batch = [_queued(1, ID_A), _queued(2, ID_B), _queued(3, ID_C)]
    answers = [
        StatusAnswer(ID_B, "4", "PlateColor not in the code table"),
        StatusAnswer(ID_A, "0", "OK"),
        StatusAnswer("330106000111900001010220250612083512000070200009", "0", "OK"),
    ]
    assert match_answers(batch, answers) == [
        ObjectResult(1, Outcome.ACCEPTED),
        ObjectResult(2, Outcome.REFUSED, "4 PlateColor not in the code table"),
        ObjectResult(3, Outcome.UNANSWERED, "the city's answer did not name it"),
    ]


def test_no_statuses_leave_every_object_unanswered() -> None:
    """A 200 with no status list settles nothing as done: every object is sent again."""
    batch = [_queued(1, ID_A), _queued(2, ID_B)]
    assert match_answers(batch, []) == [
        ObjectResult(1, Outcome.UNANSWERED, "the city's answer did not name it"),
        ObjectResult(2, Outcome.UNANSWERED, "the city's answer did not name it"),
    ]


def test_a_single_refusal_for_the_whole_request_refuses_every_object() -> None:
    """One non-zero status naming none of the objects (the envelope refused): each object refused with it.

    Left unanswered, such a batch would go again and again and hold up the objects queued behind
    it. Checked to fail: without the whole-request rule both objects come back unanswered.
    """
    batch = [_queued(1, ID_A), _queued(2, ID_B)]
    answers = [StatusAnswer("", "8", "body must be MotorVehicleListObject")]
    assert match_answers(batch, answers) == [
        ObjectResult(1, Outcome.REFUSED, "8 body must be MotorVehicleListObject"),
        ObjectResult(2, Outcome.REFUSED, "8 body must be MotorVehicleListObject"),
    ]
    # a status of 0 for the request as a whole says nothing of each object: sent again
    assert match_answers(batch, [StatusAnswer("", "0", "OK")]) == [
        ObjectResult(1, Outcome.UNANSWERED, "the city's answer did not name it"),
        ObjectResult(2, Outcome.UNANSWERED, "the city's answer did not name it"),
    ]
