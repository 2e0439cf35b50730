"""The district query layer, against real InfluxDB 1.6.7 and the embedded store.

The data is two compounds' simulated day through the real pipeline (``district_data``); every
answer is checked against a plain-Python filter over the events the store holds.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_sims.inventory import DISTRICT_ID, compound_id
from district.config import load_district_config
from district.operations import OperationsDb
from district.operator_service import Caller, OperatorService, open_operator_service
from district.query_model import AlarmState, Role
from foundation.errors import OperatorError
from foundation.events import Event, EventKind, Severity
from tests.district_data import OTHER_COMPOUND, OTHER_DISTRICT, DistrictData, district_toml
from uplink.lineprotocol import point_time_ns

CST = ZoneInfo("Asia/Shanghai")
CLI = Caller("cli", "tester@test")
C1, C2 = compound_id(1), compound_id(2)


@dataclass
class District:
    """An operator service on one backend, with tokens of every kind."""

    service: OperatorService
    ops: OperationsDb
    data: DistrictData
    tokens: dict[str, str]
    ops_db: Path

    async def ask(self, who: str, action: str, **params: Any) -> Any:
        answer = await self.service.handle(self.tokens.get(who, who), action, params, CLI)
        return answer.result

    async def refused(self, who: str | None, action: str, **params: Any) -> OperatorError:
        token = None if who is None else self.tokens.get(who, who)
        with pytest.raises(OperatorError) as caught:
            await self.service.handle(token, action, params, CLI)
        return caught.value

    def window(self) -> dict[str, str]:
        return {"start": self.data.start.isoformat(), "end": self.data.end.isoformat()}


STORES = {
    "sqlite": lambda data: f'type = "sqlite"\npath = "{data.sqlite_path}"',
    "influx": lambda data: f'type = "influx_v1"\nurl = "{data.influx_url}"\ndatabase = "{data.database}"',
}


@pytest.fixture(params=sorted(STORES))
async def district(
    request: pytest.FixtureRequest, district_data: DistrictData, tmp_path: Path
) -> AsyncIterator[District]:
    """The operator service over one of the two stores."""
    path = tmp_path / "district.toml"
    store = STORES[request.param](district_data)
    path.write_text(
        district_toml(tmp_path, store=store, api="device_silent_after_s = 3600"), encoding="utf-8"
    )
    config = load_district_config(path)
    async with OperationsDb(config.api.ops_db) as ops, open_operator_service(config) as service:
        tokens = {
            role.value: await ops.create_token(role.value, role, DISTRICT_ID, (), "test") for role in Role
        }
        tokens["scoped"] = await ops.create_token("scoped", Role.OPERATOR, DISTRICT_ID, (C1,), "test")
        tokens["neighbour"] = await ops.create_token("neighbour", Role.OPERATOR, OTHER_DISTRICT, (), "test")
        yield District(service, ops, district_data, tokens, config.api.ops_db)


def oracle(events: Iterable[Event], **where: Any) -> list[Event]:
    """Plain-Python filtering: the answer the stores must agree with."""
    chosen = []
    for event in events:
        payload = event.payload
        if "compounds" in where and event.compound_id not in where["compounds"]:
            continue
        if "kind" in where and event.kind.value != where["kind"]:
            continue
        if "device" in where and event.device_id != where["device"]:
            continue
        if "plate" in where and getattr(payload, "plate", None) != where["plate"]:
            continue
        if "person_ref" in where and getattr(payload, "person_ref", None) != where["person_ref"]:
            continue
        if "severity" in where and event.severity.value != where["severity"]:
            continue
        chosen.append(event)
    return chosen


def ids(events: Iterable[Event]) -> list[str]:
    return [e.event_id for e in events]


async def test_events_page_newest_first_and_cover_the_selection(district: District) -> None:
    """Pages of 40 face-access events of one compound, newest first, each exactly once."""
    seen: list[Event] = []
    cursor: str | None = None
    while True:
        extra = {"before": cursor} if cursor else {}
        page = await district.ask(
            "viewer", "events", **district.window(), compounds=[C1], kinds=["face_access"], limit=40, **extra
        )
        seen += page.events
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = oracle(district.data.events, compounds={C1}, kind="face_access")
    assert len(expected) > 100
    assert sorted(ids(seen)) == sorted(ids(expected))
    times = [point_time_ns(e) for e in seen]
    assert times == sorted(times, reverse=True)


async def test_severity_and_device_filters(district: District) -> None:
    """Critical events of the district; one device's events."""
    page = await district.ask("viewer", "events", **district.window(), severity="critical", limit=1000)
    expected = oracle(district.data.events, severity="critical")
    assert expected
    assert sorted(ids(page.events)) == sorted(ids(expected))
    device = next(e.device_id for e in district.data.events if e.kind is EventKind.VEHICLE_PASS)
    page = await district.ask("viewer", "events", **district.window(), devices=[device], limit=1000)
    assert sorted(ids(page.events)) == sorted(ids(oracle(district.data.events, device=device)))


