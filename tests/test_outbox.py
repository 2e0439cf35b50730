"""The outbox on its own (a real SQLite file, no servers): uniqueness, shedding, dead letters, recovery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.base import MediaBlob
from foundation.events import (
    AccessResult,
    Direction,
    EbikeShedPayload,
    Event,
    EventKind,
    FaceAccessPayload,
    Provenance,
    Severity,
    ShedCondition,
    VerifyMode,
)
from foundation.identity import event_id
from gateway.outbox import DeadLetter, EventRow, Outbox, StoreEvents

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def store(*events: Event, media: tuple[MediaBlob, ...] = ()) -> StoreEvents:
    return StoreEvents([EventRow.from_event(e) for e in events], media)


def routine(n: int) -> Event:
    return Event(
        event_id=event_id("36010400011240000001", "test", f"r{n}"),
        kind=EventKind.FACE_ACCESS,
        district_id="36010400005000000001",
        compound_id="36010400012160000101",
        device_id="36010400011240000001",
        occurred_at=T0 + timedelta(seconds=n),
        received_at=T0 + timedelta(seconds=n),
        severity=Severity.INFO,
        source=Provenance(vendor="test", dialect="test"),
        payload=FaceAccessPayload(
            result=AccessResult.GRANTED, direction=Direction.IN, verify_mode=VerifyMode.FACE
        ),
    )


def alarm(n: int) -> Event:
    return Event(
        event_id=event_id("36010400011340000001", "test", f"a{n}"),
        kind=EventKind.EBIKE_SHED,
        district_id="36010400005000000001",
        compound_id="36010400012160000101",
        device_id="36010400011340000001",
        occurred_at=T0 + timedelta(seconds=n),
        received_at=T0 + timedelta(seconds=n),
        severity=Severity.CRITICAL,
        source=Provenance(vendor="test", dialect="test"),
        payload=EbikeShedPayload(condition=ShedCondition.FIRE_ALARM, temperature_c=80.0),
    )


EVENT_SIZE = len(EventRow.from_event(routine(0)).body)


def test_durability_settings(tmp_path: Path) -> None:
    """WAL journal and synchronous=FULL: a commit is on disk when it returns."""
    with Outbox(tmp_path / "o.db", max_bytes=1 << 20) as box:
        assert box.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert box.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_unique_by_event_id(tmp_path: Path) -> None:
    """A re-sent event is stored once and reported as a duplicate."""
    with Outbox(tmp_path / "o.db", max_bytes=1 << 20) as box:
        (first,) = box.commit([store(routine(1), routine(2))])
        (second,) = box.commit([store(routine(2), routine(3))])
        assert first is not None
        assert second is not None
        assert len(first.stored) == 2
        assert second.duplicates == (routine(2).event_id,)
        assert second.stored == (routine(3).event_id,)
        assert box.event_ids() == [routine(n).event_id for n in (1, 2, 3)]
        assert box.stats().counters[("duplicates", "36010400011240000001", "")] == 1


def test_routine_shed_oldest_first_alarms_never(tmp_path: Path) -> None:
    """When full, the oldest routine events go first; alarms stay even beyond the budget."""
    with Outbox(tmp_path / "o.db", max_bytes=EVENT_SIZE * 5 + 10) as box:
        box.commit([store(*[routine(n) for n in range(5)])])
        box.commit([store(alarm(0), alarm(1))])
        kept = set(box.event_ids())
        assert {alarm(0).event_id, alarm(1).event_id} <= kept
        assert routine(0).event_id not in kept
        assert routine(1).event_id not in kept
        assert routine(4).event_id in kept
        # only alarms and no room left: alarms are still stored, routine events are shed on arrival
        box.commit([store(*[alarm(n) for n in range(2, 8)])])
        (result,) = box.commit([store(routine(99))])
        assert result is not None
        assert result.shed == (routine(99).event_id,)
        stats = box.stats()
        assert stats.pending_alarms == 8
        assert stats.pending == 8
        assert stats.shed_total == 6  # routine 0..4 and 99
        assert box.event_ids("shed")[-1] == routine(99).event_id


def test_shed_tombstone_keeps_resends_out(tmp_path: Path) -> None:
    """A shed event that is re-sent stays shed (counted once), so the district never sees it twice."""
    with Outbox(tmp_path / "o.db", max_bytes=EVENT_SIZE + 10) as box:
        box.commit([store(routine(1))])
        box.commit([store(routine(2))])
        (result,) = box.commit([store(routine(1))])
        assert result is not None
        assert result.duplicates == (routine(1).event_id,)
        assert box.event_ids() == [routine(2).event_id]  # the re-send pushed nothing out


def test_pending_order_alarms_first_then_oldest(tmp_path: Path) -> None:
    """The uplink drains alarms first, then oldest first."""
    with Outbox(tmp_path / "o.db", max_bytes=1 << 20) as box:
        box.commit([store(routine(1), alarm(1), routine(2), alarm(2))])
        ids = [row.event_id for row in box.pending()]
        assert ids == [alarm(1).event_id, alarm(2).event_id, routine(1).event_id, routine(2).event_id]


def test_delivered_frees_budget_and_keeps_tombstone(tmp_path: Path) -> None:
    """Confirmed events leave the budget; a re-send after delivery is still a duplicate."""
    with Outbox(tmp_path / "o.db", max_bytes=1 << 20) as box:
        box.commit([store(routine(1), routine(2))])
        assert box.mark_delivered([routine(1).event_id, "unknown"]) == 1
        assert box.stats().pending == 1
        (result,) = box.commit([store(routine(1))])
        assert result is not None
        assert result.duplicates == (routine(1).event_id,)
        assert box.purge_tombstones(datetime.now(UTC) + timedelta(seconds=1)) == 1


def test_budget_survives_restart(tmp_path: Path) -> None:
    """The byte budget is recomputed from the file after a restart."""
    path = tmp_path / "o.db"
    with Outbox(path, max_bytes=EVENT_SIZE * 2 + 10) as box:
        box.commit([store(routine(1), routine(2))])
    with Outbox(path, max_bytes=EVENT_SIZE * 2 + 10) as box:
        assert box.stats().pending_bytes == 2 * EVENT_SIZE
        (result,) = box.commit([store(routine(3))])
        assert result is not None
        assert result.stored == (routine(3).event_id,)
        assert routine(1).event_id in box.event_ids("shed")


def test_dead_letters_bounded_and_counted(tmp_path: Path) -> None:
    """Dead letters keep the newest N, truncate huge payloads, and count per device and reason."""
    with Outbox(tmp_path / "o.db", max_bytes=1 << 20, dead_letter_keep=10) as box:
        letters = [
            DeadLetter(
                "mqtt",
                "shed-mqtt",
                "dev",
                "malformed_json",
                None,
                f"case {i}",
                b"x" * (100_000 if i == 24 else 5),
            )
            for i in range(25)
        ]
        box.commit(letters)
        rows = box.dead_letters(100)
        assert len(rows) == 10
        assert rows[0]["detail"] == "case 24"
        assert rows[0]["payload_size"] == 100_000
        assert len(rows[0]["payload"]) == 64 * 1024  # type: ignore[arg-type]
        assert box.stats().counters[("rejected", "dev", "malformed_json")] == 25


def test_media_written_before_rows(tmp_path: Path) -> None:
    """Pictures are on disk, content-addressed, when the event referencing them is committed."""
    blob = MediaBlob("face", "image/jpeg", b"\xff\xd8\xff" + b"jpeg" * 10)
    with Outbox(tmp_path / "o.db", max_bytes=1 << 20) as box:
        box.commit([store(routine(1), media=(blob, blob))])
        stored = box.media_dir / blob.relative_path
        assert stored.read_bytes() == blob.data
        assert not list(stored.parent.glob(".tmp-*"))


def test_budget_is_shared_between_connections(tmp_path: Path) -> None:
    """Deliveries marked by the uplink's connection free budget the storing connection sees."""
    path = tmp_path / "o.db"
    with (
        Outbox(path, max_bytes=EVENT_SIZE * 2 + 10) as storing,
        Outbox(path, max_bytes=EVENT_SIZE * 2 + 10) as uplink,
    ):
        storing.commit([store(routine(1), routine(2))])
        assert uplink.mark_delivered([routine(1).event_id]) == 1
        (result,) = storing.commit([store(routine(3))])
        assert result is not None
        assert result.stored == (routine(3).event_id,)
        assert storing.event_ids("shed") == []  # nothing shed: the delivery made room
        assert storing.pending_bytes() == uplink.pending_bytes() == 2 * EVENT_SIZE


