"""Dead letters: payloads the intake refused, kept (bounded) for inspection and counted.

Each letter keeps the transport, dialect, device, reason, field and detail of the refusal and the
first ``DEAD_LETTER_PAYLOAD_MAX`` bytes of the payload; the table keeps the newest ``keep``
letters. Every refusal is also counted per device and reason (``rejected``), in the same
transaction, so the counter stays exact when old letters are trimmed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from foundation.events import utc_now
from gateway.outbox.counters import count

DEAD_LETTER_PAYLOAD_MAX = 64 * 1024

DDL = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    transport    TEXT NOT NULL,
    dialect      TEXT,
    device       TEXT,
    reason       TEXT NOT NULL,
    field        TEXT,
    detail       TEXT NOT NULL,
    payload      BLOB NOT NULL,
    payload_size INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A payload that was refused, kept for inspection."""

    transport: str
    dialect: str | None
    device: str | None
    reason: str
    field: str | None
    detail: str
    payload: bytes


def add_dead_letter(db: sqlite3.Connection, letter: DeadLetter) -> None:
    """Keep ``letter`` (its payload truncated) and count the refusal; inside the caller's transaction."""
    db.execute(
        "INSERT INTO dead_letters (at, transport, dialect, device, reason, field, detail, payload, payload_size)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        (
            utc_now().isoformat(),
            letter.transport,
            letter.dialect,
            letter.device,
            letter.reason,
            letter.field,
            letter.detail,
            letter.payload[:DEAD_LETTER_PAYLOAD_MAX],
            len(letter.payload),
        ),
    )
    count(db, "rejected", letter.device or "(unknown)", letter.reason)


def trim_dead_letters(db: sqlite3.Connection, keep: int) -> None:
    """Forget all but the newest ``keep`` letters (the counters keep counting them)."""
    db.execute("DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?", (keep,))


def newest_dead_letters(db: sqlite3.Connection, limit: int) -> list[dict[str, object]]:
    """The newest letters, newest first, as column -> value."""
    cursor = db.execute(
        "SELECT id, at, transport, dialect, device, reason, field, detail, payload, payload_size"
        " FROM dead_letters ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def dead_letter_count(db: sqlite3.Connection) -> int:
    """How many letters are kept."""
    (kept,) = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
    return int(kept)
