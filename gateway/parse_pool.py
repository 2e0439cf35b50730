"""Parsing off the event loop: a process pool that turns batches of raw payloads into outcomes.

The event loop of the gateway already spends most of a core decoding MQTT packets and moving
acknowledgements; parsing, validating and serializing events is the other half of the work, so it
runs in a worker process (the second core) on batches, which keeps the hand-over cheap. Outcomes
come back in order. ``workers = 0`` parses inline (for tools and small installations).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType

import structlog

from gateway.config import GatewayConfig
from gateway.errors import TransportError
from gateway.identity import Pseudonymizer
from gateway.intake import Intake, IntakeItem, Outcome
from gateway.logging import configure_logging

log = structlog.get_logger(__name__)

_worker_intake: Intake | None = None


def _init_worker(config: GatewayConfig, key: bytes) -> None:
    global _worker_intake  # noqa: PLW0603 - the per-process parser state of a pool worker
    configure_logging(config.log_format)
    _worker_intake = Intake(config, Pseudonymizer(key, config.compound.compound_id))


def _classify_batch(items: Sequence[IntakeItem]) -> list[Outcome]:
    if _worker_intake is None:  # pragma: no cover - the initializer always ran
        raise RuntimeError("parser worker not initialized")
    return [_worker_intake.classify(item) for item in items]


def _ready() -> bool:
    return _worker_intake is not None


class ParsePool:
    """Classifies batches of intake items, in a worker process or inline."""

    def __init__(self, config: GatewayConfig, key: bytes, *, workers: int) -> None:
        self._config = config
        self._key = key
        self._workers = workers
        self._inline = Intake(config, Pseudonymizer(key, config.compound.compound_id))
        self._executor: ProcessPoolExecutor | None = None
        self._restart_lock = asyncio.Lock()

    async def __aenter__(self) -> ParsePool:
        if self._workers > 0:
            await self._start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _start(self) -> None:
        # spawn, not fork: the parent has threads (the outbox writer) whose locks a fork would copy
        self._executor = ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._config, self._key),
        )
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, _ready) for _ in range(self._workers)))

    @property
    def intake(self) -> Intake:
        """The in-process intake (same configuration; for topic filters and inline parsing)."""
        return self._inline

    def submit(self, items: Sequence[IntakeItem]) -> asyncio.Future[list[Outcome]]:
        """Start classifying a batch; the future resolves to the outcomes, in order."""
        loop = asyncio.get_running_loop()
        if self._executor is None:
            future: asyncio.Future[list[Outcome]] = loop.create_future()
            future.set_result([self._inline.classify(item) for item in items])
            return future
        return loop.run_in_executor(self._executor, _classify_batch, list(items))

    async def result(self, future: asyncio.Future[list[Outcome]]) -> list[Outcome]:
        """Await a submitted batch. A crashed worker is replaced and the batch fails."""
        try:
            return await future
        except BrokenProcessPool as exc:
            await self._replace_broken_pool()
            raise TransportError("parser worker died; the batch will be redelivered or retried") from exc

    async def _replace_broken_pool(self) -> None:
        async with self._restart_lock:  # several batches fail together; replace the pool once
            if self._executor is None:
                return
            try:
                await asyncio.get_running_loop().run_in_executor(self._executor, _ready)
            except BrokenProcessPool:
                log.error("parser_worker_died")
                self._executor.shutdown(wait=False, cancel_futures=True)
                await self._start()

    async def classify(self, items: Sequence[IntakeItem]) -> list[Outcome]:
        """Outcomes for the items, in order."""
        return await self.result(self.submit(items))
