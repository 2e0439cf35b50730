"""The query layer's two backends: InfluxQL on InfluxDB and SQL on the embedded SQLite store.

InfluxQL serves InfluxDB 1.x, and 2.x/3.x through their v1-compatible ``/query`` endpoint.

Counts come from the stores' hourly roll-ups (``event_rollups``: per compound, kind, severity and
UTC hour) when the request allows it (``rollups_serve``: whole-hour range, zone at whole hours, no
device or plate/person filter, not grouped by device); otherwise, and on InfluxDB for the last two
hours (the continuous query runs hourly), from the raw events. Both give the same numbers. Day
counts from a local midnight to a local midnight take whole days from the daily roll-ups when the
store keeps them at the zone's offset (``days_serve``). The device inventory reads the stores'
per-device summaries (``summary_serves``).

Both take a validated ``Selection`` and answer the same three questions: events in time order,
counts per interval, and what each device last did. A query that needs another question of the
store brings it as a ``StoreQuery``: one method per backend, in the query's own module, which the
backend calls back (``backend.run(question)``), so adding one touches no file here. Filter values
always travel as bound parameters (``$name`` in InfluxQL, ``?`` in SQLite); the only text built
here is made of our own identifiers (measurement names from the ``EventKind`` enumeration,
parameter names we number).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar, assert_never
from zoneinfo import ZoneInfo

from district.query_model import CountRow, DeviceActivity, Selection
from foundation.events import Event, EventKind
from uplink.stores import (
    InfluxV1Store,
    InfluxV1StoreConfig,
    InfluxV2Store,
    InfluxV2StoreConfig,
    SqliteStore,
    SqliteStoreConfig,
    StoreConfig,
    StoreError,
)
from uplink.stores.influx_v1 import (
    DAILY_MARKER,
    DEVICE_DAYS,
    DEVICE_DAYS_MARKER,
    ROLLUP_FIELD,
    ROLLUP_MARKER,
)

NS = 1_000_000_000
HOUR_NS = 3600 * NS
DAY_NS = 24 * HOUR_NS
ALL_KINDS = tuple(kind.value for kind in EventKind)
GROUP_COLUMNS = {"compound": "compound_id", "kind": "kind", "device": "device_id"}
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")
T_co = TypeVar("T_co", covariant=True)
DEVICES_PER_QUERY = 100  # devices named in one InfluxQL statement (bound parameters, OR-ed)


class StoreQuery(Protocol[T_co]):
    """A question a query asks the store beyond the shared three: one method per backend.

    A new backend adds its method here, and mypy then names every question that lacks it.
    """

    async def on_sqlite(self, store: SqliteQueries) -> T_co:
        """The answer from the embedded store (``store.read`` runs SQL on its reading thread)."""
        ...

    async def on_influx(self, store: InfluxQueries) -> T_co:
        """The answer from InfluxDB (``store.influxql`` runs InfluxQL with bound parameters)."""
        ...


T = TypeVar("T")


class QueryBackend(Protocol):
    """What the operator service asks of a store."""

    async def run(self, question: StoreQuery[T]) -> T:
        """Answer a query's own question (calls back the method for this backend)."""
        ...

    async def find(
        self, selection: Selection, *, newest_first: bool, limit: int, cursor_ns: int | None
    ) -> list[Event]:
        """Events in time order (newest first or oldest first), after/before the cursor, at most limit."""
        ...

    async def count(
        self, selection: Selection, *, interval: str, group_by: Sequence[str], zone: ZoneInfo
    ) -> list[CountRow]:
        """Event counts per hour or day (local ``zone`` days) and group; empty buckets are left out."""
        ...

    async def device_activity(self, selection: Selection) -> list[DeviceActivity]:
        """Per device seen in the selection: its last event and its last status report."""
        ...

    async def ping(self) -> None:
        """The store answers (readiness); raises ``StoreError`` if not."""
        ...


