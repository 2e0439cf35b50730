"""The ingester feeds the city queue at its commit: every stored vehicle and face event, once.

A compound's uplink batches go through a real Mosquitto to a real ingester writing a real SQLite
store; the city queue it fills is then read back and compared, as sets, with what the store holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import aiomqtt
from PIL import Image

from device_sims.broker import Mosquitto, free_port
from device_sims.inventory import COMPOUND_ID, DISTRICT_ID
from district.city.config import FacePolicy
from district.city.model import Category
from district.city.objects import event_objects
from district.city.queue import CityQueue
from district.config import DistrictConfig, load_district_config
from district.ingester import run_ingester
from foundation.events import Event, EventKind
from tests.city_events import (
    BARRIER,
    CITY_APE,
    ORG_CODE,
    TOLLGATE,
    ZONE,
    check_face,
    check_motor_vehicle,
    face_access,
    jpeg,
    vehicle_pass,
    watchlist_hit,
)
from tests.district_data import running
from tests.metrics import scrape, value
from tests.processes import IngesterProcess
from tests.test_city_objects import simulated_day
from uplink.protocol import DEFAULT_PREFIX, decode_receipt, encode_batch, event_topic, receipt_topic

CITY_KINDS = {EventKind.VEHICLE_PASS, EventKind.FACE_ACCESS, EventKind.WATCHLIST_HIT}


def feed_config(tmp_path: Path, broker: Mosquitto) -> DistrictConfig:
    """An ingester with a SQLite store and the ``[city]`` link enabled (default privacy policy)."""
    path = tmp_path / "district.toml"
    path.write_text(
        f'district_id = "{DISTRICT_ID}"\n[broker]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        f'[ingest]\nname = "i1"\ndead_letter_path = "{tmp_path}/ingest-i1.db"\nhttp_port = {free_port()}\n'
        f'[store]\ntype = "sqlite"\npath = "{tmp_path}/district.db"\n'
        f'[city]\nserver_url = "http://127.0.0.1:9"\nplatform_id = "36010400005030000001"\n'
        f'org_code = "{ORG_CODE}"\npassword = "secret"\nqueue_path = "{tmp_path}/city-queue.db"\n'
        f'[[city.devices]]\ndevice_id = "{BARRIER}"\nape_id = "{CITY_APE}"\ntollgate_id = "{TOLLGATE}"\n',
        encoding="utf-8",
    )
    return load_district_config(path)


def stored_events(path: Path) -> list[Event]:
    """Every event the district store holds."""
    with sqlite3.connect(path) as db:
        return [Event.model_validate_json(body) for (body,) in db.execute("SELECT body FROM events")]


async def uplink(broker: Mosquitto, rounds: Sequence[Sequence[Event]]) -> None:
    """Publish each round as a compound does (one batch per kind) and wait for every receipt."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="compound-city-feed") as client:
        await client.subscribe(receipt_topic(DEFAULT_PREFIX, DISTRICT_ID, COMPOUND_ID), qos=1)
        receipted: set[str] = set()

        async def receipts() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                receipted.update(decode_receipt(message.payload))

        listening = asyncio.create_task(receipts(), name="receipts")
        try:
            for events in rounds:
                receipted.clear()
                by_kind: dict[str, list[bytes]] = {}
                for event in events:
                    by_kind.setdefault(event.kind.value, []).append(event.model_dump_json().encode())
                for kind, bodies in by_kind.items():
                    for start in range(0, len(bodies), 100):
                        batch = encode_batch(DISTRICT_ID, COMPOUND_ID, bodies[start : start + 100])
                        await client.publish(
                            event_topic(DEFAULT_PREFIX, DISTRICT_ID, COMPOUND_ID, kind), batch, qos=1
                        )
                expected = {event.event_id for event in events}
                async with asyncio.timeout(60):
                    while not expected <= receipted:
                        await asyncio.sleep(0.05)
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening


