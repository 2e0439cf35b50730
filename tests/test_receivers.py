"""The transports against real servers: HTTP answers after the commit, MQTT acknowledges after the commit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from adapters.base import RawMessage
from device_sims.broker import Mosquitto
from device_sims.demo import expected_event_ids
from device_sims.devices import CST, HttpPost, MqttPublish, build_sim
from device_sims.inventory import sample_devices
from device_sims.push_client import PushAuth, post
from device_sims.runner import Runner
from device_sims.scenarios import Step
from foundation.identity import Pseudonymizer
from gateway.config import load_config
from gateway.intake import Intake, IntakeItem
from gateway.outbox import Outbox
from gateway.runtime import run_gateway
from tests.conftest import RunningGateway, device_client, gateway_in_process, sample_config
from tests.metrics import value as metrics_value


def _sim(dialect: str):  # type: ignore[no-untyped-def]
    (device,) = [d for d in sample_devices() if d.dialect == dialect][:1]
    return build_sim(device)


async def test_http_push_answered_after_commit(gateway: RunningGateway) -> None:
    """When the device gets its 200, the event (and its picture) is already in the outbox file."""
    sim = _sim("hik-isapi-acs")
    message = sim.routine(datetime(2026, 6, 1, 8, 0, tzinfo=CST), random.Random(1))
    assert isinstance(message, HttpPost)
    auth = PushAuth()
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            status, body = await post(session, gateway.http, message, auth)
            assert status == 200
            assert isinstance(body["stored"], list)
            assert isinstance(body["duplicates"], list)
            (event_id,) = body["stored"] or body["duplicates"]
            with gateway.outbox() as box:
                assert event_id in box.event_ids()
            message = sim.routine(datetime(2026, 6, 1, 8, 0, tzinfo=CST), random.Random(2))
            assert isinstance(message, HttpPost)


async def test_http_rejections_are_specific(gateway: RunningGateway) -> None:
    """Unknown device or platform 401 (not revealed), wrong transport 400, oversize 413, bad field 400."""
    limit = gateway.config.http.max_body_bytes
    devices = {d.id: d for d in sample_devices()}
    auth = PushAuth()
    async with aiohttp.ClientSession() as session:

        async def push(
            path: str, body: bytes, ctype: str = "application/json"
        ) -> tuple[int, dict[str, object]]:
            sender = devices.get(path.rsplit("/", 1)[-1])
            message = HttpPost(path, body, ctype, sender.credentials if sender else None)
            return await post(session, gateway.http, message, auth)

        status, body = await push("/push/36010400011249999999", b"{}")
        assert (status, body) == (401, {"error": "unauthorized", "reason": "no_credentials"})
        status, body = await push("/platform/nope", b"{}")
        assert (status, body) == (401, {"error": "unauthorized", "reason": "no_credentials"})
        # an MQTT device, with its own (broker) secret: no push credential, refused like a made-up id
        status, body = await push("/push/36010400011240000003", b"{}")
        assert (status, body["error"]) == (401, "unauthorized")
        doc = {
            "eventType": "AccessControllerEvent",
            "dateTime": "2026-06-01T08:00:00+08:00",
            "AccessControllerEvent": {"majorEventType": 5, "subEventType": 75, "serialNo": -4},
        }
        status, body = await push("/push/36010400011240000001", json.dumps(doc).encode())
        assert status == 400
        assert body == {
            "error": "out_of_range",
            "field": "AccessControllerEvent.serialNo",
            "detail": "-4 is outside 0..None",
            "device": "36010400011240000001",
        }
        # after the device's first challenge (above), as a camera does: the big body is sent once
        status, body = await push("/push/36010400011240000001", b"x" * (limit + 1))
        assert (status, body["error"]) == (413, "payload_too_large")
    with gateway.outbox() as box:
        reasons = [(d["reason"], d["device"]) for d in box.dead_letters()]
        # exactly these: the refused pushes (made-up ids, the MQTT device) left no dead letter
        assert sorted(reasons) == [
            ("out_of_range", "36010400011240000001"),
            ("payload_too_large", "36010400011240000001"),
        ]


async def test_mqtt_will_becomes_offline_status(gateway: RunningGateway) -> None:
    """A device that loses power: the broker publishes its will, the gateway records it offline."""
    sims = [build_sim(d) for d in sample_devices() if d.dialect in {"shed-mqtt", "uface-mqtt"}]
    runner = Runner(gateway.http, "127.0.0.1", gateway.broker.port)
    rng = random.Random(3)
    at = datetime(2026, 6, 1, 9, 0, tzinfo=CST)
    steps = [Step(s, s.routine(at, rng)) for s in sims] + [
        Step(s, None, action="drop_connection") for s in sims
    ]
    await runner.run(steps)

    def both_offline(box: Outbox) -> bool:
        rows = box.db.execute("SELECT body FROM events WHERE kind='device_status'").fetchall()
        states = [(json.loads(r[0])["device_id"], json.loads(r[0])["payload"]["state"]) for r in rows]
        return all((s.device.id, "offline") in states and (s.device.id, "online") in states for s in sims)

    await gateway.wait_for(both_offline, timeout=30)


async def test_mqtt_not_acknowledged_until_committed(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Device messages stay unacknowledged at the broker while the outbox cannot commit.

    Once it can, the broker redelivers them and each is stored exactly once.
    """
    config_path = sample_config(tmp_path, mosquitto.port)
    with config_path.open("a", encoding="utf-8") as handle:
        handle.write("\n[backoff]\ninitial_s = 0.05\nmax_s = 0.2\n")
    config = load_config(config_path)
    ready = asyncio.Event()
    task = asyncio.create_task(run_gateway(config, ready=ready))
    try:
        async with asyncio.timeout(20):
            await ready.wait()
        db = sqlite3.connect(config.state.dir / "outbox.db")
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        db.commit()
        sim = _sim("shed-mqtt")
        rng = random.Random(5)
        at = datetime(2026, 6, 1, 10, 0, tzinfo=CST)
        messages = [sim.routine(at.replace(second=i), rng) for i in range(20)]
        async with device_client(mosquitto.port, sim.device) as device:
            for message in messages:
                assert isinstance(message, MqttPublish)
                await device.publish(message.topic, message.payload, qos=1)
        await asyncio.sleep(1.0)  # several reconnect-and-redeliver rounds against the refusing outbox
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
        db.execute("DROP TRIGGER refuse")
        db.commit()
        deadline = asyncio.get_running_loop().time() + 20
        while (
            db.execute("SELECT COUNT(*) FROM events WHERE device_id=?", (sim.device.id,)).fetchone()[0] < 20
        ):
            assert asyncio.get_running_loop().time() < deadline, "redelivered messages were not stored"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events WHERE device_id=?", (sim.device.id,)
        ).fetchone() == (20, 20)
        db.close()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_sim_command_against_running_gateway(gateway: RunningGateway) -> None:
    """`compound-gateway sim` plays a scenario over the real transports at a configurable rate."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "sim",
        "--config",
        str(gateway.config_path),
        "--scenario",
        "morning-rush",
        "--count",
        "60",
        "--rate",
        "300",
        "--seed",
        "4",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["sent"] == 60
    assert report["acked"] == 60
    assert report["seconds"] >= 60 / 300 * 0.9  # the rate was honoured

    def arrived(box: Outbox) -> bool:
        rows = box.db.execute(
            "SELECT COUNT(*) FROM events WHERE kind IN ('face_access', 'vehicle_pass')"
        ).fetchone()
        return int(rows[0]) >= 60

    await gateway.wait_for(arrived)


async def test_http_rate_limit_per_device(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A flooding device gets 429s with Retry-After; other devices are unaffected.

    Failed attempts (made-up ids) share one bucket per address; once it is empty the address gets 429.
    """
    config_path = sample_config(tmp_path, mosquitto.port)
    text = config_path.read_text(encoding="utf-8")
    text = text.replace("device_rate_per_s = 100000.0", "device_rate_per_s = 1.0\ndevice_burst = 5")
    config_path.write_text(text, encoding="utf-8")
    config = load_config(config_path)
    assert (config.http.device_rate_per_s, config.http.device_burst) == (1.0, 5)
    flooder, neighbour = "36010400011240000001", "36010400011240000002"
    base = f"http://127.0.0.1:{config.http.port}"
    async with gateway_in_process(config_path, mosquitto):
        rng = random.Random(7)
        sim = build_sim(next(d for d in sample_devices() if d.id == flooder))
        other = build_sim(next(d for d in sample_devices() if d.id == neighbour))
        at = datetime(2026, 6, 1, 8, 0, tzinfo=CST)

        push_auth = PushAuth()
        async with aiohttp.ClientSession() as session:

            async def push(device_sim, seconds: int) -> tuple[int, dict[str, object], str | None]:  # type: ignore[no-untyped-def]
                message = device_sim.routine(at.replace(second=seconds), rng)
                assert isinstance(message, HttpPost)
                request = push_auth.request(message)
                async with session.post(
                    base + message.path,
                    data=message.body,
                    headers=request.headers,
                    middlewares=request.middlewares,
                ) as response:
                    return response.status, await response.json(), response.headers.get("Retry-After")

            flood = [await push(sim, i) for i in range(12)]
            accepted = [body for status, body, _ in flood if status == 200]
            limited = [(body, retry) for status, body, retry in flood if status == 429]
            assert 5 <= len(accepted) <= 7  # the burst, plus what refilled at 1/s while posting
            assert len(accepted) + len(limited) == 12
            for body, retry in limited:
                assert body["error"] == "rate_limited"
                assert body["device"] == flooder
                assert retry is not None
                assert int(retry) >= 1
            # the neighbour's bucket is its own
            assert [status for status, _, _ in [await push(other, i) for i in range(5)]] == [200] * 5

            async def unknown(n: int) -> int:
                async with session.post(base + f"/push/3601040001124999{n:04d}", data=b"{}") as response:
                    return response.status

            sprayed = [await unknown(n) for n in range(10)]
            assert sprayed.count(401) <= 6  # made-up ids share one bucket per address
            assert sprayed.count(429) >= 4
            assert sprayed.count(401) + sprayed.count(429) == 10

            await asyncio.sleep(int(limited[0][1] or 1) + 0.1)
            status, _, _ = await push(sim, 30)
            assert status == 200  # after waiting as told, the device gets through again

            async with session.get(base + "/metrics") as response:
                metrics = await response.text()
        assert metrics_value(metrics, "cgw_http_rate_limited_total", peer=flooder) == len(limited)
        # per-address buckets are counted under one label (made-up addresses cannot grow /metrics)
        assert metrics_value(metrics, "cgw_http_rate_limited_total", peer="unknown") == sprayed.count(429)
        assert "refused@" not in metrics
        assert metrics_value(
            metrics, "cgw_http_auth_refused_total", peer="unknown", reason="unknown_device"
        ) == sprayed.count(401)
        with Outbox(config.state.dir / "outbox.db", max_bytes=1 << 30) as box:
            stored = set(box.event_ids())
            unknown_letters = [d for d in box.dead_letters() if d["reason"] == "unknown_device"]
        for body in accepted:
            assert isinstance(body["stored"], list)
            assert set(body["stored"]) <= stored
        assert unknown_letters == []  # refused pushes are not kept


