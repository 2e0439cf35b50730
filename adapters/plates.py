"""Licence-plate normalization shared by the vehicle dialects."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from foundation.errors import PayloadRejected
from foundation.events import PlateClass, classify_plate

NO_PLATE = {
    "",
    "无车牌",
    "无牌",
    "无牌车",
    "车牌",
    "unknown",
    "none",
    "noplate",
    "nopalte",
}
"""What cameras send for a vehicle without a plate (nopalte is a firmware typo seen in the field)."""

UNREAD = {"未识别", "识别失败", "未知"}
"""What cameras send when a plate was there but could not be read."""

MAX_RAW_CHARS = 32
# Anything outside letters, digits, CJK and a few separators becomes "?" in the kept raw text: it is
# shown to operators and written to stores, so it must not carry markup or quoting characters.
_RAW_UNSAFE = re.compile("[^0-9A-Za-z\u4e00-\u9fff·_?* -]")


@dataclass(frozen=True, slots=True)
class NormalizedPlate:
    """A camera's plate text after normalization.

    Attributes:
        plate: The normalized plate, or None when no plate was read.
        plate_class: The class the plate shows (``unplated`` / ``unknown`` without a plate).
        raw: The camera's own text, sanitized and bounded, when no plate could be read from it.
    """

    plate: str | None
    plate_class: PlateClass
    raw: str | None = None

    @property
    def new_energy(self) -> bool:
        """Whether this is a new-energy (green) plate."""
        return self.plate_class is PlateClass.NEW_ENERGY


def normalize_plate(text: str | None, field: str) -> NormalizedPlate:
    """A vendor plate string -> the normalized plate with its class.

    Full-width letters and digits become ASCII, separators (``·``, space, ``-``) go, letters are upper
    case. Text that is no plate we accept keeps the passage: the plate is None, the class ``unknown``
    and the text is kept (sanitized) as ``raw``, so that garbage never becomes a searchable plate.

    Raises:
        PayloadRejected: ``bad_plate`` for text with control characters or longer than 32 characters,
            which no camera sends for a plate it merely failed to read.
    """
    if text is None:
        return NormalizedPlate(None, PlateClass.UNPLATED)
    if len(text) > MAX_RAW_CHARS or any(unicodedata.category(c) in {"Cc", "Cf", "Cs", "Co"} for c in text):
        raise PayloadRejected("bad_plate", f"not a short printable text (max {MAX_RAW_CHARS})", field=field)
    cleaned = unicodedata.normalize("NFKC", text).strip()
    token = cleaned.lower().replace(" ", "")
    if token in NO_PLATE:
        return NormalizedPlate(None, PlateClass.UNPLATED, _raw(cleaned))
    plate = cleaned.replace("·", "").replace("•", "").replace(" ", "").replace("-", "").upper()
    plate_class = None if token in UNREAD else classify_plate(plate)
    if plate_class is None:
        return NormalizedPlate(None, PlateClass.UNKNOWN, _raw(cleaned))
    return NormalizedPlate(plate, plate_class)


def _raw(cleaned: str) -> str | None:
    safe = _RAW_UNSAFE.sub("?", cleaned)[:MAX_RAW_CHARS].strip()
    return safe or None
