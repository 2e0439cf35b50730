"""InfluxDB through the 1.x HTTP API (``/write`` line protocol, ``/query`` InfluxQL): tested against 1.6.7."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
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