async def test_mqtt_payload_limits(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Over the limit: dead-lettered with the size; far over it: the broker never sends it; the device goes on."""
    config_path = sample_config(tmp_path, mosquitto.port, mqtt="max_payload_bytes = 2048")
    async with gateway_in_process(config_path, mosquitto) as runner:
        sim = _sim("shed-mqtt")
        good = sim.routine(datetime(2026, 6, 1, 10, 0, tzinfo=CST), random.Random(9))
        assert isinstance(good, MqttPublish)
        async with device_client(mosquitto.port, sim.device) as device:
            await device.publish(good.topic, b"{" + b" " * 3000 + b"}", qos=1)  # over 2048: kept, refused
            await device.publish(good.topic, b"{" + b" " * 100_000 + b"}", qos=1)  # over 4x: never sent
            await device.publish(good.topic, good.payload, qos=1)

        def settled(box: Outbox) -> bool:
            return box.stats().pending >= 1 and any(
                d["reason"] == "payload_too_large" for d in box.dead_letters()
            )

        await runner.wait_for(settled)
        await asyncio.sleep(0.5)  # anything still in flight would land now
        with runner.outbox() as box:
            letters = [d for d in box.dead_letters() if d["reason"] == "payload_too_large"]
            assert len(letters) == 1
            assert "3002 bytes > 2048" in str(letters[0]["detail"])
            assert box.stats().pending == 1


async def test_mqtt_device_rate_limit(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A flooding MQTT device: beyond its burst its messages become dead letters; another device is unaffected."""
    config_path = sample_config(tmp_path, mosquitto.port)
    text = config_path.read_text(encoding="utf-8")
    config_path.write_text(
        text.replace(
            "device_rate_per_s = 100000.0\n\n[", "device_rate_per_s = 0.5\ndevice_burst = 10\n\n[", 1
        ),
        encoding="utf-8",
    )
    async with gateway_in_process(config_path, mosquitto) as runner:
        assert (runner.config.mqtt.device_rate_per_s, runner.config.mqtt.device_burst) == (0.5, 10)
        flooder, quiet = _sim("shed-mqtt"), _sim("hightoss-mqtt")
        rng = random.Random(11)
        at = datetime(2026, 6, 1, 10, 0, tzinfo=CST)
        # alarms: every message is one event (a routine message may be a heartbeat, which is none)
        flood = [flooder.alarm(at.replace(second=i), rng) for i in range(30)]
        calm = [quiet.alarm(at.replace(second=i), rng) for i in range(5)]
        for sim, messages in ((flooder, flood), (quiet, calm)):
            async with device_client(mosquitto.port, sim.device) as device:  # each with its own account
                for message in messages:
                    assert isinstance(message, MqttPublish)
                    await device.publish(message.topic, message.payload, qos=1)

        # the quiet device published last, after the broker acknowledged every flood message: once
        # its events are in, all are
        calm_ids = expected_event_ids(runner.config, calm)
        await runner.wait_for(lambda box: calm_ids <= set(box.event_ids()))
        with runner.outbox() as box:
            letters = box.dead_letters(limit=100)
            flooder_ids = set(expected_event_ids(runner.config, flood)) & set(box.event_ids())
        limited = [d for d in letters if d["reason"] == "rate_limited"]
        admitted = len(flood) - len(limited)
        assert 10 <= admitted <= 12  # the burst, and what refilled at 0.5/s meanwhile
        assert flooder_ids == expected_event_ids(runner.config, flood[:admitted])  # the first ones got in
        assert {d["device"] for d in limited} == {flooder.device.id}
        assert "messages/s" in str(limited[0]["detail"])
        assert not [d for d in letters if d["device"] == quiet.device.id]


async def test_retention_forgets_old_tombstones(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """At start (then hourly) delivered ids older than the de-duplication window are forgotten, newer kept."""
    config_path = sample_config(tmp_path, mosquitto.port, state="dedup_window_days = 7")
    config = load_config(config_path)
    sim = _sim("shed-mqtt")
    rng = random.Random(13)
    messages = [sim.alarm(datetime(2026, 6, 1, 10, 0, second=i, tzinfo=CST), rng) for i in range(2)]
    old_ids, new_ids = (expected_event_ids(config, [m]) for m in messages)
    intake = Intake(config, Pseudonymizer(b"k" * 32, config.compound.compound_id))
    config.state.dir.mkdir(parents=True, exist_ok=True)
    with Outbox(config.state.dir / "outbox.db", max_bytes=1 << 30) as box:
        for message in messages:
            assert isinstance(message, MqttPublish)
            outcome = intake.classify(
                IntakeItem("mqtt", RawMessage(message.payload, topic=message.topic), 1 << 20)
            )
            box.commit([outcome.operation])
        assert box.mark_delivered(sorted(old_ids | new_ids)) == len(old_ids | new_ids)
        settled = (datetime.now(UTC) - timedelta(days=8)).isoformat()
        box.db.execute(
            f"UPDATE events SET settled_at=? WHERE event_id IN ({','.join('?' * len(old_ids))})",
            (settled, *old_ids),
        )
        box.db.commit()
        assert old_ids | new_ids == set(box.event_ids("delivered"))
    async with gateway_in_process(config_path, mosquitto) as runner:
        await runner.wait_for(lambda box: not old_ids & set(box.event_ids("delivered")))
        with runner.outbox() as box:
            assert (
                set(box.event_ids("delivered")) == new_ids
            )  # inside the window: still recognised as re-sends
        async with aiohttp.ClientSession() as session, session.get(runner.http + "/metrics") as response:
            metrics = await response.text()
        assert metrics_value(metrics, "cgw_outbox_tombstones_purged_total") == len(old_ids)
