"""Counters kept in the outbox file, written in the same transaction as what they count.

A counter is a name and two labels (``a``, ``b``; empty when unused): ``stored`` per kind and
device, ``duplicates`` per device, ``shed`` per kind, ``rejected`` per device and reason, and
whatever the watch side names for the work it sheds. Keeping them in the file (not in memory)
means they survive restarts and agree with the rows they describe.
"""

from __future__ import annotations

import sqlite3

DDL = """
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT NOT NULL,
    a     TEXT NOT NULL,
    b     TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (name, a, b)
);
"""

Counters = dict[tuple[str, str, str], int]


def count(db: sqlite3.Connection, name: str, a: str, b: str, by: int = 1) -> None:
    """Add ``by`` to the counter ``(name, a, b)``; call inside the transaction that does the counted thing."""
    db.execute(
        "INSERT INTO counters VALUES (?,?,?,?) ON CONFLICT (name, a, b) DO UPDATE SET value = value + ?",
        (name, a, b, by, by),
    )


def read_counters(db: sqlite3.Connection) -> Counters:
    """Every counter, keyed by ``(name, a, b)``."""
    return {(n, a, b): v for n, a, b, v in db.execute("SELECT name, a, b, value FROM counters")}
