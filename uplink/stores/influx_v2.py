"""InfluxDB 2.x/3.x (or 1.8+) through the v2 write API with influxdb-client.

Not tested against a 2.x/3.x server here (none can be installed on the development machines): the
write path is exercised against a test double of ``/api/v2/write`` (tests/test_stores.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
from pydantic import AnyHttpUrl, Field, SecretStr

from foundation.config_types import ConfigModel
from foundation.events import Event
from uplink.lineprotocol import to_lines
from uplink.stores.base import (
    HIT_CROPS_BATCH_MAX,
    RetentionPass,
    RetentionRules,
    RetentionTally,
    StoreError,
    classify_http,
)
from uplink.stores.influx_v1 import query_results, strip_influx_hit_crops


class InfluxV2StoreConfig(ConfigModel):
    """InfluxDB 2.x/3.x (or 1.8+) through the v2 API with influxdb-client."""

    type: Literal["influx_v2"] = "influx_v2"
    url: AnyHttpUrl
    org: str
    bucket: str
    token: SecretStr
    timeout_s: float = Field(default=10.0, gt=0)

    def build(self) -> InfluxV2Store:
        """The store this config names (enter it with ``async with``)."""
        return InfluxV2Store(self)


class InfluxV2Store:
    """InfluxDB 2.x/3.x (and 1.8+) through the v2 write API, with influxdb-client."""

    def __init__(self, config: InfluxV2StoreConfig) -> None:
        self._config = config
        self._client: object | None = None

    async def __aenter__(self) -> Self:
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync  # noqa: PLC0415 - only 2.x/3.x districts load the client (slow to import)

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
        await self.write_lines(to_lines(events))

    async def write_lines(self, lines: bytes) -> None:
        """Line protocol to the bucket through influxdb-client's async write API."""
        from influxdb_client.domain.write_precision import WritePrecision  # noqa: PLC0415
        from influxdb_client.rest import ApiException  # noqa: PLC0415

        if self._client is None:
            raise StoreError("influx v2 store is not open", retryable=False)
        api = self._client.write_api()  # type: ignore[attr-defined]
        try:
            ok = await api.write(
                bucket=self._config.bucket,
                record=lines.decode(),
                write_precision=WritePrecision.NS,
            )
        except ApiException as exc:
            raise classify_http(int(exc.status or 500), str(exc.body), "influxdb /api/v2/write") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StoreError(f"influxdb /api/v2/write: {type(exc).__name__}: {exc}", retryable=True) from exc
        if ok is False:
            raise StoreError("influxdb /api/v2/write did not confirm the write", retryable=True)

    async def enforce_retention(
        self, rules: RetentionRules, now: datetime, tally: RetentionTally
    ) -> RetentionPass:
        """Strip the expired hit crops, as on 1.x (UNTESTED: no 2.x/3.x server here).

        Events expire by the bucket's own retention, which its operator sets: not checked, nothing
        counted. The crops are found with InfluxQL through the v1-compatible ``/query`` (the bucket
        needs a DBRP mapping named like the bucket, as the query layer does) and rewritten through
        the v2 write API; 2.x keeps the TSM rule that a point written again with the same series
        and time has its fields replaced. 3.x answers InfluxQL differently and is not covered.
        """

        async def select(statement: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
            return await self.query(statement, params=params, epoch="ns")

        await strip_influx_hit_crops(
            select,
            self.write_lines,
            cutoff_ns=rules.cutoff_ns(rules.hit_crops_days, now),
            batch_rows=min(rules.batch_rows, HIT_CROPS_BATCH_MAX),
            tally=tally,
        )
        return RetentionPass()

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
                    raise classify_http(response.status, await response.text(), "influxdb /query")
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StoreError(f"influxdb /query: {type(exc).__name__}: {exc}", retryable=True) from exc
        return query_results(body)