def rollups_serve(selection: Selection, *, group_by: Sequence[str], zone: ZoneInfo) -> bool:
    """Whether hourly roll-ups can answer this count exactly.

    They hold counts per district, compound, kind, severity and UTC hour: the range must be whole
    UTC hours, the zone's offset whole hours at both ends (day buckets are sums of hours), and the
    filters and groups only what they keep.
    """
    if selection.devices or "device" in group_by:
        return False
    if any(column != "severity" for column, _ in selection.equal_to()):
        return False
    if selection.start_ns % HOUR_NS or selection.end_ns % HOUR_NS:
        return False
    # a zone at half or quarter hours (Asia/Kolkata) starts its hours and days inside UTC hours
    for at in (selection.start_ns, selection.end_ns):
        offset = datetime.fromtimestamp(at / NS, tz=zone).utcoffset() or timedelta()
        if offset.total_seconds() % 3600:
            return False
    return True


def days_serve(selection: Selection, zone: ZoneInfo, offset_ns: int | None) -> bool:
    """Whether daily roll-ups kept at UTC offset ``offset_ns`` hold this range's local days of ``zone``.

    The range must run from a local midnight to a local midnight, and the zone be at that offset
    at every midnight between (a zone with summer time is not, for half the year: hours answer).
    Check ``rollups_serve`` too: days hold what hours hold.
    """
    if offset_ns is None:
        return False
    if (selection.start_ns + offset_ns) % DAY_NS or (selection.end_ns + offset_ns) % DAY_NS:
        return False
    for at in range(selection.start_ns, selection.end_ns + 1, DAY_NS):
        offset = datetime.fromtimestamp(at / NS, tz=zone).utcoffset() or timedelta()
        if int(offset.total_seconds()) * NS != offset_ns:
            return False
    return True


def summary_serves(selection: Selection) -> bool:
    """Whether a per-device summary (every kind, every event) can answer this device activity question."""
    return not (selection.kinds or selection.devices or selection.equal_to())


