"""InfluxDB through the 1.x HTTP API (``/write`` line protocol, ``/query`` InfluxQL): tested against 1.6.7.

Roll-ups: a continuous query counts the events of every kind per hour, district, compound and
severity into a retention policy of their own (``rollup_policy``, kept ``rollup_days``), one
measurement per kind, field ``events``. It re-counts the last ``rollup_resample_days`` every hour
(``RESAMPLE EVERY 1h FOR ...``), so a backlog that arrives late within that window is absorbed at the
next run. Sooner: a write holding events older than the last two hours recounts their compound's
hours itself (``recount_rollups``), so a backlog of any age is counted as it is stored;
``rebuild_rollups`` recounts a range (repair). A
count is written as a point per series and hour, and InfluxDB keeps one point per series and time,
so a re-count overwrites: re-sent events (one point, see ``uplink.lineprotocol``) count once.

Device days (the device inventory's roll-up): a second continuous query, same window, writes a
point per district, compound, device and UTC day into ``device_days`` in the same policy when the
device sent anything that day. The inventory reads each device's last event from its last day
only, instead of a month of events. Late writes recount their compound's days too; a store whose
counts were rolled up before this level existed is backfilled once (its own marker).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
from pydantic import AnyHttpUrl, Field, SecretStr

from foundation.config_types import ConfigModel
from foundation.events import Event
from uplink.lineprotocol import point_line, point_time_ns, to_lines
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
    rollup_policy: str = Field(
        default="event_rollups",
        pattern=r"^[A-Za-z0-9_\-]{1,64}$",
        description="retention policy of the hourly roll-ups (created by the store, never the default)",
    )
    rollup_resample_days: int = Field(
        default=7,
        ge=1,
        le=31,
        description="the roll-up continuous query re-counts this many past days every hour (late"
        " events of older hours are recounted by the write that stores them)",
    )

    rollup_day_offset_hours: int | None = Field(
        default=8,
        ge=-12,
        le=14,
        description="UTC offset (whole hours) of the district's local day for the daily roll-ups:"
        " [api] timezone's (Asia/Shanghai: 8); none: no daily level (day counts sum hours)",
    )

    def daily_policy(self) -> str | None:
        """The daily roll-ups' retention policy: named after the offset (another offset, other days)."""
        hours = self.rollup_day_offset_hours
        if hours is None:
            return None
        return f"{self.rollup_policy}_day{'p' if hours >= 0 else 'm'}{abs(hours)}"

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


def series_values(results: list[dict[str, Any]]) -> list[list[Any]]:
    """Every row of every series of an InfluxQL answer."""
    return [
        row for result in results for series in result.get("series", []) for row in series.get("values", [])
    ]


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


ROLLUP_FIELD = "events"
ROLLUP_TAGS = ("district_id", "compound_id", "severity")
ROLLUP_MARKER = "rollups_backfilled"
"""A measurement in the roll-up policy: its point says the roll-ups cover every stored event.

Written once the first backfill is done; the query layer uses the roll-ups only when it is there."""
ROLLUP_CQ_PREFIX = "event_rollups_"
DEVICE_DAYS = "device_days"
"""A measurement in the roll-up policy: per district, compound, device and UTC day, a point when the
device sent anything that day (its value: some kind's count). The device inventory reads it to know
which day holds each device's last event, then reads only that day's events."""
DEVICE_DAYS_MARKER = "device_days_backfilled"
DEVICE_DAYS_CQ_PREFIX = "device_days_"
DEVICE_DAYS_TAGS = ("district_id", "compound_id", "device_id")
DAILY_MARKER = "daily_rollups_backfilled"
"""In the roll-up policy, one per daily policy (tag ``policy``): that level covers every stored event."""
DAILY_CQ_PREFIX = "daily_rollups_"
HOUR_NS = 3_600_000_000_000
DAY_NS = 24 * HOUR_NS


def rollup_select(database: str, source_policy: str | None, rollup_policy: str) -> tuple[str, str]:
    """The roll-up ``SELECT ... INTO ... FROM`` and its ``GROUP BY`` (a range goes between them).

    Events counted per hour and ``ROLLUP_TAGS``, one measurement per kind (``:MEASUREMENT``).
    """
    source = f"{influx_name(database)}.{influx_name(source_policy) if source_policy else ''}"
    tags = ", ".join(influx_name(tag) for tag in ROLLUP_TAGS)
    return (
        f'SELECT count("event_id") AS {influx_name(ROLLUP_FIELD)}'  # noqa: S608 - our identifiers
        f" INTO {influx_name(database)}.{influx_name(rollup_policy)}.:MEASUREMENT"
        f" FROM {source}./.*/"
    ), f"GROUP BY time(1h), {tags}"


