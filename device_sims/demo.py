"""``compound-gateway demo``: the whole pipeline, from simulated devices to the district store.

Starts the embedded MQTT broker (or a private Mosquitto), the gateway (with its uplink) and a
district ingester writing to the embedded SQLite store, plays the scenarios, and checks the store
against what the devices saw acknowledged: every acknowledged event stored exactly once.

It ends with the evidence of the thrown-object alarm: the camera keeps its snapshot, trajectory
picture and clip on the device (``device_sims.media_server``); the gateway fetches them and sends
the two pictures to the district unasked; an operator asks for the clip through the operator API
(its evidence desk runs in process), downloads every file and compares each SHA-256 with the
camera's own bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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
from typing import Any, Literal

import aiohttp

from adapters.base import RawMessage
from device_sims.broker import Mosquitto, free_port
from device_sims.devices import CST, HighTossSim, HttpPost, MqttPublish, Outgoing, build_sim
from device_sims.embedded_broker import EmbeddedBroker
from device_sims.inventory import (
    COMPOUND_ID,
    DISTRICT_ID,
    compound_name,
    sample_broker_accounts,
    sample_devices,
    write_sample_config,
)
from device_sims.media_server import MediaServer, media_bytes
from device_sims.runner import Report, Runner
from device_sims.scenarios import build
from district.config import DistrictConfig, load_district_config
from district.ingester import run_ingester
from district.operations import OperationsDb
from district.operator_cli import serve_api
from district.operator_output import Presenter
from district.operator_service import Caller, open_operator_service
from district.query_model import Role
from foundation.errors import GatewayError
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
        return asyncio.run(_demo(keep, count, seed, as_json, store, broker, kept=True))
    with tempfile.TemporaryDirectory(prefix="cgw-demo-") as tmp:
        return asyncio.run(_demo(Path(tmp), count, seed, as_json, store, broker, kept=False))


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
        f'[api]\nops_db = "{workdir}/operations.db"\nport = {free_port()}\n'
        # the desk's own files apart from <workdir>/evidence/, where the operator's downloads go
        f'[evidence]\nmedia_dir = "{workdir}/district-evidence"\nindex_path = "{workdir}/district-evidence.db"\n'
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


EVIDENCE_CLIP_BYTES = 4 * 1024 * 1024  # the camera's clip: a few MB, sent in chunks over MQTT
EVIDENCE_REASON = "demo: confirm the floor of the thrown object"
EVIDENCE_WAIT_S = 30.0  # each wait: the two pictures unasked, the clip after the request
_EXTENSIONS = {"image/jpeg": ".jpg", "video/mp4": ".mp4"}


def _gateway_evidence_settings() -> str:
    # the shipped defaults poll every 1-2 s and look again at a waiting request every 30 s; the
    # demo shortens them so the evidence block follows the scenarios within seconds
    return (
        "\n[evidence.fetch]\npoll_s = 0.2\nretry_initial_s = 0.2\nretry_max_s = 2\n"
        "\n[evidence.serve]\npoll_s = 0.2\nrecheck_s = 0.5\n"
    )


def _thrown_object_alarm(report: Report) -> MqttPublish | None:
    """The thrown-object phase's first acknowledged alarm (a heartbeat names no files)."""
    published = (m for m in report.acked if isinstance(m, MqttPublish))
    for message in published:
        if message.topic.startswith(f"{HighTossSim.prefix}/") and "clip" in HighTossSim.media_keys(message):
            return message
    return None


class EvidenceCheckError(GatewayError):
    """The evidence did not arrive, or arrived unlike the camera's bytes (the demo exits non-zero)."""