def shared_plate(events: list[Event]) -> str:
    """A plate that passed through both compounds."""
    by_plate: dict[str, set[str]] = {}
    for event in events:
        plate = getattr(event.payload, "plate", None)
        if plate:
            by_plate.setdefault(plate, set()).add(event.compound_id)
    return next(plate for plate, compounds in sorted(by_plate.items()) if compounds == {C1, C2})


async def test_plate_lookup_needs_operator_and_reason(district: District) -> None:
    """A viewer may not look up plates; an operator must say why; the answer is every passage."""
    plate = shared_plate(district.data.events)
    refused = await district.refused("viewer", "events", **district.window(), plate=plate)
    assert refused.status == 403
    refused = await district.refused("operator", "events", **district.window(), plate=plate)
    assert (refused.status, refused.field) == (400, "reason")
    page = await district.ask(
        "operator", "events", **district.window(), plate=plate, reason="car scratched at 东门"
    )
    assert sorted(ids(page.events)) == sorted(ids(oracle(district.data.events, plate=plate)))


def local_bucket(event: Event, interval: str) -> datetime:
    local = event.occurred_at.astimezone(CST)
    hour = local.replace(minute=0, second=0, microsecond=0)
    return hour if interval == "hour" else hour.replace(hour=0)


async def test_counts_per_compound_per_hour(district: District) -> None:
    rows = await district.ask("viewer", "counts", **district.window(), interval="hour", group_by=["compound"])
    got = {(r.bucket, r.compound_id): r.count for r in rows}
    expected = Counter((local_bucket(e, "hour"), e.compound_id) for e in district.data.events)
    assert got == dict(expected)


async def test_counts_per_kind_and_device_per_day(district: District) -> None:
    rows = await district.ask(
        "viewer", "counts", **district.window(), interval="day", group_by=["kind", "device"], compounds=[C2]
    )
    got = {(r.bucket, r.kind, r.device_id): r.count for r in rows}
    expected = Counter(
        (local_bucket(e, "day"), e.kind.value, e.device_id)
        for e in oracle(district.data.events, compounds={C2})
    )
    assert got == dict(expected)
    assert all(r.bucket.tzinfo is not None and r.bucket.hour == 0 for r in rows)


async def test_compare_plate_across_compounds_in_time_order(district: District) -> None:
    """查询比对: a plate's passages through both compounds, oldest first."""
    plate = shared_plate(district.data.events)
    page = await district.ask(
        "operator", "compare", **district.window(), plate=plate, reason="stolen car report"
    )
    expected = oracle(district.data.events, plate=plate)
    assert {e.compound_id for e in page.events} == {C1, C2}
    assert sorted(ids(page.events)) == sorted(ids(expected))
    times = [point_time_ns(e) for e in page.events]
    assert times == sorted(times)