def png() -> bytes:
    """A crop that is no JPEG: its object cannot be built."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, "PNG")
    return out.getvalue()


async def test_the_stored_events_are_queued_for_the_city_exactly_once(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """Stored vehicle and face events == queued sources; a redelivery adds nothing; a bad event is skipped.

    A simulated day (a late backlog: yesterday), a pass from 200 days ago, watch-list hits with a
    crop, without one, older than ``[retention] hit_crops_days`` with one (queued without it), and
    with a PNG crop that cannot become an object: that one is stored, counted as a build failure
    and not queued; everything else of the city's kinds is queued once, valid. Broken on purpose
    once more: with the ingester calling ``event_objects`` without ``crops_after``, the late hit
    was queued with its crop.
    Broken on purpose once: with the builder's ObjectBuildError no longer caught in the ingester,
    the PNG hit failed its round's commit over and over (reconnect, redelivery) and the receipts
    never came (the test's 60 s wait ran out).
    """
    config = feed_config(tmp_path, district_broker)
    assert config.city is not None
    now = datetime.now(UTC) - timedelta(minutes=1)
    day = simulated_day(tmp_path / "day")
    hits = [
        watchlist_hit(now, jpeg(64, 80)),
        watchlist_hit(now - timedelta(seconds=1), None),
        # a late hit older than [retention] hit_crops_days: the store strips its crop, so does the queue
        watchlist_hit(now - timedelta(days=config.retention.hit_crops_days, seconds=1), jpeg(64, 80)),
    ]
    broken = watchlist_hit(now - timedelta(seconds=2), png())
    old = vehicle_pass(now - timedelta(days=200), plate=None)
    first_round = [*day, *hits, broken, old]
    metrics = f"http://127.0.0.1:{config.ingest.http_port}/metrics"
    async with running(partial(run_ingester, config), "ingester"):
        await uplink(district_broker, [first_round])
        text, _ = await scrape(metrics)
        queued = value(text, "cgw_district_city_objects_queued_total")
        assert value(text, "cgw_district_city_build_failures_total") == 1
        # the same batches again (a gateway that lost its receipts): stored and queued already
        await uplink(district_broker, [[*hits, broken, old, *day[:50]]])
        text, _ = await scrape(metrics)
        assert value(text, "cgw_district_city_objects_queued_total") == queued
        assert value(text, "cgw_district_city_build_failures_total") == 2  # rebuilt, failed again
    stored = {event.event_id: event for event in stored_events(tmp_path / "district.db")}
    assert set(stored) == {event.event_id for event in first_round}
    expected = {e.event_id for e in stored.values() if e.kind in CITY_KINDS} - {broken.event_id}
    async with CityQueue(config.city.queue_path) as queue:
        objects = [q.obj for q in await queue.objects_after(0, list(Category), 100_000)]
        counts = await queue.counts()
    sources = [obj.source for obj in objects]
    assert len(sources) == len(set(sources)) == queued
    assert set(sources) == expected
    assert sum(counts.backlog.values()) == len(expected)
    for obj in objects:
        event = stored[obj.source]
        if obj.category is Category.MOTOR_VEHICLE:
            check_motor_vehicle(obj.body, event)
        else:
            check_face(obj.body, event)
            crops = obj.body.get("SubImageList")
            assert (crops is not None) == (obj.source == hits[0].event_id)


async def test_a_round_is_acknowledged_only_after_the_city_queue_has_its_objects(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """The queue's write lock held by another process: the round is stored, but no receipt goes out.

    Once the lock is released the objects are queued and only then is the round confirmed.
    Broken on purpose once: with the feed moved after the receipts (``commit`` sending them before
    ``_queue_for_city``), the receipt arrived while the queue was still locked.
    """
    config = feed_config(tmp_path, district_broker)
    assert config.city is not None
    now = datetime.now(UTC) - timedelta(minutes=1)
    events = [vehicle_pass(now - timedelta(seconds=n)) for n in range(5)]
    store_path = tmp_path / "district.db"
    async with CityQueue(config.city.queue_path):
        pass  # the file and its tables exist before the lock is taken
    blocker = sqlite3.connect(config.city.queue_path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    locked = True
    try:
        async with (
            running(partial(run_ingester, config), "ingester"),
            aiomqtt.Client("127.0.0.1", district_broker.port, identifier="compound-city-lock") as client,
        ):
            await client.subscribe(receipt_topic(DEFAULT_PREFIX, DISTRICT_ID, COMPOUND_ID), qos=1)
            receipted: set[str] = set()

            async def receipts() -> None:
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    receipted.update(decode_receipt(message.payload))

            listening = asyncio.create_task(receipts(), name="receipts")
            try:
                batch = encode_batch(DISTRICT_ID, COMPOUND_ID, [e.model_dump_json().encode() for e in events])
                topic = event_topic(DEFAULT_PREFIX, DISTRICT_ID, COMPOUND_ID, "vehicle_pass")
                await client.publish(topic, batch, qos=1)
                async with asyncio.timeout(30):
                    while not store_path.exists() or len(stored_events(store_path)) < len(events):
                        await asyncio.sleep(0.05)
                # stored; the queue is locked, so the round cannot be confirmed yet
                assert receipted == set()
                assert blocker.execute("SELECT COUNT(*) FROM objects").fetchone()[0] == 0
                blocker.execute("ROLLBACK")
                locked = False
                async with asyncio.timeout(60):
                    while receipted != {e.event_id for e in events}:
                        await asyncio.sleep(0.05)
                queued = {row[0] for row in blocker.execute("SELECT source FROM objects")}
                assert queued == {e.event_id for e in events}
            finally:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening
    finally:
        if locked:
            blocker.execute("ROLLBACK")
        blocker.close()


async def test_an_ingester_with_the_city_link_disabled_queues_nothing(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """``[city] enabled = false``: the events are stored and confirmed, no queue file is even made.

    Broken on purpose once: with the queue opened whenever ``[city]`` is present, the queue file
    existed after the run.
    """
    config = feed_config(tmp_path, district_broker)
    assert config.city is not None
    disabled = config.city.model_copy(update={"enabled": False})
    config = config.model_copy(update={"city": disabled})
    now = datetime.now(UTC) - timedelta(minutes=1)
    events = [vehicle_pass(now - timedelta(seconds=n)) for n in range(5)]
    async with running(partial(run_ingester, config), "ingester"):
        await uplink(district_broker, [events])
    assert {e.event_id for e in stored_events(tmp_path / "district.db")} == {e.event_id for e in events}
    assert not disabled.queue_path.exists()


async def test_an_ingester_killed_between_the_store_and_the_queue_loses_nothing_for_the_city(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """SIGKILL after the store confirmed a round and before the queue had it: queued after the restart.

    The queue's lock is held so the kill lands provably in that window (the store has the events,
    the queue has none, no receipt went out); the restarted ingester gets the round again from its
    persistent session, the store ignores the copies, and the queue takes the objects: queued ==
    stored, as sets. A later round flows as usual. Broken on purpose once: with the queue's add
    started as a background task (the round acknowledged without waiting for it), the killed
    round was never redelivered and the queue never reached the 25 objects (timeout).
    """
    config = feed_config(tmp_path, district_broker)
    assert config.city is not None
    now = datetime.now(UTC) - timedelta(minutes=1)
    first = [vehicle_pass(now - timedelta(seconds=n)) for n in range(20)]
    second = [vehicle_pass(now - timedelta(seconds=100 + n)) for n in range(5)]
    store_path = tmp_path / "district.db"
    async with CityQueue(config.city.queue_path):
        pass
    ingester = IngesterProcess(tmp_path / "district.toml", tmp_path / "ingester.log")
    blocker = sqlite3.connect(config.city.queue_path, isolation_level=None, timeout=0)
    await ingester.start()
    try:
        blocker.execute("BEGIN IMMEDIATE")
        try:
            async with aiomqtt.Client(
                "127.0.0.1", district_broker.port, identifier="compound-kill"
            ) as client:
                batch = encode_batch(DISTRICT_ID, COMPOUND_ID, [e.model_dump_json().encode() for e in first])
                topic = event_topic(DEFAULT_PREFIX, DISTRICT_ID, COMPOUND_ID, "vehicle_pass")
                await client.publish(topic, batch, qos=1)
            async with asyncio.timeout(30):
                while not store_path.exists() or len(stored_events(store_path)) < len(first):
                    await asyncio.sleep(0.05)
            assert blocker.execute("SELECT COUNT(*) FROM objects").fetchone()[0] == 0
            ingester.kill()
        finally:
            blocker.execute("ROLLBACK")
        await ingester.start()
        await uplink(district_broker, [second])
        async with asyncio.timeout(30):
            while blocker.execute("SELECT COUNT(*) FROM objects").fetchone()[0] < len(first) + len(second):
                await asyncio.sleep(0.05)
    finally:
        ingester.stop()
        blocker.close()
    stored = {e.event_id for e in stored_events(store_path)}
    async with CityQueue(config.city.queue_path) as queue:
        queued = [q.obj.source for q in await queue.objects_after(0, [Category.MOTOR_VEHICLE], 1000)]
    assert len(queued) == len(set(queued))
    assert set(queued) == stored == {e.event_id for e in first + second}


async def test_an_ingester_applies_a_stricter_privacy_policy_to_what_was_queued_before(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """A queue filled under the default policy; an ingester started under a stricter one rewrites it.

    ``face_passes = "off"`` and ``watchlist_hits = "records"``: after the ingester's start the face
    pass is gone from the queue and the hit has no crop, in the file too; its own new hit is queued
    without one. Broken on purpose once: with the ``apply_policy`` call left out of
    ``run_ingester``, the face pass queued before was still there.
    """
    config = feed_config(tmp_path, district_broker)
    assert config.city is not None
    now = datetime.now(UTC) - timedelta(minutes=1)
    crop = jpeg(64, 80)
    lax = config.city
    gate, hit = face_access(now), watchlist_hit(now, crop)
    async with CityQueue(lax.queue_path) as queue:
        queued = [*event_objects(gate, lax, ZONE), *event_objects(hit, lax, ZONE)]
        assert await queue.add(queued) == 2
        assert "SubImageList" in queued[1].body
    strict = lax.model_copy(
        update={
            "privacy": lax.privacy.model_copy(
                update={"face_passes": FacePolicy.OFF, "watchlist_hits": FacePolicy.RECORDS}
            )
        }
    )
    config = config.model_copy(update={"city": strict})
    later = watchlist_hit(now + timedelta(seconds=1), crop)
    async with running(partial(run_ingester, config), "ingester"):
        await uplink(district_broker, [[later]])
    async with CityQueue(lax.queue_path) as queue:
        left = await queue.objects_after(0, list(Category), 100)
    assert {(q.obj.source, "SubImageList" in q.obj.body) for q in left} == {
        (hit.event_id, False),
        (later.event_id, False),
    }
    assert base64.b64encode(crop)[-200:-100] not in lax.queue_path.read_bytes()
