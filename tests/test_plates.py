"""The plate normalizer: every plate class the field reports, unreadable plates, and garbage."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.plates import MAX_RAW_CHARS, normalize_plate
from foundation.errors import PayloadRejected
from foundation.events import (
    PLATE_PATTERN,
    PLATE_RAW_PATTERN,
    BarrierAction,
    Direction,
    ListType,
    PlateClass,
    PlateColor,
    VehiclePassPayload,
    VehicleType,
    classify_plate,
)


def _payload(text: str | None) -> VehiclePassPayload:
    read = normalize_plate(text, "license")
    return VehiclePassPayload(
        plate=read.plate,
        plate_class=read.plate_class,
        plate_raw=read.raw,
        new_energy=read.new_energy,
        plate_color=PlateColor.OTHER,
        vehicle_type=VehicleType.CAR,
        direction=Direction.IN,
        barrier_action=BarrierAction.NONE,
        list_type=ListType.UNKNOWN,
    )


@pytest.mark.parametrize(
    ("text", "plate", "plate_class"),
    [
        ("浙A12345", "浙A12345", PlateClass.CIVIL),
        ("浙A·12345", "浙A12345", PlateClass.CIVIL),
        ("京ＡＤ１２３４５", "京AD12345", PlateClass.NEW_ENERGY),
        ("沪A1234警", "沪A1234警", PlateClass.POLICE),
        ("使014578", "使014578", PlateClass.EMBASSY),
        ("京A1234使", "京A1234使", PlateClass.EMBASSY),
        ("沪A0123领", "沪A0123领", PlateClass.CONSULATE),
        ("粤B1234应急", "粤B1234应急", PlateClass.EMERGENCY),
        ("WJ京12345", "WJ京12345", PlateClass.ARMED_POLICE),
        ("wj 01234", "WJ01234", PlateClass.ARMED_POLICE),
        ("苏E1234学", "苏E1234学", PlateClass.COACH),
        ("鲁Q-5678挂", "鲁Q5678挂", PlateClass.TRAILER),
        ("粤Z1234港", "粤Z1234港", PlateClass.HONG_KONG),
        ("粤Z5678澳", "粤Z5678澳", PlateClass.MACAU),
    ],
)
def test_each_class_is_accepted(text: str, plate: str, plate_class: PlateClass) -> None:
    """Every class the barrier cameras report is read, with its class, and fits the event model."""
    read = normalize_plate(text, "license")
    assert (read.plate, read.plate_class, read.raw) == (plate, plate_class, None)
    assert read.new_energy == (plate_class is PlateClass.NEW_ENERGY)
    assert _payload(text).plate == plate


@pytest.mark.parametrize("text", [None, "", "无牌车", "无车牌", "NoPlate", " none "])
def test_no_plate_is_unplated(text: str | None) -> None:
    """A vehicle without a plate keeps its passage, with no plate and the unplated class."""
    read = normalize_plate(text, "license")
    assert read.plate is None
    assert read.plate_class is PlateClass.UNPLATED
    assert _payload(text).plate_class.ga1400_code == "41"


@pytest.mark.parametrize(
    ("text", "raw"),
    [
        ("浙A1?#<3", "浙A1???3"),
        ("DROP TABLE", "DROP TABLE"),
        ("未识别", "未识别"),
        ("浙I12345", "浙I12345"),
        ('浙A"12345', "浙A?12345"),
        ("浙a12345;", "浙a12345?"),
    ],
)
def test_unreadable_plate_keeps_the_passage(text: str, raw: str) -> None:
    """Text that is no plate is not a plate (never searchable) but is kept, sanitized, as plate_raw."""
    read = normalize_plate(text, "license")
    assert (read.plate, read.plate_class, read.raw) == (None, PlateClass.UNKNOWN, raw)
    assert _payload(text).plate_raw == raw


@pytest.mark.parametrize("text", ["浙A\x0012345", "浙A12345\n", "浙A\u200b12345", "浙A12345" * 5])
def test_garbage_is_rejected(text: str) -> None:
    """Control and format characters and over-long text are no plate a camera reads: a dead letter."""
    with pytest.raises(PayloadRejected) as caught:
        normalize_plate(text, "license")
    assert caught.value.rejection.reason == "bad_plate"


def test_ga1400_codes() -> None:
    """Classes with a GA 24.7 code in the reference carry it; the others go up as 99 (其他)."""
    assert PlateClass.POLICE.ga1400_code == "23"
    assert PlateClass.ARMED_POLICE.ga1400_code == "31"
    assert PlateClass.COACH.ga1400_code == "16"
    assert PlateClass.TRAILER.ga1400_code == "15"
    assert PlateClass.HONG_KONG.ga1400_code == "99"
    assert all(c.ga1400_code.isdigit() for c in PlateClass)


@given(st.text(max_size=MAX_RAW_CHARS))
def test_any_short_text_is_a_plate_unreadable_or_rejected(text: str) -> None:
    """Whatever a camera sends, the result fits the event model, and a plate is always a valid plate."""
    try:
        read = normalize_plate(text, "license")
    except PayloadRejected as exc:
        assert exc.rejection.reason == "bad_plate"
        return
    if read.plate is not None:
        assert PLATE_PATTERN.match(read.plate)
        assert classify_plate(read.plate) is read.plate_class
        assert len(read.plate) <= 8
    if read.raw is not None:
        assert re.match(PLATE_RAW_PATTERN, read.raw)
    _payload(text)