def test_failed_batch_rolls_back_budget(tmp_path: Path) -> None:
    """A batch that fails leaves neither rows nor budget behind."""
    with Outbox(tmp_path / "o.db", max_bytes=1 << 20) as box:
        box.db.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON dead_letters BEGIN SELECT RAISE(ABORT, 'disk'); END"
        )
        with pytest.raises(Exception, match="disk"):
            box.commit([store(routine(1)), DeadLetter("http", None, None, "x", None, "y", b"")])
        assert box.event_ids() == []
        assert box.stats().pending_bytes == 0
        assert box.pending_bytes() == 0
        box.db.execute("DROP TRIGGER boom")
        box.commit([store(routine(1))])
        assert box.event_ids() == [routine(1).event_id]


def test_unconfirmed_alarms_are_requeued_sooner(tmp_path: Path) -> None:
    """Sent without a receipt: alarms go back to pending after their shorter wait, routine events later."""
    with Outbox(tmp_path / "o.db", max_bytes=1 << 20) as box:
        box.commit([store(routine(1), alarm(1))])
        assert box.mark_sent([routine(1).event_id, alarm(1).event_id]) == 2
        now = datetime.now(UTC)
        # checked as if a moment later: the alarms' wait is over, the routine events' (60 s) is not
        assert box.requeue_sent(now - timedelta(seconds=60), now + timedelta(seconds=0.5)) == 1
        assert box.event_ids("pending") == [alarm(1).event_id]
        assert box.event_ids("sent") == [routine(1).event_id]
        assert box.requeue_sent(now + timedelta(seconds=1)) == 1  # without an alarm wait: one rule for all
        assert box.event_ids("sent") == []
