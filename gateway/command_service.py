"""The compound's command service: orders in, the policy, the queue, the workers, the reports up.

* ``receive``: one message of the compound's order topic (from the uplink connection). A bad order
  is counted and logged with the field, never raised. A new id is admitted to the ledger first (so
  a second delivery changes nothing), then judged: an unknown device, an action its dialect does
  not take, the compound's policy rules and its rate limits refuse it (``refused``, with the rule);
  an accepted one is queued.
* ``submit``: the same for the compound's own local rules (origin ``rule``), without the uplink.
* ``run``: the workers. On start, queued commands of the ledger are taken up again and in-flight
  ones failed (never re-sent). The queue is bounded: when it is full a command stays queued in the
  ledger and the periodic sweep queues it later (nothing is lost, it only waits; its expiry still
  holds). Each command is claimed (``sent``) in the ledger before it goes to the device.
* ``run_reports``: while the uplink is connected, every state the ledger recorded goes up to the
  district (QoS 1), marked once the broker acknowledged it; what could not go waits in the ledger.

The service runs whether or not the district is reachable: local rules command devices with the
uplink down, and their reports go up once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import NoReturn

import structlog

from adapters import COMMAND_ENCODERS
from adapters.commands import Command
from foundation.errors import PayloadRejected
from foundation.events import utc_now
from foundation.health import Health, MetricFamilies
from gateway.command_executor import CommandExecutor
from gateway.command_ledger import Admission, CommandLedger, Step
from gateway.command_policy import CommandGate, Refusal
from gateway.config import GatewayConfig
from gateway.local_rules.actions import Outcome
from uplink.commands import (
    FINAL_STATES,
    CommandOrder,
    CommandOrigin,
    CommandState,
    decode_order,
    encode_json,
    order_topic,
    report_topic,
)

log = structlog.get_logger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
"""Publish one message to the district broker (QoS 1; returns once acknowledged)."""

SWEEP_S = 15.0
PURGE_EVERY = timedelta(hours=6)
REPORT_POLL_S = 0.5
MAX_CLOCK_SKEW = timedelta(minutes=5)
"""How far ahead of the compound's clock an order's issue time may lie."""


class CommandService:
    """Receives orders, enforces the compound's policy, executes through workers, reports states."""

    def __init__(
        self,
        config: GatewayConfig,
        prefix: str,
        ledger: CommandLedger,
        executor: CommandExecutor,
        *,
        gate: CommandGate | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        compound = config.compound
        self.order_topic = order_topic(prefix, compound.district_id, compound.compound_id)
        self.report_topic = report_topic(prefix, compound.district_id, compound.compound_id)
        self._config = config
        self._devices = {d.id: d for d in config.devices}
        self._ledger = ledger
        self._executor = executor
        self._gate = gate or CommandGate(config.commands)
        self._clock = clock
        self._queue: asyncio.Queue[str] = asyncio.Queue(config.commands.queue_size)
        self._in_queue: set[str] = set()  # what the queue holds (the sweep does not queue it twice)
        self._reports_due = asyncio.Event()
        self.bad_orders = 0
        self.duplicates = 0
        self.overflowed = 0
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (state, rule or "") of final states here
        self._finals: dict[str, asyncio.Future[Step]] = {}  # what a local rule waits for, by command id

    # --- orders in ---------------------------------------------------------------------------------

    async def receive(self, payload: bytes) -> None:
        """One message of the order topic: admit, judge, queue; never raises for bad input."""
        try:
            order = decode_order(payload)
        except PayloadRejected as exc:
            self.bad_orders += 1
            log.warning(
                "command_order_rejected",
                reason=exc.rejection.reason,
                field=exc.rejection.field,
                detail=str(exc),
            )
            return
        await self.submit(order, CommandOrigin.DISTRICT)

    async def submit(self, order: CommandOrder, origin: CommandOrigin) -> Admission:
        """Admit an order (once per id), judge it, queue it if accepted; where it stands."""
        known = await self._ledger.known(order.command_id)
        if known is not None:
            self.duplicates += 1
            log.info("command_duplicate", command_id=order.command_id, state=known.value)
            return Admission(new=False, state=known)
        now = self._clock()
        refusal = None if order.expired(now) else self._judge(order, origin, now)
        admitted = await self._ledger.admit(
            order, origin, now, refused=(refusal.rule, refusal.reason) if refusal else None
        )
        self._reports_due.set()
        if not admitted.new:  # the same id, admitted between the two steps
            self.duplicates += 1
            return admitted
        log.info(
            "command_received",
            command_id=order.command_id,
            device=order.device_id,
            action=order.action.value,
            origin=origin.value,
            issued_by=order.issued_by,
            reason=order.reason,
            state=admitted.state.value,
            rule=refusal.rule if refusal else None,
        )
        if admitted.state is CommandState.QUEUED:
            self._enqueue(order.command_id)
        else:
            self.outcomes[(admitted.state.value, refusal.rule if refusal else "")] += 1
        return admitted

    def _judge(self, order: CommandOrder, origin: CommandOrigin, now: datetime) -> Refusal | None:
        if order.issued_at > now + MAX_CLOCK_SKEW:
            # an order from the future would outlive its id in the ledger; the clocks disagree
            return Refusal(
                "clock_skew",
                f"issued at {order.issued_at.isoformat()}, after this compound's {now.isoformat()}",
            )
        device = self._devices.get(order.device_id)
        if device is None:
            return Refusal("unknown_device", f"device {order.device_id} is not in this compound's inventory")
        encoder = COMMAND_ENCODERS.get(device.dialect)
        if encoder is None or order.action not in encoder.actions:
            return Refusal(
                "unsupported",
                f"device {order.device_id} ({device.dialect}) does not take {order.action.value}",
            )
        return self._gate.judge(order, origin)

    def _enqueue(self, command_id: str) -> None:
        if command_id in self._in_queue:
            return
        try:
            self._queue.put_nowait(command_id)
            self._in_queue.add(command_id)
        except asyncio.QueueFull:
            # it stays queued in the ledger; the sweep queues it when there is room
            self.overflowed += 1
            log.warning("command_queue_full", command_id=command_id, size=self._queue.maxsize)

    # --- the workers -----------------------------------------------------------------------------------

    async def run(self) -> NoReturn:
        """Take up the ledger's queued commands, then execute and sweep until cancelled."""
        queued, interrupted = await self._ledger.recover(self._clock())
        if interrupted:
            log.warning(
                "command_interrupted", count=interrupted, detail="failed, not sent again (at most once)"
            )
        for entry in queued:
            self._enqueue(entry.order.command_id)
        self._reports_due.set()
        async with asyncio.TaskGroup() as workers:
            for number in range(self._config.commands.workers):
                workers.create_task(self._work(), name=f"command-worker-{number}")
            workers.create_task(self._sweep(), name="command-sweep")
        raise AssertionError("the command workers returned")  # pragma: no cover - they never do

    async def _work(self) -> NoReturn:
        while True:
            command_id = await self._queue.get()
            self._in_queue.discard(command_id)
            entry = await self._ledger.entry(command_id)
            if entry is None or entry.state is not CommandState.QUEUED:
                await self._settle_waiter(command_id)
                continue
            if not self._executor.takes(entry.order.device_id):  # removed from the config since
                gone = Step(
                    CommandState.FAILED, f"device {entry.order.device_id} is no longer in the inventory"
                )
                await self._ledger.advance(command_id, gone, self._clock())
                await self._settle_waiter(command_id)
                continue
            # the device's lock before the claim: the expiry is checked when it is really its turn
            async with self._executor.device_lock(entry.order.device_id):
                claimed = await self._ledger.claim(command_id, self._clock())
                self._reports_due.set()
                if claimed is None:  # expired while it waited, or taken by another worker
                    await self._settle_waiter(command_id)
                    continue
                outcome = await self._executor.execute(claimed)
            self.outcomes[(outcome.state.value, "")] += 1
            self._reports_due.set()
            waiting = self._finals.pop(command_id, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(outcome)

    async def _sweep(self) -> NoReturn:
        last_purge = self._clock()
        while True:
            await asyncio.sleep(SWEEP_S)
            for entry in await self._ledger.queued():
                if self._queue.full():
                    break
                self._enqueue(entry.order.command_id)
            if self._clock() - last_purge >= PURGE_EVERY:
                last_purge = self._clock()
                gone = await self._ledger.purge(last_purge, timedelta(days=self._config.commands.keep_days))
                log.info("command_ledger_purged", commands=gone)

    async def _settle_waiter(self, command_id: str) -> None:
        # only a final state answers a local rule (another worker may still be executing it)
        waiting = self._finals.get(command_id)
        if waiting is None or waiting.done():
            return
        entry = await self._ledger.entry(command_id)
        if entry is None:
            waiting.set_result(Step(CommandState.FAILED, "not in the ledger"))
        elif entry.state in FINAL_STATES:
            waiting.set_result(Step(entry.state, entry.detail))

    async def execute_local(self, order: CommandOrder, timeout_s: float) -> Step:
        """A local rule's command: admitted like any order (origin ``rule``), then its final state.

        The same id again (a firing replayed after a crash) is not executed again: its state now.
        """
        waiting: asyncio.Future[Step] = asyncio.get_running_loop().create_future()
        self._finals[order.command_id] = waiting
        try:
            admitted = await self.submit(order, CommandOrigin.RULE)
            if admitted.state is not CommandState.QUEUED:
                entry = await self._ledger.entry(order.command_id)
                return Step(admitted.state, entry.detail if entry is not None else None)
            async with asyncio.timeout(timeout_s):
                return await waiting
        finally:
            self._finals.pop(order.command_id, None)

    # --- reports up --------------------------------------------------------------------------------------

    async def run_reports(self, publish: Publish) -> NoReturn:
        """Send every unreported state up, oldest first, while the connection lasts (raises when it fails)."""
        while True:
            self._reports_due.clear()
            reports = await self._ledger.unreported()
            for seq, report in reports:
                await publish(self.report_topic, encode_json(report))
                await self._ledger.mark_reported([seq])
            if reports:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REPORT_POLL_S * 20):
                    await self._reports_due.wait()

    # --- metrics -----------------------------------------------------------------------------------------

    def expose(self, health: Health) -> None:
        """Its metrics, written at each scrape."""
        health.writers.append(self.write_metrics)
        health.expose(
            "cgw_command_bad_orders_total", "command orders that could not be read", lambda: self.bad_orders
        )
        health.expose(
            "cgw_command_duplicate_orders_total",
            "command orders whose id was seen before (not executed again)",
            lambda: self.duplicates,
        )
        health.expose(
            "cgw_command_queue_overflow_total",
            "accepted commands left waiting in the ledger (queue full)",
            lambda: self.overflowed,
        )

    def write_metrics(self, families: MetricFamilies) -> None:
        """Commands by the state they ended in here, and the refusing rule."""
        families.counter(
            "cgw_commands_total",
            "commands that reached a final state in this run, by state and refusing rule",
            [({"state": s, "rule": r}, n) for (s, r), n in sorted(self.outcomes.items())],
        )
        families.gauge(
            "cgw_command_queue_depth", "accepted commands waiting for a worker", self._queue.qsize()
        )


class RuleCommands:
    """The local rules' command port: their commands go through this service like the district's.

    Same ledger (at most once per id: a replayed firing asks for the same id), same policy (rules
    naming ``origins = ["rule"]`` refuse them), same read-back; an action is ok only once verified.
    """

    def __init__(
        self, service: CommandService, lifetime: timedelta, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._service = service
        self._lifetime = lifetime
        self._clock = clock

    async def send(self, device_id: str, command: Command, rule: str) -> Outcome:
        """Execute the rule's command; ok when the device's state was read back as commanded."""
        now = self._clock()
        order = CommandOrder(
            command_id=command.command_id,
            device_id=device_id,
            action=command.action,
            channel=command.channel,
            clip=command.clip,
            issued_by=rule[:64],
            role="rule",
            reason=f"local rule {rule}"[:256],
            issued_at=now,
            expires_at=now + self._lifetime,
        )
        try:
            step = await self._service.execute_local(order, self._lifetime.total_seconds())
        except TimeoutError:
            return Outcome(False, f"command {command.command_id}: no final state within {self._lifetime}")
        detail = f"command {command.command_id} {step.state.value}" + (
            f": {step.detail}" if step.detail else ""
        )
        return Outcome(step.state is CommandState.VERIFIED, detail[:256])
