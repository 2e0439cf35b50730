"""Statistics from roll-ups and the alarm actions (issue 15): ``counts`` by month and ``alarm_counts``.

Real stores (embedded SQLite, and InfluxDB 1.6.7 with its roll-ups) and operations database
behind the real operator service; events over
the three local months before the current one, written straight into the store, and alarm steps
recorded through the ``alarm_action`` action (the path operators take). Every expected number is
recounted here from the generated events and the steps this file took, never from the code under
test.

Teeth, each broken once on purpose and seen failing:

* months folded by UTC instead of local months (``month_of`` without ``astimezone``): the events
  of 00:30 local on the 1st counted in the month before -> ``test_counts_by_month_*`` failed;
* the outcomes' resolved flag ignored (``open`` left at the total) -> ``test_alarm_counts_equal_a_raw_recount``
  failed on the open column;
* the outcomes not filtered by scope (``alarm_outcomes`` given ``None`` for a scoped token) ->
  the scoped part of ``test_alarm_counts_equal_a_raw_recount`` failed (compound 2's outcomes appeared);
* the migration skipped (``migrate_operations_db`` not called) -> ``test_an_older_operations_db_*``
  failed with "no such column: kind".
"""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from device_sims.influx import InfluxServer
from device_sims.inventory import DISTRICT_ID, compound_id
from district.config import DistrictConfig, load_district_config
from district.operations import OperationsDb
from district.operator_service import Caller, OperatorService, open_operator_service
from district.query_model import AlarmState, Role
from foundation.errors import OperatorError
from foundation.events import (
    EbikeShedPayload,
    Event,
    EventKind,
    Provenance,
    Severity,
    ShedCondition,
    ThrownObjectPayload,
    utc_now,
)
from tests.district_data import OTHER_COMPOUND, OTHER_DISTRICT, district_toml
from uplink.stores import InfluxV1Store, InfluxV1StoreConfig, RetentionCounts, RetentionRules
from uplink.stores.sqlite import SqliteStore, SqliteStoreConfig

CST = ZoneInfo("Asia/Shanghai")
CLI = Caller("cli", "tester@test")
C1, C2 = compound_id(1), compound_id(2)
KINDS = (EventKind.THROWN_OBJECT, EventKind.EBIKE_SHED)
PATHS: tuple[tuple[AlarmState, ...], ...] = (
    (),
    (AlarmState.ACKNOWLEDGED,),
    (AlarmState.ACKNOWLEDGED, AlarmState.CONFIRMED),
    (AlarmState.ACKNOWLEDGED, AlarmState.FALSE_ALARM),
    (AlarmState.ACKNOWLEDGED, AlarmState.CONFIRMED, AlarmState.RESOLVED),
    (AlarmState.ACKNOWLEDGED, AlarmState.FALSE_ALARM, AlarmState.RESOLVED),
)


def add_months(day: date, months: int) -> date:
    """The first of the month ``months`` after ``day``'s month."""
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def midnight(day: date) -> datetime:
    """Local midnight (Asia/Shanghai) of a day."""
    return datetime.combine(day, time(0), tzinfo=CST)


def event(n: int, compound: str, at: datetime, kind: EventKind, severity: Severity) -> Event:
    """One generated event (thrown object or shed)."""
    payload = (
        ThrownObjectPayload()
        if kind is EventKind.THROWN_OBJECT
        else EbikeShedPayload(condition=ShedCondition.FIRE_ALARM)
    )
    return Event(
        event_id=f"57a7{n:08x}",  # hex: what alarm_action accepts
        kind=kind,
        district_id=OTHER_DISTRICT if compound == OTHER_COMPOUND else DISTRICT_ID,
        compound_id=compound,
        device_id=f"{compound[:6]}{compound[-4:]}1320000001",
        occurred_at=at,
        received_at=at,
        severity=severity,
        source=Provenance(vendor="test", dialect="test"),
        payload=payload,
    )


