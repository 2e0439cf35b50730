"""A durable queue of work queued with events: what to look at, for which event, oldest first.

The queue does not decide what is worth queueing, nor what a kind of work means: the watch side
(``gateway/watch_subjects.py``) turns an event into ``WatchWork`` and the matcher consumes it. The
outbox writes the work in the same transaction as its event, so a crash cannot keep one without the
other; the consumer deletes what it has done. A backlog of one kind can be bounded (``shed``): the
oldest work of that kind beyond the bound is dropped and counted under the name the caller gives.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.outbox.counters import count

# The kinds are checked in the table because outbox files already carry this constraint; a new kind
# of work needs a schema version (SQLite cannot change a CHECK in place).
DDL = """
CREATE TABLE IF NOT EXISTS watch_queue (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('face', 'plate')),
    subject      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    occurred_at  TEXT NOT NULL,
    direction    TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class WatchWork:
    """Work to queue with one event: its kind, what to look at, and the event's direction."""

    kind: str
    subject: str  # e.g. a picture's path in the media store, or a plate
    direction: str


@dataclass(frozen=True, slots=True)
class WatchItem:
    """A queued piece of work, with the event it belongs to."""

    seq: int
    event_id: str
    kind: str
    subject: str
    device_id: str
    occurred_at: str
    direction: str


def enqueue_watch(
    db: sqlite3.Connection, work: WatchWork, *, event_id: str, device_id: str, occurred_at: str
) -> None:
    """Queue ``work`` for an event; inside the transaction that stores the event."""
    db.execute(
        "INSERT INTO watch_queue (event_id, kind, subject, device_id, occurred_at, direction)"
        " VALUES (?,?,?,?,?,?)",
        (event_id, work.kind, work.subject, device_id, occurred_at, work.direction),
    )


def oldest_watch_items(db: sqlite3.Connection, limit: int) -> list[WatchItem]:
    """The oldest queued work, oldest first."""
    rows = db.execute(
        "SELECT seq, event_id, kind, subject, device_id, occurred_at, direction FROM watch_queue"
        " ORDER BY seq LIMIT ?",
        (limit,),
    ).fetchall()
    return [WatchItem(*row) for row in rows]


def finish_watch_items(db: sqlite3.Connection, seqs: Sequence[int]) -> None:
    """Forget finished work; inside a transaction."""
    db.executemany("DELETE FROM watch_queue WHERE seq = ?", [(s,) for s in seqs])


def waiting(db: sqlite3.Connection, kind: str) -> int:
    """How much work of ``kind`` is queued."""
    (queued,) = db.execute("SELECT count(*) FROM watch_queue WHERE kind = ?", (kind,)).fetchone()
    return int(queued)


def shed_watch_items(db: sqlite3.Connection, kind: str, keep: int, *, counted_as: str) -> int:
    """Drop the oldest work of ``kind`` beyond ``keep``, counted as ``(counted_as, "", "")``.

    Call inside a write transaction; other kinds are left alone. Returns how many were dropped.
    """
    excess = waiting(db, kind) - keep
    if excess <= 0:
        return 0
    db.execute(
        "DELETE FROM watch_queue WHERE seq IN (SELECT seq FROM watch_queue WHERE kind = ? ORDER BY seq LIMIT ?)",
        (kind, excess),
    )
    count(db, counted_as, "", "", excess)
    return excess
