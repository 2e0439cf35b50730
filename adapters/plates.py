"""Licence-plate normalization shared by the vehicle dialects."""

from __future__ import annotations

import unicodedata

from foundation.errors import PayloadRejected
from foundation.events import PLATE_PATTERN

NO_PLATE = {"", "无车牌", "无牌", "未识别", "车牌", "unknown", "none", "noplate", "nopalte"}


def normalize_plate(text: str | None, field: str) -> tuple[str | None, bool]:
    """A vendor plate string -> (normalized plate or None when no plate was read, is new-energy).

    Full-width letters and digits become ASCII, separators (``·``, space, ``-``) go, letters are upper
    case. A string that is neither "no plate" nor a valid civil plate is rejected, so that garbage
    never becomes a searchable plate.
    """
    if text is None:
        return None, False
    cleaned = unicodedata.normalize("NFKC", text).strip()
    if cleaned.lower().replace(" ", "") in NO_PLATE:
        return None, False
    cleaned = cleaned.replace("·", "").replace("•", "").replace(" ", "").replace("-", "").upper()
    if not PLATE_PATTERN.match(cleaned):
        raise PayloadRejected("bad_plate", f"{text[:20]!r} is not a valid Chinese plate", field=field)
    return cleaned, len(cleaned) == 8