class _Operator:
    """The demo's operator at the district's operator API (a token of role operator)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str, name: str) -> None:
        self.http, self.url, self.name = http, url, name
        self._headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: object = None) -> Any:
        """One JSON call; a status other than 200 fails the check, naming the route and the answer."""
        async with self.http.request(
            method, f"{self.url}/api/v1{path}", json=body, headers=self._headers
        ) as response:
            answer = await response.json(content_type=None)
            if response.status != 200:
                raise EvidenceCheckError(f"{method} {path}: HTTP {response.status} {answer}")
            return answer

    async def download(self, event_id: str, sha256: str, target: Path) -> str:
        """Fetch one held file into ``target``; the SHA-256 of the bytes as they came over HTTP.

        Kept whole in memory before it is written (a few MB at most here); the route is audited.
        """
        url = f"{self.url}/api/v1/evidence/{event_id}/media/{sha256}"
        digest = hashlib.sha256()
        parts: list[bytes] = []
        async with self.http.get(url, params={"reason": EVIDENCE_REASON}, headers=self._headers) as response:
            if response.status != 200:
                raise EvidenceCheckError(f"download of {sha256[:16]}: HTTP {response.status}")
            async for piece in response.content.iter_chunked(256 * 1024):
                digest.update(piece)
                parts.append(piece)
        await asyncio.to_thread(target.write_bytes, b"".join(parts))
        return digest.hexdigest()

    async def held(self, event_id: str, roles: set[str]) -> dict[str, Any]:
        """Poll the event's evidence until the district holds every one of ``roles`` (bounded)."""
        held: dict[str, Any] = {}
        try:
            async with asyncio.timeout(EVIDENCE_WAIT_S):
                while True:
                    status = await self.call("GET", f"/evidence/{event_id}")
                    held = {f["role"]: f for f in status["held"] if f["verified"]}
                    if roles <= set(held):
                        return held
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise EvidenceCheckError(
                f"after {EVIDENCE_WAIT_S:.0f} s the district holds {sorted(held)}, not {sorted(roles)}"
            ) from None

    async def settled(self, event_id: str, request_id: str) -> dict[str, Any]:
        """Poll until the request is complete, refused, failed or expired (bounded)."""
        last = "pending"
        try:
            async with asyncio.timeout(EVIDENCE_WAIT_S):
                while True:
                    status = await self.call("GET", f"/evidence/{event_id}")
                    for request in status["requests"]:
                        if request["request_id"] == request_id:
                            last = request["state"]
                            if last in {"complete", "refused", "failed", "expired", "not_found"}:
                                return dict(request)
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise EvidenceCheckError(
                f"request {request_id} still {last} after {EVIDENCE_WAIT_S:.0f} s"
            ) from None


