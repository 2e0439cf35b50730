"""Key persons and privacy: real photos through the real pipeline, matched inside the compound.

The district enrols one photo of identity A, publishes the list (retained on a real Mosquitto),
the gateway picks it up over its uplink, and a simulated face gate posts the fixture photos. A's
other photos must hit, B's and C's must not, the group photo must hit A only; the hits must reach
the district store as alarms; and nothing the gateway publishes may carry a face picture (other
than the cropped face of a hit) or any embedding.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import aiomqtt
import numpy as np
import pytest
from PIL import Image

from device_sims.broker import Mosquitto
from device_sims.devices import CST, HikAcsSim, HikAnprSim, UfaceSim
from device_sims.inventory import DISTRICT_ID, sample_devices
from device_sims.runner import Runner
from device_sims.scenarios import Step
from district.config import load_district_config
from district.ingester import run_ingester
from district.operations import OperationsDb
from district.operator_service import Caller, open_operator_service
from district.query_model import Role
from district.watchlist_admin import WatchListDb, publish, published_documents
from foundation.events import Event, EventKind, utc_now
from foundation.faces import analyse_bytes
from gateway.outbox import EventRow, Outbox, StoreEvents, WatchWork
from gateway.runtime import run_gateway
from gateway.watch_subjects import FACE_WORK, PICTURE_BACKLOG_COUNTER
from gateway.watchlists import WatchListRegistry
from tests.district_data import running
from tests.face_fixtures import face_fixtures
from tests.test_uplink_e2e import district_config, gateway_config, wait_until
from uplink.stores import sqlite_event_ids
from uplink.watchlist_document import (
    WatchList,
    WatchListRejected,
    decode_document,
    encode_document,
    encode_embedding,
)

FACES = face_fixtures()
A_OTHERS = ("obama2.jpg", "obama3.jpg", "obama-240p.jpg", "obama_partial_face.jpg")
NOT_A = ("biden.jpg", "biden2.jpg", "astronaut.png")
GROUP = "obama_and_biden.jpg"
MQTT_PHOTO = "obama3.jpg"
WATCHED_PLATE = "赣A12345"


def photo(name: str) -> tuple[bytes, str]:
    data = (FACES / name).read_bytes()
    return data, "image/png" if name.endswith(".png") else "image/jpeg"


def stored_events(path: Path) -> list[Event]:
    with sqlite3.connect(path) as db:
        return [Event.model_validate_json(body) for (body,) in db.execute("SELECT body FROM events")]


def stored_so_far(path: Path) -> list[Event]:
    """While polling: nothing until the store's file and its table exist (the store creates both)."""
    try:
        return stored_events(path) if path.exists() else []
    except sqlite3.OperationalError:  # the file is there, its table not yet
        return []


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@contextlib.asynccontextmanager
async def capture(broker: Mosquitto, into: list[tuple[str, bytes]]) -> AsyncIterator[None]:
    """Everything published on the district broker under the uplink prefix."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="egress-capture") as client:
        await client.subscribe("cgw/#", qos=1)

        async def take() -> None:
            async for message in client.messages:
                into.append((message.topic.value, bytes(message.payload)))

        task = asyncio.create_task(take(), name="egress-capture")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_watch_lists_match_inside_the_compound_and_only_hits_leave(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    config = gateway_config(tmp_path, mosquitto, district_broker)
    store_path = tmp_path / "district.db"
    district = district_config(tmp_path, district_broker, f'type = "sqlite"\npath = "{store_path}"')
    # the district enrols A from one photo and lists a plate, then publishes both lists (retained)
    lists = WatchListDb(tmp_path / "district-ops.db")
    await asyncio.to_thread(
        lists.enroll, "key-persons", "A-0001", [FACES / "obama.jpg"], "test subject", None
    )
    await asyncio.to_thread(lists.add_plate, "stolen-cars", WATCHED_PLATE, "盗抢车辆")
    documents = await asyncio.to_thread(published_documents, lists, district, [])
    lists.close()
    await publish(district, [(list_id, body) for list_id, body, _ in documents])

    egress: list[tuple[str, bytes]] = []
    async with (
        capture(district_broker, egress),
        running(lambda ready: run_ingester(district, ready=ready), "ingester"),
        running(lambda ready: run_gateway(config, ready=ready), "gateway"),
    ):
        held = config.state.dir / "watchlists"
        await wait_until(
            lambda: {p.name for p in held.glob("*.json")} == {"key-persons.json", "stolen-cars.json"}
        )
        devices = sample_devices()
        gate = HikAcsSim(devices[0])
        barrier = HikAnprSim(devices[3])
        rng = random.Random(5)
        at = datetime.now(CST) - timedelta(minutes=30)
        names = [*A_OTHERS, *NOT_A, GROUP]
        steps = [
            Step(gate, gate.face_seen(at + timedelta(seconds=i), rng, *photo(n))) for i, n in enumerate(names)
        ]
        # the MQTT face terminal's pictures (base64 inside its JSON) go through the same matcher
        terminal = UfaceSim(devices[2])
        steps.append(
            Step(terminal, terminal.face_seen(at + timedelta(seconds=30), rng, photo(MQTT_PHOTO)[0]))
        )
        steps.append(Step(barrier, barrier.plate_seen(at + timedelta(seconds=60), rng, WATCHED_PLATE)))
        steps.append(Step(barrier, barrier.plate_seen(at + timedelta(seconds=61), rng, "赣B54321")))
        runner = Runner(f"http://127.0.0.1:{config.http.port}", "127.0.0.1", mosquitto.port)
        report = await runner.run(steps)
        assert report.failed == 0
        assert len(report.acked) == len(steps)
        url = f"http://127.0.0.1:{config.http.port}"
        deadline = time.monotonic() + 120
        while await metric(url, "cgw_faces_pictures_analysed_total") < len(names) + 1:
            assert time.monotonic() < deadline, "pictures were not analysed in time"
            await asyncio.sleep(0.2)
        assert await metric(url, 'cgw_watchlist_version{kind="face",list_id="key-persons"}') == 1

        def hits_stored() -> bool:
            kinds = [e.kind for e in stored_so_far(store_path)]
            return kinds.count(EventKind.WATCHLIST_HIT) >= 6 and EventKind.VEHICLE_WATCH_HIT in kinds

        await wait_until(hits_stored, timeout=60)
        await asyncio.sleep(0.5)  # anything late would show up as an extra hit below

    events = stored_events(store_path)
    by_picture = {
        e.media[0].sha256: e.event_id
        for e in events
        if e.kind is EventKind.FACE_ACCESS and e.media and e.source.dialect == "hik-isapi-acs"
    }
    source_of = {
        event_id: name
        for name in names
        for sha, event_id in by_picture.items()
        if sha == hashlib.sha256(photo(name)[0]).hexdigest()
    }
    (mqtt_face,) = [e for e in events if e.kind is EventKind.FACE_ACCESS and e.source.dialect == "uface-mqtt"]
    source_of[mqtt_face.event_id] = f"mqtt:{MQTT_PHOTO}"
    face_hits = [e for e in events if e.kind is EventKind.WATCHLIST_HIT]
    # A's other photos (one of them also through the MQTT terminal) and the group photo hit A,
    # once each; B's and C's never
    matched = sorted(source_of[h.payload.source_event_id] for h in face_hits)  # type: ignore[union-attr]
    assert matched == sorted([*A_OTHERS, GROUP, f"mqtt:{MQTT_PHOTO}"])
    for hit in face_hits:
        payload = hit.payload
        assert payload.kind is EventKind.WATCHLIST_HIT
        assert payload.person_ref == "A-0001"
        assert payload.distance < payload.threshold == 0.6
        assert hit.severity.value == "critical"
        crop = base64.b64decode(payload.snapshot_jpeg_b64 or "")
        with Image.open(io.BytesIO(crop)) as image:
            assert image.format == "JPEG"
            assert max(image.size) <= 160  # the face, not the frame
    plate_hits = [e for e in events if e.kind is EventKind.VEHICLE_WATCH_HIT]
    assert [(h.payload.plate, h.payload.list_id) for h in plate_hits] == [(WATCHED_PLATE, "stolen-cars")]  # type: ignore[union-attr]

    # the district's operators see the hits among the alarms
    ops_path = tmp_path / "query-district.toml"
    ops_path.write_text(
        f'district_id = "{DISTRICT_ID}"\n[api]\nops_db = "{tmp_path}/query-ops.db"\n'
        f'[store]\ntype = "sqlite"\npath = "{store_path}"\n',
        encoding="utf-8",
    )
    query_config = load_district_config(ops_path)
    async with OperationsDb(query_config.api.ops_db) as ops, open_operator_service(query_config) as service:
        token = await ops.create_token("duty", Role.VIEWER, DISTRICT_ID, (), "test")
        window = {"start": (at - timedelta(hours=1)).isoformat(), "end": utc_now().isoformat()}
        alarms = (
            await service.handle(token, "alarms", {**window, "kinds": ["watchlist_hit"]}, Caller("cli", "t"))
        ).result
        assert len(alarms.alarms) == len(face_hits)
        assert {a.state.value for a in alarms.alarms} == {"new"}

    # egress: everything the gateway published (events, status), not what the district sent it
    published = [(t, p) for t, p in egress if "/watchlist/" not in t and "/receipt/" not in t]
    assert any(t.endswith("/watchlist_hit") for t, _ in published)
    embeddings = [face for name in names for face in analyse_bytes(photo(name)[0])]
    assert len(embeddings) == len(names) + 2 + 1  # the group photo has three faces, astronaut two
    for topic, sent in published:
        assert b"\xff\xd8\xff" not in sent, f"raw JPEG bytes on {topic}"
        assert b"\x89PNG" not in sent, f"raw PNG bytes on {topic}"
        if topic.endswith(("/status", "/registry/inventory")):
            continue  # the gateway's state and its device list: no events (no picture either, checked above)
        batch = json.loads(sent)
        for event in batch["events"]:
            body = json.dumps(event)
            if event["kind"] != "watchlist_hit":
                assert "/9j/" not in body, f"a base64 JPEG in a {event['kind']} event"
                assert "iVBORw0KGgo" not in body, f"a base64 PNG in a {event['kind']} event"
        for face in embeddings:
            raw = face.embedding
            assert raw[:16] not in sent
            assert base64.b64encode(raw)[:24] not in sent
            assert f"{float(face.vector()[0]):.6f}".encode() not in sent
            assert f"{float(face.vector()[1]):.6f}".encode() not in sent


async def test_hits_without_snapshots_persisted_lists_and_retention(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Policy off: a hit carries no picture. Lists held from an earlier run apply at start; old pictures go."""
    store_path = tmp_path / "district.db"
    config = gateway_config_direct(tmp_path, mosquitto, store_path)
    media = config.state.dir / "media"
    media.mkdir(parents=True)
    old, fresh = media / "00" / "old.jpg", media / "00" / "fresh.jpg"
    old.parent.mkdir()
    for path in (old, fresh):
        path.write_bytes(b"\xff\xd8\xff old picture")
    forty_days = time.time() - 40 * 86400
    os.utime(old, (forty_days, forty_days))
    held = config.state.dir / "watchlists"
    held.mkdir(parents=True)
    (held / "key-persons.json").write_bytes(encode_document(face_list(version=3)))

    async with running(lambda ready: run_gateway(config, ready=ready), "gateway"):
        await wait_until(lambda: not old.exists())
        assert fresh.exists()
        gate = HikAcsSim(sample_devices()[0])
        report = await Runner(f"http://127.0.0.1:{config.http.port}", "127.0.0.1", mosquitto.port).run(
            [
                Step(
                    gate,
                    gate.face_seen(
                        datetime.now(CST) - timedelta(minutes=5), random.Random(1), *photo("obama2.jpg")
                    ),
                )
            ]
        )
        assert report.failed == 0

        def hit() -> list[Event]:
            return [e for e in stored_so_far(store_path) if e.kind is EventKind.WATCHLIST_HIT]

        await wait_until(lambda: bool(hit()), timeout=60)
    (only,) = hit()
    # the installer's check reads the same held lists
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "watchlist",
            "check",
            "--config",
            str(tmp_path / "gateway.toml"),
            str(FACES / "obama2.jpg"),
            str(FACES / "biden.jpg"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert "HIT key-persons/A-0001" in checked[0]
    assert "no match" in checked[1]
    assert only.payload.snapshot_jpeg_b64 is None  # type: ignore[union-attr]
    assert only.media == ()
    assert only.payload.list_version == 3  # type: ignore[union-attr]
    assert len(sqlite_event_ids(store_path)) == 2  # the face event and its hit


def gateway_config_direct(tmp_path: Path, mosquitto: Mosquitto, store_path: Path):  # type: ignore[no-untyped-def]
    from gateway.config import load_config  # noqa: PLC0415
    from tests.conftest import sample_config  # noqa: PLC0415

    path = sample_config(tmp_path, mosquitto.port)
    text = path.read_text(encoding="utf-8")
    text = text.replace(
        "[state]\n",
        "[faces]\nsend_hit_snapshot = false\n\n[privacy]\nmedia_retention_days = 30\n\n[state]\n",
        1,
    )
    text += f'\n[uplink]\nmode = "direct"\nbatch_max_delay_ms = 20\n[uplink.store]\ntype = "sqlite"\npath = "{store_path}"\n'
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def face_list(version: int = 1, district: str = DISTRICT_ID) -> WatchList:
    (face,) = analyse_bytes((FACES / "obama.jpg").read_bytes())
    return WatchList.model_validate(
        {
            "district_id": district,
            "list_id": "key-persons",
            "version": version,
            "kind": "face",
            "issued_at": utc_now().isoformat(),
            "subjects": [{"subject_id": "A-0001", "embeddings": [encode_embedding(face.vector())]}],
        }
    )


def test_documents_are_integrity_checked_and_versions_only_move_forward(tmp_path: Path) -> None:
    registry = WatchListRegistry(tmp_path, DISTRICT_ID, 0.6)
    body = encode_document(face_list(version=2))
    assert registry.apply(body, "key-persons") == "applied"
    assert registry.apply(body, "key-persons") == "unchanged"
    tampered = body.replace(b'"A-0001"', b'"B-0002"')
    with pytest.raises(WatchListRejected, match="digest mismatch"):
        registry.apply(tampered, "key-persons")
    with pytest.raises(WatchListRejected, match="older"):
        registry.apply(encode_document(face_list(version=1)), "key-persons")
    with pytest.raises(WatchListRejected, match="district"):
        registry.apply(encode_document(face_list(version=5, district="36010300005000000001")), "key-persons")
    with pytest.raises(WatchListRejected, match="published as"):
        registry.apply(encode_document(face_list(version=6)), "other-list")
    with pytest.raises(WatchListRejected, match="not JSON"):
        registry.apply(b"\x00garbage", "key-persons")
    assert registry.rejected == 5
    assert registry.loaded.versions == {"key-persons": ("face", 2, 1)}
    # what is held survives a restart; withdrawing a list (empty retained message) removes it
    again = WatchListRegistry(tmp_path, DISTRICT_ID, 0.6)
    again.load_persisted()
    assert again.loaded.versions == {"key-persons": ("face", 2, 1)}
    assert again.apply(b"", "key-persons") == "removed"
    assert not list(tmp_path.glob("*.json"))
    assert decode_document(body, district_id=DISTRICT_ID).version == 2


def test_vectorized_distances_equal_the_plain_computation() -> None:
    rng = np.random.default_rng(7)
    subjects = [
        {"subject_id": f"S{i}", "embeddings": [encode_embedding(rng.normal(0, 0.1, 128).astype(np.float32))]}
        for i in range(300)
    ]
    watch_list = WatchList.model_validate(
        {
            "district_id": DISTRICT_ID,
            "list_id": "big",
            "version": 1,
            "kind": "face",
            "issued_at": utc_now().isoformat(),
            "subjects": subjects,
        }
    )
    registry = WatchListRegistry(Path("/nonexistent"), DISTRICT_ID, 0.6)
    from gateway.watchlists import FaceIndex  # noqa: PLC0415

    index = FaceIndex(watch_list, 0.6)
    probe = rng.normal(0, 0.1, 128).astype(np.float32)
    plain = np.array([np.linalg.norm(row - probe) for row in index.matrix])
    assert np.allclose(index.distances(probe), plain, atol=1e-4)
    assert registry.loaded.match_face(probe) == []


def test_picture_backlog_is_bounded_oldest_first(tmp_path: Path) -> None:
    """Shedding drops queued pictures (counted), never their events."""
    with Outbox(tmp_path / "outbox.db", max_bytes=1 << 30) as box:
        rows = [
            EventRow(
                f"e{i:02d}",
                "face_access",
                "info",
                False,
                "36010400011240000001",
                "2026-11-30T00:00:00+00:00",
                "2026-11-30T00:00:00+00:00",
                b"{}",
                WatchWork("face", f"aa/{i}.jpg", "in"),
            )
            for i in range(10)
        ]
        box.commit([StoreEvents(rows)])
        assert box.watch_shed(keep=3, kind=FACE_WORK, counted_as=PICTURE_BACKLOG_COUNTER) == 7
        assert [item.event_id for item in box.watch_items(10)] == ["e07", "e08", "e09"]
        assert len(box.event_ids("pending")) == 10
        assert box.stats().counters[("pictures_shed", "", "")] == 7
