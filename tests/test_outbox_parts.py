"""The outbox's parts on their own (real SQLite files and directories): media store, watch queue, reader."""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.base import MediaBlob
from foundation.errors import OutboxError
from foundation.sqlite_thread import open_durable, transaction
from gateway.outbox import DeadLetter, EventRow, Outbox, OutboxReader, StoreEvents, WatchWork
from gateway.outbox.counters import read_counters
from gateway.outbox.facade import SCHEMA
from gateway.outbox.media_store import MediaStore
from gateway.outbox.watch_queue import (
    enqueue_watch,
    finish_watch_items,
    oldest_watch_items,
    shed_watch_items,
)

PICTURE = MediaBlob("face", "image/jpeg", b"\xff\xd8\xff" + b"face" * 50)


def row(n: int, *, watch: WatchWork | None = None, alarm: bool = False) -> EventRow:
    """A small outbox row; its body is the same size for every ``n`` below 100."""
    return EventRow(
        f"e{n:02d}",
        "ebike_shed" if alarm else "face_access",
        "critical" if alarm else "info",
        alarm,
        "36010400011240000001",
        "2026-11-30T00:00:00+00:00",
        f"2026-11-30T00:00:{n:02d}+00:00",
        b'{"n":%02d}' % n,
        watch,
    )


def picture_work(n: int) -> WatchWork:
    return WatchWork("face", f"aa/{n}.jpg", "in")


# --- media store -------------------------------------------------------------------------------------


