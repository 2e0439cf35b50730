"""The intake pipeline: batches of raw payloads in, parsed and durably committed outcomes out.

One worker owns the parsers and the outbox. By default it is a separate process: the gateway's
event loop already spends most of a core decoding MQTT packets and sending acknowledgements, so
parsing, validating, serializing and committing run on the other core. A result exists only after
its batch was committed (SQLite WAL, ``synchronous=FULL``), so a transport may acknowledge on it.

The process is spoken to over a socket pair, from the event loop itself (``_ProcessWorker``, an
asyncio protocol: no pool manager or feeder threads): requests are length-prefixed pickles of plain
tuples, answers come back one per request, in request order. The worker reads every request already
waiting before it commits, so batches that queued while it was busy share one transaction and one
fsync (group commit), still in submission order. If the worker dies, every request it had not
answered fails (``WorkerDiedError``, so nothing of it is acknowledged) and the next caller to see
it replaces the worker; a worker whose gateway is gone reads EOF and exits.

With ``worker_process = false`` the same worker is a thread of the gateway process (tools, tests,
tiny installations). Either way there is exactly one outbox writer, and batches commit in the order
they were submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import socket
import sqlite3
import struct
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

import structlog

from adapters.base import MediaBlob, RawMessage
from foundation.cancellation import consume_result
from foundation.errors import OutboxError, Rejection
from foundation.fault_switches import FaultSwitch, fault_on
from foundation.identity import Pseudonymizer
from foundation.logging import configure_logging
from gateway.config import GatewayConfig
from gateway.intake import Intake, IntakeItem
from gateway.outbox import Outbox, StoreResult

log = structlog.get_logger(__name__)

BATCH_MAX = 256
GROUP_MAX = 16  # batches the worker commits in one transaction at most
PROCESS_EXIT_S = 30.0


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
            fetch_devices=[d.id for d in config.devices if d.media_url is not None],
        ).open()

    def process(self, items: Sequence[IntakeItem]) -> list[ItemResult]:
        return self.process_group([items])[0]

    def process_group(self, batches: Sequence[Sequence[IntakeItem]]) -> list[list[ItemResult]]:
        """Several batches in one transaction (group commit), results per batch, in order."""
        outcomes = [[self.intake.classify(item) for item in items] for items in batches]
        results = iter(self.outbox.commit([o.operation for batch in outcomes for o in batch]))
        return [
            [_item_result(next(results), o.rejection, o.device, o.sequence) for o in batch]
            for batch in outcomes
        ]


def _item_result(
    result: StoreResult | None, rejection: Rejection | None, device: str | None, sequence: int | None
) -> ItemResult:
    if result is None:
        return ItemResult(rejection=rejection, device=device, sequence=sequence)
    return ItemResult(result.stored, result.duplicates, result.shed, rejection, device, sequence)


_local = threading.local()


def _init_worker(config: GatewayConfig, key: bytes) -> None:
    _local.worker = _Worker(config, key)


def _process(items: Sequence[IntakeItem]) -> list[ItemResult]:
    worker: _Worker = _local.worker
    return worker.process(items)


def _close() -> None:
    worker: _Worker | None = getattr(_local, "worker", None)
    if worker is not None:
        worker.outbox.close()


def _ready() -> bool:
    return getattr(_local, "worker", None) is not None


class WorkerDiedError(OutboxError):
    """The intake worker process ended; what it had not answered was not (known to be) committed."""


class _ThreadWorker:
    """The worker as a thread of this process (``worker_process = false``)."""

    dead = False  # a thread does not die on its own

    def __init__(self, config: GatewayConfig, key: bytes) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="intake", initializer=_init_worker, initargs=(config, key)
        )

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, _ready)

    def submit(self, items: list[IntakeItem]) -> asyncio.Future[list[ItemResult]]:
        return asyncio.get_running_loop().run_in_executor(self._executor, _process, items)

    async def ping(self) -> bool:
        return await asyncio.get_running_loop().run_in_executor(self._executor, _ready)

    async def close(self) -> None:
        # A batch still being committed finishes first; then the outbox closes in its thread.
        await asyncio.get_running_loop().run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True, cancel_futures=True)


# --- the worker process: one socket pair, length-prefixed pickles, answers in request order ---------
#
# Requests: ("batch", [item tuple, ...]) | ("ping",) | ("close",). Each frame from the worker is a
# list of answers, one per request, in request order: ("ok", value) or ("error", exception). The
# worker reads every request already waiting before it commits, so batches that queued while it
# was busy share one transaction (group commit: one fsync for all of them), still in submission
# order. The event loop reads the answers in a protocol callback: no threads, no pool manager.

_HEADER = struct.Struct("!i")  # multiprocessing.connection's framing, which the worker reads with
_LONG_HEADER = struct.Struct("!iQ")  # Connection.recv_bytes: -1 then a 64-bit length beyond 2 GiB
_SHORT_MAX = 0x7FFFFFFF


def _frame(value: object) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > _SHORT_MAX:
        return _LONG_HEADER.pack(-1, len(data)) + data
    return _HEADER.pack(len(data)) + data


ItemTuple = tuple[
    str, bytes, str | None, str | None, int, str | None, bool, int | None, tuple[MediaBlob, ...]
]
ResultTuple = tuple[
    tuple[str, ...], tuple[str, ...], tuple[str, ...], Rejection | None, str | None, int | None
]


def _to_tuple(item: IntakeItem) -> ItemTuple:
    # Plain tuples pickle in C; frozen slotted dataclasses go through Python-level __getstate__.
    raw = item.raw
    return (
        item.transport,
        raw.body,
        raw.content_type,
        raw.topic,
        item.max_bytes,
        item.target,
        item.oversized,
        item.declared_size,
        item.attachments,
    )


def _from_tuple(t: ItemTuple) -> IntakeItem:
    transport, body, content_type, topic, max_bytes, target, oversized, declared, attachments = t
    return IntakeItem(
        transport,  # type: ignore[arg-type]  # it was an IntakeItem's transport
        RawMessage(body, content_type=content_type, topic=topic),
        max_bytes,
        target,
        oversized,
        declared,
        attachments,
    )


def _result_tuple(r: ItemResult) -> ResultTuple:
    return (r.stored, r.duplicates, r.shed, r.rejection, r.device, r.sequence)


def _portable(exc: BaseException) -> BaseException:
    try:
        # both ways: some exceptions pickle but cannot be rebuilt (keyword-only constructors), and
        # one failing to load in the gateway would look like a dead worker
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes, just made
    except Exception:  # noqa: BLE001 - any exception that does not survive the trip is described instead
        return OutboxError(f"{type(exc).__name__}: {exc}")
    return exc


def _serve(conn: Connection, config: GatewayConfig, key: bytes) -> None:
    """The worker process's main: answer requests until told to close or the gateway is gone."""
    configure_logging(config.log_format)
    try:
        worker = _Worker(config, key)
    except Exception as exc:  # noqa: BLE001 - reported to the gateway, which fails to start with it
        conn.send_bytes(pickle.dumps([("error", _portable(exc))]))
        return
    conn.send_bytes(pickle.dumps([("ok", True)]))
    while True:
        try:
            requests = [pickle.loads(conn.recv_bytes())]  # noqa: S301 - from our own gateway process
            while len(requests) < GROUP_MAX and conn.poll():
                requests.append(pickle.loads(conn.recv_bytes()))  # noqa: S301 - as above
        except (EOFError, OSError):
            # The gateway is gone (SIGKILLed, or it closed the pair): nothing more will come, and
            # nothing unanswered was acknowledged to anyone. A worker must not outlive its gateway.
            worker.outbox.close()
            return
        answers: list[tuple[str, object]] = []
        batches = [[_from_tuple(t) for t in r[1]] for r in requests if r[0] == "batch"]
        if batches:
            try:
                grouped = worker.process_group(batches)
                done: list[tuple[str, object]] = [("ok", [_result_tuple(x) for x in b]) for b in grouped]
            except Exception as exc:  # noqa: BLE001 - the commit failed: every batch of the group fails
                failed = _portable(exc)
                done = [("error", failed)] * len(batches)
            results = iter(done)
        closing = False
        for request in requests:
            if request[0] == "batch":
                answers.append(next(results))
            elif request[0] == "ping":
                answers.append(("ok", True))
            else:
                worker.outbox.close()
                answers.append(("ok", True))
                closing = True
                break
        try:
            conn.send_bytes(pickle.dumps(answers, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:  # the gateway died while we committed: nobody is left to answer
            worker.outbox.close()
            return
        if closing:
            return


class _ProcessWorker(asyncio.Protocol):
    """The worker as a spawned process, spoken to over a socket pair from the event loop."""

    def __init__(self, config: GatewayConfig, key: bytes) -> None:
        self._config = config
        self._key = key
        self._transport: asyncio.Transport | None = None
        self._process: BaseProcess | None = None
        self._waiting: deque[tuple[asyncio.Future[Any], bool]] = deque()  # (future, is a batch)
        self._buffer = bytearray()
        self.dead = False

    async def open(self) -> None:
        # spawn, not fork: this process has threads whose locks a fork would copy
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(
            target=_serve, args=(theirs, self._config, self._key), name="intake-worker", daemon=True
        )
        self._process = process
        try:
            await asyncio.to_thread(process.start)  # writes the pickled config to the child
        finally:
            theirs.close()
        sock = socket.socket(fileno=os.dup(ours.fileno()))
        ours.close()
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((ready, False))  # the worker's first answer: started, or why not
        await loop.create_unix_connection(lambda: self, sock=sock)
        try:
            await ready
        except BaseException as exc:
            await self.close()  # the worker said why (or died) and exits; reap it
            if isinstance(exc, WorkerDiedError):
                raise OutboxError("the intake worker did not start (see its log above)") from exc
            raise

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a unix stream: an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer)
            end = _HEADER.size + size
            if len(buffer) < end:
                return
            with memoryview(buffer) as view:  # released before the buffer is resized
                answers = pickle.loads(view[_HEADER.size : end])  # noqa: S301 - our worker
            del buffer[:end]
            for kind, value in answers:
                future, is_batch = self._waiting.popleft()
                if future.done():
                    continue  # its caller gave up waiting
                if kind == "error":
                    future.set_exception(value)
                elif is_batch:
                    future.set_result([ItemResult(*t) for t in value])
                else:
                    future.set_result(value)

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        self._transport = None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(WorkerDiedError("the intake worker died"))

    # the worker's interface

    def _request(self, request: tuple[Any, ...], *, batch: bool) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.dead or self._transport is None:
            future.set_exception(WorkerDiedError("the intake worker died"))
            return future
        self._waiting.append((future, batch))
        self._transport.write(_frame(request))
        return future

    def submit(self, items: list[IntakeItem]) -> asyncio.Future[list[ItemResult]]:
        return self._request(("batch", [_to_tuple(item) for item in items]), batch=True)

    async def ping(self) -> bool:
        ready: bool = await self._request(("ping",), batch=False)
        return ready

    async def close(self) -> None:
        if not self.dead:
            # batches already submitted are answered first; then the outbox closes in the worker
            with contextlib.suppress(WorkerDiedError):  # it died meanwhile: nothing left to close
                await self._request(("close",), batch=False)
        if self._transport is not None:
            self._transport.close()
        process = self._process
        if process is not None:
            await asyncio.to_thread(process.join, PROCESS_EXIT_S)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join)


