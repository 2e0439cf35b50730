"""The ``overview`` query on the embedded SQLite store, with generated events around today's local day.

The events are written straight into a real SQLite store (no pipeline needed: the query reads
what a store holds); every expected number is computed here from the seeded events and from the
alarm steps this file records, never from the code under test.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from cli.main import main
from device_sims.inventory import DISTRICT_ID, compound_id, compound_name
from district.config import DistrictConfig, load_district_config
from district.operations import OperationsDb
from district.operator_service import Caller, OperatorService, open_operator_service
from district.queries import overview as overview_module
from district.queries.overview import Overview
from district.query_model import AlarmState, Role
from foundation.errors import OperatorError
from foundation.events import (
    DeviceState,
    DeviceStatusPayload,
    EbikeShedPayload,
    Event,
    EventKind,
    Provenance,
    Severity,
    ShedCondition,
    ThrownObjectPayload,
    utc_now,
)
from tests.district_data import OTHER_COMPOUND, OTHER_DISTRICT, district_toml, serving_operator_api
from uplink.lineprotocol import point_time_ns
from uplink.stores.sqlite import SqliteStore, SqliteStoreConfig

CST = ZoneInfo("Asia/Shanghai")
CLI = Caller("cli", "tester@test")
C1, C2 = compound_id(1), compound_id(2)
SILENT_AFTER = timedelta(hours=1)  # the config's device_silent_after_s below
# devices of each compound: the first two report often, the third went silent, the fourth said offline
DEVICES = {c: [f"{c[:6]}{c[-4:]}1320{n:06d}" for n in range(1, 5)] for c in (C1, C2)}  # unique ids
OPEN = {AlarmState.NEW, AlarmState.ACKNOWLEDGED}


def event(event_id: str, compound: str, device: str, at: datetime, kind: EventKind, **extra: Any) -> Event:
    """An event of one of the three kinds this file uses."""
    payloads = {
        EventKind.THROWN_OBJECT: ThrownObjectPayload(),
        EventKind.EBIKE_SHED: EbikeShedPayload(condition=ShedCondition.SELF_TEST),
        EventKind.DEVICE_STATUS: DeviceStatusPayload(state=extra.get("state", DeviceState.ONLINE)),
    }
    return Event(
        event_id=event_id,
        kind=kind,
        district_id=OTHER_DISTRICT if compound == OTHER_COMPOUND else DISTRICT_ID,
        compound_id=compound,
        device_id=device,
        occurred_at=at,
        received_at=at,
        severity=extra.get("severity", Severity.INFO),
        source=Provenance(vendor="test", dialect="test"),
        payload=payloads[kind],
    )


@dataclass
class Seeded:
    """What the store holds and what the operations database says of its alarms."""

    now: datetime
    today: date
    events: list[Event]
    states: dict[str, AlarmState]  # each alarm's state after the steps recorded here

    def local_day(self, e: Event) -> date:
        return e.occurred_at.astimezone(CST).date()

    def days(self, n: int) -> list[date]:
        return [self.today - timedelta(days=k) for k in range(n - 1, -1, -1)]

    def of(self, compounds: set[str]) -> list[Event]:
        return [e for e in self.events if e.compound_id in compounds]

    def expected(self, compounds: set[str], days: int = 7) -> dict[str, Any]:
        """The figures of these compounds, worked out from the seeded events alone."""
        mine = self.of(compounds)
        today = Counter(e.kind.value for e in mine if self.local_day(e) == self.today)
        per_day = Counter(self.local_day(e) for e in mine)
        window = set(self.days(days))
        last: dict[str, Event] = {}
        for e in sorted(mine, key=lambda e: e.occurred_at):
            last[e.device_id] = e
        online = 0
        for e in last.values():
            if isinstance(e.payload, DeviceStatusPayload):
                online += e.payload.state is DeviceState.ONLINE
            else:
                online += self.now - e.occurred_at <= SILENT_AFTER
        open_alarms = sum(
            1
            for e in mine
            if e.severity is Severity.CRITICAL
            and self.local_day(e) in window
            and self.states.get(e.event_id, AlarmState.NEW) in OPEN
        )
        return {
            "devices": len(last),
            "online": online,
            "today": {k.value: today.get(k.value, 0) for k in EventKind},
            "open_alarms": open_alarms,
            "trend": [(d, per_day.get(d, 0)) for d in self.days(days)],
        }


def figures(f: Any) -> dict[str, Any]:
    """The same figures read off an answer."""
    return {
        "devices": f.devices,
        "online": f.online,
        "today": {k.kind.value: k.count for k in f.today},
        "open_alarms": f.open_alarms,
        "trend": [(d.day, d.count) for d in f.trend],
    }


async def seed(store: SqliteStore, ops: OperationsDb, seed_: int = 15) -> Seeded:
    """Events over the last twelve local days, today's among them, and alarm steps in the ops db."""
    now = utc_now()
    today = now.astimezone(CST).date()
    midnight = datetime.combine(today, time(0), tzinfo=CST)
    if now - midnight < timedelta(hours=1):
        pytest.skip("the first local hour of the day leaves no room for today's seeded events")
    rng = random.Random(seed_)
    events: list[Event] = []
    alarm_ids: list[str] = []

    def add(compound: str, device: str, at: datetime, kind: EventKind, **extra: Any) -> Event:
        made = event(f"evt-ov-{len(events):06d}", compound, device, at, kind, **extra)
        events.append(made)
        return made

    for compound in (C1, C2):
        busy, quiet, silent, said_offline = DEVICES[compound]
        for back in range(12):
            if back == 3:
                continue  # a day with no event at all: the trend must show a zero there
            day_start = midnight - timedelta(days=back)
            room = (now - day_start).total_seconds() - 60 if back == 0 else 86_000.0
            for _ in range(rng.randint(2, 9)):
                at = day_start + timedelta(seconds=rng.uniform(60, room))
                kind = rng.choice([EventKind.THROWN_OBJECT, EventKind.EBIKE_SHED])
                add(compound, rng.choice([busy, quiet]), at, kind)
            for _ in range(rng.randint(0, 2)):
                at = day_start + timedelta(seconds=rng.uniform(60, room))
                alarm_ids.append(
                    add(compound, busy, at, EventKind.THROWN_OBJECT, severity=Severity.CRITICAL).event_id
                )
        # the local-day boundary: 00:30 local is today (16:30 UTC of yesterday); 23:59:59 is yesterday
        add(compound, quiet, midnight + timedelta(minutes=30), EventKind.EBIKE_SHED)
        add(compound, quiet, midnight - timedelta(seconds=1), EventKind.EBIKE_SHED)
        # fresh reports keep the busy and the quiet device online
        add(compound, busy, now - timedelta(minutes=10), EventKind.THROWN_OBJECT)
        add(compound, quiet, now - timedelta(minutes=20), EventKind.EBIKE_SHED)
        # silent for two days; said it went offline five minutes ago
        add(compound, silent, now - timedelta(days=2), EventKind.EBIKE_SHED)
        add(compound, said_offline, now - timedelta(minutes=30), EventKind.EBIKE_SHED)
        add(
            compound,
            said_offline,
            now - timedelta(minutes=5),
            EventKind.DEVICE_STATUS,
            state=DeviceState.OFFLINE,
        )
        # an alarm of today, and one long before the trend (never counted)
        alarm_ids.append(
            add(
                compound,
                busy,
                now - timedelta(minutes=40),
                EventKind.THROWN_OBJECT,
                severity=Severity.CRITICAL,
            ).event_id
        )
        add(
            compound, busy, midnight - timedelta(days=20), EventKind.THROWN_OBJECT, severity=Severity.CRITICAL
        )
    # a compound of the neighbouring district, today: never part of this district's overview
    add(OTHER_COMPOUND, "36010300011320000001", now - timedelta(minutes=15), EventKind.EBIKE_SHED)
    await store.write(events)

    # lifecycle steps: some confirmed, some false alarms, some resolved, one left acknowledged
    states: dict[str, AlarmState] = {}
    paths = {
        0: [AlarmState.ACKNOWLEDGED, AlarmState.CONFIRMED],
        1: [AlarmState.ACKNOWLEDGED],
        2: [AlarmState.ACKNOWLEDGED, AlarmState.FALSE_ALARM],
        3: [AlarmState.ACKNOWLEDGED, AlarmState.CONFIRMED, AlarmState.RESOLVED],
        4: [],
    }
    by_id = {e.event_id: e for e in events}
    for n, alarm_id in enumerate(alarm_ids):
        for step in paths[n % 5]:
            alarm = by_id[alarm_id]
            await ops.move_alarm(
                alarm_id,
                alarm.compound_id,
                step,
                "tester",
                "seeded",
                kind=alarm.kind.value,
                occurred_at=alarm.occurred_at,
            )
            states[alarm_id] = step
    assert set(states.values()) >= {AlarmState.CONFIRMED, AlarmState.ACKNOWLEDGED}
    return Seeded(now=now, today=today, events=events, states=states)


