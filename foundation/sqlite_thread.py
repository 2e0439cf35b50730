"""A SQLite file owned by one thread: the pattern of the embedded store and the ingester's state.

WAL and ``synchronous=FULL``, so a committed transaction is on disk when ``call`` returns; every
call runs in the one thread, so the event loop never waits on disk and the connection is never
shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

T = TypeVar("T")


def sortable_time(moment: datetime) -> str:
    """A time as stored text: one fixed form (UTC, microseconds), so that text order is time order in SQL."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def time_from_text(text: str | None) -> datetime | None:
    """A time stored by ``sortable_time`` (or NULL) read back."""
    return datetime.fromisoformat(text) if text else None


def open_durable(path: Path, schema: str) -> sqlite3.Connection:
    """Open (creating if needed) a SQLite file in WAL mode with ``synchronous=FULL`` and apply ``schema``.

    The connection is in autocommit mode (``isolation_level=None``): writers open their own
    ``transaction``. It waits up to 30 s for another connection's write lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db


class SqliteThread:
    """Open on enter, close on exit; ``call`` runs a function with the connection in the thread."""

    def __init__(self, path: Path, schema: str, name: str) -> None:
        self.path = path
        self._schema = schema
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._db: sqlite3.Connection | None = None

    async def __aenter__(self) -> Self:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        self._db = open_durable(self.path, self._schema)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def call(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``function(connection)`` in the file's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._with_db, function)

    def _with_db(self, function: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            raise sqlite3.ProgrammingError(f"{self.path} is not open")
        return function(self._db)


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SqliteBacked:
    """A component whose state is one ``SqliteThread`` file, open for the ``async with`` block."""

    def __init__(self, path: Path, schema: str, name: str) -> None:
        self.path = path
        self._file = SqliteThread(path, schema, name)

    async def __aenter__(self) -> Self:
        await self._file.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._file.__aexit__(exc_type, exc, tb)

    async def ping(self) -> None:
        """A trivial query in the file's thread (readiness checks); raises ``sqlite3.Error`` if it fails."""
        await self._file.call(_select_one)


def _select_one(db: sqlite3.Connection) -> None:
    db.execute("SELECT 1").fetchone()