class IntakePipeline:
    """Submits batches to the worker; batches single HTTP pushes so that they share commits."""

    def __init__(self, config: GatewayConfig, key: bytes) -> None:
        self._config = config
        self._key = key
        self._worker: _ProcessWorker | _ThreadWorker | None = None
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
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.close()

    async def _start(self) -> None:
        if self._config.state.worker_process:
            worker: _ProcessWorker | _ThreadWorker = _ProcessWorker(self._config, self._key)
        else:
            worker = _ThreadWorker(self._config, self._key)
        await worker.open()
        self._worker = worker

    async def ping(self) -> None:
        """Raise ``OutboxError`` unless the worker answers."""
        if self._worker is None:
            raise OutboxError("intake pipeline is not running")
        try:
            ready = await self._worker.ping()
        except WorkerDiedError as exc:
            await self._replace_broken_worker()
            raise OutboxError("the intake worker died") from exc
        if not ready:
            raise OutboxError("the intake worker is not initialized")

    def start(self, items: Sequence[IntakeItem]) -> asyncio.Future[list[ItemResult]]:
        """Hand a batch to the worker; batches are processed, and committed, in submission order."""
        if self._worker is None:
            raise OutboxError("intake pipeline is not running")
        self.batches += 1
        future = self._worker.submit(list(items))  # a dead worker's fails at once (WorkerDiedError)
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
        aside.add_done_callback(consume_result)
        early: asyncio.Future[list[ItemResult]] = asyncio.get_running_loop().create_future()
        early.set_result([ItemResult() for _ in range(size)])
        return early

    def _batch_done(self, future: asyncio.Future[list[ItemResult]]) -> None:
        self.batches_done += 1
        if not future.cancelled() and isinstance(future.exception(), WorkerDiedError):
            self.batches_lost += 1

    async def finish(self, future: asyncio.Future[list[ItemResult]]) -> list[ItemResult]:
        """The results of a started batch; ``OutboxError`` if it was not committed."""
        try:
            results = await future
        except (sqlite3.Error, OSError) as exc:
            log.error("outbox_commit_failed", error=str(exc))
            raise OutboxError(f"outbox commit failed: {exc}") from exc
        except WorkerDiedError as exc:
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
            worker = self._worker
            if worker is None or not worker.dead:
                return
            log.error("intake_worker_died")
            await worker.close()  # reaps the dead process
            await self._start()
            self.workers_replaced += 1
            log.warning("intake_worker_replaced", replaced=self.workers_replaced)
