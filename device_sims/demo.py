"""``compound-gateway demo``: the whole pipeline, from simulated devices to the district store.

Starts the embedded MQTT broker (or a private Mosquitto), the gateway (with its uplink) and a
district ingester writing to the embedded SQLite store, plays the scenarios, and checks the store
against what the devices saw acknowledged: every acknowledged event stored exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from adapters.base import RawMessage
from device_sims.broker import Mosquitto, free_port
from device_sims.devices import CST, HttpPost, Outgoing, build_sim
from device_sims.embedded_broker import EmbeddedBroker
from device_sims.inventory import (
    COMPOUND_ID,
    DISTRICT_ID,
    compound_name,
    sample_broker_accounts,
    sample_devices,
    write_sample_config,
)
from device_sims.runner import Report, Runner
from device_sims.scenarios import build
from district.config import DistrictConfig, load_district_config
from district.ingester import run_ingester
from district.operations import OperationsDb
from district.operator_output import Presenter
from district.operator_service import Caller, open_operator_service
from district.query_model import Role
from foundation.events import utc_now
from foundation.identity import Pseudonymizer
from foundation.logging import configure_logging
from foundation.tables import render_table
from gateway.config import GatewayConfig, load_config
from gateway.intake import Intake, IntakeItem
from gateway.runtime import run_gateway

PHASES = ("normal-day", "morning-rush", "shed-fire", "thrown-object", "resend", "malformed", "offline")


def expected_event_ids(config: GatewayConfig, messages: Iterable[Outgoing]) -> set[str]:
    """The event ids the gateway must hold for these acknowledged messages (same intake, same ids).

    Every message counts, however fast it came: the MQTT rate limit is lifted for this replay.
    """
    unlimited = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"device_burst": 1 << 30})})
    intake = Intake(unlimited, Pseudonymizer(b"x" * 32, config.compound.compound_id))
    ids: set[str] = set()
    limit = 1 << 30
    for message in messages:
        if isinstance(message, HttpPost):
            raw = RawMessage(message.body, content_type=message.content_type)
            kind, _, name = message.path.strip("/").partition("/")
            transport: Literal["http_device", "http_platform"] = (
                "http_device" if kind == "push" else "http_platform"
            )
            item = IntakeItem(transport, raw, limit, target=name)
        else:
            item = IntakeItem("mqtt", RawMessage(message.payload, topic=message.topic), limit)
        ids.update(intake.classify(item).event_ids)
    return ids


def store_contents(store_path: Path) -> tuple[Counter[str], set[str], int]:
    """Per-kind counts, distinct event ids and raw row count of the district's embedded store."""
    if not store_path.exists():
        return Counter(), set(), 0
    with sqlite3.connect(store_path) as db:
        rows = db.execute("SELECT event_id, kind FROM events").fetchall()
    return Counter(kind for _, kind in rows), {event_id for event_id, _ in rows}, len(rows)


def _offline_reports(store_path: Path) -> int:
    # the devices whose latest status (by point time, as the devices query reads it) is offline: a
    # device that went offline earlier in the run and came back must not count before its last will
    with sqlite3.connect(store_path) as db:
        rows = db.execute(
            "SELECT device_id, json_extract(body, '$.payload.state'), max(time_ns) FROM events"
            " WHERE kind = 'device_status' GROUP BY device_id"
        ).fetchall()
    return sum(1 for _, state, _ in rows if state == "offline")


def outbox_counters(db_path: Path) -> tuple[int, int, list[tuple[str, str | None, str]]]:
    """(re-sends suppressed as duplicates, dead letters, the first few dead letters) of the outbox."""
    with sqlite3.connect(db_path) as db:
        (duplicates,) = db.execute(
            "SELECT COALESCE(SUM(value), 0) FROM counters WHERE name='duplicates'"
        ).fetchone()
        (dead_count,) = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        dead = db.execute("SELECT reason, field, detail FROM dead_letters ORDER BY id LIMIT 5").fetchall()
    return int(duplicates), int(dead_count), dead


SAMPLE_QUERY = (
    "SELECT kind, COUNT(*) AS events, SUM(severity = 'critical') AS alarms FROM events"
    " WHERE compound_id = ? GROUP BY kind ORDER BY kind"
)


def run_demo(
    *,
    count: int,
    seed: int,
    as_json: bool,
    keep: Path | None,
    store: Path | None = None,
    broker: Literal["embedded", "mosquitto"] = "embedded",
) -> int:
    """Run the demo; exit status 0 when nothing acknowledged was lost."""
    configure_logging("console" if sys.stderr.isatty() else "json", level=logging.WARNING)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_demo(keep, count, seed, as_json, store, broker))
    with tempfile.TemporaryDirectory(prefix="cgw-demo-") as tmp:
        return asyncio.run(_demo(Path(tmp), count, seed, as_json, store, broker))