def _bucket_time(bucket_ns: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(bucket_ns / NS, tz=zone)


def sort_and_trim(events: list[Event], times: list[int], *, newest_first: bool, limit: int) -> list[Event]:
    """Events ordered by point time (ties by event id), at most ``limit``."""
    keyed = sorted(zip(times, (e.event_id for e in events), events, strict=True), reverse=newest_first)
    return [event for _, _, event in keyed[:limit]]


# ---- SQLite ----------------------------------------------------------------------------------


def sqlite_where(selection: Selection) -> tuple[str, list[str | int]]:
    """The ``WHERE`` text (``?`` placeholders only) and its parameters for a selection."""
    clauses = ["time_ns >= ?", "time_ns < ?"]
    params: list[str | int] = [selection.start_ns, selection.end_ns]

    def any_of(column: str, values: Sequence[str]) -> None:
        clauses.append(f"{column} IN ({','.join('?' * len(values))})")
        params.extend(values)

    if selection.compounds is None:
        clauses.append("district_id = ?")
        params.append(selection.district_id)
    else:
        any_of("compound_id", selection.compounds)
    if selection.kinds:
        any_of("kind", selection.kinds)
    if selection.devices:
        any_of("device_id", selection.devices)
    for column, value in selection.equal_to():
        clauses.append(f"{column} = ?")
        params.append(value)
    return " AND ".join(clauses), params


class SqliteQueries:
    """Queries on the embedded store (its own reading thread, the store file in WAL mode).

    ``use_rollups=False`` counts from the raw events always (tests and benchmarks compare).
    """

    def __init__(self, store: SqliteStore, *, use_rollups: bool = True) -> None:
        self._store = store
        self.use_rollups = use_rollups

    async def ping(self) -> None:
        """The store file answers."""
        await self._store.ping()

    async def run(self, question: StoreQuery[T]) -> T:
        """Answer a query's own question with its SQLite method."""
        return await question.on_sqlite(self)

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the store's connection, in its thread (bind every value with ``?``)."""
        return await self._store.call(work)

    async def find(
        self, selection: Selection, *, newest_first: bool, limit: int, cursor_ns: int | None
    ) -> list[Event]:
        """Events in time order after/before the cursor."""
        where, params = sqlite_where(selection)
        if cursor_ns is not None:
            where += " AND time_ns < ?" if newest_first else " AND time_ns > ?"
            params.append(cursor_ns)
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT body FROM events WHERE {where} ORDER BY time_ns {order}, event_id {order} LIMIT ?"  # noqa: S608 - placeholders only
        params.append(limit)

        def run(db: sqlite3.Connection) -> list[str]:
            return [row[0] for row in db.execute(sql, params)]

        return [Event.model_validate_json(body) for body in await self._store.call(run)]

    async def count(
        self, selection: Selection, *, interval: str, group_by: Sequence[str], zone: ZoneInfo
    ) -> list[CountRow]:
        """Counts per bucket; day buckets start at local midnight of ``zone``."""
        where, params = sqlite_where(selection)
        width = HOUR_NS if interval == "hour" else DAY_NS
        start = datetime.fromtimestamp(selection.start_ns / NS, tz=zone)
        offset = int((start.utcoffset() or timedelta()).total_seconds()) * NS
        columns = [GROUP_COLUMNS[g] for g in group_by]
        if (
            self.use_rollups
            and interval == "day"
            and rollups_serve(selection, group_by=group_by, zone=zone)
            and days_serve(selection, zone, self._store.day_offset_ns)
        ):
            # the daily roll-ups: the zone's days are the table's (same columns, days as day_ns)
            where = where.replace("time_ns", "day_ns")
            time_column, table, total = "day_ns", "event_rollups_daily", "sum(events)"
        elif self.use_rollups and rollups_serve(selection, group_by=group_by, zone=zone):
            # the roll-up table has the filtered columns under the same names, hours as hour_ns
            where = where.replace("time_ns", "hour_ns")
            time_column, table, total = "hour_ns", "event_rollups", "sum(events)"
        else:
            time_column, table, total = "time_ns", "events", "count(*)"
        bucket = f"(({time_column} + {offset}) / {width}) * {width} - {offset}"
        select = ", ".join([bucket, *columns, total])
        groups = ", ".join(["1", *[str(i + 2) for i in range(len(columns))]])
        sql = f"SELECT {select} FROM {table} WHERE {where} GROUP BY {groups} ORDER BY {groups}"  # noqa: S608 - our columns, placeholders

        def run(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return db.execute(sql, params).fetchall()

        rows = []
        for row in await self._store.call(run):
            named = dict(zip(columns, row[1:-1], strict=True))
            rows.append(
                CountRow(
                    bucket=_bucket_time(row[0], zone),
                    count=row[-1],
                    compound_id=named.get("compound_id"),
                    kind=named.get("kind"),
                    device_id=named.get("device_id"),
                )
            )
        return sorted(
            rows, key=lambda r: _order((int(r.bucket.timestamp()), r.compound_id, r.kind, r.device_id))
        )

    async def device_activity(self, selection: Selection) -> list[DeviceActivity]:
        """Last event and last status report per device: from the ``device_activity`` summary when it can.

        The summary holds each device's last event ever; it answers a range that ends after them
        (the inventory's does: it ends in the future). A device with a later one (a clock far ahead)
        sends the question to the events.
        """
        if self.use_rollups and summary_serves(selection):
            answer = await self._summary_activity(selection)
            if answer is not None:
                return answer
        return await self._raw_activity(selection)

    async def _summary_activity(self, selection: Selection) -> list[DeviceActivity] | None:
        if selection.compounds is None:
            scope, params = "district_id = ?", [selection.district_id]
        else:
            scope = f"compound_id IN ({','.join('?' * len(selection.compounds))})"
            params = list(selection.compounds)
        sql = (
            "SELECT compound_id, device_id, dialect, last_ns, status_state, status_ns"  # noqa: S608 - placeholders only
            f" FROM device_activity WHERE {scope} AND last_ns >= ?"
        )

        def run(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return db.execute(sql, [*params, selection.start_ns]).fetchall()

        rows = await self._store.call(run)
        if any(last >= selection.end_ns or (at or 0) >= selection.end_ns for _, _, _, last, _, at in rows):
            return None
        # a device's last status report over the compounds in scope, as the events' query groups it
        last_status: dict[str, tuple[int, str]] = {}
        for _, device, _, _, state, at in rows:
            if at is not None and at >= selection.start_ns and at > last_status.get(device, (-1, ""))[0]:
                last_status[device] = (at, state)
        return [
            DeviceActivity(
                compound_id=compound,
                device_id=device,
                dialect=dialect,
                last_seen_ns=last,
                status_state=last_status[device][1] if device in last_status else None,
                status_ns=last_status[device][0] if device in last_status else None,
            )
            for compound, device, dialect, last, _, _ in rows
        ]

    async def _raw_activity(self, selection: Selection) -> list[DeviceActivity]:
        where, params = sqlite_where(selection)
        seen_sql = (
            "SELECT compound_id, device_id, json_extract(body, '$.source.dialect'), max(time_ns)"  # noqa: S608 - placeholders only
            f" FROM events WHERE {where} GROUP BY compound_id, device_id"
        )
        status_sql = (
            "SELECT device_id, json_extract(body, '$.payload.state'), max(time_ns) FROM events"  # noqa: S608 - placeholders only
            f" WHERE {where} AND kind = 'device_status' GROUP BY device_id"
        )

        def run(db: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            # one read transaction: both answers describe the same moment
            with db:
                return db.execute(seen_sql, params).fetchall(), db.execute(status_sql, params).fetchall()

        seen, statuses = await self._store.call(run)
        last_status = {device: (state, at) for device, state, at in statuses}
        return [
            DeviceActivity(
                compound_id=compound,
                device_id=device,
                dialect=dialect,
                last_seen_ns=at,
                status_state=last_status.get(device, (None, None))[0],
                status_ns=last_status.get(device, (None, None))[1],
            )
            for compound, device, dialect, at in seen
        ]


# ---- InfluxQL --------------------------------------------------------------------------------

InfluxRunner = Callable[[str, dict[str, str | int]], Awaitable[list[dict[str, Any]]]]
"""Runs one InfluxQL statement with bound parameters; returns the ``results`` list (epoch=ns)."""


def influx_where(selection: Selection) -> tuple[str, dict[str, str | int]]:
    """The ``WHERE`` text (``$name`` placeholders only) and its bound parameters for a selection."""
    clauses = ["time >= $start", "time < $end"]
    params: dict[str, str | int] = {"start": selection.start_ns, "end": selection.end_ns}

    def any_of(key: str, prefix: str, values: Sequence[str]) -> None:
        names = [f"{prefix}{i}" for i in range(len(values))]
        clauses.append("(" + " OR ".join(f"{key} = ${name}" for name in names) + ")")
        params.update(zip(names, values, strict=True))

    if selection.compounds is None:
        clauses.append("district_id = $district")
        params["district"] = selection.district_id
    else:
        any_of("compound_id", "c", selection.compounds)
    if selection.devices:
        any_of("device_id", "d", selection.devices)
    for key, value in selection.equal_to():
        clauses.append(f"{key} = ${key}")
        params[key] = value
    return " AND ".join(clauses), params


def measurements(selection: Selection) -> str:
    """The ``FROM`` list: the selected kinds' measurements, quoted (every kind when none is selected)."""
    kinds = selection.kinds or ALL_KINDS
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown:  # the request model only lets enumeration values through; this guards the text we build
        raise ValueError(f"not event kinds: {sorted(unknown)}")
    return ",".join(f'"{kind}"' for kind in kinds)


def series_of(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every series of an InfluxQL answer's results."""
    return [series for result in results for series in result.get("series", [])]


@dataclasses.dataclass(frozen=True)
class InfluxRollups:
    """Where InfluxDB keeps the hourly roll-ups (``uplink.stores.influx_v1``) and how fresh they are.

    ``fresh_hours``: the last hours counted from raw events instead (the continuous query runs
    once an hour, at the hour: the current and the previous hour may not be counted yet).
    """

    policy: str
    marker: str
    field: str
    device_days: str = DEVICE_DAYS
    device_marker: str = DEVICE_DAYS_MARKER
    daily_policy: str | None = None
    day_offset_ns: int | None = None
    daily_marker: str = DAILY_MARKER
    fresh_hours: int = 2
    recheck_s: float = 60.0


class InfluxQueries:
    """Queries on InfluxDB through InfluxQL with bound parameters."""

    def __init__(
        self,
        run: InfluxRunner,
        ping: Callable[[], Awaitable[None]],
        rollups: InfluxRollups | None = None,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._run = run
        self._ping = ping
        self._rollups = rollups
        self._now_ns = now_ns
        self._ready: set[str] = set()
        self._checked: dict[str, float] = {}

    async def rollups_ready(self, marker: str | None = None, policy: str | None = None) -> bool:
        """Whether a roll-up level covers every stored event (its backfill marker is there).

        ``marker``: the level's (default: the hourly counts'); ``policy``: the daily level's marker
        names its policy. Asked again at most every ``recheck_s`` until it is; then never again.
        """
        rollups = self._rollups
        if rollups is None:
            return False
        marker = marker or rollups.marker
        key = f"{marker}/{policy or ''}"
        if (
            key not in self._ready
            and time.monotonic() - self._checked.get(key, float("-inf")) >= rollups.recheck_s
        ):
            self._checked[key] = time.monotonic()
            where = ' WHERE "policy" = $policy' if policy else ""
            query = f'SELECT count("done") FROM "{rollups.policy}"."{marker}"{where}'  # noqa: S608 - our identifiers
            try:
                if series_of(await self._run(query, {"policy": policy} if policy else {})):
                    self._ready.add(key)
            except StoreError:
                pass  # no roll-up policy yet: raw events answer until there is
        return key in self._ready

    async def ping(self) -> None:
        """The server answers ``/ping``."""
        await self._ping()

    async def run(self, question: StoreQuery[T]) -> T:
        """Answer a query's own question with its InfluxQL method."""
        return await question.on_influx(self)

    async def influxql(self, statement: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
        """Run one InfluxQL statement with bound parameters; the ``results`` list, times in ns."""
        return await self._run(statement, params)

    async def find(
        self, selection: Selection, *, newest_first: bool, limit: int, cursor_ns: int | None
    ) -> list[Event]:
        """Events in time order; each measurement answers its own top ``limit``, merged here."""
        where, params = influx_where(selection)
        if cursor_ns is not None:
            where += " AND time < $cursor" if newest_first else " AND time > $cursor"
            params["cursor"] = cursor_ns
        order = "DESC" if newest_first else "ASC"
        query = f"SELECT body FROM {measurements(selection)} WHERE {where} ORDER BY time {order} LIMIT {int(limit)}"  # noqa: S608 - bound parameters
        events: list[Event] = []
        times: list[int] = []
        for series in series_of(await self._run(query, params)):
            for at, body in series["values"]:
                events.append(Event.model_validate_json(body))
                times.append(at)
        return sort_and_trim(events, times, newest_first=newest_first, limit=limit)

    async def count(
        self, selection: Selection, *, interval: str, group_by: Sequence[str], zone: ZoneInfo
    ) -> list[CountRow]:
        """``count(event_id)`` grouped by time (in ``zone``) and tags; kinds are measurements."""
        if not _ZONE_NAME.match(zone.key):
            raise ValueError(f"time zone name {zone.key!r} is not safe to quote")
        tags = [GROUP_COLUMNS[g] for g in group_by if g != "kind"]
        by = ", ".join([f"time({'1h' if interval == 'hour' else '1d'})", *tags])
        totals: dict[tuple[int, str | None, str | None, str | None], int] = {}
        raw = selection
        rollups = self._rollups
        if (
            rollups is not None
            and rollups_serve(selection, group_by=group_by, zone=zone)
            and await self.rollups_ready()
        ):
            # daily roll-ups for the whole local days before the fresh hours (when kept at the
            # zone's offset), hourly ones up to the fresh hours, raw events after: all grouped
            # alike, summed by key
            fresh_ns = (self._now_ns() // HOUR_NS - rollups.fresh_hours + 1) * HOUR_NS
            split = min(max(fresh_ns, selection.start_ns), selection.end_ns)
            hours_from = selection.start_ns
            offset = rollups.day_offset_ns
            if (
                interval == "day"
                and rollups.daily_policy is not None
                and offset is not None
                and days_serve(selection, zone, offset)
                and await self.rollups_ready(rollups.daily_marker, rollups.daily_policy)
            ):
                hours_from = max(selection.start_ns, (split + offset) // DAY_NS * DAY_NS - offset)
                if hours_from > selection.start_ns:
                    counted = dataclasses.replace(selection, end_ns=hours_from)
                    await self._add_rollups(
                        totals,
                        counted,
                        policy=rollups.daily_policy,
                        rollups=rollups,
                        by=by,
                        zone=zone,
                        group_by=group_by,
                    )
            if split > hours_from:
                counted = dataclasses.replace(selection, start_ns=hours_from, end_ns=split)
                await self._add_rollups(
                    totals,
                    counted,
                    policy=rollups.policy,
                    rollups=rollups,
                    by=by,
                    zone=zone,
                    group_by=group_by,
                )
            raw = dataclasses.replace(selection, start_ns=split)
        if raw.start_ns < raw.end_ns:
            where, params = influx_where(raw)
            query = (
                f"SELECT count(event_id) FROM {measurements(raw)} WHERE {where}"  # noqa: S608 - bound parameters
                f" GROUP BY {by} fill(none) tz('{zone.key}')"
            )
            await self._add_counts(totals, query, params, group_by)
        return [
            CountRow(
                bucket=_bucket_time(at, zone), count=n, compound_id=compound, kind=kind, device_id=device
            )
            for (at, compound, kind, device), n in sorted(totals.items(), key=lambda kv: _order(kv[0]))
        ]

    async def _add_rollups(
        self,
        totals: dict[tuple[int, str | None, str | None, str | None], int],
        counted: Selection,
        *,
        policy: str,
        rollups: InfluxRollups,
        by: str,
        zone: ZoneInfo,
        group_by: Sequence[str],
    ) -> None:
        """Sum one roll-up level's points of the selection into ``totals``."""
        where, params = influx_where(counted)
        sources = ",".join(f'"{policy}".{m}' for m in measurements(counted).split(","))
        query = (
            f'SELECT sum("{rollups.field}") FROM {sources} WHERE {where}'  # noqa: S608 - bound parameters
            f" GROUP BY {by} fill(none) tz('{zone.key}')"
        )
        await self._add_counts(totals, query, params, group_by)

    async def _add_counts(
        self,
        totals: dict[tuple[int, str | None, str | None, str | None], int],
        query: str,
        params: dict[str, str | int],
        group_by: Sequence[str],
    ) -> None:
        for series in series_of(await self._run(query, params)):
            series_tags = series.get("tags") or {}
            kind = series["name"] if "kind" in group_by else None
            for at, count in series["values"]:
                if not count:  # a roll-up hour recounted to nothing: no bucket, as in raw counts
                    continue
                key = (at, series_tags.get("compound_id"), kind, series_tags.get("device_id"))
                totals[key] = totals.get(key, 0) + int(count)

    async def device_activity(self, selection: Selection) -> list[DeviceActivity]:
        """``last()`` per device over every kind, and per device and state over status reports.

        With the device days rolled up, the last event of each device is read from its last day
        only: the fresh hours (which the roll-ups may not have counted yet) from raw events for
        every device, then, for each device not heard in them, the day the device days say it
        was last heard (one query per such day, its devices named). Status reports are few
        (a measurement of their own): read as they are.
        """
        where, params = influx_where(selection)
        last_seen: dict[str, tuple[int, str, str]] = {}
        rollups = self._rollups
        if (
            rollups is not None
            and summary_serves(selection)
            and await self.rollups_ready(rollups.device_marker)
        ):
            fresh_ns = (self._now_ns() // HOUR_NS - rollups.fresh_hours + 1) * HOUR_NS
            split = min(max(fresh_ns, selection.start_ns), selection.end_ns)
            if split < selection.end_ns:
                await self._last_seen(dataclasses.replace(selection, start_ns=split), last_seen)
            if split > selection.start_ns:
                await self._last_seen_from_days(selection, split, rollups, last_seen)
        else:
            await self._last_seen(selection, last_seen)
        status_query = (
            f'SELECT last(event_id) FROM "device_status" WHERE {where}'  # noqa: S608 - bound parameters
            " GROUP BY device_id, state"
        )
        last_status: dict[str, tuple[int, str]] = {}
        for series in series_of(await self._run(status_query, params)):
            tags = series["tags"]
            at = int(series["values"][0][0])
            if at > last_status.get(tags["device_id"], (-1, ""))[0]:
                last_status[tags["device_id"]] = (at, tags["state"])
        return [
            DeviceActivity(
                compound_id=compound,
                device_id=device,
                dialect=dialect,
                last_seen_ns=at,
                status_state=last_status[device][1] if device in last_status else None,
                status_ns=last_status[device][0] if device in last_status else None,
            )
            for device, (at, compound, dialect) in last_seen.items()
        ]

    async def _last_seen(self, selection: Selection, last_seen: dict[str, tuple[int, str, str]]) -> None:
        """Each device's last event in the selection, into ``last_seen`` where later than what it holds."""
        where, params = influx_where(selection)
        seen_query = (
            f"SELECT last(event_id) FROM {measurements(selection)} WHERE {where}"  # noqa: S608 - bound parameters
            " GROUP BY compound_id, device_id, dialect"
        )
        for series in series_of(await self._run(seen_query, params)):
            tags = series["tags"]
            at = int(series["values"][0][0])
            if at > last_seen.get(tags["device_id"], (-1, "", ""))[0]:
                last_seen[tags["device_id"]] = (at, tags["compound_id"], tags.get("dialect", ""))

    async def _last_seen_from_days(
        self,
        selection: Selection,
        split: int,
        rollups: InfluxRollups,
        last_seen: dict[str, tuple[int, str, str]],
    ) -> None:
        """Before ``split``: the devices not in ``last_seen``, each read on its last day with events."""
        days = dataclasses.replace(selection, start_ns=selection.start_ns // DAY_NS * DAY_NS, end_ns=split)
        where, params = influx_where(days)
        query = (
            f'SELECT last("{rollups.field}") FROM "{rollups.policy}"."{rollups.device_days}"'  # noqa: S608 - our identifiers, bound parameters
            f" WHERE {where} GROUP BY compound_id, device_id"
        )
        last_day: dict[str, int] = {}
        for series in series_of(await self._run(query, params)):
            device = series["tags"]["device_id"]
            if device not in last_seen:
                last_day[device] = max(last_day.get(device, 0), int(series["values"][0][0]))
        by_day: dict[int, list[str]] = {}
        for device, day in sorted(last_day.items()):
            by_day.setdefault(day, []).append(device)
        for day, devices in sorted(by_day.items()):
            for i in range(0, len(devices), DEVICES_PER_QUERY):
                window = dataclasses.replace(
                    selection,
                    start_ns=max(day, selection.start_ns),
                    end_ns=min(day + DAY_NS, split),
                    devices=tuple(devices[i : i + DEVICES_PER_QUERY]),
                )
                if window.start_ns < window.end_ns:
                    await self._last_seen(window, last_seen)


def _order(key: tuple[int, str | None, str | None, str | None]) -> tuple[int, str, str, str]:
    at, compound, kind, device = key
    return at, compound or "", kind or "", device or ""


def influx_rollups(config: InfluxV1StoreConfig) -> InfluxRollups:
    """Where an InfluxDB 1.x store keeps its roll-ups (2.x has none: its counts scan raw events)."""
    hours = config.rollup_day_offset_hours
    return InfluxRollups(
        policy=config.rollup_policy,
        marker=ROLLUP_MARKER,
        field=ROLLUP_FIELD,
        daily_policy=config.daily_policy(),
        day_offset_ns=None if hours is None else hours * HOUR_NS,
    )


@contextlib.asynccontextmanager
async def open_query_backend(config: StoreConfig) -> AsyncIterator[QueryBackend]:
    """The backend for the configured store, open for the block.

    Every member of ``StoreConfig`` has its case (``assert_never`` makes mypy name a new one that
    lacks it); InfluxDB 2.x/3.x answer InfluxQL through their v1-compatible ``/query``.
    """
    match config:
        case SqliteStoreConfig():
            async with SqliteStore(config) as sqlite:
                yield SqliteQueries(sqlite)
        case InfluxV1StoreConfig():
            async with InfluxV1Store(config) as v1:

                async def run_v1(query: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
                    return await v1.query(query, method="POST", params=params, epoch="ns")

                yield InfluxQueries(run_v1, v1.ping, influx_rollups(config))
        case InfluxV2StoreConfig():
            async with InfluxV2Store(config) as v2:

                async def run_v2(query: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
                    return await v2.query(query, params=params, epoch="ns")

                yield InfluxQueries(run_v2, v2.ping)
        case _:
            assert_never(config)