async def test_compare_person_reference(district: District) -> None:
    person = next(
        e.payload.person_ref  # type: ignore[union-attr]
        for e in district.data.events
        if e.kind is EventKind.FACE_ACCESS and getattr(e.payload, "person_ref", None)
    )
    page = await district.ask(
        "operator", "compare", **district.window(), person_ref=person, reason="missing child"
    )
    assert sorted(ids(page.events)) == sorted(ids(oracle(district.data.events, person_ref=person)))
    assert page.events


async def test_barrier_window(district: District) -> None:
    """Every vehicle through one barrier between two times, in order."""
    barrier = next(e.device_id for e in district.data.events if e.kind is EventKind.VEHICLE_PASS)
    passes = sorted(oracle(district.data.events, device=barrier, kind="vehicle_pass"), key=point_time_ns)
    assert len(passes) > 4
    start, end = passes[1].occurred_at, passes[-2].occurred_at
    page = await district.ask(
        "operator",
        "barrier",
        start=start.isoformat(),
        end=end.isoformat(),
        device=barrier,
        reason="scratch at gate",
    )
    expected = [e for e in passes if start <= e.occurred_at < end]
    assert ids(page.events) == ids(expected)


async def test_pages_of_compare_follow_the_cursor(district: District) -> None:
    plate = shared_plate(district.data.events)
    first = await district.ask(
        "operator", "compare", **district.window(), plate=plate, reason="audit", limit=1
    )
    assert first.next_cursor is not None
    second = await district.ask(
        "operator",
        "compare",
        **district.window(),
        plate=plate,
        reason="audit",
        limit=1000,
        after=first.next_cursor,
    )
    assert ids(first.events + second.events) == ids(
        sorted(oracle(district.data.events, plate=plate), key=point_time_ns)
    )


async def test_devices_status_and_online_rate(district: District) -> None:
    """Compound 2's MQTT devices reported offline (last will); HTTP devices silent for over an hour."""
    report = await district.ask("viewer", "devices")
    by_id = {d.device_id: d for d in report.devices}
    assert set(by_id) == {e.device_id for e in district.data.events}
    for device in district.data.offline_devices:
        assert (by_id[device].status, by_id[device].why) == ("offline", "reported offline")
    reported_online = {d.device_id for d in report.devices if d.why == "reported online"}
    assert reported_online
    assert all(by_id[d].compound_id == C1 for d in reported_online)
    silent = [d for d in report.devices if d.why.startswith("silent")]
    assert silent
    assert all(d.status == "offline" for d in silent)
    rates = {c.compound_id: (c.devices, c.online) for c in report.compounds}
    assert rates[C1] == (9, len(reported_online))
    assert rates[C2] == (9, 0)
    offline_only = await district.ask("viewer", "devices", only_offline=True, compounds=[C2])
    assert {d.device_id for d in offline_only.devices} == {d for d, r in by_id.items() if r.compound_id == C2}


