"""The city queue: unique by source, sent as stored, settled by the city's answer, durable."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import sqlite3
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image

from device_sims.inventory import COMPOUND_ID
from district.city.model import Category, CityObject, LinkState, ObjectResult, Outcome
from district.city.objects import DeviceForCity, ape_object, event_objects
from district.city.queue import CityQueue, read_status
from tests.city_events import (
    BARRIER,
    CITY_APE,
    FACE_GATE,
    ZONE,
    city_config,
    face_access,
    image_ids_of,
    jpeg,
    vehicle_pass,
    watchlist_hit,
)

CITY = city_config()
START = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


def vehicles(count: int, start: datetime = START) -> list[CityObject]:
    """``count`` MotorVehicle objects of passes a minute apart."""
    return [
        obj
        for n in range(count)
        for obj in event_objects(vehicle_pass(start + timedelta(minutes=n)), CITY, ZONE)
    ]


async def all_due(queue: CityQueue, now: datetime, category: Category = Category.MOTOR_VEHICLE) -> list[str]:
    """The object ids due at ``now``, in the order taken."""
    return [q.obj.object_id for q in await queue.take(category, 10_000, now)]


async def test_adding_is_idempotent_by_source_and_an_object_is_sent_as_first_stored(tmp_path: Path) -> None:
    """The same events added again, also rebuilt, add nothing; what is taken is what was first stored.

    Broken on purpose once: with the ``(category, source)`` check left out of ``_add``, the second
    add raised IntegrityError (UNIQUE objects.category, objects.source) instead of adding nothing.
    """
    objects = vehicles(5)
    async with CityQueue(tmp_path / "q.db") as queue:
        assert await queue.add(objects) == 5
        assert await queue.add(objects) == 0
        assert await queue.add(list(reversed(objects))) == 0
        counts = await queue.counts()
        assert counts.backlog == {"MotorVehicle": 5}
        assert (counts.refused, counts.parked, counts.accepted) == ({}, {}, {})
        assert counts.oldest_pending_at == START
        taken = await queue.take(Category.MOTOR_VEHICLE, 100, START)
        assert [q.obj for q in taken] == objects
        assert [q.attempts for q in taken] == [0] * 5
        assert await queue.take(Category.FACE, 100, START) == []


async def test_settling_accepted_refused_and_unanswered(tmp_path: Path) -> None:
    """Accepted never again; refused kept with its reason and due after the retry; unanswered at once.

    Broken on purpose once: with ``settle`` treating UNANSWERED like REFUSED, the unanswered object
    was missing from the take right after.
    """
    objects = vehicles(4)
    now = START + timedelta(hours=1)
    async with CityQueue(tmp_path / "q.db", refused_retry_s=60, refused_max_attempts=5) as queue:
        await queue.add(objects)
        taken = await queue.take(Category.MOTOR_VEHICLE, 3, now)
        assert [q.obj.object_id for q in taken] == [o.object_id for o in objects[:3]]
        accepted, refused, unanswered = taken
        await queue.settle(
            [
                ObjectResult(accepted.seq, Outcome.ACCEPTED),
                ObjectResult(refused.seq, Outcome.REFUSED, "4 PlateNo invalid"),
                ObjectResult(unanswered.seq, Outcome.UNANSWERED, "timeout"),
            ],
            now,
        )
        again = await queue.take(Category.MOTOR_VEHICLE, 10, now)
        assert [(q.obj, q.attempts) for q in again] == [(unanswered.obj, 0), (objects[3], 0)]
        later = await queue.take(Category.MOTOR_VEHICLE, 10, now + timedelta(seconds=60))
        assert [(q.obj, q.attempts) for q in later] == [
            (refused.obj, 1),
            (unanswered.obj, 0),
            (objects[3], 0),
        ]
        counts = await queue.counts()
        assert counts.backlog == {"MotorVehicle": 3}
        assert counts.refused == {"MotorVehicle": 1}
        assert counts.accepted == {"MotorVehicle": 1}
        assert counts.oldest_pending_at == objects[1].occurred_at
        [refusal] = await queue.refusals()
        assert (refusal.object_id, refusal.reason, refusal.attempts, refusal.parked) == (
            refused.obj.object_id,
            "4 PlateNo invalid",
            1,
            False,
        )
        # an answer for an object already accepted changes nothing
        await queue.settle([ObjectResult(accepted.seq, Outcome.REFUSED, "late")], now)
        assert accepted.obj.object_id not in await all_due(queue, now + timedelta(days=1))
        # a refused object accepted at its retry is no longer a refusal
        await queue.settle([ObjectResult(refused.seq, Outcome.ACCEPTED)], now + timedelta(seconds=60))
        counts = await queue.counts()
        assert (counts.backlog, counts.refused, counts.accepted) == (
            {"MotorVehicle": 2},
            {},
            {"MotorVehicle": 2},
        )


async def test_an_object_refused_max_attempts_times_is_parked(tmp_path: Path) -> None:
    """Three refusals park an object: shown with its reason, never taken again, counted as parked.

    Broken on purpose once: with the park condition ``attempts + 1 > ?`` the object was still taken
    after its third refusal.
    """
    [obj] = vehicles(1)
    now = START
    async with CityQueue(tmp_path / "q.db", refused_retry_s=10, refused_max_attempts=3) as queue:
        await queue.add([obj])
        for attempt in range(3):
            [taken] = await queue.take(Category.MOTOR_VEHICLE, 10, now)
            assert (taken.obj, taken.attempts) == (obj, attempt)
            await queue.settle([ObjectResult(taken.seq, Outcome.REFUSED, f"refusal {attempt}")], now)
            now += timedelta(seconds=10)
        assert await queue.take(Category.MOTOR_VEHICLE, 10, now + timedelta(days=365)) == []
        [refusal] = await queue.refusals()
        assert (refusal.reason, refusal.attempts, refusal.parked) == ("refusal 2", 3, True)
        counts = await queue.counts()
        assert (counts.backlog, counts.refused, counts.parked, counts.oldest_pending_at) == (
            {},
            {"MotorVehicle": 1},
            {"MotorVehicle": 1},
            None,
        )


async def test_the_queue_survives_a_reopen(tmp_path: Path) -> None:
    """Closed and opened again: the same objects due with the same ids, settlements and link state kept.

    Broken on purpose once: with ``save_link_state`` writing nothing, the reopened queue answered an
    empty ``LinkState``.
    """
    objects = vehicles(3)
    path = tmp_path / "q.db"
    state = LinkState(
        registered=True,
        registered_at=START,
        last_keepalive_at=START + timedelta(seconds=30),
        last_error="keepalive: 503",
        clock_skew_s=-1.5,
        backlog={"MotorVehicle": 2},
        refused={"Face": 1},
        accepted_total=7,
        updated_at=START + timedelta(seconds=31),
    )
    async with CityQueue(path) as queue:
        assert await queue.link_state() == LinkState()
        await queue.add(objects)
        [first] = await queue.take(Category.MOTOR_VEHICLE, 1, START)
        await queue.settle([ObjectResult(first.seq, Outcome.ACCEPTED)], START)
        await queue.save_link_state(state)
    async with CityQueue(path) as queue:
        assert await all_due(queue, START) == [o.object_id for o in objects[1:]]
        assert await queue.add(objects) == 0
        assert await queue.link_state() == state
        assert (await queue.counts()).accepted == {"MotorVehicle": 1}


async def test_two_events_whose_ids_meet_get_distinct_ids(tmp_path: Path) -> None:
    """Two passes of one camera in one second hashing to one serial: the later added is renumbered.

    Both are queued, their image and object ids differ, and each keeps its id when redelivered.
    A watch-list hit's crop id meeting another hit's SourceID is moved on too. Broken on purpose
    once: with ``_add`` storing every object as built (no renumbering), the batch failed on the
    UNIQUE image id (IntegrityError) and nothing was queued.
    """
    second = START.replace(microsecond=0)
    ids = _colliding_event_ids("scene")
    first_obj, second_obj = (event_objects(vehicle_pass(second, event_id=i), CITY, ZONE)[0] for i in ids)
    assert first_obj.object_id == second_obj.object_id  # the clash this test is about
    async with CityQueue(tmp_path / "q.db") as queue:
        assert await queue.add([first_obj, second_obj]) == 2
        taken = {q.obj.source: q.obj for q in await queue.take(Category.MOTOR_VEHICLE, 10, START)}
        assert taken[ids[0]] == first_obj
        moved = taken[ids[1]]
        assert moved.object_id != first_obj.object_id
        assert moved.body["SourceID"] == moved.object_id[:41]
        assert int(moved.object_id[36:41]) == (int(first_obj.object_id[36:41]) + 1) % 100_000
        rebuilt = event_objects(vehicle_pass(second, event_id=ids[1]), CITY, ZONE)
        assert await queue.add(rebuilt) == 0
        assert {q.obj.object_id for q in await queue.take(Category.MOTOR_VEHICLE, 10, START)} == {
            first_obj.object_id,
            moved.object_id,
        }
        # a crop whose ImageID is another hit's SourceID
        crop = jpeg(40, 50)
        scene_of_a, crop_of_b = _crossing_event_ids()
        hit_a = event_objects(watchlist_hit(second, crop, event_id=scene_of_a), CITY, ZONE)[0]
        hit_b = event_objects(watchlist_hit(second, crop, event_id=crop_of_b), CITY, ZONE)[0]
        assert hit_a.body["SourceID"] in image_ids_of(hit_b.body)
        assert await queue.add([hit_a, hit_b]) == 2
        faces = [q.obj for q in await queue.take(Category.FACE, 10, START)]
        claimed = [image for face in faces for image in image_ids_of(face.body)]
        assert len(claimed) == len(set(claimed)) == 4


def _serial(event_id: str, purpose: str) -> int:
    # the serial rule the ids are built with (district/city/objects.py), to find clashing events
    return int.from_bytes(hashlib.sha256(f"{purpose}:{event_id}".encode()).digest()[:8], "big") % 100_000


def _colliding_event_ids(purpose: str) -> tuple[str, str]:
    seen: dict[int, str] = {}
    n = 0
    while True:
        event_id = f"clash-{n:08d}"
        serial = _serial(event_id, purpose)
        if serial in seen:
            return seen[serial], event_id
        seen[serial] = event_id
        n += 1


def _crossing_event_ids() -> tuple[str, str]:
    """Two event ids: the first's scene serial is the second's crop serial."""
    scenes: dict[int, str] = {}
    crops: dict[int, str] = {}
    n = 0
    while True:
        event_id = f"cross-{n:08d}"
        scene, crop = _serial(event_id, "scene"), _serial(event_id, "crop")
        if crop in scenes:
            return scenes[crop], event_id
        if scene in crops:
            return event_id, crops[scene]
        scenes[scene], crops[crop] = event_id, event_id
        n += 1


async def test_objects_after_a_cursor_and_the_purge_of_old_accepted_objects(tmp_path: Path) -> None:
    """``objects_after`` lists by queue order whatever the state; ``purge`` deletes only old accepted ones.

    Broken on purpose once: with purge's ``state = accepted`` and ``accepted_at`` conditions
    loosened to take unaccepted rows, it deleted 3 instead of 1.
    """
    cars = vehicles(3)
    gate = event_objects(face_access(START), CITY, ZONE)
    async with CityQueue(tmp_path / "q.db") as queue:
        await queue.add([cars[0], *gate, cars[1], cars[2]])
        everything = await queue.objects_after(0, [Category.MOTOR_VEHICLE, Category.FACE], 100)
        assert [q.obj.source for q in everything] == [
            cars[0].source,
            gate[0].source,
            cars[1].source,
            cars[2].source,
        ]
        seqs = [q.seq for q in everything]
        assert seqs == sorted(seqs)
        only_faces = await queue.objects_after(0, [Category.FACE], 100)
        assert [q.obj for q in only_faces] == gate
        after = await queue.objects_after(seqs[1], [Category.MOTOR_VEHICLE], 1)
        assert [q.obj for q in after] == [cars[1]]
        await queue.settle([ObjectResult(seqs[0], Outcome.ACCEPTED)], START)
        await queue.settle([ObjectResult(seqs[1], Outcome.ACCEPTED)], START + timedelta(days=2))
        assert await queue.purge(START + timedelta(days=1)) == 1
        assert (await queue.counts()).accepted == {"Face": 1}
        remaining = await queue.objects_after(0, [Category.MOTOR_VEHICLE, Category.FACE], 100)
        assert [q.obj.source for q in remaining] == [gate[0].source, cars[1].source, cars[2].source]
        # the purged event redelivered is queued again with the same id
        assert await queue.add([cars[0]]) == 1
        assert cars[0].object_id in await all_due(queue, START)


async def test_two_writers_on_one_file_queue_each_object_once(tmp_path: Path) -> None:
    """Two queue connections (two ingesters of one host) adding overlapping rounds at once: each once.

    Broken on purpose once: with ``_add`` outside a transaction (each statement on its own), the
    writers raced and a round failed on the UNIQUE (category, source) constraint (3 runs of 3).
    """
    objects = [
        obj
        for n in range(200)
        for obj in event_objects(
            vehicle_pass(START + timedelta(seconds=n), event_id=str(uuid.uuid4())), CITY, ZONE
        )
    ]
    path = tmp_path / "q.db"
    async with CityQueue(path) as one, CityQueue(path) as two:
        added = await asyncio.gather(
            *(queue.add(objects[start : start + 50]) for start in range(0, 200, 25) for queue in (one, two))
        )
        assert sum(added) == 200
        assert (await one.counts()).backlog == {"MotorVehicle": 200}
        assert set(await all_due(two, START)) == {o.object_id for o in objects}


async def test_each_change_of_a_device_state_is_queued_once_in_order(tmp_path: Path) -> None:
    """APEs: online, online again, offline, online: three objects queued in that order; others apart.

    Only the newest state of an APE not yet accepted is due (the older ones are superseded).

    An APE claims no image id, so it is never renumbered.

    Broken on purpose once: with APEs unique by source like events, the device's return to online
    (the first state's source) was not added again (the fourth add returned 0).
    """
    barrier = DeviceForCity(
        BARRIER, COMPOUND_ID, "南门车辆道闸", "lpr_camera", "vz-lpr-mqtt", "南门", online=True
    )
    offline = replace(barrier, online=False)
    gate = DeviceForCity(
        FACE_GATE, COMPOUND_ID, "东门人脸门禁1", "face_gate", "hik-isapi-acs", None, online=True
    )
    async with CityQueue(tmp_path / "q.db") as queue:
        added = [
            await queue.add([ape_object(state, CITY, ZONE)]) for state in (barrier, barrier, offline, barrier)
        ]
        assert added == [1, 0, 1, 1]
        assert await queue.add([ape_object(gate, CITY, ZONE), ape_object(barrier, CITY, ZONE)]) == 1
        # each change was queued, in order; the older states not yet sent are superseded by the newest
        after = await queue.objects_after(0, [Category.APE], 10)
        assert [(q.obj.object_id, q.obj.body["IsOnline"]) for q in after] == [
            (CITY_APE, "1"),
            (CITY_APE, "0"),
            (CITY_APE, "1"),
            (FACE_GATE, "1"),
        ]
        taken = await queue.take(Category.APE, 10, START)
        assert [(q.obj.object_id, q.obj.body["IsOnline"]) for q in taken] == [
            (CITY_APE, "1"),
            (FACE_GATE, "1"),
        ]
        assert (await queue.counts()).backlog == {"APE": 2}


def _noise_jpeg(width: int, height: int) -> bytes:
    """A JPEG of random pixels: its coded data is found nowhere else."""
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, "JPEG")
    return out.getvalue()


def _crop_text(crop: bytes) -> bytes:
    """A stretch of the crop's base64 from its coded data (past the headers every JPEG shares)."""
    text = base64.b64encode(crop)
    return text[len(text) // 2 : len(text) // 2 + 80]


async def test_purge_strips_the_crops_older_than_hit_crops_days_whatever_their_state(tmp_path: Path) -> None:
    """A face crop stays in the queue no longer than in the store: pending, parked or accepted.

    Hits before the cutoff lose their ``SubImageList`` (the record stays, the file no longer holds
    the picture); a hit after it keeps its crop. Broken on purpose once: with ``purge`` ignoring
    ``strip_crops_before`` (as before: only accepted objects deleted after keep_days), the pending
    and parked hits kept their crops. And once with ``PRAGMA secure_delete = OFF`` in the schema
    (this Python's SQLite has it on by default, others do not): the stripped crop's bytes were
    still in the file.
    """
    old_crop, new_crop = _noise_jpeg(96, 128), _noise_jpeg(64, 80)
    cutoff = START + timedelta(days=1)
    old = [
        obj
        for n in range(3)
        for obj in event_objects(watchlist_hit(START + timedelta(minutes=n), old_crop), CITY, ZONE)
    ]
    [new] = event_objects(watchlist_hit(cutoff + timedelta(minutes=1), new_crop), CITY, ZONE)
    path = tmp_path / "q.db"
    async with CityQueue(path, refused_max_attempts=1) as queue:
        assert await queue.add([*old, new]) == 4
        accepted, parked, _pending, _ = await queue.take(Category.FACE, 10, cutoff)
        await queue.settle(
            [
                ObjectResult(accepted.seq, Outcome.ACCEPTED),
                ObjectResult(parked.seq, Outcome.REFUSED, "1: no"),
            ],
            cutoff,
        )
        assert (await queue.counts()).parked == {"Face": 1}
        assert await queue.purge(START - timedelta(days=30), strip_crops_before=cutoff) == 0
        faces = await queue.objects_after(0, [Category.FACE], 10)
        assert {q.obj.source: "SubImageList" in q.obj.body for q in faces} == {
            **{obj.source: False for obj in old},
            new.source: True,
        }
        assert [q.obj.object_id for q in faces] == [obj.object_id for obj in [*old, new]]
    stored = path.read_bytes()
    assert _crop_text(old_crop) not in stored
    assert _crop_text(new_crop) in stored


async def test_a_stricter_policy_applies_to_objects_queued_before_it(tmp_path: Path) -> None:
    """Objects queued under a laxer ``[city.privacy]`` leave only as the policy in force allows.

    Queued under the defaults (vehicles, face pass records, hits with crops, devices); then the
    policy says no vehicles, no face passes, hits as records. ``take`` and ``objects_after`` of a
    queue opened with the new policy hand out no vehicle, no face pass and no crop (before any
    ``apply_policy``); ``apply_policy`` deletes the withheld objects (an accepted one too, leaving
    the tally) and strips the crop from the file. Broken on purpose once: with ``_enforce``
    keeping every object unchanged, take handed out the pending vehicle.
    """
    crop = _noise_jpeg(96, 128)
    cars = vehicles(2)
    [gate] = event_objects(face_access(START), CITY, ZONE)
    [hit] = event_objects(watchlist_hit(START, crop), CITY, ZONE)
    assert "SubImageList" in hit.body
    barrier = DeviceForCity(
        BARRIER, COMPOUND_ID, "南门车辆道闸", "lpr_camera", "vz-lpr-mqtt", None, online=True
    )
    ape = ape_object(barrier, CITY, ZONE)
    strict = city_config(motor_vehicles=False, face_passes="off", watchlist_hits="records").privacy
    every = [Category.MOTOR_VEHICLE, Category.FACE, Category.APE]
    path = tmp_path / "q.db"
    async with CityQueue(path) as lax:
        assert await lax.add([*cars, gate, hit, ape]) == 5
        [first, *_] = await lax.take(Category.MOTOR_VEHICLE, 1, START)
        await lax.settle([ObjectResult(first.seq, Outcome.ACCEPTED)], START)
    async with CityQueue(path, privacy=strict) as queue:
        assert await queue.take(Category.MOTOR_VEHICLE, 10, START) == []
        faces = await queue.take(Category.FACE, 10, START)
        assert [(q.obj.source, "SubImageList" in q.obj.body) for q in faces] == [(hit.source, False)]
        after = await queue.objects_after(0, every, 10)
        assert {(q.obj.source, "SubImageList" in q.obj.body) for q in after} == {
            (hit.source, False),
            (ape.source, False),
        }
    async with CityQueue(path) as queue:
        # take deleted what it withheld (the pending car, the pass); the accepted car is still here
        assert await queue.apply_policy(strict) == (1, 0)
        assert await queue.apply_policy(strict) == (0, 0)
        assert (await queue.counts()).accepted == {}
        left = await queue.objects_after(0, every, 10)
        assert {q.obj.source for q in left} == {hit.source, ape.source}
        assert all("SubImageList" not in q.obj.body for q in left)
    assert _crop_text(crop) not in path.read_bytes()


async def test_apply_policy_rewrites_a_queue_filled_under_a_laxer_policy(tmp_path: Path) -> None:
    """``apply_policy`` alone (the service's and the ingester's start): nothing disallowed stays.

    Broken on purpose once: with ``under_policy`` never stripping (withheld objects still
    deleted), the hit was taken with its crop.
    """
    crop = _noise_jpeg(96, 128)
    [gate] = event_objects(face_access(START), CITY, ZONE)
    [hit] = event_objects(watchlist_hit(START, crop), CITY, ZONE)
    strict = city_config(motor_vehicles=False, face_passes="off", watchlist_hits="records").privacy
    path = tmp_path / "q.db"
    async with CityQueue(path) as queue:
        assert await queue.add([*vehicles(2), gate, hit]) == 4
        assert await queue.apply_policy(strict) == (3, 1)
        # the default policy of this connection would let them all go: the file no longer has them
        assert await all_due(queue, START) == []
        [left] = await queue.take(Category.FACE, 10, START)
        assert left.obj.source == hit.source
        assert "SubImageList" not in left.obj.body
        assert (await queue.counts()).backlog == {"Face": 1}
    assert _crop_text(crop) not in path.read_bytes()


async def test_an_older_refused_ape_state_never_follows_a_newer_one(tmp_path: Path) -> None:
    """A refused APE state is superseded by the next one: never sent again, counted nowhere.

    Broken on purpose once: without the superseding UPDATE in ``_add``, the refused online state
    was due again beside the newer offline one (two APEs taken where one was expected).
    """
    barrier = DeviceForCity(
        BARRIER, COMPOUND_ID, "南门车辆道闸", "lpr_camera", "vz-lpr-mqtt", None, online=True
    )
    offline = replace(barrier, online=False)
    async with CityQueue(tmp_path / "q.db", refused_retry_s=60) as queue:
        await queue.add([ape_object(barrier, CITY, ZONE)])
        [online] = await queue.take(Category.APE, 10, START)
        await queue.settle([ObjectResult(online.seq, Outcome.REFUSED, "4: bad")], START)
        assert len(await queue.refusals()) == 1
        await queue.add([ape_object(offline, CITY, ZONE)])
        [newer] = await queue.take(Category.APE, 10, START + timedelta(hours=1))
        assert newer.obj.body["IsOnline"] == "0"
        await queue.settle([ObjectResult(newer.seq, Outcome.ACCEPTED)], START + timedelta(hours=1))
        assert await queue.take(Category.APE, 10, START + timedelta(days=1)) == []
        counts = await queue.counts()
        assert (counts.backlog, counts.refused, counts.parked) == ({}, {}, {})
        assert await queue.refusals() == []


async def test_the_status_is_read_without_creating_or_writing_the_file(tmp_path: Path) -> None:
    """``read_status`` (the operator API) opens the queue read-only: no file made, none changed.

    Missing: ``None``, and still missing after. While a writer holds it open: the current counts.
    After the writers closed (no ``-wal``/``-shm`` left): the same, with the directory and the file
    byte for byte as they were. Broken on purpose once: without the existence check, reading a
    missing queue raised sqlite3.OperationalError instead of answering "never ran".
    """
    path = tmp_path / "city" / "q.db"
    assert await read_status(path, 10) is None
    assert not path.parent.exists()
    path.parent.mkdir()
    async with CityQueue(path) as queue:
        await queue.add(vehicles(3))
        await queue.save_link_state(LinkState(registered=True, last_error="none"))
        found = await read_status(path, 10)
        assert found is not None
        assert (found.counts.backlog, found.link.registered, found.refusals) == (
            {"MotorVehicle": 3},
            True,
            [],
        )
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    assert set(before) == {"q.db"}
    found = await read_status(path, 10)
    assert found is not None
    assert found.counts.backlog == {"MotorVehicle": 3}
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before


async def test_a_queue_file_from_before_the_kind_column_is_migrated(tmp_path: Path) -> None:
    """A file whose objects have no ``kind`` opens, each row gets the kind it was built from.

    Broken on purpose once: without ``_migrate`` the open failed (no such column: kind).
    """
    path = tmp_path / "q.db"
    [car] = vehicles(1)
    [gate] = event_objects(face_access(START), CITY, ZONE)
    [hit] = event_objects(watchlist_hit(START, jpeg(40, 50)), CITY, ZONE)
    barrier = DeviceForCity(
        BARRIER, COMPOUND_ID, "南门车辆道闸", "lpr_camera", "vz-lpr-mqtt", None, online=True
    )
    ape = ape_object(barrier, CITY, ZONE)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "CREATE TABLE objects (seq INTEGER PRIMARY KEY AUTOINCREMENT, category TEXT NOT NULL,"
        " source TEXT NOT NULL, object_id TEXT NOT NULL, body TEXT NOT NULL, occurred_at TEXT NOT NULL,"
        " queued_at TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, due_at TEXT,"
        " reason TEXT, refused_at TEXT, accepted_at TEXT)"
    )
    for obj in (car, gate, hit, ape):
        db.execute(
            "INSERT INTO objects (category, source, object_id, body, occurred_at, queued_at, state)"
            " VALUES (?,?,?,?,?,?,'pending')",
            (
                obj.category.value,
                obj.source,
                obj.object_id,
                json.dumps(obj.body),
                obj.occurred_at.isoformat(),
                "x",
            ),
        )
    db.close()
    async with CityQueue(path) as queue:
        found = await queue.objects_after(0, list(Category), 10)
    assert [q.obj.kind for q in found] == ["vehicle_pass", "face_access", "watchlist_hit", "device"]
    assert [q.obj.body for q in found] == [car.body, gate.body, hit.body, ape.body]