def _seconds(later: str, earlier: str) -> float:
    return round((datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds(), 3)


def _stored_received_at(store_path: Path, event_id: str) -> str:
    with sqlite3.connect(store_path) as db:
        row = db.execute("SELECT received_at FROM events WHERE event_id = ?", (event_id,)).fetchone()
    if row is None:
        raise EvidenceCheckError(f"the alarm {event_id} is not in the district store")
    return str(row[0])


async def _evidence(  # noqa: PLR0917 - one private call site
    operator: _Operator,
    ops_db: Path,
    event_id: str,
    keys: dict[str, str],
    store_path: Path,
    workdir: Path,
) -> dict[str, Any]:
    """Fetch the alarm's evidence as an operator would, and compare it with the camera's bytes.

    The comparison's reference is the simulator's own bytes (``media_bytes``), never anything the
    gateway or the district says. Raises ``EvidenceCheckError`` when something does not arrive.
    """
    out: dict[str, Any] = {"event_id": event_id, "operator": operator.name, "reason": EVIDENCE_REASON}
    alarm_at = await asyncio.to_thread(_stored_received_at, store_path, event_id)
    unasked = await operator.held(event_id, {"snapshot", "trajectory"})
    out["snapshot_after_alarm_s"] = _seconds(unasked["snapshot"]["received_at"], alarm_at)
    request = await operator.call(
        "POST", f"/evidence/{event_id}/requests", {"reason": EVIDENCE_REASON, "roles": ["clip"]}
    )
    done = await operator.settled(event_id, request["request_id"])
    out["request"] = {"request_id": request["request_id"], "state": done["state"], "rule": done["rule"]}
    if done["state"] != "complete":
        raise EvidenceCheckError(f"the clip request ended {done['state']} ({done['rule']}: {done['detail']})")
    held = await operator.held(event_id, {"snapshot", "trajectory", "clip"})
    clip = held["clip"]
    # None: the district held this clip before the request (an earlier run in the same --keep directory)
    out["clip_after_request_s"] = (
        _seconds(clip["received_at"], request["created_at"])
        if clip["request_id"] == request["request_id"]
        else None
    )
    target = workdir / "evidence"
    await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
    files = []
    for role in ("snapshot", "trajectory", "clip"):
        item = held[role]
        path = target / f"{role}{_EXTENSIONS.get(item['content_type'], '.bin')}"
        downloaded = await operator.download(event_id, item["sha256"], path)
        data, _ = await asyncio.to_thread(media_bytes, keys[role], EVIDENCE_CLIP_BYTES)
        camera = hashlib.sha256(data).hexdigest()
        files.append(
            {
                "role": role,
                "key": keys[role],
                "size": item["size"],
                "sha256_district": item["sha256"],
                "sha256_downloaded": downloaded,
                "sha256_camera": camera,
                "match": item["sha256"] == downloaded == camera and item["size"] == len(data),
                "request_id": item["request_id"],
                "path": str(path),
            }
        )
    out["files"] = files
    async with OperationsDb(ops_db) as ops:
        records = await ops.audit_records(limit=100, actor=operator.name)
    out["audit"] = [
        {
            "actor": r.entry.actor,
            "action": r.entry.action,
            "reason": r.entry.reason,
            "outcome": r.entry.outcome,
        }
        for r in reversed(records)
        if r.entry.action in {"evidence_request", "evidence_media"}
    ]
    return out


def _print_evidence(evidence: dict[str, Any], *, kept: bool) -> None:
    print(
        f"\nevidence of the thrown-object alarm {evidence.get('event_id', '-')}"
        f" (operator {evidence.get('operator', '-')}):"
    )
    if "files" in evidence:
        rows = [
            [
                f["role"],
                f"{f['size']:,} B",
                f["sha256_district"][:16],
                f["sha256_camera"][:16],
                "yes" if f["match"] else "NO",
                "unasked" if f["request_id"] is None else "on request",
            ]
            for f in evidence["files"]
        ]
        headers = ["role", "size", "sha256 at the district", "sha256 of the camera", "match", "sent"]
        print(render_table(headers, rows))
        after = evidence["clip_after_request_s"]
        clip = (
            f"clip {after:.2f} s after the request"
            if after is not None
            else "clip held before the request (an earlier run in this directory)"
        )
        print(
            f"  snapshot at the district {evidence['snapshot_after_alarm_s']:.2f} s after the alarm (unasked); {clip}"
        )
        where = Path(evidence["files"][0]["path"]).parent
        gone = "" if kept else " (gone with the run; --keep DIR keeps them)"
        print(f"  SHA-256 to 16 hex digits (whole in --json); files downloaded to {where}{gone}")
    # the request, then one line per download: the same words, so counted
    lines = Counter(
        f"{entry['actor']} {entry['action']} reason {entry['reason']!r} -> {entry['outcome']}"
        for entry in evidence.get("audit", [])
    )
    for line, times in lines.items():
        print(f"  audit: {line}" + (f" (x{times})" if times > 1 else ""))
    if evidence.get("error"):
        print(f"  EVIDENCE CHECK FAILED: {evidence['error']}")


async def _api_up(url: str) -> None:
    """Wait (bounded) until the desk is subscribed: on its first connection the broker keeps nothing for it before."""
    async with asyncio.timeout(20), aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{url}/metrics") as response:
                if 'cgw_transport_up{transport="evidence_desk"} 1.0' in await response.text():
                    return
            await asyncio.sleep(0.05)


async def _evidence_block(  # noqa: PLR0917 - one private call site
    api_url: str,
    token: str,
    operator_name: str,
    config: GatewayConfig,
    district: DistrictConfig,
    thrown: Report,
    store_path: Path,
    workdir: Path,
) -> tuple[dict[str, Any], bool]:
    """The evidence block of the thrown-object phase's alarm, and whether it all arrived and matches."""
    alarm = _thrown_object_alarm(thrown)
    if alarm is None:
        return {"ok": False, "error": "the thrown-object phase raised no acknowledged alarm"}, False
    (event_id,) = expected_event_ids(config, [alarm])
    async with aiohttp.ClientSession() as http:
        operator = _Operator(http, api_url, token, operator_name)
        try:
            evidence = await _evidence(
                operator, district.api.ops_db, event_id, HighTossSim.media_keys(alarm), store_path, workdir
            )
        except EvidenceCheckError as exc:
            return {"event_id": event_id, "operator": operator_name, "ok": False, "error": str(exc)}, False
    roles = {f["role"] for f in evidence["files"]}
    ok = roles == {"snapshot", "trajectory", "clip"} and all(f["match"] for f in evidence["files"])
    evidence["ok"] = ok
    if not ok:
        evidence["error"] = "a file held at the district differs from the camera's"
    return evidence, ok


async def _demo(  # noqa: PLR0915, PLR0917 - one private call site
    workdir: Path,
    count: int,
    seed: int,
    as_json: bool,
    store: Path | None,
    broker_kind: Literal["embedded", "mosquitto"],
    *,
    kept: bool,
) -> int:
    store_path = (store or workdir / "district-store.db").resolve()
    camera = next(d for d in sample_devices() if d.dialect == "hightoss-mqtt")
    async with (
        _brokers(broker_kind, workdir) as (broker_port, district_port),
        MediaServer(camera, clip_bytes=EVIDENCE_CLIP_BYTES) as media,
    ):
        config_path = write_sample_config(
            workdir / "gateway.toml",
            state_dir=workdir / "state",
            http_port=free_port(),
            mqtt_port=broker_port,
            media_url=media.url,
        )
        with config_path.open("a", encoding="utf-8") as handle:
            handle.write(
                f'\n[uplink]\nmode = "mqtt"\nbatch_max_delay_ms = 100\n[uplink.broker]\nhost = "127.0.0.1"\nport = {district_port}\n'
                + _gateway_evidence_settings()
            )
        config = load_config(config_path)
        district = _district_config(workdir, district_port, store_path)
        operator_name = f"demo-operator-{uuid.uuid4().hex[:6]}"
        async with OperationsDb(district.api.ops_db) as ops:
            operator_token = await ops.create_token(operator_name, Role.OPERATOR, DISTRICT_ID, (), "demo")
        api_url = f"http://127.0.0.1:{district.api.port}"
        _say(
            as_json,
            f"compound {config.compound.compound_id} ({config.compound.name}): {len(config.devices)} simulated devices\n"
            f"  devices -> gateway (http :{config.http.port}, {broker_kind} mqtt broker :{broker_port}) -> outbox"
            f" -> district broker :{district_port}"
            f" -> ingester -> store {store_path}\n"
            f"  thrown-object camera's files at {media.url}; operator API with its evidence desk at {api_url}/api/v1",
        )
        async with asyncio.TaskGroup() as tg:
            ingester_ready, gateway_ready, api_ready = asyncio.Event(), asyncio.Event(), asyncio.Event()
            ingester = tg.create_task(run_ingester(district, ready=ingester_ready), name="ingester")
            api = tg.create_task(serve_api(district, ready=api_ready), name="operator-api")
            gateway = tg.create_task(run_gateway(config, ready=gateway_ready), name="gateway")
            await ingester_ready.wait()
            await api_ready.wait()
            await _api_up(api_url)
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
            evidence, evidence_ok = await _evidence_block(
                api_url,
                operator_token,
                operator_name,
                config,
                district,
                reports["thrown-object"],
                store_path,
                workdir,
            )
            gateway.cancel()
            ingester.cancel()
            api.cancel()
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
        summary["evidence"] = evidence
    status = 0 if not lost and evidence_ok else 1
    if as_json:
        summary["operator_view"] = await _operator_view(district, day - timedelta(hours=1), as_json)
        print(json.dumps(summary, ensure_ascii=False))
        return status
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
    _print_evidence(evidence, kept=kept)
    return status