def test_media_fsynced_before_the_batch_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The picture file and its directory are fsynced before the transaction holding its row commits."""
    order: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        order.append("fsync")
        real_fsync(fd)

    with Outbox(tmp_path / "o.db", max_bytes=1 << 20) as box:
        box.db.set_trace_callback(lambda sql: order.append(sql.split()[0].upper()))
        monkeypatch.setattr(os, "fsync", recording_fsync)
        box.commit([StoreEvents([row(1)], media=(PICTURE,))])
        box.db.set_trace_callback(None)
    # file, then directory; then the transaction
    assert order[:3] == ["fsync", "fsync", "BEGIN"]
    assert order[-1] == "COMMIT"
    assert order.count("fsync") == 2


def test_row_never_committed_without_its_picture(tmp_path: Path) -> None:
    """At the moment the event row is inserted, the picture it refers to is already a complete file."""
    with Outbox(tmp_path / "o.db", max_bytes=1 << 20) as box:
        expected = box.media_dir / PICTURE.relative_path
        box.db.create_function(
            "picture_complete", 0, lambda: int(expected.is_file() and expected.read_bytes() == PICTURE.data)
        )
        box.db.execute(
            "CREATE TEMP TRIGGER picture_first BEFORE INSERT ON events WHEN picture_complete() = 0"
            " BEGIN SELECT RAISE(ABORT, 'row before picture'); END"
        )
        with pytest.raises(sqlite3.IntegrityError, match="row before picture"):
            box.commit([StoreEvents([row(1)])])  # the trigger is live: no picture, no row
        (result,) = box.commit([StoreEvents([row(1)], media=(PICTURE,))])
        assert result is not None
        assert result.stored == ("e01",)


def test_media_store_is_content_addressed(tmp_path: Path) -> None:
    """The same bytes are stored once, under their hash; different bytes get their own file."""
    store = MediaStore(tmp_path / "media")
    store.create()
    other = MediaBlob("scene", "image/png", b"\x89PNG" + b"scene" * 10)
    store.write([PICTURE, PICTURE, other])
    store.write([PICTURE])
    files = {p.relative_to(store.directory).as_posix() for p in store.directory.rglob("*") if p.is_file()}
    assert files == {PICTURE.relative_path, other.relative_path}
    assert other.relative_path.endswith(".png")


def test_media_purge_deletes_only_pictures_past_retention(tmp_path: Path) -> None:
    """Pictures written before the cutoff go; newer ones stay; the count says how many went."""
    store = MediaStore(tmp_path / "media")
    store.create()
    old = MediaBlob("face", "image/jpeg", b"old picture")
    new = MediaBlob("face", "image/jpeg", b"new picture")
    store.write([old, new])
    long_ago = (datetime.now(UTC) - timedelta(days=40)).timestamp()
    os.utime(store.directory / old.relative_path, (long_ago, long_ago))
    assert store.purge(datetime.now(UTC) - timedelta(days=30)) == 1
    remaining = {p.relative_to(store.directory).as_posix() for p in store.directory.rglob("*") if p.is_file()}
    assert remaining == {new.relative_path}


# --- watch queue ---------------------------------------------------------------------------------------


def open_queue(path: Path) -> sqlite3.Connection:
    db = open_durable(path, SCHEMA)
    with transaction(db):
        for n in range(6):
            enqueue_watch(db, picture_work(n), event_id=f"f{n}", device_id="d", occurred_at="t")
            enqueue_watch(
                db, WatchWork("plate", f"P{n}", "out"), event_id=f"p{n}", device_id="d", occurred_at="t"
            )
    return db


def test_watch_queue_sheds_only_the_bounded_kind_oldest_first(tmp_path: Path) -> None:
    """Shedding one kind drops its oldest beyond the bound, counted under the given name; other kinds stay."""
    db = open_queue(tmp_path / "q.db")
    try:
        with transaction(db):
            assert shed_watch_items(db, "face", 2, counted_as="pictures_dropped") == 4
        left = oldest_watch_items(db, 100)
        assert [(i.kind, i.event_id) for i in left if i.kind == "face"] == [("face", "f4"), ("face", "f5")]
        assert {i.event_id for i in left if i.kind == "plate"} == {f"p{n}" for n in range(6)}
        assert read_counters(db) == {("pictures_dropped", "", ""): 4}
    finally:
        db.close()


def test_watch_queue_within_bound_changes_nothing(tmp_path: Path) -> None:
    """A backlog within its bound is left as it is, and nothing is counted."""
    db = open_queue(tmp_path / "q.db")
    try:
        before = db.total_changes
        with transaction(db):
            assert shed_watch_items(db, "face", 6, counted_as="pictures_dropped") == 0
        assert db.total_changes == before
        assert len(oldest_watch_items(db, 100)) == 12
        assert read_counters(db) == {}
    finally:
        db.close()


def test_watch_queue_finished_work_is_forgotten_in_order(tmp_path: Path) -> None:
    """Finished items leave the queue; the rest keep their order."""
    db = open_queue(tmp_path / "q.db")
    try:
        first = oldest_watch_items(db, 3)
        assert [i.event_id for i in first] == ["f0", "p0", "f1"]
        with transaction(db):
            finish_watch_items(db, [i.seq for i in first])
        assert [i.event_id for i in oldest_watch_items(db, 3)] == ["p1", "f2", "p2"]
    finally:
        db.close()


# --- the facade: one transaction per batch ----------------------------------------------------------------


def test_watch_work_queued_only_for_events_stored(tmp_path: Path) -> None:
    """Work is queued for newly stored events, once each; duplicates and events shed on arrival queue none."""
    size = len(row(1).body)
    with Outbox(tmp_path / "o.db", max_bytes=size * 2) as box:
        box.commit([StoreEvents([row(1, watch=picture_work(1)), row(1, watch=picture_work(1))])])
        box.commit([StoreEvents([row(2, watch=picture_work(2)), row(1, watch=picture_work(9))])])
        box.commit([StoreEvents([row(3, watch=picture_work(3))])])  # e01 is shed to make room
        box.commit([StoreEvents([row(4, alarm=True), row(5, alarm=True)])])  # e02, e03 shed for alarms
        (result,) = box.commit([StoreEvents([row(6, watch=picture_work(6))])])
        assert result is not None
        assert result.shed == ("e06",)  # only alarms left: nothing older to shed
        # work of events shed afterwards stays queued: the matcher still looks at their pictures
        assert [(i.event_id, i.subject) for i in box.watch_items(10)] == [
            ("e01", "aa/1.jpg"),
            ("e02", "aa/2.jpg"),
            ("e03", "aa/3.jpg"),
        ]


def test_failed_batch_leaves_no_work_letters_or_counters(tmp_path: Path) -> None:
    """Events, queued work, dead letters and counters of a batch commit together or not at all."""
    with Outbox(tmp_path / "o.db", max_bytes=1 << 20) as box:
        box.db.execute(
            "CREATE TEMP TRIGGER boom BEFORE INSERT ON counters BEGIN SELECT RAISE(ABORT, 'disk'); END"
        )
        with pytest.raises(sqlite3.IntegrityError, match="disk"):
            box.commit(
                [
                    StoreEvents([row(1, watch=picture_work(1))], media=(PICTURE,)),
                    DeadLetter("http", None, "dev", "malformed_json", None, "x", b"{"),
                ]
            )
        assert box.event_ids() == []
        assert box.watch_items(10) == []
        assert box.dead_letters() == []
        assert box.stats().counters == {}
        assert box.pending_bytes() == 0


# --- the async reader ------------------------------------------------------------------------------------


async def test_reader_runs_in_its_own_thread_and_sees_the_writers_rows(tmp_path: Path) -> None:
    """The reader's calls work on the shared file from one thread, which is gone after the block."""
    path = tmp_path / "o.db"
    with Outbox(path, max_bytes=1 << 20) as box:
        box.commit([StoreEvents([row(1), row(2, alarm=True), row(3, watch=picture_work(3))])])
        async with OutboxReader(path, max_bytes=1 << 20) as reader:
            assert any(t.name.startswith("uplink-outbox") for t in threading.enumerate())
            assert [e.event_id for e in await reader.pending(10)] == ["e02", "e01", "e03"]
            await reader.sent(["e01", "e02"])
            assert box.event_ids("sent") == ["e01", "e02"]
            assert await reader.requeue(datetime.now(UTC) + timedelta(seconds=1)) == 2
            assert await reader.delivered(["e01", "e03", "unknown"]) == 2
            assert box.pending_bytes() == len(row(2).body)
            (item,) = await reader.watch_items(10)
            assert item.event_id == "e03"
            assert await reader.watch_shed(0, kind="face", counted_as="pictures_shed") == 1
            assert await reader.watch_items(10) == []
            await reader.watch_done([item.seq])
            stats = await reader.stats()
            assert (stats.pending, stats.delivered) == (1, 2)
            assert stats.counters[("pictures_shed", "", "")] == 1
            assert await reader.purge_tombstones(datetime.now(UTC) + timedelta(seconds=1)) == 2
            assert await reader.purge_media(datetime.now(UTC)) == 0
            assert reader.media_dir == tmp_path / "media"
        assert not any(t.name.startswith("uplink-outbox") for t in threading.enumerate())


async def test_reader_refuses_a_file_of_another_schema(tmp_path: Path) -> None:
    """A file of another schema version is refused on enter, and the reader's thread is stopped."""
    path = tmp_path / "o.db"
    with Outbox(path, max_bytes=1 << 20) as box:
        box.db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(OutboxError, match="outbox schema 99"):
        async with OutboxReader(path, max_bytes=1 << 20):
            pass
    assert not any(t.name.startswith("uplink-outbox") for t in threading.enumerate())