@contextlib.asynccontextmanager
async def _brokers(kind: Literal["embedded", "mosquitto"], workdir: Path) -> AsyncIterator[tuple[int, int]]:
    """The demo's two MQTT brokers (ports): the compound's device broker and the district broker.

    Embedded ones (nothing to install) or private Mosquittos. The device broker has the sample
    compound's accounts and ACL, as ``compound-gateway devices credentials`` writes them for a real
    one: every simulator logs in as its device, and the gateway with its own account.
    """
    accounts = sample_broker_accounts()
    if kind == "embedded":
        devices_port, district_port = free_port(), free_port()
        async with EmbeddedBroker(devices_port, accounts=accounts), EmbeddedBroker(district_port):
            yield devices_port, district_port
    else:
        with (
            Mosquitto(workdir / "broker", accounts=accounts) as devices,
            Mosquitto(workdir / "district-broker") as district,
        ):
            yield devices.port, district.port


def _say(as_json: bool, text: str) -> None:
    if not as_json:
        print(text, flush=True)


def _district_config(workdir: Path, broker_port: int, store_path: Path) -> DistrictConfig:
    path = workdir / "district.toml"
    path.write_text(
        f'district_id = "{DISTRICT_ID}"\n[broker]\nhost = "127.0.0.1"\nport = {broker_port}\n'
        f'[ingest]\nname = "demo-ingester"\ndead_letter_path = "{workdir}/ingest-dead-letters.db"\nhttp_port = 0\n'
        f'[api]\nops_db = "{workdir}/operations.db"\n'
        f'[store]\ntype = "sqlite"\npath = "{store_path}"\n'
        f'[[compounds]]\nid = "{COMPOUND_ID}"\nname = "{compound_name(1)}"\n',
        encoding="utf-8",
    )
    return load_district_config(path)


async def _operator_view(district: DistrictConfig, since: datetime, as_json: bool) -> dict[str, object]:
    """What a district operator sees of the demo: devices, events per kind and day, alarms."""
    async with OperationsDb(district.api.ops_db) as ops:
        token = await ops.create_token(f"demo-{uuid.uuid4().hex[:8]}", Role.ADMIN, DISTRICT_ID, (), "demo")
    window = {"start": since.isoformat(), "end": utc_now().isoformat()}
    caller = Caller("cli", "demo")
    async with open_operator_service(district) as service:
        devices = await service.handle(token, "devices", {}, caller)
        counts = await service.handle(
            token, "counts", {**window, "interval": "day", "group_by": ["kind"]}, caller
        )
        alarms = await service.handle(token, "alarms", {**window, "limit": 5}, caller)
        presenter = Presenter(service.zone, service.compound_name)
        for title, answer in (
            ("devices", devices),
            ("events per kind and day", counts),
            ("newest alarms", alarms),
        ):
            headers, rows = answer.spec.tables(presenter, answer.result)[0]
            _say(as_json, f"\n{title} (compound-gateway query):\n{render_table(headers, rows)}")
    online = sum(c.online for c in devices.result.compounds)
    return {"devices": len(devices.result.devices), "devices_online": online, "alarms": alarms.rows}