@dataclass
class District:
    """The operator service over the seeded store, with tokens."""

    config: DistrictConfig
    config_path: Path
    service: OperatorService
    seeded: Seeded
    tokens: dict[str, str]

    async def ask(self, who: str, **params: Any) -> Overview:
        answer = await self.service.handle(self.tokens[who], "overview", params, CLI)
        assert isinstance(answer.result, Overview)
        return answer.result

    async def ask_refused(self, who: str, **params: Any) -> OperatorError:
        with pytest.raises(OperatorError) as caught:
            await self.service.handle(self.tokens[who], "overview", params, CLI)
        return caught.value


@pytest.fixture
async def district(tmp_path: Path) -> AsyncIterator[District]:
    """A district config on an embedded store holding the seeded events; tokens of each kind."""
    store_config = SqliteStoreConfig(path=tmp_path / "district.db")
    path = tmp_path / "district.toml"
    store = f'type = "sqlite"\npath = "{store_config.path}"'
    path.write_text(
        district_toml(tmp_path, store=store, api="device_silent_after_s = 3600\nmax_page = 10"), "utf-8"
    )
    config = load_district_config(path)
    async with SqliteStore(store_config) as sqlite, OperationsDb(config.api.ops_db) as ops:
        seeded = await seed(sqlite, ops)
        # pages of ten: the open alarms are read over several pages of the store
        assert sum(e.severity is Severity.CRITICAL for e in seeded.events) > 2 * config.api.max_page
        tokens = {"viewer": await ops.create_token("district-viewer", Role.VIEWER, DISTRICT_ID, (), "test")}
        tokens["c1"] = await ops.create_token("c1", Role.VIEWER, DISTRICT_ID, (C1,), "test")
    async with open_operator_service(config) as service:
        yield District(config, path, service, seeded, tokens)


