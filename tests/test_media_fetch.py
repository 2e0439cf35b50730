"""Evidence collection in the compound: a thrown-object alarm's files fetched from the camera.

Real Mosquitto (with the compound's accounts), the gateway in process, the simulated cameras'
download API (``device_sims.media_server``) with digest auth; the expected bytes come from
``media_bytes``, never from the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from device_sims.broker import Mosquitto, free_port
from device_sims.devices import CST, HighTossSim, HikAcsSim, HttpPost, MqttPublish, SimDevice
from device_sims.inventory import sample_device_secrets, sample_devices, write_sample_config
from device_sims.media_server import MediaServer, media_bytes
from device_sims.push_client import post
from gateway.broker_accounts import build_broker_accounts
from gateway.config import load_config
from gateway.device_secrets import DeviceSecrets, write_device_secrets
from gateway.evidence_catalog import FetchState
from gateway.outbox import OutboxReader
from gateway.outbox.media_index import FetchedFile
from tests.conftest import RunningGateway, device_client, gateway_in_process
from tests.metrics import scrape, value

CAM1 = next(d for d in sample_devices() if d.dialect == "hightoss-mqtt")
CAM2 = SimDevice(id="36010400011320000002", dialect="hightoss-mqtt", ref="6J0C5A2PAZ0002")
ROLES = {"snapshot", "trajectory", "clip"}
CLIP_BYTES = 1024 * 1024 + 12345  # several read chunks, quick to serve
FAST = "\n[evidence.fetch]\nretry_initial_s = 0.05\nretry_max_s = 0.2\npoll_s = 0.05\ntimeout_s = 20\n"


@dataclass
class Compound:
    """The config, its broker, and the cameras' servers."""

    config_path: Path
    broker: Mosquitto
    servers: dict[str, MediaServer]


@contextlib.asynccontextmanager
async def compound(
    tmp_path: Path,
    *,
    cameras: tuple[SimDevice, ...] = (CAM1,),
    fetch: str = "",
    served: dict[str, SimDevice] | None = None,
) -> AsyncIterator[Compound]:
    """A sample compound whose thrown-object cameras (CAM1, optionally CAM2) have a download API.

    ``served``: the identity a camera's server checks (a wrong secret there gives 401s).
    """
    served = served or {}
    servers = {c.id: MediaServer(served.get(c.id, c), clip_bytes=CLIP_BYTES) for c in cameras}
    port = free_port()
    path = write_sample_config(
        tmp_path / "gateway.toml",
        state_dir=tmp_path / "state",
        http_port=free_port(),
        mqtt_port=port,
        media_url=servers[CAM1.id].url,
    )
    text = path.read_text(encoding="utf-8")
    base = sample_device_secrets()
    devices = dict(base.devices)
    if CAM2 in cameras:
        text += (
            f'\n[[devices]]\nid = "{CAM2.id}"\nname = "8幢高空抛物"\ndialect = "hightoss-mqtt"\n'
            f'ref = "{CAM2.ref}"\nmedia_url = "{servers[CAM2.id].url}"\n'
        )
        devices[CAM2.id] = SecretStr(CAM2.secret)
    path.write_text(text + FAST + fetch, encoding="utf-8")
    secrets = DeviceSecrets(gateway=base.gateway, devices=devices, platforms=base.platforms)
    write_device_secrets(tmp_path / "gateway-secrets.toml", secrets)
    config = load_config(path)
    broker = Mosquitto(
        tmp_path / "broker", accounts=build_broker_accounts(config, secrets), port=port
    ).start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            for server in servers.values():
                await stack.enter_async_context(server)
            yield Compound(path, broker, servers)
    finally:
        broker.stop()


async def raise_alarm(broker: Mosquitto, camera: SimDevice, seed: int = 1) -> dict[str, str]:
    """The camera publishes one thrown-object alarm; the keys it names, by role."""
    sim = HighTossSim(camera)
    alarm = sim.alarm(datetime.now(CST), random.Random(seed))
    assert isinstance(alarm, MqttPublish)
    async with device_client(broker.port, camera) as client:
        await client.publish(alarm.topic, alarm.payload, qos=1)
    return HighTossSim.media_keys(alarm)


