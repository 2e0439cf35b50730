"""InfluxDB through the 1.x HTTP API (``/write`` line protocol, ``/query`` InfluxQL): tested against 1.6.7."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
from pydantic import AnyHttpUrl, Field, SecretStr

from foundation.config_types import ConfigModel
from foundation.events import Event
from uplink.lineprotocol import to_lines
from uplink.stores.base import StoreError, classify_http


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


@dataclass(frozen=True)
class RetentionPolicyCheck:
    """What ``InfluxV1Store.ensure_retention`` found and did.

    ``action``: ``created`` (new policy, made the database default), ``altered`` (duration changed),
    ``matches`` (already the wanted duration), ``differs`` (left as it is), ``missing`` (no policy
    named and the database has no default policy).
    """

    policy: str | None
    action: Literal["created", "altered", "matches", "differs", "missing"]
    wanted: str
    found: str | None = None


def influx_shard_duration(days: int) -> str:
    """InfluxDB's own default shard group duration for a policy of ``days``.

    1h below 2 days, 1d up to 6 months, 7d beyond; set on ALTER too, because influxd refuses a policy
    shorter than its shard groups (an infinite policy has 7-day ones).
    """
    return "1h" if days < 2 else "1d" if days <= 180 else "7d"


def influx_duration(days: int) -> str:
    """A duration of whole days as ``SHOW RETENTION POLICIES`` prints it (``24h0m0s``; ``0s`` is infinite)."""
    return f"{days * 24}h0m0s"


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
