"""``compound-gateway demo``: the sample compound's simulated devices against a real gateway.

Starts a private Mosquitto (the compound's device broker) and the gateway, plays the scenarios, and
checks the outbox against what the devices saw acknowledged: every acknowledged event stored once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from adapters.base import RawMessage
from device_sims.broker import Mosquitto, free_port
from device_sims.devices import CST, HttpPost, Outgoing, build_sim
from device_sims.inventory import sample_devices, write_sample_config
from device_sims.runner import Report, Runner
from device_sims.scenarios import build
from gateway.config import GatewayConfig, load_config
from gateway.identity import Pseudonymizer
from gateway.intake import Intake, IntakeItem
from gateway.logging import configure_logging
from gateway.runtime import run_gateway

PHASES = ("normal-day", "morning-rush", "shed-fire", "thrown-object", "resend", "malformed", "offline")


def expected_event_ids(config: GatewayConfig, messages: Iterable[Outgoing]) -> set[str]:
    """The event ids the gateway must hold for these acknowledged messages (same intake, same ids)."""
    intake = Intake(config, Pseudonymizer(b"x" * 32, config.compound.compound_id))
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


def stored_by_kind(db_path: Path) -> tuple[Counter[str], set[str], int]:
    """Per-kind counts, all event ids, and the raw row count, read straight from the outbox file."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT event_id, kind FROM events").fetchall()
        (duplicates,) = db.execute(
            "SELECT COALESCE(SUM(value), 0) FROM counters WHERE name='duplicates'"
        ).fetchone()
    return Counter(kind for _, kind in rows), {event_id for event_id, _ in rows}, int(duplicates)


def run_demo(*, count: int, seed: int, as_json: bool, keep: Path | None) -> int:
    """Run the demo; exit status 0 when nothing acknowledged was lost."""
    configure_logging("console" if sys.stderr.isatty() else "json", level=logging.WARNING)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_demo(keep, count, seed, as_json))
    with tempfile.TemporaryDirectory(prefix="cgw-demo-") as tmp:
        return asyncio.run(_demo(Path(tmp), count, seed, as_json))


def _say(as_json: bool, text: str) -> None:
    if not as_json:
        print(text, flush=True)


async def _demo(workdir: Path, count: int, seed: int, as_json: bool) -> int:
    with Mosquitto(workdir / "broker") as broker:
        config_path = write_sample_config(
            workdir / "gateway.toml",
            state_dir=workdir / "state",
            http_port=free_port(),
            mqtt_port=broker.port,
        )
        config = load_config(config_path)
        _say(
            as_json,
            f"compound {config.compound.compound_id} ({config.compound.name}): {len(config.devices)} devices, "
            f"device broker 127.0.0.1:{broker.port}, gateway http :{config.http.port}",
        )
        ready = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            gateway = tg.create_task(run_gateway(config, ready=ready), name="gateway")
            await ready.wait()
            sims = [build_sim(device) for device in sample_devices()]
            reports: dict[str, Report] = {}
            acked: list[Outgoing] = []
            for index, phase in enumerate(PHASES):
                today = datetime.now(CST).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
                    days=1
                )
                steps = build(
                    phase,
                    sims,
                    seed + index,
                    count if phase in {"normal-day", "morning-rush"} else 20,
                    start=today,
                )
                runner = Runner(f"http://127.0.0.1:{config.http.port}", "127.0.0.1", broker.port, workers=8)
                report = await runner.run(steps)
                reports[phase] = report
                if phase not in {"malformed"}:
                    acked.extend(report.acked)
                in_outbox = sum(stored_by_kind(config.state.dir / "outbox.db")[0].values())
                _say(
                    as_json,
                    f"  {phase:<14} sent {report.sent:>4}  acked {len(report.acked):>4}  "
                    f"rejected {report.rejected:>3}  failed {report.failed}  ({report.seconds:.2f}s)"
                    f"  -> outbox now holds {in_outbox} events",
                )
            expected = expected_event_ids(config, acked)
            db_path = config.state.dir / "outbox.db"
            for _ in range(100):  # MQTT messages are committed asynchronously after the broker acked them
                by_kind, stored_ids, duplicates = stored_by_kind(db_path)
                if expected <= stored_ids and by_kind.get("device_status", 0) >= 1:
                    break
                await asyncio.sleep(0.1)
            gateway.cancel()
        lost = expected - stored_ids
        rejections = Counter[str]()
        for report in reports.values():
            rejections.update(report.rejections)
        with sqlite3.connect(db_path) as db:
            dead = db.execute("SELECT reason, field, detail FROM dead_letters ORDER BY id LIMIT 5").fetchall()
            (dead_count,) = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
            sample = db.execute("SELECT body FROM events WHERE alarm=1 ORDER BY seq LIMIT 1").fetchone()
        summary = {
            "generated": len(expected),
            "stored": len(stored_ids),
            "lost": len(lost),
            "duplicates": duplicates,
            "by_kind": dict(sorted(by_kind.items())),
            "dead_letters": dead_count,
            "rejections_seen_by_devices": dict(rejections),
            "outbox": str(db_path),
        }
        if lost:
            summary["lost_ids"] = sorted(lost)[:10]
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        _say(
            as_json,
            "\nevents in the outbox by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())),
        )
        _say(
            as_json,
            f"acknowledged events expected {len(expected)}, stored {len(stored_ids)}, lost {len(lost)}, "
            f"re-sends suppressed as duplicates {duplicates}",
        )
        _say(as_json, f"dead letters {dead_count}; first few reasons:")
        for reason, field, detail in dead:
            _say(as_json, f"  {reason:<18} {field or '-':<28} {detail[:80]}")
        if sample:
            _say(
                as_json,
                "\na stored alarm, as the district will receive it:\n"
                + json.dumps(json.loads(sample[0]), indent=2, ensure_ascii=False),
            )
    return 0 if not lost else 1
