"""The alarm feed on a real embedded store: new alarms once, in scope, late ones too, bounded."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from device_sims.inventory import DISTRICT_ID
from district.alarm_feed import AlarmFeed
from district.query_backends import open_query_backend
from foundation.events import Severity, utc_now
from tests.evidence_double import C1, C2, alarm
from uplink.stores.sqlite import SqliteStore, SqliteStoreConfig


async def test_new_alarms_reach_the_listeners_in_scope_once(tmp_path: Path) -> None:
    """Old alarms are the first load, not news; a new one reaches each listener in scope once.

    A re-sent alarm (same id) is not announced again; a late one (occurred 3 h ago, stored now) is;
    a routine event never is. Broken on purpose: without the ``announced`` check the re-sent alarm
    was announced twice; without the scope check compound 2's listener got compound 1's alarm.
    """
    config = SqliteStoreConfig(path=tmp_path / "district.db")
    async with SqliteStore(config) as store, open_query_backend(config) as backend:
        await store.write([alarm("evt-before-start-01", C1)])
        feed = AlarmFeed(backend, DISTRICT_ID, poll_s=0.01)
        assert await feed.poll_once() == []  # primed with what was there
        with (
            feed.listen(frozenset({C1})) as mine,
            feed.listen(frozenset({C2})) as other,
            feed.listen(None) as all_,
        ):
            new = alarm("evt-new-alarm-0001", C1)
            late = alarm("evt-late-alarm-001", C1, at=utc_now() - timedelta(hours=3))
            await store.write([new, alarm("evt-routine-00001", C1, severity=Severity.INFO)])
            assert [e.event_id for e in await feed.poll_once()] == [new.event_id]
            await store.write([new, late])  # the new one re-sent, the late one arrives
            assert [e.event_id for e in await feed.poll_once()] == [late.event_id]
            assert [e.event_id for e in await feed.poll_once()] == []
            got = [mine.queue.get_nowait().event_id for _ in range(mine.queue.qsize())]
            assert got == [new.event_id, late.event_id]
            assert other.queue.empty()
            assert all_.queue.qsize() == 2


async def test_a_stalled_listener_loses_the_oldest_and_is_told(tmp_path: Path) -> None:
    """A full queue drops its oldest alarms and counts them; the poller never waits.

    Broken on purpose: ``offer`` with ``put_nowait`` alone raised QueueFull into the poller.
    """
    config = SqliteStoreConfig(path=tmp_path / "district.db")
    async with SqliteStore(config) as store, open_query_backend(config) as backend:
        feed = AlarmFeed(backend, DISTRICT_ID, queue_size=2)
        await feed.poll_once()
        with feed.listen(None) as stalled:
            base = utc_now() - timedelta(minutes=10)
            events = [alarm(f"evt-storm-{i:08d}", C1, at=base + timedelta(seconds=i)) for i in range(5)]
            await store.write(events)
            assert len(await feed.poll_once()) == 5
            received = []
            while not stalled.queue.empty():
                event = stalled.queue.get_nowait()
                received.append((event.event_id, stalled.take_missed()))
        assert received == [(events[3].event_id, 3), (events[4].event_id, 0)]


async def test_ids_leave_memory_with_the_window(tmp_path: Path) -> None:
    """Announced ids are forgotten once their alarm is older than the window (bounded memory).

    Broken on purpose: ``_forget_before`` not called kept all five ids.
    """
    config = SqliteStoreConfig(path=tmp_path / "district.db")
    now = utc_now()
    clock = [now]
    async with SqliteStore(config) as store, open_query_backend(config) as backend:
        feed = AlarmFeed(backend, DISTRICT_ID, window=timedelta(hours=1), clock=lambda: clock[0])
        await feed.poll_once()
        await store.write(
            [alarm(f"evt-window-{i:07d}", C1, at=now - timedelta(minutes=50 - 10 * i)) for i in range(5)]
        )
        await feed.poll_once()
        assert len(feed.announced) == 5
        clock[0] = now + timedelta(minutes=25)  # the first two (50 and 40 min old) leave the hour
        await feed.poll_once()
        assert sorted(feed.announced) == [f"evt-window-{i:07d}" for i in range(2, 5)]