def generate(months: list[date], seed: int = 15) -> list[Event]:
    """Events over the given local months, local month and day boundaries among them."""
    rng = random.Random(seed)
    events: list[Event] = []

    def add(compound: str, at: datetime, kind: EventKind, severity: Severity) -> None:
        events.append(event(len(events), compound, at, kind, severity))

    for first in months:
        last = add_months(first, 1)
        span = (midnight(last) - midnight(first)).total_seconds()
        for compound in (C1, C2, OTHER_COMPOUND):
            for _ in range(rng.randint(40, 70)):
                at = midnight(first) + timedelta(seconds=rng.uniform(0, span - 1))
                severity = Severity.CRITICAL if rng.random() < 0.4 else Severity.INFO
                add(compound, at, rng.choice(KINDS), severity)
            # the local month's edges: 00:30 on the 1st (16:30 UTC of the month before) and 23:59:59
            add(compound, midnight(first) + timedelta(minutes=30), EventKind.THROWN_OBJECT, Severity.CRITICAL)
            add(compound, midnight(last) - timedelta(seconds=1), EventKind.EBIKE_SHED, Severity.CRITICAL)
    return events


@dataclass
class District:
    """The operator service over the generated store, with tokens."""

    config: DistrictConfig
    service: OperatorService
    events: list[Event]
    months: list[date]
    tokens: dict[str, str]

    async def ask(self, who: str, action: str, **params: Any) -> Any:
        answer = await self.service.handle(self.tokens[who], action, params, CLI)
        return answer.result

    async def refused(self, who: str, action: str, **params: Any) -> OperatorError:
        with pytest.raises(OperatorError) as caught:
            await self.service.handle(self.tokens[who], action, params, CLI)
        return caught.value

    @property
    def start(self) -> datetime:
        return midnight(self.months[0])

    @property
    def end(self) -> datetime:
        return midnight(add_months(self.months[-1], 1))


async def write_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest, events: list[Event]) -> str:
    """Write the events into a real store of this kind (with its roll-ups); its ``[store]`` text."""
    if kind == "sqlite":
        sqlite_config = SqliteStoreConfig(path=tmp_path / "district.db")
        async with SqliteStore(sqlite_config) as sqlite:
            await sqlite.write(events)
        return f'type = "sqlite"\npath = "{sqlite_config.path}"'
    influx: InfluxServer = request.getfixturevalue("influx")
    influx_config = InfluxV1StoreConfig(url=influx.url, database="district")
    rules = RetentionRules(events_days=3650, hit_crops_days=30, batch_rows=1000, rollup_days=400)
    async with InfluxV1Store(influx_config) as store:
        await store.write(events)
        # the roll-up policy, continuous query and backfill, as the ingester's retention pass makes them
        await store.enforce_retention(rules, utc_now(), RetentionCounts())
        assert await store.rollups_backfilled()
    return f'type = "influx_v1"\nurl = "{influx.url}"\ndatabase = "district"'


