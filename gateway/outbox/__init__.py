"""The durable outbox: every accepted event stays here until the uplink confirms it.

* ``event_states``: events by id, pending/sent/delivered/shed, the byte budget and shedding of
  routine events, alarms-first order, requeue of unconfirmed events;
* ``dead_letters``: refused payloads, bounded, counted per device and reason;
* ``watch_queue``: work queued with events for the watch-list matcher, with bounded shedding;
* ``media_store``: the content-addressed pictures, fsynced before their rows commit, purged after
  the retention period;
* ``counters``: the counters the parts keep in the file;
* ``facade``: ``Outbox`` (synchronous, the intake worker's batch commits: one transaction per
  batch) and ``OutboxReader`` (async, for the event loop, on one ``SqliteThread``).
"""

from gateway.outbox.dead_letters import DEAD_LETTER_PAYLOAD_MAX, DeadLetter
from gateway.outbox.event_states import EventRow, StoredEvent, StoreResult
from gateway.outbox.facade import SCHEMA_VERSION, Operation, Outbox, OutboxReader, OutboxStats, StoreEvents
from gateway.outbox.watch_queue import WatchItem, WatchWork

__all__ = [
    "DEAD_LETTER_PAYLOAD_MAX",
    "SCHEMA_VERSION",
    "DeadLetter",
    "EventRow",
    "Operation",
    "Outbox",
    "OutboxReader",
    "OutboxStats",
    "StoreEvents",
    "StoreResult",
    "StoredEvent",
    "WatchItem",
    "WatchWork",
]