def query(gateway: RunningGateway, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows of the outbox file, through a connection of its own."""
    with gateway.outbox() as box:
        return list(box.db.execute(sql, args).fetchall())


async def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``check`` until true, or fail."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


def fetch_states(gateway: RunningGateway, device_id: str = CAM1.id) -> dict[str, tuple[str, int, str | None]]:
    """Per role: (state, attempts, detail) of one camera's fetch rows."""
    rows = query(
        gateway, "SELECT role, state, attempts, detail FROM media_fetch WHERE device_id=?", device_id
    )
    return {str(r): (str(s), int(str(a)), None if d is None else str(d)) for r, s, a, d in rows}


def settled(gateway: RunningGateway, device_id: str = CAM1.id) -> bool:
    """Every fetch of the camera is fetched or failed."""
    states = fetch_states(gateway, device_id)
    return len(states) == 3 and all(s != "pending" for s, _, _ in states.values())


async def test_alarm_media_fetched_indexed_announced(tmp_path: Path) -> None:
    """The three files land in the store with the camera's SHA-256, indexed, announced; the event is unchanged.

    Broken on purpose: (1) with the fetch-queue insert removed from ``record_event_media`` no row
    appears and the wait times out; (2) with ``PROACTIVE_ROLES`` including ``clip`` the proactive
    set has three roles, not two; (3) hashing only the first chunk (``sink.digest.update`` moved
    out of the loop) makes the clip's SHA-256 differ from ``media_bytes`` (all three seen failing).
    """
    async with compound(tmp_path) as c, gateway_in_process(c.config_path, c.broker) as gateway:
        keys = await raise_alarm(c.broker, CAM1)
        await wait_until(lambda: bool(query(gateway, "SELECT 1 FROM events WHERE kind='thrown_object'")))
        [(event_id, body_first)] = query(
            gateway, "SELECT event_id, body FROM events WHERE kind='thrown_object'"
        )
        await wait_until(lambda: settled(gateway))
        assert {r: s for r, (s, _, _) in fetch_states(gateway).items()} == dict.fromkeys(ROLES, "fetched")

        index = query(
            gateway,
            "SELECT role, path, sha256, size, content_type, kind, device_id, dialect, severity, evidence"
            " FROM media_index WHERE event_id=?",
            event_id,
        )
        expected = {role: media_bytes(key, CLIP_BYTES) for role, key in keys.items()}
        assert {row[0] for row in index} == ROLES
        for role, path, sha, size, content_type, kind, device, dialect, severity, evidence in index:
            data, ctype = expected[str(role)]
            stored = (gateway.config.state.dir / "media" / str(path)).read_bytes()
            assert hashlib.sha256(stored).hexdigest() == sha == hashlib.sha256(data).hexdigest()
            assert (size, content_type) == (len(data), ctype)
            assert (kind, device, dialect, severity, evidence) == (
                "thrown_object",
                CAM1.id,
                "hightoss-mqtt",
                "critical",
                1,
            )
            assert str(path) == f"{sha[:2]}/{sha}{'.mp4' if role == 'clip' else '.jpg'}"
        manifest = query(gateway, "SELECT event_id, role FROM media_manifest")
        proactive = query(gateway, "SELECT event_id, role FROM media_proactive")
        assert sorted(manifest) == sorted((event_id, r) for r in ROLES)
        assert sorted(proactive) == sorted((event_id, r) for r in ("snapshot", "trajectory"))
        [(body_now,)] = query(gateway, "SELECT body FROM events WHERE event_id=?", event_id)
        assert body_now == body_first  # events are immutable: fetched files never touch the body
        refs = json.loads(bytes(body_now))["media"]
        assert {(m["role"], m["ref"], m["sha256"]) for m in refs} == {
            (role, f"device:{key}", None) for role, key in keys.items()
        }
        # no temporary file is left behind
        assert not list((gateway.config.state.dir / "media").glob(".tmp-*"))

        async with OutboxReader(gateway.config.state.dir / "outbox.db", max_bytes=10**9) as reader:
            media = await reader.catalog.event_media(str(event_id))
            assert media is not None
            assert {s.item.role for s in media.stored} == ROLES
            assert {f.state for f in media.fetches} == {FetchState.FETCHED}
            assert not media.fetching
            window = await reader.catalog.window_media(
                CAM1.id, media.occurred_at.replace(microsecond=0), media.occurred_at.replace(year=2100), 10
            )
            assert [m.event_id for m in window] == [event_id]
            pending = await reader.catalog.proactive_pending(10)
            assert {o.media.item.role for o in pending} == {"snapshot", "trajectory"}
            await reader.catalog.proactive_sent([o.key for o in pending])
            assert await reader.catalog.proactive_pending(10) == []

        text, _ = await scrape(f"{gateway.http}/metrics")
        assert value(text, "cgw_media_fetch_total", outcome="fetched") == 3
        assert value(text, "cgw_media_fetch_bytes_total") == sum(len(d) for d, _ in expected.values())


async def test_retries_after_server_errors(tmp_path: Path) -> None:
    """Two 500s are retried with backoff; every file arrives; the attempts add up.

    Broken on purpose: treating 5xx as final (``_check_status`` raising ``_GiveUpError`` for them)
    leaves two rows ``failed: http_500`` (seen failing).
    """
    async with compound(tmp_path) as c:
        c.servers[CAM1.id].fail_first = 2
        async with gateway_in_process(c.config_path, c.broker) as gateway:
            await raise_alarm(c.broker, CAM1)
            await wait_until(lambda: settled(gateway))
            states = fetch_states(gateway)
            assert {s for s, _, _ in states.values()} == {"fetched"}
            assert sum(a for _, a, _ in states.values()) == 3 + 2
            text, _ = await scrape(f"{gateway.http}/metrics")
            assert value(text, "cgw_media_fetch_total", outcome="retried") == 2


async def test_missing_file_fails_at_once_with_reason(tmp_path: Path) -> None:
    """A 404 is given up after one request, with the reason a requester sees; the others arrive.

    Broken on purpose: a 404 treated as retryable asks the camera for the clip ``attempts`` times
    (seen failing).
    """
    async with (
        compound(tmp_path, fetch="attempts = 5\n") as c,
        gateway_in_process(c.config_path, c.broker) as gateway,
    ):
        server = c.servers[CAM1.id]
        sim_keys = HighTossSim.media_keys(HighTossSim(CAM1).alarm(datetime.now(CST), random.Random(1)))
        server.missing.add(sim_keys["clip"])
        keys = await raise_alarm(c.broker, CAM1)
        await wait_until(lambda: settled(gateway))
        states = fetch_states(gateway)
        assert states["clip"][0:2] == ("failed", 1)
        assert (states["clip"][2] or "").startswith("not_found")
        assert {states["snapshot"][0], states["trajectory"][0]} == {"fetched"}
        assert server.requests.count(keys["clip"]) == 1
        [(event_id,)] = query(gateway, "SELECT event_id FROM events WHERE kind='thrown_object'")
        async with OutboxReader(gateway.config.state.dir / "outbox.db", max_bytes=10**9) as reader:
            media = await reader.catalog.event_media(str(event_id))
        assert media is not None
        failed = [f for f in media.fetches if f.state is FetchState.FAILED]
        assert [(f.role, (f.detail or "")[:9]) for f in failed] == [("clip", "not_found")]


async def test_oversized_refused_and_short_body_retried(tmp_path: Path) -> None:
    """A clip over ``max_file_bytes`` is refused from its Content-Length; a body cut short is retried, then failed.

    Broken on purpose: without the Content-Length check the clip is streamed until the bound and
    the reason reads "more than ... streamed", not "declares"; a broken body (``ClientPayloadError``)
    taken as final fails the trajectory after one attempt, not three (both seen failing).
    """
    async with (
        compound(tmp_path, fetch="max_file_bytes = 1048576\nattempts = 3\n") as c,
        gateway_in_process(c.config_path, c.broker) as gateway,
    ):
        sim_keys = HighTossSim.media_keys(HighTossSim(CAM1).alarm(datetime.now(CST), random.Random(1)))
        c.servers[CAM1.id].truncate.add(sim_keys["trajectory"])
        await raise_alarm(c.broker, CAM1)
        await wait_until(lambda: settled(gateway))
        states = fetch_states(gateway)
        assert states["clip"][0:2] == ("failed", 1)
        assert (states["clip"][2] or "").startswith("too_large: the device declares")
        assert states["trajectory"][0:2] == ("failed", 3)
        assert "short_body" in (states["trajectory"][2] or "")
        assert states["snapshot"][0] == "fetched"
        assert {str(r) for (r,) in query(gateway, "SELECT role FROM media_index")} == {"snapshot"}
        assert not list((gateway.config.state.dir / "media").glob(".tmp-*"))


async def test_unsized_body_aborted_past_the_bound(tmp_path: Path) -> None:
    """A clip sent without Content-Length is counted while it streams and aborted past ``max_file_bytes``.

    Broken on purpose: without the byte count in ``_stream_into`` the 1 MiB bound is ignored and
    the clip is stored as ``fetched`` (seen failing).
    """
    async with compound(tmp_path, fetch="max_file_bytes = 1048576\n") as c:
        sim_keys = HighTossSim.media_keys(HighTossSim(CAM1).alarm(datetime.now(CST), random.Random(1)))
        c.servers[CAM1.id].unsized.add(sim_keys["clip"])
        async with gateway_in_process(c.config_path, c.broker) as gateway:
            await raise_alarm(c.broker, CAM1)
            await wait_until(lambda: settled(gateway))
            states = fetch_states(gateway)
            assert states["clip"][0:2] == ("failed", 1)
            assert (states["clip"][2] or "").startswith("too_large: more than 1048576 bytes streamed")
            assert {states["snapshot"][0], states["trajectory"][0]} == {"fetched"}
            assert not list((gateway.config.state.dir / "media").glob(".tmp-*"))
            assert not list((gateway.config.state.dir / "media").glob("*/*.mp4"))


async def test_wrong_password_is_401_counted_and_retried(tmp_path: Path) -> None:
    """A camera that does not accept the gateway's secret: 401s, counted, the rows wait (pending).

    Broken on purpose: the server checking the real secret (``served`` left out) fetches everything
    and the wait for 401s times out (seen failing).
    """
    wrong = SimDevice(id=CAM1.id, dialect=CAM1.dialect, ref=CAM1.ref, password="not-the-secret")
    async with (
        compound(tmp_path, served={CAM1.id: wrong}, fetch="attempts = 50\n") as c,
        gateway_in_process(c.config_path, c.broker) as gateway,
    ):
        await raise_alarm(c.broker, CAM1)
        await wait_until(lambda: c.servers[CAM1.id].unauthorized >= 2)
        states = fetch_states(gateway)
        assert {s for s, _, _ in states.values()} == {"pending"}
        assert any((d or "").startswith("unauthorized") for _, _, d in states.values())
        text, _ = await scrape(f"{gateway.http}/metrics")
        assert value(text, "cgw_media_fetch_unauthorized_total") >= 2
        assert value(text, "cgw_media_fetch_pending") == 3
        assert c.servers[CAM1.id].requests == []  # nothing was served without the right digest


async def test_hung_camera_does_not_delay_another(tmp_path: Path) -> None:
    """CAM1 answers after 30 s; CAM2's three files arrive within seconds meanwhile.

    Broken on purpose: with ``concurrency = 1`` the fetcher sits on CAM1's download and CAM2's
    files do not arrive within the 10 s wait (seen failing).
    """
    async with compound(tmp_path, cameras=(CAM1, CAM2)) as c:
        c.servers[CAM1.id].delay_s = 30.0
        async with gateway_in_process(c.config_path, c.broker) as gateway:
            await raise_alarm(c.broker, CAM1)
            await wait_until(lambda: len(fetch_states(gateway, CAM1.id)) == 3)
            await asyncio.sleep(0.3)  # CAM1's first download is under way
            await raise_alarm(c.broker, CAM2, seed=2)
            await wait_until(lambda: settled(gateway, CAM2.id), timeout=10)
            assert {s for s, _, _ in fetch_states(gateway, CAM2.id).values()} == {"fetched"}
            assert {s for s, _, _ in fetch_states(gateway, CAM1.id).values()} == {"pending"}
            # the hung camera's event is listed, still fetching, though none of its files is there yet
            async with OutboxReader(gateway.config.state.dir / "outbox.db", max_bytes=10**9) as reader:
                now = datetime.now(CST)
                window = await reader.catalog.window_media(
                    CAM1.id, now.replace(year=now.year - 1), now.replace(year=now.year + 1), 10
                )
            assert [(len(m.stored), m.fetching) for m in window] == [(0, True)]


async def test_restart_resumes_the_queue(tmp_path: Path) -> None:
    """Rows queued while the camera fails survive a gateway restart and are fetched after it.

    Broken on purpose: ``due_fetches`` picking only rows never tried (``AND attempts = 0``), as a
    queue that forgets what the previous run was doing, leaves them pending after the restart and
    the second wait times out (seen failing).
    """
    async with compound(tmp_path, fetch="attempts = 100\n") as c:
        server = c.servers[CAM1.id]
        server.fail_first = 10_000
        async with gateway_in_process(c.config_path, c.broker) as gateway:
            await raise_alarm(c.broker, CAM1)
            await wait_until(lambda: len(server.requests) >= 3)
        states = fetch_states(gateway)
        assert {s for s, _, _ in states.values()} == {"pending"}
        server.fail_first = 0
        async with gateway_in_process(c.config_path, c.broker) as gateway:
            await wait_until(lambda: settled(gateway))
            assert {s for s, _, _ in fetch_states(gateway).values()} == {"fetched"}
            assert len(query(gateway, "SELECT 1 FROM media_index")) == 3


def test_media_index_tables_exist_in_schema(tmp_path: Path) -> None:
    """The outbox file carries the media tables (created with the rest of the schema)."""
    from gateway.outbox import Outbox  # noqa: PLC0415 - only this test opens the file directly

    with Outbox(tmp_path / "outbox.db", max_bytes=10**6) as box:
        names = {r[0] for r in box.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"media_index", "media_fetch", "media_manifest", "media_proactive"} <= names


async def test_inline_pictures_indexed_with_their_event(tmp_path: Path) -> None:
    """A face-gate push's picture is indexed in the intake's transaction: routine, with its hash.

    Broken on purpose: ``record_event_media`` skipping ``local:`` references leaves no index row
    for the stored picture (seen failing).
    """
    gate = next(d for d in sample_devices() if d.dialect == "hik-isapi-acs")
    async with compound(tmp_path) as c, gateway_in_process(c.config_path, c.broker) as gateway:
        message = HikAcsSim(gate).routine(datetime.now(CST), random.Random(3))
        assert isinstance(message, HttpPost)
        async with aiohttp.ClientSession() as session:
            status, _ = await post(session, gateway.http, message)
        assert status == 200
        [(event_id, body)] = query(gateway, "SELECT event_id, body FROM events WHERE kind='face_access'")
        refs = {m["role"]: m for m in json.loads(bytes(body))["media"]}
        index = query(
            gateway,
            "SELECT role, path, sha256, size, evidence, device_id FROM media_index WHERE event_id=?",
            event_id,
        )
        assert {(r, f"local:{p}", s, n, e, d) for r, p, s, n, e, d in index} == {
            (role, m["ref"], m["sha256"], m["size"], 0, gate.id) for role, m in refs.items()
        }
        assert index
        assert query(gateway, "SELECT 1 FROM media_fetch") == []


async def test_a_long_content_type_from_a_device_does_not_poison_the_catalog(tmp_path: Path) -> None:
    """A device's Content-Type longer than the contract's 64 characters is indexed as octet-stream.

    ``MediaItem.content_type`` is a ``Code`` (at most 64): kept as the device sent it, the row made
    every catalog read of that event, and every manifest and proactive batch behind it, fail
    forever, so no alarm picture went up any more. Broken on purpose: ``fetch_done`` keeping
    ``stored.content_type`` as sent (``event_media`` raised a ValidationError).
    """
    event_id = "evt-long-ctype-1"
    async with OutboxReader(tmp_path / "outbox.db", max_bytes=10**9) as reader:
        with contextlib.closing(sqlite3.connect(tmp_path / "outbox.db")) as db, db:
            db.execute(
                "INSERT INTO media_fetch (event_id, role, key, kind, device_id, dialect, severity,"
                " occurred_at, queued_at) VALUES (?, 'snapshot', 'k/1.jpg', 'thrown_object', ?,"
                " 'hightoss-mqtt', 'critical', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
                (event_id, CAM1.id),
            )
            [(seq,)] = db.execute("SELECT seq FROM media_fetch").fetchall()
        sha = hashlib.sha256(b"x").hexdigest()
        await reader.fetch_done(seq, FetchedFile(f"{sha[:2]}/{sha}.bin", sha, 1, "image/" + "x" * 80))
        media = await reader.catalog.event_media(event_id)
        assert media is not None
        assert [(s.item.role, s.item.content_type) for s in media.stored] == [
            ("snapshot", "application/octet-stream")
        ]
        assert [o.media.item.sha256 for o in await reader.catalog.manifest_pending(10)] == [sha]
        assert [o.media.item.sha256 for o in await reader.catalog.proactive_pending(10)] == [sha]
