"""InfluxDB through the 1.x HTTP API (``/write`` line protocol, ``/query`` InfluxQL): tested against 1.6.7."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
from pydantic import AnyHttpUrl, Field, SecretStr

from foundation.config_types import ConfigModel
from foundation.events import Event
from uplink.lineprotocol import point_line, to_lines
from uplink.stores.base import (
    HIT_CROP_FIELD,
    HIT_CROP_KIND,
    HIT_CROPS_BATCH_MAX,
    RetentionPass,
    RetentionPolicyCheck,
    RetentionRules,
    RetentionTally,
    StoreError,
    classify_http,
    without_hit_crop,
)

InfluxQuery = Callable[[str, dict[str, str | int]], Awaitable[list[dict[str, Any]]]]
"""Run one InfluxQL statement with bound parameters; the ``results`` list, times in ns."""


class InfluxV1StoreConfig(ConfigModel):
    """InfluxDB through the 1.x API (``/write``, InfluxQL ``/query``)."""

    type: Literal["influx_v1"] = "influx_v1"
    url: AnyHttpUrl
    database: str = Field(default="compound_events", pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    retention_policy: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    username: str | None = None
    password: SecretStr | None = None
    create_database: bool = True
    timeout_s: float = Field(default=10.0, gt=0)

    def build(self) -> InfluxV1Store:
        """The store this config names (enter it with ``async with``)."""
        return InfluxV1Store(self)


def query_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``results`` of a ``/query`` answer; an error in any of them raises (not retryable)."""
    results: list[dict[str, Any]] = body.get("results", [])
    for result in results:
        if "error" in result:
            raise StoreError(f"influxdb query error: {result['error']}", retryable=False)
    return results


def influx_shard_duration(days: int) -> str:
    """InfluxDB's own default shard group duration for a policy of ``days``.

    1h below 2 days, 1d up to 6 months, 7d beyond; set on ALTER too, because influxd refuses a policy
    shorter than its shard groups (an infinite policy has 7-day ones).
    """
    return "1h" if days < 2 else "1d" if days <= 180 else "7d"