def device_days_select(database: str, source_policy: str | None, rollup_policy: str) -> tuple[str, str]:
    """The device-days ``SELECT ... INTO ... FROM`` and its ``GROUP BY`` (a range goes between them).

    Every kind goes into the one measurement: points of one device and day overwrite each other,
    and any of them says the device was heard that day.
    """
    source = f"{influx_name(database)}.{influx_name(source_policy) if source_policy else ''}"
    tags = ", ".join(influx_name(tag) for tag in DEVICE_DAYS_TAGS)
    return (
        f'SELECT count("event_id") AS {influx_name(ROLLUP_FIELD)}'  # noqa: S608 - our identifiers
        f" INTO {influx_name(database)}.{influx_name(rollup_policy)}.{influx_name(DEVICE_DAYS)}"
        f" FROM {source}./.*/"
    ), f"GROUP BY time(1d), {tags}"


def daily_select(
    database: str, source_policy: str | None, daily_policy: str, offset_hours: int
) -> tuple[str, str]:
    """The daily roll-ups' ``SELECT ... INTO ... FROM`` and ``GROUP BY``: the hourly ones' per local day.

    ``time(1d, <shift>)`` starts the days at the zone's midnight (UTC+8: 16:00 UTC).
    """
    source = f"{influx_name(database)}.{influx_name(source_policy) if source_policy else ''}"
    tags = ", ".join(influx_name(tag) for tag in ROLLUP_TAGS)
    return (
        f'SELECT count("event_id") AS {influx_name(ROLLUP_FIELD)}'  # noqa: S608 - our identifiers
        f" INTO {influx_name(database)}.{influx_name(daily_policy)}.:MEASUREMENT"
        f" FROM {source}./.*/"
    ), f"GROUP BY time(1d, {(-offset_hours) % 24}h), {tags}"


def local_day_start(at_ns: int, offset_hours: int) -> int:
    """The start (ns) of the local day at UTC offset ``offset_hours`` holding ``at_ns``."""
    offset = offset_hours * HOUR_NS
    return (at_ns + offset) // DAY_NS * DAY_NS - offset


def influx_duration(days: int) -> str:
    """A duration of whole days as ``SHOW RETENTION POLICIES`` prints it (``24h0m0s``; ``0s`` is infinite)."""
    return f"{days * 24}h0m0s"


