"""Operator query latency on a generated month of a 200-compound district (issue 4).

The month is written the way compounds write it: uplink batches published to a private Mosquitto,
taken by a real ingester process (``compound-gateway ingest``) into a private InfluxDB 1.6.7. The
ingester's receipts tell the generator how far the store has got, so the broker queue stays bounded.

Then the main queries run through ``OperatorService.handle`` (token check, validation, scope,
InfluxQL with bound parameters, decoding, audit write), each several times. Baseline, same run: the
very statements the service sent, posted straight to InfluxDB's ``/query`` (response read, not
decoded) -- the ratio is what the query layer costs on top of the database.

Roll-ups (issue 15): after the raw measurements the store creates its roll-up policy and continuous
query and backfills the month (timed), then the counts an overview and a statistics page ask for
(hourly per compound, daily per compound and kind, over 30 days to the hour) run twice, on raw
events and on the roll-ups; the two answers must be equal row for row.

Writes its section of ``docs/benchmarks.md`` (``--no-write`` to skip).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import machine, replace_section
from device_sims.broker import Mosquitto, free_port
from device_sims.influx import InfluxServer
from device_sims.inventory import DISTRICT_ID
from district.config import load_district_config
from district.operations import OperationsDb
from district.operator_service import Caller, OperatorService
from district.query_backends import InfluxQueries, influx_rollups
from district.query_model import Role
from foundation.logging import configure_logging
from uplink.protocol import decode_receipt, encode_batch, event_topic
from uplink.stores import InfluxV1Store

PREFIX = "cgw/v1"
TARGET_PLATE = "赣A8T8T8"
PROVINCE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
DEVICES = (  # (type code, dialect, vendor, kind)
    ("124", "hik-isapi-acs", "hikvision", "face_access"),
    ("124", "hik-isapi-acs", "hikvision", "face_access"),
    ("124", "uface-mqtt", "uface", "face_access"),
    ("121", "hik-isapi-anpr", "hikvision", "vehicle_pass"),
    ("121", "vz-lpr-mqtt", "vzenith", "vehicle_pass"),
    ("132", "hightoss-mqtt", "dahua", "thrown_object"),
    ("134", "shed-mqtt", "huaqiang", "ebike_shed"),
    ("134", "ctwing-smoke", "wanlin", "ebike_shed"),
)


def compound(c: int) -> str:
    return f"360104000121{c:04d}0101"


def device(c: int, d: int) -> str:
    return f"36010400{c:04d}{DEVICES[d][0]}{d:05d}"


def plate(rng: random.Random) -> str:
    return (
        "赣"
        + rng.choice("ABCDEFGHJKLM")
        + "".join(rng.choice(PROVINCE_LETTERS + "0123456789") for _ in range(5))
    )


@dataclass
class Month:
    """The generated month and what the queries must find in it."""

    compounds: int
    per_day: int
    start: datetime
    end: datetime
    total: int = 0
    target_passages: int = 0
    offline_devices: set[str] = field(default_factory=set)


def event_dict(
    rng: random.Random, c: int, d: int, at: datetime, payload: dict[str, Any], severity: str = "info"
) -> dict[str, Any]:
    _, dialect, vendor, kind = DEVICES[d]
    return {
        "schema_version": "1.0",
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "kind": kind if payload.get("kind") != "device_status" else "device_status",
        "district_id": DISTRICT_ID,
        "compound_id": compound(c),
        "device_id": device(c, d),
        "occurred_at": at.isoformat(),
        "received_at": at.isoformat(),
        "severity": severity,
        "source": {"vendor": vendor, "dialect": dialect, "event_code": "bench"},
        "location": {"gate": "东门"} if d < 5 else {"building": f"{d}号车棚"},
        "payload": payload,
    }


def compound_day(
    month: Month, rng: random.Random, c: int, day: datetime, residents: list[str], visitors: list[str]
) -> list[dict[str, Any]]:
    """One compound's day: gates, barriers, shed heartbeats, status reports, the odd alarm."""
    events: list[dict[str, Any]] = []
    seconds = 86_400 if day + timedelta(days=1) <= month.end else int((month.end - day).total_seconds()) - 60
    if seconds <= 0:
        return events

    def at() -> datetime:
        return day + timedelta(seconds=rng.uniform(0, seconds))

    faces = month.per_day * 60 // 100
    for _ in range(faces):
        person = f"p1:{rng.getrandbits(96):024x}"
        events.append(
            event_dict(
                rng,
                c,
                rng.randrange(3),
                at(),
                {
                    "kind": "face_access",
                    "result": "granted",
                    "direction": rng.choice(["in", "out"]),
                    "verify_mode": "face",
                    "person_ref": person,
                    "person_type": "resident",
                    "similarity": 0.93,
                    "mask": False,
                },
            )
        )
    for _ in range(month.per_day * 28 // 100):
        events.append(
            event_dict(
                rng,
                c,
                3 + rng.randrange(2),
                at(),
                {
                    "kind": "vehicle_pass",
                    "plate": rng.choice(residents) if rng.random() < 0.7 else rng.choice(visitors),
                    "new_energy": False,
                    "plate_color": "blue",
                    "vehicle_type": "car",
                    "direction": rng.choice(["in", "out"]),
                    "barrier_action": "opened",
                    "list_type": "allow",
                    "confidence": 0.9,
                },
            )
        )
    for hour in range(seconds // 3600):
        for d in (6, 7):
            events.append(
                event_dict(
                    rng,
                    c,
                    d,
                    day + timedelta(hours=hour, seconds=d),
                    {
                        "kind": "ebike_shed",
                        "condition": "heartbeat",
                        "temperature_c": 21.0,
                        "smoke_level": 0.1,
                        "battery_pct": 80.0,
                    },
                )
            )
    for d in (2, 4, 5, 6):
        events.append(
            event_dict(
                rng, c, d, day + timedelta(seconds=30 + d), {"kind": "device_status", "state": "online"}
            )
        )
    if rng.random() < 0.1:
        events.append(
            event_dict(
                rng,
                c,
                5,
                at(),
                {
                    "kind": "thrown_object",
                    "building": "7幢",
                    "start_floor": rng.randint(3, 20),
                    "confidence": 0.8,
                },
                severity="critical",
            )
        )
    if rng.random() < 0.03:
        events.append(
            event_dict(
                rng,
                c,
                6,
                at(),
                {
                    "kind": "ebike_shed",
                    "condition": "fire_alarm",
                    "temperature_c": 71.0,
                    "smoke_level": 0.9,
                },
                severity="critical",
            )
        )
    if c % 25 == 0 and day + timedelta(days=7) > month.end:  # the target plate's week, through 8 compounds
        for _ in range(2):
            events.append(
                event_dict(
                    rng,
                    c,
                    3,
                    at(),
                    {
                        "kind": "vehicle_pass",
                        "plate": TARGET_PLATE,
                        "new_energy": False,
                        "plate_color": "blue",
                        "vehicle_type": "car",
                        "direction": "in",
                        "barrier_action": "opened",
                        "list_type": "allow",
                        "confidence": 0.95,
                    },
                )
            )
            month.target_passages += 1
    if c % 50 == 7 and day + timedelta(days=1) >= month.end:  # a few sheds lost power today
        events.append(
            event_dict(
                rng,
                c,
                6,
                month.end - timedelta(minutes=2),
                {"kind": "device_status", "state": "offline", "reason": "power lost"},
                severity="warning",
            )
        )
        month.offline_devices.add(device(c, 6))
    return events


def month_days(month: Month) -> Iterator[tuple[datetime, int, list[dict[str, Any]]]]:
    """The month's events, day by day and compound by compound: (day, compound number, events).

    Always the same month for the same ``Month`` (a fixed seed): the console bench writes it again.
    """
    rng = random.Random(4)
    visitors = [plate(rng) for _ in range(20_000)]
    residents = {c: [plate(rng) for _ in range(80)] for c in range(month.compounds)}
    day = month.start
    while day < month.end:
        for c in range(month.compounds):
            yield day, c, compound_day(month, rng, c, day, residents[c], visitors)
        day += timedelta(days=1)


async def write_month(month: Month, broker_port: int, *, lag: int = 200_000) -> float:
    """Publish the month as uplink batches; returns seconds until the ingester confirmed every event."""
    stored = 0
    published = 0
    t0 = time.perf_counter()
    async with (
        aiomqtt.Client("127.0.0.1", broker_port, identifier="bench-receipts") as receipts,
        aiomqtt.Client(
            "127.0.0.1", broker_port, identifier="bench-compounds", max_inflight_messages=100
        ) as client,
    ):
        await receipts.subscribe(f"{PREFIX}/+/+/receipt/#", qos=1)

        async def count_receipts() -> None:
            nonlocal stored
            async for message in receipts.messages:
                stored += len(decode_receipt(bytes(message.payload)))

        counter = asyncio.create_task(count_receipts(), name="receipts")
        for day, c, events in month_days(month):
            by_kind: dict[str, list[bytes]] = {}
            for event in events:
                by_kind.setdefault(event["kind"], []).append(json.dumps(event, ensure_ascii=False).encode())
            for kind, bodies in by_kind.items():
                for i in range(0, len(bodies), 500):
                    chunk = bodies[i : i + 500]
                    topic = event_topic(PREFIX, DISTRICT_ID, compound(c), kind)
                    await client.publish(topic, encode_batch(DISTRICT_ID, compound(c), chunk), qos=1)
                    published += len(chunk)
            while published - stored > lag:
                await asyncio.sleep(0.2)
            if c == month.compounds - 1:
                print(
                    f"  {day + timedelta(days=1):%m-%d}: published {published:,}, stored {stored:,}"
                    f" ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
        month.total = published
        deadline = time.monotonic() + 300
        while stored < published:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the ingester confirmed {stored:,} of {published:,}: see its dead letters"
                )
            await asyncio.sleep(0.2)
        counter.cancel()
    return time.perf_counter() - t0


@dataclass
class Timed:
    name: str
    rows: int
    service_ms: list[float]
    raw_ms: list[float]


async def measure(
    name: str,
    service: OperatorService,
    token: str,
    action: str,
    params: dict[str, Any],
    statements: list[tuple[str, dict[str, str | int]]],
    raw: Callable[[str, dict[str, str | int]], Awaitable[None]],
    repeat: int,
) -> Timed:
    service_ms, raw_ms, rows = [], [], 0
    for _ in range(repeat):
        statements.clear()
        t0 = time.perf_counter()
        answer = await service.handle(token, action, params, Caller("cli", "bench"))
        service_ms.append((time.perf_counter() - t0) * 1000)
        rows = answer.rows
        sent = list(statements)
        t0 = time.perf_counter()
        for query, bound in sent:
            await raw(query, bound)
        raw_ms.append((time.perf_counter() - t0) * 1000)
    return Timed(name, rows, service_ms, raw_ms)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def run(
    compounds: int, days: int, per_day: int, repeat: int
) -> tuple[Month, float, list[Timed], dict[str, Any]]:
    now = datetime.now(UTC).replace(microsecond=0)
    month = Month(compounds, per_day, (now - timedelta(days=days)).replace(hour=0, minute=0, second=0), now)
    with tempfile.TemporaryDirectory(prefix="cgw-qbench-") as tmp:
        work = Path(tmp)
        with InfluxServer(work / "influx") as influx, Mosquitto(work / "broker") as broker:
            config_path = work / "district.toml"
            config_path.write_text(
                f'district_id = "{DISTRICT_ID}"\n[broker]\nhost = "127.0.0.1"\nport = {broker.port}\n'
                f'[ingest]\nname = "bench"\ndead_letter_path = "{work}/dead.db"\nhttp_port = 0\n'
                f'[api]\nops_db = "{work}/ops.db"\nport = {free_port()}\ndevice_silent_after_s = 21600\n'
                f'[store]\ntype = "influx_v1"\nurl = "{influx.url}"\ndatabase = "district"\n',
                encoding="utf-8",
            )
            config = load_district_config(config_path)
            log = (work / "ingester.log").open("wb")
            ingester = subprocess.Popen(
                [sys.executable, "-m", "cli", "ingest", "--config", str(config_path)],
                stdout=log,
                stderr=log,
            )
            try:
                await asyncio.sleep(2)
                write_s = await write_month(month, broker.port)
            finally:
                ingester.terminate()
                ingester.wait(30)
                log.close()
            size: dict[str, Any] = {
                "data_bytes": du(work / "influx" / "data"),
                "wal_bytes": du(work / "influx" / "wal"),
            }
            statements: list[tuple[str, dict[str, str | int]]] = []
            async with (
                OperationsDb(config.api.ops_db) as ops,
                InfluxV1Store(config.store) as store,  # type: ignore[arg-type]
                aiohttp.ClientSession(base_url=influx.url) as http,
            ):

                async def recording(query: str, params: dict[str, str | int]) -> list[dict[str, Any]]:
                    statements.append((query, params))
                    return await store.query(query, method="POST", params=params, epoch="ns")

                async def raw(query: str, params: dict[str, str | int]) -> None:
                    form = {"q": query, "db": "district", "params": json.dumps(params), "epoch": "ns"}
                    async with http.post("/query", data=form) as response:
                        await response.read()
                        assert response.status == 200

                series = await store.query("SHOW SERIES EXACT CARDINALITY")
                size["series"] = sum(s["values"][0][0] for r in series for s in r.get("series", []))
                service = OperatorService(config, InfluxQueries(recording, store.ping), ops)
                token = await ops.create_token("bench", Role.OPERATOR, DISTRICT_ID, (), "bench")
                week = {"start": (now - timedelta(days=7)).isoformat(), "end": now.isoformat()}
                month_range = {"start": (now - timedelta(days=30)).isoformat(), "end": now.isoformat()}
                results = [
                    await measure(
                        "a plate across the district, 7 days (查询比对)",
                        service,
                        token,
                        "compare",
                        {**week, "plate": TARGET_PLATE, "reason": "bench"},
                        statements,
                        raw,
                        repeat,
                    ),
                    await measure(
                        "hourly counts per compound, 30 days",
                        service,
                        token,
                        "counts",
                        {**month_range, "interval": "hour", "group_by": ["compound"]},
                        statements,
                        raw,
                        repeat,
                    ),
                    await measure(
                        "devices offline now (inventory of 30 days)",
                        service,
                        token,
                        "devices",
                        {"only_offline": True},
                        statements,
                        raw,
                        repeat,
                    ),
                    await measure(
                        "newest 100 events of one compound, 1 day",
                        service,
                        token,
                        "events",
                        {
                            "start": (now - timedelta(days=1)).isoformat(),
                            "end": now.isoformat(),
                            "compounds": [compound(3)],
                            "limit": 100,
                        },
                        statements,
                        raw,
                        repeat,
                    ),
                    await measure(
                        "alarms of the district, 30 days",
                        service,
                        token,
                        "alarms",
                        {**month_range, "limit": 1000},
                        statements,
                        raw,
                        repeat,
                    ),
                ]
                # the ingester created the roll-ups at its start and counted the month as it
                # wrote it (every event was late); an existing database's first backfill is this:
                await store.ensure_rollups(400, alter=False)
                t0 = time.perf_counter()
                size["backfill_points"] = await store.rebuild_rollups(
                    int(month.start.timestamp()) * 10**9, int(now.timestamp()) * 10**9, expiring=True
                )
                size["backfill_s"] = time.perf_counter() - t0
                rolled = OperatorService(
                    config,
                    InfluxQueries(recording, store.ping, influx_rollups(config.store)),  # type: ignore[arg-type]
                    ops,
                )
                hour = now.replace(minute=0, second=0)
                to_the_hour = {
                    "start": (hour - timedelta(days=30)).isoformat(),
                    "end": (hour + timedelta(hours=1)).isoformat(),
                }
                for label, params in (
                    ("hourly counts per compound", {"interval": "hour", "group_by": ["compound"]}),
                    (
                        "daily counts per compound and kind",
                        {"interval": "day", "group_by": ["compound", "kind"]},
                    ),
                ):
                    answers = []
                    for how, on in (("raw events", service), ("roll-ups", rolled)):
                        results.append(
                            await measure(
                                f"{label}, 30 days to the hour, {how}",
                                on,
                                token,
                                "counts",
                                {**to_the_hour, **params},
                                statements,
                                raw,
                                repeat,
                            )
                        )
                        answers.append(
                            (
                                await on.handle(
                                    token, "counts", {**to_the_hour, **params}, Caller("cli", "bench")
                                )
                            ).result
                        )
                    assert answers[0] == answers[1], f"{label}: roll-ups differ from raw counts"
                checks = {r.name: r.rows for r in results}
                assert results[0].rows == month.target_passages, (results[0].rows, month.target_passages)
                offline = await service.handle(
                    token, "devices", {"only_offline": True}, Caller("cli", "bench")
                )
                found = {d.device_id for d in offline.result.devices}
                assert month.offline_devices <= found, month.offline_devices - found
                size["silent"] = len(found - month.offline_devices)
    return month, write_s, results, size | {"checks": checks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--compounds", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--per-day", type=int, default=300, help="gate and barrier events per compound and day"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    configure_logging("console", level=logging.WARNING)
    month, write_s, results, size = asyncio.run(run(args.compounds, args.days, args.per_day, args.repeat))
    lines = [
        "## Operator queries on a month of a 200-compound district (issue 4)",
        "",
        f"Command: `.venv/bin/python bench/query_bench.py` (`--compounds {args.compounds} --days {args.days}"
        f" --per-day {args.per_day} --repeat {args.repeat}`), run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine()}. Servers: Mosquitto 2.0.11 and InfluxDB 1.6.7 (Debian), private instances.",
        "",
        f"Data: {month.compounds} compounds x 8 devices, {args.days} days ending now: {month.total:,} events"
        f" (per compound and day {args.per_day * 88 // 100} gate and barrier passages, 48 shed heartbeats, 4 status"
        " reports, the odd thrown-object and fire alarm), published as uplink batches and written by a real"
        f" ingester process in {write_s:.0f} s ({month.total / write_s:,.0f} events/s)."
        f" On disk: {size['data_bytes'] / 1e6:,.0f} MB of TSM data + {size['wal_bytes'] / 1e6:,.0f} MB WAL;"
        f" {size['series']:,} series.",
        "",
        "Each query through `OperatorService.handle` (token, validation, scope, InfluxQL with bound parameters,"
        " decoding, audit entry), against the same statements posted straight to `/query` (baseline), same run;"
        f" median of {args.repeat} (min-max):",
        "",
        "| query | rows | service ms | raw /query ms | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        service, raw = statistics.median(r.service_ms), statistics.median(r.raw_ms)
        lines.append(
            f"| {r.name} | {r.rows:,} | {service:,.0f} ({min(r.service_ms):,.0f}-{max(r.service_ms):,.0f})"
            f" | {raw:,.0f} ({min(r.raw_ms):,.0f}-{max(r.raw_ms):,.0f}) | {service / raw:.2f}x |"
        )
    lines += [
        "",
        f"Checked in the run: the plate query found all {month.target_passages} planted passages; the offline query"
        f" found all {len(month.offline_devices)} sheds that reported power loss, and {size['silent']} more devices"
        " silent for over 6 hours (the configured threshold; random gaps in the generated traffic).",
        "",
        "Roll-ups (issue 15): the ingester created the roll-up policy and continuous query at its start"
        " and, every event of the month being late, recounted each batch's compound-hours as it wrote"
        " them (the write time above includes that). Recounting the whole month again, as the first"
        f" backfill of an existing database does: {size['backfill_s']:.1f} s"
        f" ({size['backfill_points']:,} roll-up points)."
        ' The "to the hour" rows ask for whole hours (30 days'
        " up to the end of the current hour), once counted from raw events and once from the roll-ups"
        " (raw events for the last 2 hours, which the hourly continuous query may not have counted yet);"
        " the two answers were checked equal row for row.",
        "",
    ]
    by_name = {r.name: statistics.median(r.service_ms) for r in results}
    for label in ("hourly counts per compound", "daily counts per compound and kind"):
        before = by_name[f"{label}, 30 days to the hour, raw events"]
        after = by_name[f"{label}, 30 days to the hour, roll-ups"]
        lines.append(f"- {label}: {before:,.0f} ms -> {after:,.0f} ms ({before / after:.0f}x faster)")
    lines.append("")
    print("\n".join(lines))
    if not args.no_write:
        replace_section(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