async def test_alarm_lifecycle(district: District) -> None:
    """New -> acknowledged -> confirmed -> resolved, who and when; wrong steps are refused."""
    page = await district.ask("viewer", "alarms", **district.window(), limit=500)
    expected = oracle(district.data.events, severity=Severity.CRITICAL.value)
    assert sorted(ids(a.event for a in page.alarms)) == sorted(ids(expected))
    assert {a.state for a in page.alarms} == {AlarmState.NEW}
    alarm = page.alarms[0].event
    eid = alarm.event_id

    wrong = await district.refused(
        "operator", "alarm_action", event_id=eid, to="confirmed", note="skipping ahead"
    )
    assert wrong.status == 409
    viewer = await district.refused("viewer", "alarm_action", event_id=eid, to="acknowledged", note="looking")
    assert viewer.status == 403
    for step in ("acknowledged", "confirmed", "resolved"):
        done = await district.ask("operator", "alarm_action", event_id=eid, to=step, note=f"{step} on site")
        assert done.actor == "operator"
    again = await district.refused("operator", "alarm_action", event_id=eid, to="acknowledged", note="reopen")
    assert again.status == 409
    missing = await district.refused(
        "operator", "alarm_action", event_id="0" * 36, to="acknowledged", note="none"
    )
    assert missing.status == 404

    resolved = await district.ask("viewer", "alarms", **district.window(), states=["resolved"])
    assert [a.event.event_id for a in resolved.alarms] == [eid]
    assert [h.state for h in resolved.alarms[0].history] == [
        AlarmState.ACKNOWLEDGED,
        AlarmState.CONFIRMED,
        AlarmState.RESOLVED,
    ]
    counts = await district.ask("viewer", "alarm_counts", **district.window(), interval="month")
    per_compound = {r.compound_id: r for r in counts}
    assert per_compound[alarm.compound_id].confirmed == 1
    assert sum(r.total for r in counts) == len(expected)
    assert sum(r.open for r in counts) == len(expected) - 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"plate": "京A12345' OR 1=1 --", "reason": "test"}, "plate"),
        ({"plate": '京A1234" or plate =~ /.*/', "reason": "test"}, "plate"),
        ({"person_ref": "p1:x' OR ''='", "reason": "test"}, "person_ref"),
        ({"compounds": ["36010400012160000101' OR 1=1"]}, "compounds.0"),
        ({"compounds": ["36010400012160009999"]}, "compounds"),
        ({"kinds": ['face_access" ; DROP DATABASE x']}, "kinds.0"),
        ({"devices": ["/.*/"]}, "devices.0"),
        ({"before": "1 OR time > 0"}, "before"),
        ({"severity": "critical' OR 'a'='a"}, "severity"),
        ({"limit": 100_000}, "limit"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_filters_are_refused_with_the_field(
    district: District, params: dict[str, Any], field: str
) -> None:
    refused = await district.refused("operator", "events", **district.window(), **params)
    assert refused.status == 400
    assert refused.field == field, refused.message


async def test_bad_time_ranges(district: District) -> None:
    now = datetime.now(CST)
    inverted = await district.refused(
        "viewer", "events", start=now.isoformat(), end=(now - timedelta(hours=1)).isoformat()
    )
    assert inverted.status == 400
    assert "after start" in inverted.message
    too_long = await district.refused(
        "viewer", "counts", start=(now - timedelta(days=60)).isoformat(), end=now.isoformat()
    )
    assert (too_long.status, too_long.field) == (400, "end")
    naive = await district.refused("viewer", "events", start="2026-01-01T00:00:00", end=now.isoformat())
    assert (naive.status, naive.field) == (400, "start")


async def test_authorisation_and_scope(district: District) -> None:
    assert (await district.refused(None, "events", **district.window())).status == 401
    assert (await district.refused("cgw_not-a-token", "events", **district.window())).status == 401
    other = await district.refused("operator", "events", **district.window(), compounds=[OTHER_COMPOUND])
    assert other.status == 403
    neighbour = await district.refused("neighbour", "events", **district.window(), compounds=[C1])
    assert neighbour.status == 403
    scoped = await district.refused("scoped", "events", **district.window(), compounds=[C2])
    assert scoped.status == 403
    page = await district.ask("scoped", "events", **district.window(), limit=1000)
    assert page.events
    assert {e.compound_id for e in page.events} == {C1}
    neighbour_view = await district.ask("neighbour", "events", **district.window())
    assert neighbour_view.events == []  # another district's token sees none of this district's events
    assert (await district.refused("operator", "audit")).status == 403
    await district.ops.revoke_token("viewer")
    assert (await district.refused("viewer", "counts", **district.window())).status == 401


async def test_every_call_is_audited_including_refusals(district: District) -> None:
    plate = shared_plate(district.data.events)
    before = len(await district.ops.audit_records(limit=10_000))
    await district.ask("operator", "events", **district.window(), plate=plate, reason="case 2026-118")
    await district.refused(None, "events", **district.window())
    await district.refused("operator", "events", **district.window(), compounds=[OTHER_COMPOUND])
    bad_plate = await district.refused(
        "operator", "events", **district.window(), plate="not a plate", reason="x" * 5
    )
    assert "plate" in bad_plate.message
    assert "province" in bad_plate.message
    records = await district.ops.audit_records(limit=4)
    assert len(await district.ops.audit_records(limit=10_000)) == before + 4
    newest_first = [(r.entry.actor, r.entry.outcome, r.entry.status) for r in records]
    assert newest_first == [
        ("operator", "invalid_query", 400),
        ("operator", "forbidden", 403),
        (None, "unauthenticated", 401),
        ("operator", "ok", 200),
    ]
    lookup = records[3].entry
    assert lookup.reason == "case 2026-118"
    assert lookup.filters["plate"] == plate
    assert lookup.rows == len(oracle(district.data.events, plate=plate))
    admin_view = await district.ask("admin", "audit", limit=5)
    assert admin_view[0].seq == records[0].seq  # a read is audited once it has been answered
    assert (await district.ask("admin", "audit", limit=1))[0].entry.action == "audit"


async def test_audit_log_is_append_only_and_hash_chained(district: District) -> None:
    await district.ask("viewer", "counts", **district.window())
    assert (await district.ops.verify_audit())[1] is None
    with sqlite3.connect(district.ops_db) as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE audit SET actor = 'someone else'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM audit")
        # someone with the file drops the guard and rewrites history: the chain shows where
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET rows = 0 WHERE seq = (SELECT min(seq) FROM audit)")
    checked, broken = await district.ops.verify_audit()
    assert broken is not None
    assert checked == broken - 1


async def test_tokens_are_stored_hashed(district: District) -> None:
    with sqlite3.connect(district.ops_db) as db:
        stored = {row[0] for row in db.execute("SELECT token_sha256 FROM tokens")}
        dump = "\n".join(db.iterdump())
    for token in district.tokens.values():
        assert token not in dump
    assert len(stored) == len(district.tokens)


HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["'", '"', "\\", "$start", "/.*/", "1=1", "' OR ''='", "; DROP DATABASE x", "\n", "京A12345"]
    ),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(
        ["plate", "person_ref", "compounds", "devices", "kinds", "severity", "before", "device"]
    ),
    value=HOSTILE,
)
async def test_hostile_filter_values_never_reach_the_store_as_text(
    district: District, field: str, value: str
) -> None:
    """Any value is either refused (400) or bound as a parameter: the store never sees broken syntax."""
    list_field = field in {"compounds", "devices", "kinds"}
    params: dict[str, Any] = {
        **district.window(),
        field: [value] if list_field else value,
        "reason": "fuzzing",
    }
    action = "barrier" if field == "device" else "events"
    try:
        await district.service.handle(district.tokens["operator"], action, params, CLI)
    except OperatorError as exc:
        assert exc.status in {400, 403}, exc.message


def test_influxql_text_carries_no_filter_values() -> None:
    """The statement is built from our identifiers only; values travel in the params."""
    from district.query_backends import influx_where  # noqa: PLC0415
    from district.query_model import Selection  # noqa: PLC0415

    selection = Selection(
        district_id=DISTRICT_ID,
        compounds=(C1, C2),
        start_ns=1,
        end_ns=2,
        devices=("36010400011210000001",),
        plate="赣A12345",
        person_ref="p1:abc",
        severity="critical",
    )
    where, params = influx_where(selection)
    for value in (C1, C2, "36010400011210000001", "赣A12345", "p1:abc", "critical"):
        assert value not in where
        assert value in params.values()
