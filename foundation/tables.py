"""Plain-text tables and CSV for people at a terminal (both sides' command lines).

Written here rather than taken from a table library: the one thing needed beyond str.ljust is
measuring East Asian wide characters (Chinese compound names) so columns stay aligned.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Sequence


def display_width(text: str) -> int:
    """Columns the text takes in a terminal."""
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in {"W", "F"} else 1
    return width


def _pad(text: str, width: int, *, right: bool = False) -> str:
    gap = " " * max(0, width - display_width(text))
    return gap + text if right else text + gap


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[int] = ()
) -> str:
    """An aligned plain-text table (numeric columns right-aligned)."""
    widths = [display_width(h) for h in headers]
    for row in rows:
        widths = [max(w, display_width(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(
            _pad(h, w, right=i in numeric) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = (_pad(c, w, right=i in numeric) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render_csv(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """RFC 4180 CSV with a header row (cells starting with = + - @ are quoted-prefixed against formula injection)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow(["'" + c if c[:1] in {"=", "+", "-", "@"} else c for c in row])
    return buffer.getvalue()
