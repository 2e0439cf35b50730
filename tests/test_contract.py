"""Contract test per dialect: its simulator over the real transport into the outbox.

A real Mosquitto on a private port and the real HTTP receiver; the outbox must hold canonical events
with the right fields.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from adapters import DIALECTS
from adapters.base import Transport
from device_sims.demo import expected_event_ids
from device_sims.devices import CST, DeviceSim, HttpPost, MqttPublish, build_sim
from device_sims.inventory import sample_broker_accounts, sample_devices
from device_sims.runner import Runner
from device_sims.scenarios import Step
from gateway.outbox import Outbox
from tests.conftest import RunningGateway

Check = Callable[[dict[str, Any], bytes], None]
REASONS = {
    "malformed_json",
    "not_utf8",
    "bad_field",
    "missing_field",
    "bad_picture",
    "malformed_multipart",
    "unknown_device",
    "forbidden_xml",
    "bad_plate",
    "unsupported_event",
    "malformed_xml",
    "bad_timestamp",
}


def check_face(event: dict[str, Any], message: bytes) -> None:
    payload = event["payload"]
    assert payload["result"] in {"granted", "stranger"}
    if payload["result"] == "granted":
        assert payload["person_ref"].startswith("p1:")
        raw_ids = {json.loads(message).get("data", {}).get("personId")} if message.startswith(b"{") else set()
        assert payload["person_ref"] not in raw_ids
        assert payload["similarity"] is None or 0 <= payload["similarity"] <= 1
    assert "张三" not in json.dumps(event, ensure_ascii=False)
    assert "李四" not in json.dumps(event, ensure_ascii=False)
    assert event["media"]
    assert event["media"][0]["role"] == "face"


def check_vehicle(event: dict[str, Any], message: bytes) -> None:
    payload = event["payload"]
    assert payload["plate"] is not None
    assert payload["plate"].encode() in message
    assert payload["new_energy"] == (len(payload["plate"]) == 8)
    assert payload["plate_class"] == ("new_energy" if payload["new_energy"] else "civil")
    assert payload["list_type"] in {"allow", "block"}
    assert payload["barrier_action"] == ("opened" if payload["list_type"] == "allow" else "refused")
    assert event["severity"] == ("warning" if payload["list_type"] == "block" else "info")


def check_thrown(event: dict[str, Any], _: bytes) -> None:
    payload = event["payload"]
    assert event["severity"] == "critical"
    low, high = payload["floor_range"]
    assert low <= payload["start_floor"] <= high
    assert payload["building"] == "7幢"
    assert len(payload["trajectory"]) == 12
    assert all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 for p in payload["trajectory"])
    assert {m["role"] for m in event["media"]} == {"snapshot", "trajectory", "clip"}


def check_siren(event: dict[str, Any], _: bytes) -> None:
    payload = event["payload"]
    assert (payload["state"], event["severity"]) == ("fault", "warning")
    assert payload["reason"].startswith("speaker_open: impedance ")


def check_shed(event: dict[str, Any], _: bytes) -> None:
    payload = event["payload"]
    assert payload["condition"] in {"heartbeat", "fire_alarm", "high_temperature"}
    critical = payload["condition"] in {"fire_alarm", "high_temperature"}
    assert (event["severity"] == "critical") == critical
    assert 0 <= payload["battery_pct"] <= 100
    assert -60 <= payload["temperature_c"] <= 100


CHECKS: dict[str, tuple[str, Check]] = {
    "hik-isapi-acs": ("face_access", check_face),
    "uface-mqtt": ("face_access", check_face),
    "hik-isapi-anpr": ("vehicle_pass", check_vehicle),
    "vz-lpr-mqtt": ("vehicle_pass", check_vehicle),
    "hightoss-mqtt": ("thrown_object", check_thrown),
    "shed-mqtt": ("ebike_shed", check_shed),
    "ctwing-smoke": ("ebike_shed", check_shed),
    "siren-mqtt": ("device_status", check_siren),
}


def _message_bytes(message: object) -> bytes:
    return message.body if isinstance(message, HttpPost) else message.payload  # type: ignore[attr-defined]


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
async def test_dialect_contract(dialect: str, gateway: RunningGateway) -> None:
    """Routine and alarm events arrive as canonical events; re-sends are stored once; bad input is dead-lettered."""
    kind, check = CHECKS[dialect]
    sims: list[DeviceSim] = [build_sim(d) for d in sample_devices() if d.dialect == dialect]
    rng = random.Random(dialect)
    at = datetime(2026, 6, 1, 7, 30, tzinfo=CST)
    good: list[Step] = []
    for sim in sims:
        for i in range(3):
            good.append(Step(sim, sim.routine(at + timedelta(seconds=i), rng)))
        good.append(Step(sim, sim.alarm(at + timedelta(seconds=10), rng)))
    resend = [Step(s.sim, s.message, expect="duplicate") for s in good]
    bad = [Step(sim, m, expect="reject") for sim in sims for m in sim.malformed(rng)]
    # what a device's account may not write (another device's topic) the broker drops: the gateway
    # never sees it, so it is no dead letter there
    accounts = sample_broker_accounts()
    refused = [
        s
        for s in bad
        if isinstance(s.message, MqttPublish)
        and not accounts.allows(s.sim.device.username, "write", s.message.topic)
    ]
    if DIALECTS[dialect].transport is Transport.MQTT:
        assert refused, "the malformed set publishes on a foreign topic too"

    runner = Runner(gateway.http, "127.0.0.1", gateway.broker.port, workers=1)
    report = await runner.run(good + resend + bad)
    assert report.failed == 0
    accepted = [m for m in report.acked if m in {s.message for s in good}]
    expected = expected_event_ids(gateway.config, accepted)
    assert expected, "the simulator produced no canonical events"
    device_ids = {s.device.id for s in sims}

    def settled(box: Outbox) -> bool:
        return expected <= set(box.event_ids()) and box.stats().dead_letters >= len(bad) - len(refused)

    await gateway.wait_for(settled)
    with gateway.outbox() as box:
        # device_status events of the connection (birth, will) are the broker's doing, not the
        # messages sent here; an alarm output's faults are device_status events of its own
        rows = [
            (event_id, body)
            for device_id in sorted(device_ids)
            for event_id, body, event_kind in box.db.execute(
                "SELECT event_id, body, kind FROM events WHERE device_id = ?", (device_id,)
            )
            if event_kind != "device_status"
            or (
                kind == "device_status"
                and json.loads(body)["source"]["event_code"] not in {"online", "offline"}
            )
        ]
        assert {row[0] for row in rows} == expected  # each exactly once: event_id is the primary key
        by_id = {row[0]: json.loads(row[1]) for row in rows}
        for message in accepted:
            outcome_ids = expected_event_ids(gateway.config, [message])
            for event_id in outcome_ids:
                event = by_id[event_id]
                assert event["kind"] == kind
                assert event["source"]["dialect"] == dialect
                assert event["device_id"] in device_ids
                assert event["compound_id"] == gateway.config.compound.compound_id
                check(event, _message_bytes(message))
                for media in event["media"]:
                    if media["ref"].startswith("local:"):
                        stored = gateway.config.state.dir / "media" / media["ref"].removeprefix("local:")
                        assert stored.stat().st_size == media["size"]
        assert any(e["severity"] != "info" for e in by_id.values()), "the alarm did not come through"
        letters = [d for d in box.dead_letters(1000) if d["dialect"] == dialect]
        assert len(letters) == len(bad) - len(refused)  # had the broker let them through: unknown devices
        for letter in letters:
            assert letter["reason"] in REASONS
            assert letter["detail"]
        # every re-sent message reproduced all of its events, and each was recognised as a duplicate
        duplicates = sum(v for (n, _, _), v in box.stats().counters.items() if n == "duplicates")
        assert duplicates == len(expected)
