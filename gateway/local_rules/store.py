"""The rules' durable state: debounce windows, cooldowns, latches, how far the outbox was read, action outcomes.

One SQLite file under the state dir (``rules.db``), owned by a ``SqliteThread``: the event loop never
waits on disk. The states and the outbox cursor are written in one transaction after each evaluated
batch (and its ``rule_fired`` events committed), so a restart resumes exactly where it stood: a
cooldown that was running still runs, a latched rule stays latched.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from foundation.events import Event, utc_now
from foundation.sqlite_thread import SqliteBacked, transaction
from gateway.local_rules.engine import RuleState, StateKey

SCHEMA = """
CREATE TABLE IF NOT EXISTS rule_state (
    rule           TEXT NOT NULL,
    device         TEXT NOT NULL,
    window_opened  REAL,
    window_count   INTEGER NOT NULL,
    pending        BLOB,
    last_fired     REAL,
    latched        INTEGER NOT NULL,
    PRIMARY KEY (rule, device)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS action_results (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL,
    firing_id  TEXT NOT NULL,
    rule       TEXT NOT NULL,
    action     INTEGER NOT NULL,
    type       TEXT NOT NULL,
    target     TEXT NOT NULL,
    ok         INTEGER NOT NULL,
    detail     TEXT NOT NULL
);
"""
ACTION_RESULTS_KEEP = 10_000
CURSOR_KEY = "outbox_cursor"


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What became of one action of one firing."""

    firing_id: str
    rule: str
    action: int
    type: str
    target: str
    ok: bool
    detail: str
    at: str = ""


class RuleStore(SqliteBacked):
    """``rules.db``: open with ``async with``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA, "local-rules")

    async def load(self, rules: set[str]) -> tuple[dict[StateKey, RuleState], int | None]:
        """The states of the configured rules (others are forgotten) and the outbox cursor."""

        def read(db: sqlite3.Connection) -> tuple[dict[StateKey, RuleState], int | None]:
            with transaction(db):
                names = list(rules)
                marks = ",".join("?" * len(names))
                db.execute(f"DELETE FROM rule_state WHERE rule NOT IN ({marks})", names)  # noqa: S608 - placeholders
                rows = db.execute(
                    "SELECT rule, device, window_opened, window_count, pending, last_fired, latched FROM rule_state"
                ).fetchall()
                cursor = db.execute("SELECT value FROM meta WHERE key=?", (CURSOR_KEY,)).fetchone()
            states = {
                (rule, device): RuleState(
                    window_opened=opened,
                    window_count=count,
                    pending=Event.model_validate_json(pending) if pending is not None else None,
                    last_fired=fired,
                    latched=bool(latched),
                )
                for rule, device, opened, count, pending, fired, latched in rows
            }
            return states, int(cursor[0]) if cursor is not None else None

        return await self._file.call(read)

    async def save(self, changed: dict[StateKey, RuleState | None], cursor: int) -> None:
        """Write the changed states and the cursor in one transaction."""
        rows = [
            (
                rule,
                device,
                s.window_opened,
                s.window_count,
                s.pending.model_dump_json().encode() if s.pending is not None else None,
                s.last_fired,
                int(s.latched),
            )
            for (rule, device), s in changed.items()
            if s is not None
        ]
        gone = [key for key, s in changed.items() if s is None]

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.executemany("INSERT OR REPLACE INTO rule_state VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                db.executemany("DELETE FROM rule_state WHERE rule=? AND device=?", gone)
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (CURSOR_KEY, str(cursor)))

        await self._file.call(write)

    async def record(self, result: ActionResult) -> None:
        """Keep an action's outcome (the newest ``ACTION_RESULTS_KEEP``)."""

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.execute(
                    "INSERT INTO action_results (at, firing_id, rule, action, type, target, ok, detail)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        utc_now().isoformat(),
                        result.firing_id,
                        result.rule,
                        result.action,
                        result.type,
                        result.target,
                        int(result.ok),
                        result.detail,
                    ),
                )
                db.execute(
                    "DELETE FROM action_results WHERE seq <= (SELECT MAX(seq) FROM action_results) - ?",
                    (ACTION_RESULTS_KEEP,),
                )

        await self._file.call(write)

    async def results(self, limit: int = 100) -> list[ActionResult]:
        """The newest action outcomes, newest first."""

        def read(db: sqlite3.Connection) -> list[ActionResult]:
            rows = db.execute(
                "SELECT firing_id, rule, action, type, target, ok, detail, at FROM action_results"
                " ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [ActionResult(f, r, a, t, tg, bool(ok), d, at) for f, r, a, t, tg, ok, d, at in rows]

        return await self._file.call(read)
