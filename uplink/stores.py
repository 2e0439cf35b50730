"""District event stores: InfluxDB (v1 API, v2 API) and an embedded SQLite store.

Every store is idempotent: writing an event twice leaves one copy, so a redelivered batch is
harmless. A write returns only once the store has confirmed it; errors say whether retrying can
help (a server down, a timeout) or not (a malformed point, a revoked credential, a missing database).
"""

from __future__ import annotations

import base64
import io
import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import aiohttp

from foundation.errors import UplinkError
from foundation.events import Event
from foundation.sqlite_thread import SqliteBacked, transaction
from uplink.config import InfluxV1StoreConfig, InfluxV2StoreConfig, SqliteStoreConfig, StoreConfig
from uplink.lineprotocol import point_time_ns, to_lines

T = TypeVar("T")


class StoreError(UplinkError):
    """A write was not confirmed."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class EventStore(Protocol):
    """Where the district keeps events."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def write(self, events: Sequence[Event]) -> None:
        """Store the events durably (idempotent); raise ``StoreError`` if not confirmed."""
        ...

    async def ping(self) -> None:
        """Check the store answers (readiness); raise ``StoreError`` if not."""
        ...


class SqliteStore(SqliteBacked):
    """The embedded store (no server needed): one table, unique by event id."""

    def __init__(self, config: SqliteStoreConfig) -> None:
        super().__init__(config.path, SQLITE_SCHEMA, "sqlite-store")

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        await self._file.call(migrate_sqlite_store)
        return self

    async def call(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``function(connection)`` in the store's thread (the query layer reads this way)."""
        return await self._file.call(function)

    async def write(self, events: Sequence[Event]) -> None:
        """Insert the events in one transaction (existing event ids are left as they are)."""
        rows = [sqlite_row(e) for e in events]

        def insert(db: sqlite3.Connection) -> None:
            with transaction(db):
                db.executemany(SQLITE_INSERT, rows)

        try:
            await self._file.call(insert)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}", retryable=True) from exc

    async def ping(self) -> None:
        """A trivial query in the store's thread."""
        try:
            await super().ping()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}", retryable=True) from exc


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id    TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    district_id TEXT NOT NULL,
    compound_id TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    severity    TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body        TEXT NOT NULL
);
"""
# Columns added for the query layer (schema 2); ``migrate_sqlite_store`` adds them to older files.
# time_ns is the same point time InfluxDB gets, so both stores order and page identically.
SQLITE_QUERY_COLUMNS = (("time_ns", "INTEGER"), ("plate", "TEXT"), ("person_ref", "TEXT"))
SQLITE_INSERT = (
    "INSERT OR IGNORE INTO events (event_id, kind, district_id, compound_id, device_id, severity,"
    " occurred_at, received_at, body, time_ns, plate, person_ref) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
SQLITE_INDEXES = """
CREATE INDEX IF NOT EXISTS events_by_time ON events (time_ns);
CREATE INDEX IF NOT EXISTS events_by_compound ON events (compound_id, kind, time_ns);
CREATE INDEX IF NOT EXISTS events_by_device ON events (device_id, time_ns);
CREATE INDEX IF NOT EXISTS events_by_plate ON events (plate, time_ns) WHERE plate IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_person ON events (person_ref, time_ns) WHERE person_ref IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_severity ON events (severity, time_ns);
"""


def sqlite_row(event: Event) -> tuple[str | int | None, ...]:
    """One event as a row of the embedded store."""
    payload = event.payload
    return (
        event.event_id,
        event.kind.value,
        event.district_id,
        event.compound_id,
        event.device_id,
        event.severity.value,
        event.occurred_at.isoformat(),
        event.received_at.isoformat(),
        event.model_dump_json(),
        point_time_ns(event),
        getattr(payload, "plate", None),
        getattr(payload, "person_ref", None),
    )


def migrate_sqlite_store(db: sqlite3.Connection) -> None:
    """Bring an embedded store file to the current schema (adds and back-fills the query columns)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    missing = [(name, kind) for name, kind in SQLITE_QUERY_COLUMNS if name not in present]
    if missing:
        with transaction(db):
            for name, kind in missing:
                db.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")
            rows = db.execute("SELECT body FROM events").fetchall()
            db.executemany(
                "UPDATE events SET time_ns=?, plate=?, person_ref=? WHERE event_id=?",
                [
                    (row[9], row[10], row[11], row[0])
                    for row in (sqlite_row(Event.model_validate_json(body)) for (body,) in rows)
                ],
            )
    db.executescript(SQLITE_INDEXES)


def _query_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = body.get("results", [])
    for result in results:
        if "error" in result:
            raise StoreError(f"influxdb query error: {result['error']}", retryable=False)
    return results


def _classify_http(status: int, text: str, where: str) -> StoreError:
    # 5xx and 429: the server may recover. 4xx: retrying the same write cannot help.
    retryable = status >= 500 or status == 429
    return StoreError(f"{where} answered {status}: {text[:300]}", retryable=retryable, status=status)


