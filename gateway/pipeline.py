"""The intake pipeline: batches of raw payloads in, parsed and durably committed outcomes out.

One worker owns the parsers and the outbox. By default it is a separate process: the gateway's
event loop already spends most of a core decoding MQTT packets and sending acknowledgements, so
parsing, validating, serializing and committing run on the other core, a batch at a time, and the
hand-over is just bytes one way and event ids back. A result exists only after its batch was
committed (SQLite WAL, ``synchronous=FULL``), so a transport may acknowledge on it.

With ``worker_process = false`` the same worker is a thread of the gateway process (tools, tests,
tiny installations). Either way there is exactly one outbox writer, and batches commit in the order
they were submitted.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import TracebackType

import structlog

from foundation.errors import OutboxError, Rejection
from foundation.fault_switches import FaultSwitch, fault_on
from foundation.identity import Pseudonymizer
from foundation.logging import configure_logging
from gateway.config import GatewayConfig
from gateway.intake import Intake, IntakeItem
from gateway.outbox import Outbox, StoreResult

log = structlog.get_logger(__name__)

BATCH_MAX = 256
PARENT_CHECK_S = 0.5


@dataclass(frozen=True, slots=True)
class ItemResult:
    """What became of one payload once its batch was committed."""

    stored: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    shed: tuple[str, ...] = ()
    rejection: Rejection | None = None
    device: str | None = None
    sequence: int | None = None


class _Worker:
    """The worker's state: the intake and the open outbox (one per worker thread or process)."""

    def __init__(self, config: GatewayConfig, key: bytes) -> None:
        self.intake = Intake(config, Pseudonymizer(key, config.compound.compound_id))
        self.outbox = Outbox(
            config.state.dir / "outbox.db",
            max_bytes=config.state.outbox_max_bytes,
            dead_letter_keep=config.state.dead_letter_keep,
        ).open()

    def process(self, items: Sequence[IntakeItem]) -> list[ItemResult]:
        outcomes = [self.intake.classify(item) for item in items]
        results = self.outbox.commit([outcome.operation for outcome in outcomes])
        return [
            _item_result(result, outcome.rejection, outcome.device, outcome.sequence)
            for outcome, result in zip(outcomes, results, strict=True)
        ]


def _item_result(
    result: StoreResult | None, rejection: Rejection | None, device: str | None, sequence: int | None
) -> ItemResult:
    if result is None:
        return ItemResult(rejection=rejection, device=device, sequence=sequence)
    return ItemResult(result.stored, result.duplicates, result.shed, rejection, device, sequence)


_local = threading.local()


def _init_worker(config: GatewayConfig, key: bytes, in_process: bool) -> None:
    if in_process:
        configure_logging(config.log_format)
        _exit_with_parent()
    _local.worker = _Worker(config, key)


def _exit_with_parent() -> None:
    # A worker whose gateway was SIGKILLed must not live on (holding the outbox, using a core):
    # systemd kills the whole unit, but a gateway run by hand or by tests has no such guardian.
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _process(items: Sequence[IntakeItem]) -> list[ItemResult]:
    worker: _Worker = _local.worker
    return worker.process(items)


def _close() -> None:
    worker: _Worker | None = getattr(_local, "worker", None)
    if worker is not None:
        worker.outbox.close()


def _ready() -> bool:
    return getattr(_local, "worker", None) is not None