async def _demo(  # noqa: PLR0915, PLR0917 - one private call site
    workdir: Path,
    count: int,
    seed: int,
    as_json: bool,
    store: Path | None,
    broker_kind: Literal["embedded", "mosquitto"],
) -> int:
    store_path = (store or workdir / "district-store.db").resolve()
    async with _brokers(broker_kind, workdir) as (broker_port, district_port):
        config_path = write_sample_config(
            workdir / "gateway.toml",
            state_dir=workdir / "state",
            http_port=free_port(),
            mqtt_port=broker_port,
        )
        with config_path.open("a", encoding="utf-8") as handle:
            handle.write(
                f'\n[uplink]\nmode = "mqtt"\nbatch_max_delay_ms = 100\n[uplink.broker]\nhost = "127.0.0.1"\nport = {district_port}\n'
            )
        config = load_config(config_path)
        district = _district_config(workdir, district_port, store_path)
        _say(
            as_json,
            f"compound {config.compound.compound_id} ({config.compound.name}): {len(config.devices)} simulated devices\n"
            f"  devices -> gateway (http :{config.http.port}, {broker_kind} mqtt broker :{broker_port}) -> outbox"
            f" -> district broker :{district_port}"
            f" -> ingester -> store {store_path}",
        )
        async with asyncio.TaskGroup() as tg:
            ingester_ready, gateway_ready = asyncio.Event(), asyncio.Event()
            ingester = tg.create_task(run_ingester(district, ready=ingester_ready), name="ingester")
            gateway = tg.create_task(run_gateway(config, ready=gateway_ready), name="gateway")
            await ingester_ready.wait()
            await gateway_ready.wait()
            sims = [build_sim(device) for device in sample_devices()]
            mqtt_devices = [sim for sim in sims if sim.transport == "mqtt"]
            reports: dict[str, Report] = {}
            acked: list[Outgoing] = []
            # the day before yesterday: even its last events (near midnight) are more than a day
            # old, so HTTP devices show as silent at any hour (with yesterday, the operator view
            # differed in the first hour after midnight)
            day = datetime.now(CST).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
            for index, phase in enumerate(PHASES):
                size = count if phase in {"normal-day", "morning-rush"} else 20
                steps = build(phase, sims, seed + index, size, start=day)
                runner = Runner(f"http://127.0.0.1:{config.http.port}", "127.0.0.1", broker_port, workers=8)
                report = await runner.run(steps)
                reports[phase] = report
                if phase != "malformed":
                    acked.extend(report.acked)
                in_store = sum(store_contents(store_path)[0].values())
                _say(
                    as_json,
                    f"  {phase:<14} sent {report.sent:>4}  acked {len(report.acked):>4}  "
                    f"rejected {report.rejected:>3}  failed {report.failed}  ({report.seconds:.2f}s)"
                    f"  -> district store now holds {in_store} events",
                )
            expected = expected_event_ids(config, acked)
            for _ in range(300):  # the uplink batches for up to 100 ms; give the pipeline time to drain
                by_kind, stored_ids, rows = store_contents(store_path)
                # the last phase cuts the MQTT devices' power: wait for every last will too
                if expected <= stored_ids and _offline_reports(store_path) >= len(mqtt_devices):
                    break
                await asyncio.sleep(0.1)
            gateway.cancel()
            ingester.cancel()
        lost = expected - stored_ids
        resends, dead_count, dead = outbox_counters(config.state.dir / "outbox.db")
        rejections = Counter[str]()
        for report in reports.values():
            rejections.update(report.rejections)
        with sqlite3.connect(store_path) as db:
            sample_rows = db.execute(SAMPLE_QUERY, (config.compound.compound_id,)).fetchall()
            alarm = db.execute(
                "SELECT body FROM events WHERE severity='critical' ORDER BY occurred_at LIMIT 1"
            ).fetchone()
        summary: dict[str, object] = {
            "broker": broker_kind,
            "generated": len(expected),
            "stored": len(stored_ids & expected),
            "lost": len(lost),
            "duplicates": rows - len(stored_ids),
            "by_kind": dict(sorted(by_kind.items())),
            "resends_suppressed": resends,
            "dead_letters": dead_count,
            "rejections_seen_by_devices": dict(rejections),
            "store": str(store_path),
            "sample_query": {"sql": SAMPLE_QUERY, "rows": [list(r) for r in sample_rows]},
        }
        if lost:
            summary["lost_ids"] = sorted(lost)[:10]
    if as_json:
        summary["operator_view"] = await _operator_view(district, day - timedelta(hours=1), as_json)
        print(json.dumps(summary, ensure_ascii=False))
        return 0 if not lost else 1
    _say(
        as_json,
        "\nin the district store by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())),
    )
    _say(
        as_json,
        f"events the devices saw acknowledged: {len(expected)}; stored: {len(stored_ids & expected)}; lost: {len(lost)};"
        f" duplicates in the store: {rows - len(stored_ids)}; device re-sends suppressed: {resends}",
    )
    _say(as_json, f"dead letters at the gateway: {dead_count}; the first few:")
    for reason, field, detail in dead:
        _say(as_json, f"  {reason:<20} {field or '-':<34} {detail[:70]}")
    _say(
        as_json,
        f"\nsample query on the store ({store_path.name}):\n  {SAMPLE_QUERY.replace('?', repr(config.compound.compound_id))}",
    )
    for kind, events, alarms in sample_rows:
        _say(as_json, f"  {kind:<14} {events:>5} events  {alarms:>3} alarms")
    if alarm:
        _say(
            as_json,
            "\nan alarm as stored by the district:\n"
            + json.dumps(json.loads(alarm[0]), indent=2, ensure_ascii=False),
        )
    await _operator_view(district, day - timedelta(hours=1), as_json)
    return 0 if not lost else 1
