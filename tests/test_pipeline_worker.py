"""The intake worker process: batches answered in order, grouped commits, and a SIGKILLed worker replaced.

These drive ``IntakePipeline`` directly (the worker is a real spawned process writing a real outbox);
the gateway-level guarantees (kill -9 of the whole gateway, acknowledgement only after the commit)
are in ``test_crash_recovery.py`` and ``test_receivers.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import random
import signal
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from adapters.base import RawMessage
from device_sims.devices import CST, MqttPublish, ShedSim, SimDevice
from foundation.errors import OutboxError, PayloadRejected
from gateway.config import load_config
from gateway.intake import IntakeItem
from gateway.outbox import Outbox
from gateway.pipeline import IntakePipeline, ItemResult, _portable
from tests.conftest import sample_config

SHED = SimDevice(id="36010400011340000001", dialect="shed-mqtt", ref="860812045678901")
KEY = b"k" * 32


def shed_items(sim: ShedSim, count: int) -> list[IntakeItem]:
    """``count`` heartbeats of the sample compound's shed sensor, as the MQTT intake hands them over."""
    rng = random.Random(count)
    items = []
    for _ in range(count):
        message = sim.routine(datetime.now(CST), rng)
        assert isinstance(message, MqttPublish)
        items.append(IntakeItem("mqtt", RawMessage(message.payload, topic=message.topic), 1 << 20))
    return items


def stored(results: list[ItemResult]) -> set[str]:
    return {event_id for result in results for event_id in result.stored}


def worker_pid(pipeline: IntakePipeline) -> int:
    process = pipeline._worker._process  # type: ignore[union-attr]
    assert process is not None
    pid = process.pid
    assert pid is not None
    return pid


async def test_a_sigkilled_worker_fails_what_it_had_not_answered_and_is_replaced(tmp_path: Path) -> None:
    """Kill -9 of the worker: its batch fails, a new worker takes over, the outbox holds what was answered.

    The batch sent to the dead worker raises (so nothing of it is acknowledged); the outbox holds
    exactly the batches that were answered as committed.

    Checked once with ``_replace_broken_worker`` returning without starting a new worker: the third
    batch fails too and the test fails.
    """
    config = load_config(sample_config(tmp_path, 1883))
    sim = ShedSim(SHED)
    first, lost, third = shed_items(sim, 5), shed_items(sim, 5), shed_items(sim, 5)
    async with IntakePipeline(config, KEY) as pipeline:
        committed = stored(await pipeline.process(first))
        old = worker_pid(pipeline)
        os.kill(old, signal.SIGKILL)
        await asyncio.to_thread(psutil.Process(old).wait, 10)
        with pytest.raises(OutboxError, match="worker died"):
            await pipeline.process(lost)
        assert (pipeline.workers_replaced, pipeline.batches_lost) == (1, 1)
        committed |= stored(await pipeline.process(third))
        assert worker_pid(pipeline) != old
        assert pipeline.batches_in_flight == 0
    assert len(committed) == 10
    with Outbox(config.state.dir / "outbox.db", max_bytes=config.state.outbox_max_bytes) as box:
        assert set(box.event_ids()) == committed


async def test_batches_started_together_are_answered_each_in_submission_order(tmp_path: Path) -> None:
    """Batches in flight together each get their own results, in submission order.

    The worker may commit them in one transaction; a re-sent message is a duplicate.

    Checked once with the worker answering a group's batches in reverse order: the results no
    longer match the batches' own event ids and the test fails.
    """
    config = load_config(sample_config(tmp_path, 1883))
    sim = ShedSim(SHED)
    batches = [shed_items(sim, n) for n in (1, 7, 3, 20, 2)]
    resent = batches[1][:2]
    async with IntakePipeline(config, KEY) as pipeline:
        futures = [pipeline.start(batch) for batch in [*batches, resent]]
        results = [await pipeline.finish(future) for future in futures]
    *fresh, again = results
    assert [len(r) for r in fresh] == [1, 7, 3, 20, 2]
    assert all(len(result.stored) == 1 for batch in fresh for result in batch)
    assert [result.duplicates for result in again] == [r.stored for r in fresh[1][:2]]
    ids = [stored(batch) for batch in fresh]
    assert len(set().union(*ids)) == 33
    with Outbox(config.state.dir / "outbox.db", max_bytes=config.state.outbox_max_bytes) as box:
        in_order = box.event_ids()
    # committed in submission order: each batch's rows follow the previous batch's
    positions = [[in_order.index(event_id) for event_id in batch_ids] for batch_ids in ids]
    assert all(max(a) < min(b) for a, b in itertools.pairwise(positions))


def test_an_exception_that_cannot_be_rebuilt_crosses_as_an_outbox_error() -> None:
    """A worker exception that pickles but cannot be unpickled is described, not sent as is.

    Sent as is, ``pickle.loads`` fails in the gateway, which then takes the healthy worker for dead
    (every batch in flight lost and the worker replaced). Checked to fail with ``_portable`` testing
    ``pickle.dumps`` alone (as it first did): the ``PayloadRejected`` comes back unchanged.
    """
    rebuilt_badly = PayloadRejected("bad_field", "not a number", field="seq")
    crossed = _portable(rebuilt_badly)
    assert isinstance(crossed, OutboxError)
    assert "PayloadRejected" in str(crossed)
    assert "seq" in str(crossed)
    assert pickle.loads(pickle.dumps(crossed)).args == crossed.args  # noqa: S301 - made here
    fine = OutboxError("disk full")
    assert _portable(fine) is fine