async def test_each_compound_and_the_district_totals(district: District) -> None:
    """Online rate, today's counts per kind, open alarms and the zero-filled trend, per compound and summed.

    Broken on purpose: with today taken as the UTC day (``ctx.clock().date()`` and midnight in
    UTC) the 00:30-local events left today's counts and the trend's days shifted, and this failed;
    with ``OPEN_STATES`` holding every state the confirmed and false alarms counted as open.
    """
    seeded = district.seeded
    answer = await district.ask("viewer")
    assert answer.day == seeded.today
    assert [c.compound_id for c in answer.compounds] == [C1, C2]
    for c in answer.compounds:
        expected = seeded.expected({c.compound_id})
        assert figures(c) == expected, c.compound_id
        # the fixed shape of the seed, so a wrong oracle cannot agree with a wrong answer unnoticed
        assert (c.devices, c.online, c.rate) == (4, 2, 0.5)
        assert (seeded.today - timedelta(days=3), 0) in expected["trend"]
        assert c.name != c.compound_id  # the registry's name
    assert figures(answer.district) == seeded.expected({C1, C2})
    assert answer.district.rate == 0.5
    assert answer.district.today_total == sum(seeded.expected({C1, C2})["today"].values())
    assert answer.open_alarms_complete

    three = await district.ask("viewer", days=3)
    assert figures(three.district) == seeded.expected({C1, C2}, days=3)
    refused = await district.ask_refused("viewer", days=32)
    assert (refused.status, refused.field) == (400, "days")