def influx_name(name: str) -> str:
    """An identifier quoted for InfluxQL."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def strip_influx_hit_crops(
    query: InfluxQuery,
    write: Callable[[bytes], Awaitable[None]],
    *,
    cutoff_ns: int,
    batch_rows: int,
    tally: RetentionTally,
) -> None:
    """Rewrite every watch-list hit point before ``cutoff_ns`` that still carries a face crop, without it.

    Batch by batch (oldest first, at most ``batch_rows``): the points still carrying a crop are
    found by their body (a regular expression on the JSON key and the opening quote of its value; a
    stripped body has ``null`` there), and each is written again with the same measurement, tag set
    and timestamp and only the ``body`` field. InfluxDB keeps one point per series and time and
    replaces the fields written again, so the point's other fields stay, and its old body is gone
    from query answers at once (from its files once the shard is compacted). ``query`` and
    ``write`` address the database and retention policy the store writes to (1.6's ``/query``
    honours ``rp``, checked). Idempotent: a rewritten point no longer matches.
    """
    measurement = HIT_CROP_KIND.value
    keys = sorted(
        str(row[0])
        for result in await query(f"SHOW TAG KEYS FROM {influx_name(measurement)}", {})
        for series in result.get("series", [])
        for row in series.get("values", [])
    )
    columns = ", ".join(influx_name(name) for name in ["body", *keys])
    statement = (
        f"SELECT {columns} FROM {influx_name(measurement)} WHERE time < $cutoff"  # noqa: S608 - our identifiers; values bound
        f' AND "body" =~ /"{HIT_CROP_FIELD}":"/ ORDER BY time ASC LIMIT {int(batch_rows)}'
    )
    rewritten: set[tuple[int, tuple[tuple[str, str], ...]]] = set()
    while True:
        results = await query(statement, {"cutoff": cutoff_ns})
        rows = [row for result in results for series in result.get("series", []) for row in series["values"]]
        lines = []
        for at, body, *values in rows:
            tags = {key: str(value) for key, value in zip(keys, values, strict=True) if value is not None}
            point = (int(at), tuple(sorted(tags.items())))
            if point in rewritten:
                # written again and still found: the write went elsewhere (another retention policy?)
                raise StoreError(
                    f"influxdb: the {measurement} point at {at} still has its crop after it was rewritten",
                    retryable=False,
                )
            rewritten.add(point)
            try:
                body_now = without_hit_crop(body)
            except (ValueError, KeyError, TypeError) as exc:
                # not a hit's JSON (the ingester never writes one): named, so an operator can fix
                # it; the task retries and never crashes the ingester
                raise StoreError(
                    f"influxdb: the {measurement} point at {at} {dict(tags)} has a body that is not"
                    f" a watch-list hit ({type(exc).__name__}: {exc}); fix or delete that point",
                    retryable=False,
                ) from exc
            lines.append(point_line(measurement, tags, {"body": body_now}, int(at)))
        if lines:
            await write("\n".join(lines).encode())
            tally.hit_crops_purged += len(lines)
        if len(rows) < batch_rows:
            return


def influx_duration(days: int) -> str:
    """A duration of whole days as ``SHOW RETENTION POLICIES`` prints it (``24h0m0s``; ``0s`` is infinite)."""
    return f"{days * 24}h0m0s"


class InfluxV1Store:
    """InfluxDB through the 1.x HTTP API (``/write`` line protocol, ``/query`` InfluxQL)."""

    def __init__(self, config: InfluxV1StoreConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._policy_checked = False

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
        await self.write_lines(to_lines(events))

    async def write_lines(self, lines: bytes) -> None:
        """POST line protocol to the database (and retention policy) the store writes to."""
        params = {"db": self._config.database, "precision": "ns"}
        if self._config.retention_policy:
            params["rp"] = self._config.retention_policy
        # a stream, not raw bytes: large batches are sent without holding the event loop
        body = io.BytesIO(lines)
        try:
            async with self._client().post(
                "/write", params=params, data=body, headers=self._headers
            ) as response:
                if response.status != 204:
                    raise classify_http(response.status, await response.text(), "influxdb /write")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StoreError(f"influxdb /write: {type(exc).__name__}: {exc}", retryable=True) from exc

    async def ping(self) -> None:
        """``GET /ping``: 204 while the server runs (it does not check credentials; failed writes do)."""
        try:
            async with self._client().get("/ping") as response:
                if response.status != 204:
                    raise classify_http(response.status, await response.text(), "influxdb /ping")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StoreError(f"influxdb /ping: {type(exc).__name__}: {exc}", retryable=True) from exc

    async def enforce_retention(
        self, rules: RetentionRules, now: datetime, tally: RetentionTally
    ) -> RetentionPass:
        """Check the retention policy (first pass only), then strip the expired hit crops.

        influxd expires events itself, dropping whole shard groups by the policy
        (``ensure_retention``), and does not say how many points went: ``events_purged`` stays. The
        policy is checked until a pass gets an answer, then not again (an operator's change is
        seen at the next start). Hit crops: ``strip_influx_hit_crops``.
        """
        policy = None
        if not self._policy_checked:
            policy = await self.ensure_retention(rules.events_days, alter=rules.alter_policy)
            self._policy_checked = True

        async def select(statement: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
            return await self.query(statement, method="POST", params=params, epoch="ns")

        await strip_influx_hit_crops(
            select,
            self.write_lines,
            cutoff_ns=rules.cutoff_ns(rules.hit_crops_days, now),
            batch_rows=min(rules.batch_rows, HIT_CROPS_BATCH_MAX),
            tally=tally,
        )
        return RetentionPass(policy)

    async def ensure_retention(self, days: int, *, alter: bool) -> RetentionPolicyCheck:
        """Check the retention policy the store writes to against a duration of ``days``.

        The policy is ``retention_policy`` if configured, else the database's default. A configured
        policy that does not exist is created with that duration and made the database default (so
        InfluxQL without ``rp`` reads it too); an existing one with another duration is changed only
        if ``alter``: a policy an operator made is theirs (a shorter duration drops data for good).
        """
        cfg = self._config
        wanted = influx_duration(days)
        results = await self.query(f'SHOW RETENTION POLICIES ON "{cfg.database}"')
        series = results[0].get("series", []) if results else []
        rows = [
            dict(zip(s["columns"], values, strict=True)) for s in series for values in s.get("values", [])
        ]
        if cfg.retention_policy is not None:
            found = next((r for r in rows if r["name"] == cfg.retention_policy), None)
        else:
            found = next((r for r in rows if r["default"]), None)
        if found is None:
            if cfg.retention_policy is None:
                return RetentionPolicyCheck(None, "missing", wanted)
            await self.query(
                f'CREATE RETENTION POLICY "{cfg.retention_policy}" ON "{cfg.database}"'
                f" DURATION {days * 24}h REPLICATION 1 SHARD DURATION {influx_shard_duration(days)} DEFAULT",
                method="POST",
            )
            return RetentionPolicyCheck(cfg.retention_policy, "created", wanted)
        name, duration = str(found["name"]), str(found["duration"])
        if duration == wanted:
            return RetentionPolicyCheck(name, "matches", wanted, duration)
        if not alter:
            return RetentionPolicyCheck(name, "differs", wanted, duration)
        await self.query(
            f'ALTER RETENTION POLICY "{name}" ON "{cfg.database}" DURATION {days * 24}h'
            f" SHARD DURATION {influx_shard_duration(days)}",
            method="POST",
        )
        return RetentionPolicyCheck(name, "altered", wanted, duration)

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
                    raise classify_http(response.status, await response.text(), "influxdb /query")
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StoreError(f"influxdb /query: {type(exc).__name__}: {exc}", retryable=True) from exc
        return query_results(body)