class InfluxV1Store:
    """InfluxDB through the 1.x HTTP API (``/write`` line protocol, ``/query`` InfluxQL)."""

    def __init__(self, config: InfluxV1StoreConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None

    @property
    def _headers(self) -> dict[str, str]:
        cfg = self._config
        if cfg.username is None:
            return {}
        password = cfg.password.get_secret_value() if cfg.password else ""
        token = base64.b64encode(f"{cfg.username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            base_url=str(self._config.url), timeout=aiohttp.ClientTimeout(total=self._config.timeout_s)
        )
        if self._config.create_database:
            await self.query(f'CREATE DATABASE "{self._config.database}"', method="POST")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise StoreError("influx store is not open", retryable=False)
        return self._session

    async def write(self, events: Sequence[Event]) -> None:
        """POST the points; 204 is the only confirmation."""
        params = {"db": self._config.database, "precision": "ns"}
        if self._config.retention_policy:
            params["rp"] = self._config.retention_policy
        # a stream, not raw bytes: large batches are sent without holding the event loop
        body = io.BytesIO(to_lines(events))
        try:
            async with self._client().post(
                "/write", params=params, data=body, headers=self._headers
            ) as response:
                if response.status != 204:
                    raise _classify_http(response.status, await response.text(), "influxdb /write")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StoreError(f"influxdb /write: {type(exc).__name__}: {exc}", retryable=True) from exc

    async def ping(self) -> None:
        """``GET /ping``: 204 while the server runs (it does not check credentials; failed writes do)."""
        try:
            async with self._client().get("/ping") as response:
                if response.status != 204:
                    raise _classify_http(response.status, await response.text(), "influxdb /ping")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StoreError(f"influxdb /ping: {type(exc).__name__}: {exc}", retryable=True) from exc

    async def query(
        self,
        influxql: str,
        *,
        method: str = "GET",
        params: dict[str, str | int] | None = None,
        epoch: str | None = None,
    ) -> list[dict[str, Any]]:
        """Run InfluxQL with bound parameters (``$name`` in the text, values in ``params``).

        Returns the ``results`` list; ``epoch="ns"`` makes times integers of nanoseconds.
        """
        form = {"q": influxql, "db": self._config.database}
        if self._config.retention_policy:
            form["rp"] = self._config.retention_policy
        if params:
            form["params"] = json.dumps(params)
        if epoch:
            form["epoch"] = epoch
        try:
            # POST carries the form in the body: long filters never meet URL length limits
            post = method == "POST"
            async with self._client().request(
                method,
                "/query",
                headers=self._headers,
                data=form if post else None,
                params=None if post else form,
            ) as response:
                if response.status != 200:
                    raise _classify_http(response.status, await response.text(), "influxdb /query")
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StoreError(f"influxdb /query: {type(exc).__name__}: {exc}", retryable=True) from exc
        return _query_results(body)


class InfluxV2Store:
    """InfluxDB 2.x/3.x (and 1.8+) through the v2 write API, with influxdb-client."""

    def __init__(self, config: InfluxV2StoreConfig) -> None:
        self._config = config
        self._client: object | None = None

    async def __aenter__(self) -> Self:
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync  # noqa: PLC0415

        cfg = self._config
        self._client = InfluxDBClientAsync(
            url=str(cfg.url),
            token=cfg.token.get_secret_value(),
            org=cfg.org,
            timeout=int(cfg.timeout_s * 1000),
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()  # type: ignore[attr-defined]

    async def write(self, events: Sequence[Event]) -> None:
        """Write through influxdb-client's async write API (line protocol, ns precision)."""
        from influxdb_client.domain.write_precision import WritePrecision  # noqa: PLC0415
        from influxdb_client.rest import ApiException  # noqa: PLC0415

        if self._client is None:
            raise StoreError("influx v2 store is not open", retryable=False)
        api = self._client.write_api()  # type: ignore[attr-defined]
        try:
            ok = await api.write(
                bucket=self._config.bucket,
                record=to_lines(events).decode(),
                write_precision=WritePrecision.NS,
            )
        except ApiException as exc:
            raise _classify_http(int(exc.status or 500), str(exc.body), "influxdb /api/v2/write") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StoreError(f"influxdb /api/v2/write: {type(exc).__name__}: {exc}", retryable=True) from exc
        if ok is False:
            raise StoreError("influxdb /api/v2/write did not confirm the write", retryable=True)

    async def ping(self) -> None:
        """influxdb-client's ``/ping``."""
        if self._client is None:
            raise StoreError("influx v2 store is not open", retryable=False)
        if not await self._client.ping():  # type: ignore[attr-defined]
            raise StoreError(f"influxdb {self._config.url}: /ping did not answer", retryable=True)

    async def query(
        self, influxql: str, *, params: dict[str, str | int] | None = None, epoch: str | None = None
    ) -> list[dict[str, Any]]:
        """InfluxQL through the v1-compatible ``/query`` of 2.x/3.x.

        The bucket needs a DBRP mapping whose database name is the bucket's name.
        """
        cfg = self._config
        form = {"q": influxql, "db": cfg.bucket}
        if params:
            form["params"] = json.dumps(params)
        if epoch:
            form["epoch"] = epoch
        headers = {"Authorization": f"Token {cfg.token.get_secret_value()}"}
        timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
        try:
            async with (
                aiohttp.ClientSession(base_url=str(cfg.url), timeout=timeout) as session,
                session.post("/query", data=form, headers=headers) as response,
            ):
                if response.status != 200:
                    raise _classify_http(response.status, await response.text(), "influxdb /query")
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StoreError(f"influxdb /query: {type(exc).__name__}: {exc}", retryable=True) from exc
        return _query_results(body)


def build_store(config: StoreConfig) -> EventStore:
    """The store a config names."""
    if isinstance(config, SqliteStoreConfig):
        return SqliteStore(config)
    if isinstance(config, InfluxV1StoreConfig):
        return InfluxV1Store(config)
    return InfluxV2Store(config)


def sqlite_event_ids(path: Path) -> list[str]:
    """All event ids in an embedded store file (tools and tests)."""
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT event_id FROM events")]