async def test_open_alarms_past_the_read_bound_are_a_lower_bound_and_said_so(
    district: District, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading one page of ten critical events only: the open alarms among those ten, flagged incomplete.

    Broken on purpose: returning ``True`` after the loop (as if every page was read) failed here.
    """
    monkeypatch.setattr(overview_module, "MAX_ALARM_PAGES", 1)
    seeded = district.seeded
    window = set(seeded.days(7))
    critical = sorted(
        (e for e in seeded.events if e.severity is Severity.CRITICAL and seeded.local_day(e) in window),
        key=point_time_ns,
        reverse=True,
    )
    newest = critical[: district.config.api.max_page]
    expected = sum(seeded.states.get(e.event_id, AlarmState.NEW) in OPEN for e in newest)
    answer = await district.ask("viewer")
    assert not answer.open_alarms_complete
    assert answer.district.open_alarms == expected < seeded.expected({C1, C2})["open_alarms"]


async def test_a_scoped_token_sees_its_compound_and_its_own_totals(district: District) -> None:
    """A token limited to compound 1 gets only it, and totals of it alone; asking for compound 2 is 403.

    Broken on purpose: passing ``compounds=None`` to the count selections (the whole district)
    put compound 2's events into the scoped token's totals, and this failed.
    """
    answer = await district.ask("c1")
    assert [c.compound_id for c in answer.compounds] == [C1]
    assert figures(answer.district) == district.seeded.expected({C1})
    assert figures(answer.district) == figures(answer.compounds[0])
    refused = await district.ask_refused("c1", compounds=[C2])
    assert refused.status == 403
    narrowed = await district.ask("viewer", compounds=[C2])
    assert [c.compound_id for c in narrowed.compounds] == [C2]
    assert figures(narrowed.district) == district.seeded.expected({C2})


async def test_over_http(district: District) -> None:
    """GET /api/v1/overview answers the same typed result as the service, as JSON."""
    expected = district.seeded.expected({C1, C2})
    async with serving_operator_api(district.config) as (url, tokens, _):
        headers = {"Authorization": f"Bearer {tokens['viewer']}"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{url}/api/v1/overview", params={"days": "7"}, headers=headers) as response,
        ):
            status, body = response.status, await response.json()
    assert status == 200
    assert [c["compound_id"] for c in body["compounds"]] == [C1, C2]
    total = body["district"]
    assert {k["kind"]: k["count"] for k in total["today"]} == expected["today"]
    assert [(date.fromisoformat(d["day"]), d["count"]) for d in total["trend"]] == expected["trend"]
    assert (total["devices"], total["online"], total["rate"]) == (8, 4, 0.5)
    assert total["open_alarms"] == expected["open_alarms"]
    assert total["today_total"] == sum(expected["today"].values())


async def test_through_the_cli(
    district: District, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`compound-gateway query overview` prints a row per compound (by name) and a total row."""
    config = str(district.config_path)
    create = ["token", "create", "--config", config, "--name", "cli", "--role", "viewer"]
    assert await asyncio.to_thread(main, create) == 0
    monkeypatch.setenv("CGW_TOKEN", capsys.readouterr().out.strip())
    assert await asyncio.to_thread(main, ["query", "overview", "--config", config, "--days", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:] if line.strip()}
    seeded = district.seeded
    labels = {compound_name(1): {C1}, compound_name(2): {C2}, "total": {C1, C2}}
    assert set(rows) == set(labels)
    for label, compounds in labels.items():
        expected = seeded.expected(compounds, days=5)
        online, rate, today, by_kind, alarms, trend = rows[label]
        assert (online, rate) == (f"{expected['online']}/{expected['devices']}", "50%")
        assert int(today) == sum(expected["today"].values())
        assert dict(part.split("=") for part in by_kind.split(",")) == {
            k: str(n) for k, n in expected["today"].items() if n
        }
        assert int(alarms) == expected["open_alarms"]
        assert [int(n) for n in trend.split(",")] == [n for _, n in expected["trend"]]
    json_query = ["query", "overview", "--config", config, "--format", "json"]
    assert await asyncio.to_thread(main, json_query) == 0
    assert json.loads(capsys.readouterr().out)["district"]["online"] == 4