class IntakePipeline:
    """Submits batches to the worker; batches single HTTP pushes so that they share commits."""

    def __init__(self, config: GatewayConfig, key: bytes) -> None:
        self._config = config
        self._key = key
        self._executor: Executor | None = None
        self._restart_lock = asyncio.Lock()
        self._singles: asyncio.Queue[tuple[IntakeItem, asyncio.Future[ItemResult]]] = asyncio.Queue(
            maxsize=config.state.write_queue_size
        )
        self.intake = Intake(config, Pseudonymizer(key, config.compound.compound_id))
        self.batches = 0  # handed to the worker
        self.batches_done = 0  # committed, or failed
        self.batches_lost = 0  # not committed because the worker died
        self.workers_replaced = 0
        # called with each committed batch's results, in commit order (gateway/device_watch.py)
        self.observers: list[Callable[[list[ItemResult]], None]] = []
        self._aside: set[asyncio.Future[list[ItemResult]]] = set()  # FaultSwitch.ACK_BEFORE_COMMIT only

    @property
    def batches_in_flight(self) -> int:
        """Batches handed to the worker whose commit has not finished (fault tests wait for one)."""
        return self.batches - self.batches_done

    async def __aenter__(self) -> IntakePipeline:
        await self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            # A batch still being committed finishes first; then the outbox closes in its worker.
            await asyncio.get_running_loop().run_in_executor(executor, _close)
            executor.shutdown(wait=True, cancel_futures=True)

    async def _start(self) -> None:
        config = self._config
        if config.state.worker_process:
            # spawn, not fork: this process has threads whose locks a fork would copy
            self._executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(config, self._key, True),
            )
        else:
            self._executor = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="intake",
                initializer=_init_worker,
                initargs=(config, self._key, False),
            )
        await asyncio.get_running_loop().run_in_executor(self._executor, _ready)

    async def ping(self) -> None:
        """Raise ``OutboxError`` unless the worker answers."""
        if self._executor is None:
            raise OutboxError("intake pipeline is not running")
        try:
            ready = await asyncio.get_running_loop().run_in_executor(self._executor, _ready)
        except BrokenProcessPool as exc:
            await self._replace_broken_worker()
            raise OutboxError("the intake worker died") from exc
        if not ready:
            raise OutboxError("the intake worker is not initialized")

    def start(self, items: Sequence[IntakeItem]) -> asyncio.Future[list[ItemResult]]:
        """Hand a batch to the worker; batches are processed, and committed, in submission order."""
        if self._executor is None:
            raise OutboxError("intake pipeline is not running")
        self.batches += 1
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, _process, list(items))
        except BrokenProcessPool as exc:
            # The worker died and its replacement has not started yet: fail this batch the way
            # the batches in flight failed, so that ``finish`` replaces the worker.
            future = loop.create_future()
            future.set_exception(exc)
        future.add_done_callback(self._batch_done)
        if fault_on(FaultSwitch.ACK_BEFORE_COMMIT):
            return self._answered_before_commit(future, len(items))
        return future

    def _answered_before_commit(
        self, future: asyncio.Future[list[ItemResult]], size: int
    ) -> asyncio.Future[list[ItemResult]]:
        # FaultSwitch.ACK_BEFORE_COMMIT: results (empty: nothing stored, nothing rejected) before the
        # commit, so the transports acknowledge what a crash can still lose. The real outcome is
        # awaited aside (a dead worker is still replaced) and dropped.
        aside = asyncio.ensure_future(self.finish(future))
        self._aside.add(aside)
        aside.add_done_callback(self._aside.discard)
        aside.add_done_callback(_drop_outcome)
        early: asyncio.Future[list[ItemResult]] = asyncio.get_running_loop().create_future()
        early.set_result([ItemResult() for _ in range(size)])
        return early

    def _batch_done(self, future: asyncio.Future[list[ItemResult]]) -> None:
        self.batches_done += 1
        if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
            self.batches_lost += 1

    async def finish(self, future: asyncio.Future[list[ItemResult]]) -> list[ItemResult]:
        """The results of a started batch; ``OutboxError`` if it was not committed."""
        try:
            results = await future
        except (sqlite3.Error, OSError) as exc:
            log.error("outbox_commit_failed", error=str(exc))
            raise OutboxError(f"outbox commit failed: {exc}") from exc
        except BrokenProcessPool as exc:
            await self._replace_broken_worker()
            raise OutboxError("the intake worker died; the batch was not committed") from exc
        for observe in self.observers:
            try:
                observe(results)
            except Exception:  # bookkeeping must never cost a commit its acknowledgement
                log.exception("intake_observer_crashed", observer=getattr(observe, "__qualname__", None))
        return results

    async def process(self, items: Sequence[IntakeItem]) -> list[ItemResult]:
        """Start a batch and wait for its results."""
        return await self.finish(self.start(items))

    async def submit_one(self, item: IntakeItem) -> ItemResult:
        """One payload (an HTTP push); it shares a batch, and a commit, with whatever else is waiting."""
        future: asyncio.Future[ItemResult] = asyncio.get_running_loop().create_future()
        await self._singles.put((item, future))
        return await future

    async def run_batcher(self) -> None:
        """Task: collects single submissions into batches (runs for the pipeline's lifetime)."""
        while True:
            batch = [await self._singles.get()]
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(self._singles.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                results = await self.process([item for item, _ in batch])
            except OutboxError as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _replace_broken_worker(self) -> None:
        async with self._restart_lock:  # several batches fail together; replace the worker once
            if self._executor is None:
                return
            try:
                await asyncio.get_running_loop().run_in_executor(self._executor, _ready)
            except BrokenProcessPool:
                log.error("intake_worker_died")
                self._executor.shutdown(wait=False, cancel_futures=True)
                await self._start()
                self.workers_replaced += 1
                log.warning("intake_worker_replaced", replaced=self.workers_replaced)


def _drop_outcome(future: asyncio.Future[list[ItemResult]]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so a failure is not reported as never retrieved