@pytest.fixture(params=["sqlite", "influx"])
async def district(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[District]:
    """The three local months before the current one, in a real store behind the real service."""
    this_month = utc_now().astimezone(CST).date().replace(day=1)
    months = [add_months(this_month, n) for n in (-3, -2, -1)]
    events = generate(months)
    store = await write_store(request.param, tmp_path, request, events)
    path = tmp_path / "district.toml"
    path.write_text(district_toml(tmp_path, store=store), "utf-8")
    config = load_district_config(path)
    async with OperationsDb(config.api.ops_db) as ops:
        tokens = {
            "viewer": await ops.create_token("viewer", Role.VIEWER, DISTRICT_ID, (), "test"),
            "operator": await ops.create_token("operator", Role.OPERATOR, DISTRICT_ID, (), "test"),
            "c1": await ops.create_token("c1", Role.VIEWER, DISTRICT_ID, (C1,), "test"),
        }
    async with open_operator_service(config) as service:
        yield District(config, service, events, months, tokens)


def local_month(at: datetime) -> date:
    return at.astimezone(CST).date().replace(day=1)


def local_day(at: datetime) -> date:
    return at.astimezone(CST).date()


def ours(events: list[Event], compounds: Collection[str] = (C1, C2)) -> list[Event]:
    """The events of this district's compounds (of ``compounds``)."""
    return [e for e in events if e.compound_id in compounds]


async def test_counts_by_month_are_the_local_months_of_the_events(district: District) -> None:
    """By month and by compound and kind: the events recounted per local month, and the day rows summed."""
    rows = await district.ask(
        "viewer",
        "counts",
        start=district.start.isoformat(),
        end=district.end.isoformat(),
        interval="month",
        group_by=["compound", "kind"],
    )
    got = {(local_month(r.bucket), r.compound_id, r.kind): r.count for r in rows}
    assert all(r.bucket == midnight(local_month(r.bucket)) for r in rows), "buckets are local month starts"
    expected = Counter(
        (local_month(e.occurred_at), e.compound_id, e.kind.value) for e in ours(district.events)
    )
    assert got == dict(expected)
    assert {r.bucket.date() for r in rows} == set(district.months)  # the local months, none leaked

    # the same from day rows, asked a month at a time (a day request may span 31 days) and summed here
    summed: Counter[tuple[date, str | None, str | None]] = Counter()
    for first in district.months:
        days = await district.ask(
            "viewer",
            "counts",
            start=midnight(first).isoformat(),
            end=midnight(add_months(first, 1)).isoformat(),
            interval="day",
            group_by=["compound", "kind"],
        )
        for r in days:
            summed[(first, r.compound_id, r.kind)] += r.count
    assert got == dict(summed)


async def test_counts_by_month_scope_and_ranges(district: District) -> None:
    """A scoped token sees its compound's months; a month request may span a year, a day one not."""
    rows = await district.ask(
        "c1", "counts", start=district.start.isoformat(), end=district.end.isoformat(), interval="month"
    )
    expected = Counter((local_month(e.occurred_at), e.compound_id) for e in ours(district.events, {C1}))
    assert {(r.bucket.date(), r.compound_id): r.count for r in rows} == dict(expected)

    year_ago = district.end - timedelta(days=366)
    year = await district.ask(
        "viewer",
        "counts",
        start=year_ago.isoformat(),
        end=district.end.isoformat(),
        interval="month",
        group_by=[],
    )
    assert sum(r.count for r in year) == len(ours(district.events))
    too_long = await district.refused(
        "viewer",
        "counts",
        start=(year_ago - timedelta(days=1)).isoformat(),
        end=district.end.isoformat(),
        interval="month",
    )
    assert (too_long.status, too_long.field) == (400, "end")
    by_day = await district.refused(
        "viewer", "counts", start=district.start.isoformat(), end=district.end.isoformat(), interval="day"
    )
    assert (by_day.status, by_day.field) == (400, "end")


async def record_steps(district: District, seed: int = 7) -> dict[str, tuple[AlarmState, ...]]:
    """Lifecycle steps for the critical events of this district, through ``alarm_action``."""
    rng = random.Random(seed)
    taken: dict[str, tuple[AlarmState, ...]] = {}
    for e in ours(district.events):
        if e.severity is not Severity.CRITICAL:
            continue
        path = rng.choice(PATHS)
        for step in path:
            await district.ask(
                "operator", "alarm_action", event_id=e.event_id, to=step.value, note="seeded step"
            )
        taken[e.event_id] = path
    assert set(taken.values()) == set(PATHS)
    return taken


def recount(
    events: list[Event],
    taken: dict[str, tuple[AlarmState, ...]],
    *,
    monthly: bool,
    by_kind: bool,
    start: datetime,
    end: datetime,
) -> dict[tuple[date, str, str | None], tuple[int, int, int, int]]:
    """The raw recount: each critical event of the range with the steps this file took for it."""
    tallies: dict[tuple[date, str, str | None], list[int]] = {}
    for e in events:
        if e.severity is not Severity.CRITICAL or not start <= e.occurred_at < end:
            continue
        period = local_month(e.occurred_at) if monthly else local_day(e.occurred_at)
        figures = tallies.setdefault((period, e.compound_id, e.kind.value if by_kind else None), [0, 0, 0, 0])
        steps = taken.get(e.event_id, ())
        figures[0] += 1
        figures[1] += AlarmState.CONFIRMED in steps
        figures[2] += AlarmState.FALSE_ALARM in steps
        figures[3] += AlarmState.RESOLVED not in steps
    return {key: (a, b, c, d) for key, (a, b, c, d) in tallies.items()}


def answered(rows: list[Any]) -> dict[tuple[date, str, str | None], tuple[int, int, int, int]]:
    return {
        (r.bucket.astimezone(CST).date(), r.compound_id, r.kind): (
            r.total,
            r.confirmed,
            r.false_alarm,
            r.open,
        )
        for r in rows
    }


async def test_alarm_counts_equal_a_raw_recount(district: District) -> None:
    """By month and by day, with and without kinds, for the district and a scoped token: the raw recount."""
    taken = await record_steps(district)
    window = {"start": district.start.isoformat(), "end": district.end.isoformat()}
    for by_kind in (False, True):
        rows = await district.ask("viewer", "alarm_counts", **window, interval="month", by_kind=by_kind)
        expected = recount(
            ours(district.events),
            taken,
            monthly=True,
            by_kind=by_kind,
            start=district.start,
            end=district.end,
        )
        assert answered(rows) == expected
        assert all(r.bucket == midnight(r.bucket.astimezone(CST).date()) for r in rows)
    # by day, a month at a time
    for first in district.months:
        start, end = midnight(first), midnight(add_months(first, 1))
        rows = await district.ask(
            "viewer",
            "alarm_counts",
            start=start.isoformat(),
            end=end.isoformat(),
            interval="day",
            by_kind=True,
        )
        assert answered(rows) == recount(
            ours(district.events), taken, monthly=False, by_kind=True, start=start, end=end
        )
    # one kind only; a scoped token sees its compound's alarms and outcomes only
    sheds = await district.ask("viewer", "alarm_counts", **window, interval="month", kinds=["ebike_shed"])
    shed_events = [e for e in ours(district.events) if e.kind is EventKind.EBIKE_SHED]
    assert answered(sheds) == recount(
        shed_events, taken, monthly=True, by_kind=False, start=district.start, end=district.end
    )
    scoped = await district.ask("c1", "alarm_counts", **window, interval="month")
    assert answered(scoped) == recount(
        ours(district.events, {C1}),
        taken,
        monthly=True,
        by_kind=False,
        start=district.start,
        end=district.end,
    )
    # a range that starts mid-month: only the alarms from then on
    mid = midnight(district.months[1]) + timedelta(days=10, hours=5)
    partial = await district.ask(
        "viewer", "alarm_counts", start=mid.isoformat(), end=district.end.isoformat(), interval="month"
    )
    assert answered(partial) == recount(
        ours(district.events), taken, monthly=True, by_kind=False, start=mid, end=district.end
    )


OLD_ALARM_ACTIONS = """
CREATE TABLE alarm_actions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, compound_id TEXT NOT NULL,
    from_state TEXT NOT NULL, to_state TEXT NOT NULL, actor TEXT NOT NULL, at TEXT NOT NULL,
    note TEXT NOT NULL);
"""


async def test_an_older_operations_db_gains_the_columns_and_its_rows_count_by_action_time(
    district: District, tmp_path: Path
) -> None:
    """Rows written before ``kind``/``occurred_at`` existed: counted by their first action's time.

    An alarm confirmed on the old schema (at a time in the second month, while the alarm is of the
    first) counts in the second month, under no kind; a later step recorded by the new code carries
    the alarm's own time, and from then on the alarm counts in its own month.
    """
    old_path = tmp_path / "old-operations.db"
    alarm = next(
        e
        for e in ours(district.events, {C1})
        if e.severity is Severity.CRITICAL and local_month(e.occurred_at) == district.months[0]
    )
    acted = (midnight(district.months[1]) + timedelta(days=2)).astimezone(ZoneInfo("UTC"))
    with sqlite3.connect(old_path) as db:
        db.executescript(OLD_ALARM_ACTIONS)
        for n, (source, to) in enumerate((("new", "acknowledged"), ("acknowledged", "confirmed"))):
            db.execute(
                "INSERT INTO alarm_actions (event_id, compound_id, from_state, to_state, actor, at, note)"
                " VALUES (?,?,?,?,?,?,?)",
                (alarm.event_id, C1, source, to, "old", (acted + timedelta(minutes=n)).isoformat(), "before"),
            )
    async with OperationsDb(old_path) as ops:
        outcomes = await ops.alarm_outcomes([C1], district.start, district.end)
        assert [
            (o.event_id, o.kind, local_month(o.occurred_at), o.confirmed, o.resolved) for o in outcomes
        ] == [(alarm.event_id, None, district.months[1], True, False)]
        await ops.move_alarm(
            alarm.event_id,
            C1,
            AlarmState.RESOLVED,
            "new",
            "after",
            kind=alarm.kind.value,
            occurred_at=alarm.occurred_at,
        )
        outcomes = await ops.alarm_outcomes([C1], district.start, district.end)
        assert [(o.event_id, o.kind, o.occurred_at, o.confirmed, o.resolved) for o in outcomes] == [
            (alarm.event_id, alarm.kind.value, alarm.occurred_at, True, True)
        ]
        # and nothing outside the alarm's own month
        assert await ops.alarm_outcomes([C1], midnight(district.months[1]), district.end) == []
    async with OperationsDb(old_path):
        pass  # a second opening finds the columns there
    with sqlite3.connect(old_path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(alarm_actions)")]
    assert columns[-2:] == ["kind", "occurred_at"]
