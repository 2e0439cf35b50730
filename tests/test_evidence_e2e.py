"""Evidence through the real pipeline: camera -> gateway -> Mosquitto -> ingester/store and desk -> operator.

A simulated thrown-object camera publishes an alarm on the compound's Mosquitto and serves its
snapshot, trajectory picture and a multi-MB clip under our download API; the gateway (in process)
fetches them, forwards the alarm over its uplink to a second Mosquitto (the district broker), where
the ingester stores it in the embedded store and the operator API's evidence desk receives files.
Nothing in between is a double. The SHA-256 every check compares against is computed from the
simulator's own bytes (``media_bytes``), never from what the gateway or the district report.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from device_sims.broker import Mosquitto, free_port
from device_sims.demo import expected_event_ids
from device_sims.devices import CST, HighTossSim, MqttPublish, build_sim
from device_sims.inventory import sample_devices, write_sample_config
from device_sims.media_server import MediaServer, media_bytes
from district.ingester import run_ingester
from gateway.config import GatewayConfig, load_config
from gateway.runtime import run_gateway
from tests.conftest import device_client
from tests.district_data import running
from tests.evidence_double import District, running_district, write_config
from tests.test_evidence_api import fetch_media

CLIP_BYTES = 3 * 1024 * 1024 + 4321  # "a clip of a few MB"
DEADLINE_S = 60  # generous: the suite shares two cores


def _gateway_config(
    tmp_path: Path, device_broker: Mosquitto, district_broker: Mosquitto, media_url: str
) -> GatewayConfig:
    path = write_sample_config(
        tmp_path / "gateway.toml",
        state_dir=tmp_path / "state",
        http_port=free_port(),
        mqtt_port=device_broker.port,
        media_url=media_url,
    )
    with path.open("a", encoding="utf-8") as handle:
        handle.write(
            "\n[backoff]\ninitial_s = 0.05\nmax_s = 0.5\n"
            "\n[evidence.fetch]\nretry_initial_s = 0.05\nretry_max_s = 0.5\npoll_s = 0.05\n"
            '\n[uplink]\nmode = "mqtt"\nbatch_max_delay_ms = 20\n'
            f'[uplink.broker]\nhost = "127.0.0.1"\nport = {district_broker.port}\n'
        )
    return load_config(path)


def _camera() -> HighTossSim:
    sim = build_sim(next(d for d in sample_devices() if d.dialect == "hightoss-mqtt"))
    assert isinstance(sim, HighTossSim)
    return sim


def _sha(key: str) -> str:
    return hashlib.sha256(media_bytes(key, CLIP_BYTES)[0]).hexdigest()


async def _publish(broker: Mosquitto, sim: object, message: MqttPublish) -> None:
    device = sim.device  # type: ignore[attr-defined]
    async with device_client(broker.port, device) as client:
        await client.publish(message.topic, message.payload, qos=1)


async def _wait_stored(config_path: Path, event_id: str) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while True:
            try:
                with sqlite3.connect(config_path) as db:
                    if db.execute("SELECT 1 FROM events WHERE event_id = ?", (event_id,)).fetchone():
                        return
            except sqlite3.OperationalError:
                pass  # the ingester has not created the table yet
            await asyncio.sleep(0.1)


async def _compound_audit(state_dir: Path) -> list[tuple[str, str, str, str, str, str | None]]:
    def read() -> list[tuple[str, str, str, str, str, str | None]]:
        with sqlite3.connect(state_dir / "evidence.db") as db:
            return db.execute(
                "SELECT request_id, what, operator, reason, decision, rule FROM evidence_audit ORDER BY id"
            ).fetchall()

    return await asyncio.to_thread(read)


@pytest.mark.slow
async def test_thrown_object_evidence_reaches_the_operator(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """The snapshot and trajectory arrive unasked; the clip on request; a face-gate picture is refused.

    Each file's SHA-256 at the district equals the simulator's bytes; the district's audit and the
    compound's both show who asked and why, and both record the refusal with its rule; the compound refuses a face-gate passer's picture with
    ``face_gate_never`` and nothing of it reaches the district.

    Broken on purpose once: with the service's proactive sending switched off the wait for the two
    unasked files timed out; with the ``face_gate_never`` check skipped in the policy the request
    was refused by ``default_deny`` instead, and the rule assertion failed.
    """
    camera = _camera()
    (tmp_path / "district").mkdir()
    district_config = write_config(tmp_path / "district", district_broker.port, ttl_s=120)
    async with MediaServer(camera.device, clip_bytes=CLIP_BYTES) as media:
        config = _gateway_config(tmp_path, mosquitto, district_broker, media.url)
        async with (
            running(lambda ready: run_ingester(district_config, ready=ready), "ingester"),
            running_district(district_config) as district,
            running(lambda ready: run_gateway(config, ready=ready), "gateway"),
        ):
            alarm = camera.alarm(datetime.now(CST), random.Random(7))
            assert isinstance(alarm, MqttPublish)
            keys = HighTossSim.media_keys(alarm)
            (event_id,) = expected_event_ids(config, [alarm])
            await _publish(mosquitto, camera, alarm)
            await _wait_stored(tmp_path / "district" / "district.db", event_id)

            # proactive: no one asked, yet the snapshot and the trajectory picture are at the district
            held = await district.wait_held(event_id, 2, timeout=DEADLINE_S)
            assert {(f["role"], f["sha256"], f["request_id"]) for f in held} == {
                ("snapshot", _sha(keys["snapshot"]), None),
                ("trajectory", _sha(keys["trajectory"]), None),
            }
            assert all(f["verified"] for f in held)

            # the clip: on request, with a reason
            code, body = await district.request(
                event_id, "operator", roles=["clip"], reason="7幢抛物 确认楼层"
            )
            assert code == 200, body
            request_id = body["request_id"]
            done = await district.wait_state(
                event_id, request_id, {"complete", "refused", "failed", "expired"}, DEADLINE_S
            )
            assert done["state"] == "complete", done
            status, data, header_sha = await fetch_media(
                district, event_id, _sha(keys["clip"]), "operator", reason="7幢抛物 确认楼层"
            )
            assert status == 200
            assert len(data) == CLIP_BYTES
            assert hashlib.sha256(data).hexdigest() == header_sha == _sha(keys["clip"])

            # who asked and why, on both sides
            audit = [r.entry for r in await district.ops.audit_records(limit=50)]
            asked = [a for a in audit if a.action == "evidence_request"]
            assert [(a.actor, a.reason, a.outcome) for a in asked] == [("operator", "7幢抛物 确认楼层", "ok")]
            ours = [row for row in await _compound_audit(config.state.dir) if row[0] == request_id]
            assert ours[0][:4] == (request_id, "decided", "operator", "7幢抛物 确认楼层"), ours
            assert {row[1] for row in ours} == {"decided", "answered"}, ours

            # a face-gate passer's picture never leaves: the compound refuses, naming its rule
            face_id = await _face_gate_event(mosquitto, config, tmp_path)
            code, body = await district.request(face_id, "operator", reason="寻找走失老人 核对")
            assert code == 200, body
            refused = await district.wait_state(
                face_id,
                body["request_id"],
                {"complete", "refused", "failed", "expired", "not_found"},
                DEADLINE_S,
            )
            assert (refused["state"], refused["rule"]) == ("refused", "face_gate_never")
            assert (await district.status(face_id))["held"] == []
            answers = [
                r.entry
                for r in await district.ops.audit_records(limit=50)
                if r.entry.action == "evidence_answer" and r.entry.filters["request_id"] == body["request_id"]
            ]
            assert [(a.actor, a.outcome, a.status, a.reason) for a in answers] == [
                ("operator", "refused", 403, "寻找走失老人 核对")
            ]
            assert "face_gate_never" in (answers[0].detail or "")
            refusals = [
                row for row in await _compound_audit(config.state.dir) if row[0] == body["request_id"]
            ]
            assert [(row[1], row[5]) for row in refusals][:1] == [("decided", "face_gate_never")], refusals


async def _face_gate_event(broker: Mosquitto, config: GatewayConfig, tmp_path: Path) -> str:
    """One face-gate passage with its pictures, stored at the district; its event id."""
    sim = build_sim(next(d for d in sample_devices() if d.dialect == "uface-mqtt"))
    message = sim.routine(datetime.now(CST), random.Random(3))
    assert isinstance(message, MqttPublish)
    (event_id,) = expected_event_ids(config, [message])
    await _publish(broker, sim, message)
    await _wait_stored(tmp_path / "district" / "district.db", event_id)
    return event_id


__all__ = ["District"]
