"""The local rules in the running gateway: follow committed events, fire, record, act.

The intake pipeline calls ``observe`` after every committed batch (``IntakePipeline.observers``);
that only wakes the rules task, which reads what was committed since its cursor from the outbox,
in commit order, only of the kinds some rule looks at (``OutboxReader.events_after``). The outbox
is the queue: nothing is held in memory per message, a burst costs no tasks, and an event
committed before a crash is still evaluated after the restart (within ``max_event_age_s``: older
ones are skipped and counted, so a backlog never sounds a siren late).

Per batch: evaluate (``engine.py``), commit each firing as a ``rule_fired`` event through the
pipeline like any event (so it reaches the district whenever the uplink is up; deterministic ids,
so a batch redone after a crash stores each firing once), persist the states and the cursor
(``store.py``), then hand the actions to the bounded runner (``actions.py``). Intake never waits
for any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import structlog
from pydantic import ValidationError

from adapters.base import RawMessage
from foundation.cancellation import raise_if_cancelling
from foundation.events import (
    Event,
    EventKind,
    Provenance,
    RuleActionKind,
    RuleActionRef,
    RuleFiredPayload,
    RulePhase,
    utc_now,
)
from foundation.health import MetricFamilies
from foundation.identity import event_id
from gateway.config import GatewayConfig
from gateway.intake import IntakeItem
from gateway.local_rules.actions import ActionJob, ActionRunner
from gateway.local_rules.engine import Engine, Firing
from gateway.local_rules.store import RuleStore
from gateway.outbox import OutboxReader
from gateway.pipeline import IntakePipeline, ItemResult

log = structlog.get_logger(__name__)

RULES_DIALECT = "local-rules"
POLL_S = 1.0  # a missed wake-up costs at most this
CURSOR_SAVE_S = 5.0  # a cursor that moved past non-matching events only is saved this often


def firing_event(config: GatewayConfig, firing: Firing) -> Event:
    """The ``rule_fired`` event of a firing: the trigger's device and location, the rule's severity."""
    rule, trigger = firing.rule, firing.trigger
    compound = config.compound
    return Event(
        event_id=firing_event_id(firing),
        kind=EventKind.RULE_FIRED,
        district_id=compound.district_id,
        compound_id=compound.compound_id,
        device_id=trigger.device_id,
        occurred_at=datetime.fromtimestamp(firing.at, UTC),
        received_at=utc_now(),
        # a rule's severity is its alarm's; a clear goes up as the clearing event came (a recovery is no alarm)
        severity=(rule.severity if firing.phase == RulePhase.FIRED.value else None) or trigger.severity,
        source=Provenance(vendor="compound-gateway", dialect=RULES_DIALECT, event_code=rule.name),
        location=trigger.location,
        payload=RuleFiredPayload(
            rule=rule.name,
            phase=RulePhase(firing.phase),
            trigger_event_id=trigger.event_id,
            trigger_kind=trigger.kind,
            matched_events=firing.matched_events,
            actions=tuple(
                RuleActionRef(kind=RuleActionKind(a.type), target=a.target)
                for a in rule.actions
                if a.on == firing.phase
            ),
        ),
    )


class LocalRules:
    """The rules task (``run``), its wake-up (``observe``) and its metrics."""

    def __init__(
        self,
        config: GatewayConfig,
        pipeline: IntakePipeline,
        reader: OutboxReader,
        store: RuleStore,
        actions: ActionRunner,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._pipeline = pipeline
        self._reader = reader
        self._store = store
        self._actions = actions
        self._clock = clock
        self.engine = Engine(config.rules)
        self._wake = asyncio.Event()
        self.cursor = 0
        self.stale = 0
        self.unreadable = 0

    def observe(self, results: Sequence[ItemResult]) -> None:
        """An intake batch was committed: look for new events (never blocks the intake)."""
        if any(result.stored for result in results):
            self._wake.set()

    def wake(self) -> None:
        """Look again now (a test that moved its clock, a timer)."""
        self._wake.set()

    async def run(self) -> None:
        """Evaluate committed events until cancelled; state is reloaded from ``rules.db`` on each start."""
        self.engine.states, saved = await self._store.load({rule.name for rule in self.engine.rules})
        self.engine.dirty = set()
        self.cursor = saved or 0
        saved_cursor, saved_at = self.cursor, self._clock()
        kinds = self.engine.kinds
        limit = self._config.rule_engine.batch
        while True:
            raise_if_cancelling()
            self._wake.clear()
            self.cursor, rows = await self._reader.events_after(self.cursor, kinds, limit)
            now = self._clock()
            oldest = utc_now() - timedelta(seconds=self._config.rule_engine.max_event_age_s)
            firings: list[Firing] = []
            for row in rows:
                if datetime.fromisoformat(row.received_at) < oldest:
                    self.stale += 1
                    continue
                try:
                    event = Event.model_validate_json(row.body)
                except ValidationError:  # stored by an older gateway in a shape this one refuses
                    self.unreadable += 1
                    log.warning("rule_event_unreadable", event_id=row.event_id)
                    continue
                firings += self.engine.evaluate(event, now)
            firings += self.engine.due(now)
            if firings:
                await self._commit(firings)
            changed = self.engine.take_dirty()
            if changed or (self.cursor != saved_cursor and now - saved_at >= CURSOR_SAVE_S):
                await self._store.save(changed, self.cursor)
                saved_cursor, saved_at = self.cursor, now
            for firing in firings:
                self._act(firing)
            if len(rows) < limit:  # else a backlog: read on without waiting
                await self._sleep()

    async def _sleep(self) -> None:
        timeout = POLL_S
        due = self.engine.next_due()
        if due is not None:
            timeout = max(0.0, min(timeout, due - self._clock()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _commit(self, firings: list[Firing]) -> None:
        events = [firing_event(self._config, firing) for firing in firings]
        items = [IntakeItem("internal", RawMessage(e.model_dump_json().encode()), 1 << 20) for e in events]
        results = await self._pipeline.process(items)  # OutboxError: the supervisor starts us again
        for firing, event, result in zip(firings, events, results, strict=True):
            if result.rejection is not None:  # our own event refused: a bug, kept as a dead letter
                log.error("rule_event_refused", rule=firing.rule.name, reason=result.rejection.reason)
                continue
            log.warning(
                "rule_fired" if firing.phase == RulePhase.FIRED.value else "rule_cleared",
                rule=firing.rule.name,
                device=firing.trigger.device_id,
                trigger=firing.trigger.event_id,
                event_id=event.event_id,
            )

    def _act(self, firing: Firing) -> None:
        firing_id = firing_event_id(firing)
        for index, action in enumerate(firing.rule.actions):
            if action.on == firing.phase:
                self._actions.submit(
                    ActionJob(firing_id, firing.rule.name, firing.phase, index, action, firing.trigger)
                )

    def write_metrics(self, families: MetricFamilies) -> None:
        """Firings, suppressions, skipped events and action outcomes."""
        c = self.engine.counters
        for name, help_text, value in (
            ("cgw_rules_events_evaluated_total", "events the local rules looked at", c.evaluated),
            ("cgw_rules_fired_total", "rule firings", c.fired),
            ("cgw_rules_cleared_total", "rules re-armed by their clear condition", c.cleared),
            (
                "cgw_rules_suppressed_cooldown_total",
                "matches ignored during a cooldown",
                c.suppressed_cooldown,
            ),
            ("cgw_rules_suppressed_latched_total", "matches ignored until a clear", c.suppressed_latched),
            ("cgw_rules_events_stale_total", "events too old to evaluate (max_event_age_s)", self.stale),
            (
                "cgw_rules_events_unreadable_total",
                "stored events this gateway could not read",
                self.unreadable,
            ),
            (
                "cgw_rules_actions_dropped_total",
                "actions failed because the queue was full",
                self._actions.dropped,
            ),
        ):
            families.counter(name, help_text, value)
        families.counter(
            "cgw_rules_actions_total",
            "rule actions by rule, type and outcome",
            [
                ({"rule": rule, "type": kind, "outcome": "ok" if ok else "failed"}, float(n))
                for (rule, kind, ok), n in sorted(self._actions.outcomes.items())
            ],
        )


def firing_event_id(firing: Firing) -> str:
    """The id of the firing's ``rule_fired`` event (what its actions are recorded under)."""
    trigger = firing.trigger
    return event_id(trigger.device_id, RULES_DIALECT, f"{firing.rule.name}|{firing.phase}|{trigger.event_id}")