class InfluxV1Store:
    """InfluxDB through the 1.x HTTP API (``/write`` line protocol, ``/query`` InfluxQL)."""

    def __init__(self, config: InfluxV1StoreConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._policy_checked = False
        self._rollups_known = False
        self._rollups_asked = float("-inf")

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
        """POST the points; 204 is the only confirmation. Then recount the roll-ups of late events' hours.

        A late event (its hour older than the last two, which the query layer counts from raw
        events) would wait for the hourly continuous query, or beyond its window for ever: its
        compound's hours are recounted at once (``recount_rollups``), so counts stay exact. Live
        traffic has none; a backlog batch (one compound) a few hours.
        """
        await self.write_lines(to_lines(events))
        fresh_ns = (time.time_ns() // HOUR_NS - 1) * HOUR_NS
        late = {
            (event.compound_id, point_time_ns(event) // HOUR_NS * HOUR_NS)
            for event in events
            if point_time_ns(event) < fresh_ns
        }
        if late and await self._rollups_on():
            await self.recount_rollups(late)

    async def _rollups_on(self) -> bool:
        # asked at most once a minute until the roll-ups exist, then never again
        if not self._rollups_known and time.monotonic() - self._rollups_asked >= 60:
            self._rollups_asked = time.monotonic()
            self._rollups_known = await self.rollups_backfilled()
        return self._rollups_known

    async def recount_rollups(self, hours: Iterable[tuple[str, int]]) -> None:
        """Recount the roll-ups of these (compound, hour start in ns): a statement per run of hours.

        The points written overwrite that compound's roll-up points of those hours only (its
        series are its own). InfluxQL 1.x cannot OR time ranges: consecutive hours go together.
        """
        cfg = self._config
        select, group_by = rollup_select(cfg.database, cfg.retention_policy, cfg.rollup_policy)
        runs: list[tuple[str, int, int]] = []
        hours_seen = set(hours)
        for compound, hour in sorted(hours_seen):
            if runs and runs[-1][0] == compound and runs[-1][2] == hour:
                runs[-1] = (compound, runs[-1][1], hour + HOUR_NS)
            else:
                runs.append((compound, hour, hour + HOUR_NS))
        for compound, start, end in runs:
            await self.query(
                f"{select} WHERE compound_id = $compound AND time >= $start AND time < $end {group_by}",
                method="POST",
                params={"compound": compound, "start": start, "end": end},
            )
        # the local days of those hours, whole
        daily = cfg.daily_policy()
        if daily is not None and cfg.rollup_day_offset_hours is not None:
            offset = cfg.rollup_day_offset_hours
            day_select, day_group = daily_select(cfg.database, cfg.retention_policy, daily, offset)
            for compound, day in sorted({(c, local_day_start(hour, offset)) for c, hour in hours_seen}):
                await self.query(
                    f"{day_select} WHERE compound_id = $compound AND time >= $start AND time < $end {day_group}",
                    method="POST",
                    params={"compound": compound, "start": day, "end": day + DAY_NS},
                )
        # the device days of those hours: whole UTC days, recounted alike
        days_select, days_group = device_days_select(cfg.database, cfg.retention_policy, cfg.rollup_policy)
        for compound, day in sorted({(compound, hour // DAY_NS * DAY_NS) for compound, hour in hours_seen}):
            await self.query(
                f"{days_select} WHERE compound_id = $compound AND time >= $start AND time < $end {days_group}",
                method="POST",
                params={"compound": compound, "start": day, "end": day + DAY_NS},
            )

    async def write_lines(self, lines: bytes) -> None:
        """POST line protocol to the database (and retention policy) the store writes to."""
        params = {"db": self._config.database, "precision": "ns"}
        if self._config.retention_policy:
            params["rp"] = self._config.retention_policy
        await self._post_write(lines, params)

    async def _post_write(self, lines: bytes, params: dict[str, str]) -> None:
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
        policy = rollups = None
        if not self._policy_checked:
            policy = await self.ensure_retention(rules.events_days, alter=rules.alter_policy)
            try:
                rollups = await self.ensure_rollups(rules.rollup_days, alter=rules.alter_policy)
            except StoreError as exc:
                if exc.retryable:
                    raise
                # refused (a user without the right to create policies or continuous queries):
                # counts keep coming from raw events, and the crops below must still go
                rollups = RetentionPolicyCheck(
                    self._config.rollup_policy, "missing", influx_duration(rules.rollup_days), str(exc)[:200]
                )
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
        return RetentionPass(policy, rollups)

    async def _policies(self) -> list[dict[str, Any]]:
        results = await self.query(f"SHOW RETENTION POLICIES ON {influx_name(self._config.database)}")
        series = results[0].get("series", []) if results else []
        return [
            dict(zip(s["columns"], values, strict=True)) for s in series for values in s.get("values", [])
        ]

    def _rollup_cq(self) -> tuple[str, str]:
        """The roll-up continuous query's name and statement; the name carries a digest of the text."""
        cfg = self._config
        select, group_by = rollup_select(cfg.database, cfg.retention_policy, cfg.rollup_policy)
        resample = f"RESAMPLE EVERY 1h FOR {cfg.rollup_resample_days * 24}h"
        body = f"{resample} BEGIN {select} {group_by} END"
        name = ROLLUP_CQ_PREFIX + hashlib.sha256(body.encode()).hexdigest()[:12]
        return name, f"CREATE CONTINUOUS QUERY {influx_name(name)} ON {influx_name(cfg.database)} {body}"

    def _device_days_cq(self) -> tuple[str, str]:
        """The device-days continuous query's name and statement (same resample window as the counts')."""
        cfg = self._config
        select, group_by = device_days_select(cfg.database, cfg.retention_policy, cfg.rollup_policy)
        resample = f"RESAMPLE EVERY 1h FOR {cfg.rollup_resample_days * 24}h"
        body = f"{resample} BEGIN {select} {group_by} END"
        name = DEVICE_DAYS_CQ_PREFIX + hashlib.sha256(body.encode()).hexdigest()[:12]
        return name, f"CREATE CONTINUOUS QUERY {influx_name(name)} ON {influx_name(cfg.database)} {body}"

    def _daily_cq(self) -> tuple[str, str] | None:
        """The daily roll-ups' continuous query (name with a digest, statement), if kept."""
        cfg = self._config
        daily = cfg.daily_policy()
        if daily is None or cfg.rollup_day_offset_hours is None:
            return None
        select, group_by = daily_select(
            cfg.database, cfg.retention_policy, daily, cfg.rollup_day_offset_hours
        )
        body = f"RESAMPLE EVERY 1h FOR {cfg.rollup_resample_days * 24}h BEGIN {select} {group_by} END"
        name = DAILY_CQ_PREFIX + hashlib.sha256(body.encode()).hexdigest()[:12]
        return name, f"CREATE CONTINUOUS QUERY {influx_name(name)} ON {influx_name(cfg.database)} {body}"

    async def _ensure_policy(self, name: str, days: int, *, alter: bool) -> RetentionPolicyCheck:
        """A roll-up retention policy of ``days``, created where missing (never the default)."""
        cfg = self._config
        wanted = influx_duration(days)
        found = next((r for r in await self._policies() if r["name"] == name), None)
        if found is None:
            await self.query(
                f"CREATE RETENTION POLICY {influx_name(name)} ON {influx_name(cfg.database)}"
                f" DURATION {days * 24}h REPLICATION 1 SHARD DURATION {influx_shard_duration(days)}",
                method="POST",
            )
            return RetentionPolicyCheck(name, "created", wanted)
        if found["duration"] == wanted:
            return RetentionPolicyCheck(name, "matches", wanted, str(found["duration"]))
        if not alter:
            return RetentionPolicyCheck(name, "differs", wanted, str(found["duration"]))
        await self.query(
            f"ALTER RETENTION POLICY {influx_name(name)} ON {influx_name(cfg.database)}"
            f" DURATION {days * 24}h SHARD DURATION {influx_shard_duration(days)}",
            method="POST",
        )
        return RetentionPolicyCheck(name, "altered", wanted, str(found["duration"]))

    async def ensure_rollups(self, days: int, *, alter: bool) -> RetentionPolicyCheck:
        """The roll-up retention policy (``days``) and continuous query, created where missing.

        The policy is created as the database's non-default policy (InfluxQL without ``rp`` still
        reads the events); an existing one with another duration is changed only if ``alter`` (as
        the events policy). The continuous query's name carries a digest of its statement: one of
        another definition (another resample window, another source policy) is dropped and
        replaced. A new query is followed by a backfill of every stored event (``rebuild_rollups``)
        and then the marker point the query layer waits for; a backfill cut short is redone at
        the next start (the marker is still missing).
        """
        cfg = self._config
        check = await self._ensure_policy(cfg.rollup_policy, days, alter=alter)
        daily = cfg.daily_policy()
        if daily is not None:
            await self._ensure_policy(daily, days, alter=alter)
        existing = [
            str(row[0])
            for result in await self.query("SHOW CONTINUOUS QUERIES")
            for series in result.get("series", [])
            if series.get("name") == cfg.database
            for row in series.get("values", [])
        ]
        for prefix, wanted_cq in (
            (ROLLUP_CQ_PREFIX, self._rollup_cq()),
            (DEVICE_DAYS_CQ_PREFIX, self._device_days_cq()),
            (DAILY_CQ_PREFIX, self._daily_cq()),
        ):
            name = wanted_cq[0] if wanted_cq is not None else None
            for other in existing:
                if other.startswith(prefix) and other != name:
                    await self.query(
                        f"DROP CONTINUOUS QUERY {influx_name(other)} ON {influx_name(cfg.database)}",
                        method="POST",
                    )
            if wanted_cq is not None and wanted_cq[0] not in existing:
                await self.query(wanted_cq[1], method="POST")
        if not await self.rollups_backfilled():
            await self.rebuild_rollups(0, 2**62, expiring=True)
            await self._write_marker(ROLLUP_MARKER)
            await self._write_marker(DEVICE_DAYS_MARKER)
            if daily is not None:
                await self._write_marker(DAILY_MARKER, daily)
        else:
            # levels that came after the store's counts were first rolled up
            if not await self.rollups_backfilled(DEVICE_DAYS_MARKER):
                await self.rebuild_rollups(0, 2**62, expiring=True, levels=("device_days",))
                await self._write_marker(DEVICE_DAYS_MARKER)
            if daily is not None and not await self.rollups_backfilled(DAILY_MARKER, daily):
                await self.rebuild_rollups(0, 2**62, expiring=True, levels=("days",))
                await self._write_marker(DAILY_MARKER, daily)
        self._rollups_known = True
        return check

    async def _write_marker(self, marker: str, policy: str | None = None) -> None:
        cfg = self._config
        # stamped now: a point older than the policy's duration is refused (and this one expires
        # with it after rollup_days; the next backfill then starts at the oldest stored event)
        tag = f",policy={policy}" if policy else ""
        line = f"{marker}{tag} done=true {time.time_ns()}".encode()
        params = {"db": cfg.database, "rp": cfg.rollup_policy, "precision": "ns"}
        await self._post_write(line, params)

    async def _events_policy_ns(self) -> int:
        """How long the events' policy keeps points, in ns (0: forever or no policy found)."""
        cfg = self._config
        rows = await self._policies()
        if cfg.retention_policy is not None:
            found = next((r for r in rows if r["name"] == cfg.retention_policy), None)
        else:
            found = next((r for r in rows if r["default"]), None)
        if found is None:
            return 0
        match = re.fullmatch(r"(\d+)h(\d+)m(\d+)s", str(found["duration"]))
        if match is None:
            return 0
        hours, minutes, seconds = (int(g) for g in match.groups())
        return ((hours * 60 + minutes) * 60 + seconds) * 1_000_000_000

    async def rollups_backfilled(self, marker: str = ROLLUP_MARKER, policy: str | None = None) -> bool:
        """Whether a roll-up level covers every stored event (its first backfill finished).

        ``policy``: the daily level's marker names its policy (one per offset).
        """
        cfg = self._config
        where = ' WHERE "policy" = $policy' if policy else ""
        try:
            results = await self.query(
                f"SELECT count(done) FROM {influx_name(cfg.rollup_policy)}.{influx_name(marker)}{where}",  # noqa: S608 - our identifiers
                params={"policy": policy} if policy else None,
            )
        except StoreError:
            return False
        return bool(series_values(results))

    async def rebuild_rollups(
        self,
        start_ns: int,
        end_ns: int,
        *,
        expiring: bool = False,
        levels: Sequence[str] = ("hours", "device_days", "days"),
    ) -> int:
        """Recount the roll-ups of the hours from ``start_ns`` to ``end_ns`` (rounded out), a day at a time.

        ``levels``: the hourly counts (``hours``), the device days (``device_days``, whole UTC days)
        and the daily counts (``days``, whole local days, when kept).

        The same ``SELECT ... INTO`` as the continuous query over an explicit range: recounted
        hours overwrite their points, so it is idempotent. Hours older than the events policy's
        duration are left alone (influxd may have dropped their shard: a recount would lower the
        roll-ups to what is left), unless ``expiring`` (the first backfill: no roll-up holds more).
        Returns the roll-up points written.
        """
        cfg = self._config
        start = start_ns // HOUR_NS * HOUR_NS
        end = -(-end_ns // HOUR_NS) * HOUR_NS
        if not expiring:
            kept_ns = await self._events_policy_ns()
            if kept_ns:
                start = max(start, -(-(time.time_ns() - kept_ns) // HOUR_NS) * HOUR_NS)
        bounds = [
            int(row[0])
            for statement in ('SELECT first("event_id") FROM /.*/', 'SELECT last("event_id") FROM /.*/')
            for row in series_values(await self.query(statement, method="POST", epoch="ns"))
        ]
        if not bounds:
            return 0
        # only the hours that hold events (a range of years is not walked day by day)
        start = max(start, min(bounds) // HOUR_NS * HOUR_NS)
        end = min(end, (max(bounds) // HOUR_NS + 1) * HOUR_NS)
        hours = rollup_select(cfg.database, cfg.retention_policy, cfg.rollup_policy)
        device_days = device_days_select(cfg.database, cfg.retention_policy, cfg.rollup_policy)
        written = 0
        # day by day, UTC days: the hours of the range, and the device days whole (a recount of
        # part of a day only adds points: a device heard in the rest of it keeps its point)
        day = start // DAY_NS * DAY_NS
        while day < end:
            work = []
            if "hours" in levels:
                work.append((hours, max(day, start), min(day + DAY_NS, end)))
            if "device_days" in levels:
                work.append((device_days, max(day, start), day + DAY_NS))
            for (select, group_by), at, until in work:
                results = await self.query(
                    f"{select} WHERE time >= $start AND time < $end {group_by}",
                    method="POST",
                    params={"start": at, "end": until},
                )
                written += sum(int(row[1]) for row in series_values(results))
            day += DAY_NS
        daily, offset = cfg.daily_policy(), cfg.rollup_day_offset_hours
        if "days" in levels and daily is not None and offset is not None:
            # whole local days only: a recount of part of one would overwrite its count with less;
            # a day whose start the range cuts is left as it is, but for the first backfill
            local = local_day_start(start, offset)
            if local < start and not expiring:
                local += DAY_NS
            select, group_by = daily_select(cfg.database, cfg.retention_policy, daily, offset)
            while local < end:
                results = await self.query(
                    f"{select} WHERE time >= $start AND time < $end {group_by}",
                    method="POST",
                    params={"start": local, "end": local + DAY_NS},
                )
                written += sum(int(row[1]) for row in series_values(results))
                local += DAY_NS
        return written

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
