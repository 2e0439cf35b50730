"""Deciding when rules fire: matching, debounce windows, cooldowns and the clear latch. Pure, no I/O.

State is kept per rule and device (``RuleState``): one shed sensor's alarms never debounce or cool
down another's. Times are the engine's clock (wall time, so persisted timers mean the same after a
restart), never the device's ``occurred_at``: a device clock that is off must not fire or mute a
rule. ``gateway/local_rules/service.py`` persists the states this module changes (``dirty``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from foundation.events import Event
from gateway.local_rules.config import SEVERITY_ORDER, EventMatch, RuleConfig

StateKey = tuple[str, str]
"""(rule name, device id)."""


@dataclass
class RuleState:
    """Where one rule stands for one device.

    Attributes:
        window_opened: when the debounce window opened (engine clock), None: no window.
        window_count: matching events counted in the window.
        pending: the last matching event of the window (the trigger if a timer fires the rule).
        last_fired: when the rule last fired (the cooldown runs from here).
        latched: fired and waiting for its clear condition (rules with one).
    """

    window_opened: float | None = None
    window_count: int = 0
    pending: Event | None = None
    last_fired: float | None = None
    latched: bool = False

    def close_window(self) -> None:
        """Forget the debounce window."""
        self.window_opened, self.window_count, self.pending = None, 0, None


@dataclass(frozen=True, slots=True)
class Firing:
    """A rule fired (or cleared) on ``trigger`` at ``at`` (engine clock)."""

    rule: RuleConfig
    phase: str  # "fired" | "cleared" (foundation.events.RulePhase values)
    trigger: Event
    matched_events: int
    at: float


@dataclass
class EngineCounters:
    """What the engine saw, for /metrics."""

    evaluated: int = 0
    fired: int = 0
    cleared: int = 0
    suppressed_cooldown: int = 0
    suppressed_latched: int = 0


def matches(match: EventMatch, event: Event, payload: dict[str, Any]) -> bool:
    """Whether ``event`` (with its payload dumped in JSON mode) passes ``match``."""
    if event.kind is not match.kind:
        return False
    if match.devices and event.device_id not in match.devices:
        return False
    if match.severity_at_least is not None and (
        SEVERITY_ORDER[event.severity] < SEVERITY_ORDER[match.severity_at_least]
    ):
        return False
    if match.location is not None:
        location = event.location
        for name in ("building", "unit", "gate"):
            wanted = getattr(match.location, name)
            if wanted is not None and (location is None or getattr(location, name) != wanted):
                return False
    return all(condition.holds(payload) for condition in match.conditions)


@dataclass
class Engine:
    """The rules and their states; ``evaluate`` per event, ``due`` for debounce timers."""

    rules: tuple[RuleConfig, ...]
    states: dict[StateKey, RuleState] = field(default_factory=dict)
    dirty: set[StateKey] = field(default_factory=set)
    counters: EngineCounters = field(default_factory=EngineCounters)

    def __post_init__(self) -> None:
        self.rules = tuple(rule for rule in self.rules if rule.enabled)

    @property
    def kinds(self) -> frozenset[str]:
        """Event kinds some rule (or clear condition) looks at."""
        kinds = {rule.match.kind.value for rule in self.rules}
        kinds |= {rule.clear.kind.value for rule in self.rules if rule.clear is not None}
        return frozenset(kinds)

    def _state(self, key: StateKey) -> RuleState:
        self.dirty.add(key)
        return self.states.setdefault(key, RuleState())

    def evaluate(self, event: Event, now: float) -> list[Firing]:
        """Every firing ``event`` causes at ``now``; states change accordingly (and are marked dirty)."""
        self.counters.evaluated += 1
        payload = event.payload.model_dump(mode="json")
        firings: list[Firing] = []
        for rule in self.rules:
            key = (rule.name, event.device_id)
            if rule.clear is not None and matches(rule.clear, event, payload):
                # clear wins over match when an event would do both: "recovered" must re-arm
                if key in self.states:
                    firings += self._clear(rule, self._state(key), event, now)
                continue
            if matches(rule.match, event, payload):
                firings += self._matched(rule, self._state(key), event, now)
        return firings

    def _clear(self, rule: RuleConfig, state: RuleState, event: Event, now: float) -> list[Firing]:
        state.close_window()
        if not state.latched:
            return []
        state.latched = False
        self.counters.cleared += 1
        return [Firing(rule, "cleared", event, 1, now)]

    def _matched(self, rule: RuleConfig, state: RuleState, event: Event, now: float) -> list[Firing]:
        if state.latched:
            self.counters.suppressed_latched += 1
            return []
        if state.last_fired is not None and now < state.last_fired + rule.cooldown_s:
            self.counters.suppressed_cooldown += 1
            return []
        debounce = rule.debounce
        if (
            state.window_opened is not None
            and state.window_count < debounce.events
            and now > state.window_opened + debounce.within_s
        ):
            state.close_window()  # too few events in time: this one starts afresh
        if state.window_opened is None:
            state.window_opened = now
        state.window_count += 1
        state.pending = event
        if state.window_count >= debounce.events and now >= state.window_opened + debounce.hold_s:
            return [self._fire(rule, state, event, now)]
        return []

    def _fire(self, rule: RuleConfig, state: RuleState, trigger: Event, now: float) -> Firing:
        firing = Firing(rule, "fired", trigger, state.window_count, now)
        state.close_window()
        state.last_fired = now
        state.latched = rule.clear is not None
        self.counters.fired += 1
        return firing

    def _timers(self) -> Iterable[tuple[float, RuleConfig, StateKey, RuleState]]:
        by_name = {rule.name: rule for rule in self.rules}
        for key, state in self.states.items():
            rule = by_name.get(key[0])
            if (
                rule is None
                or state.window_opened is None
                or state.pending is None
                or state.window_count < rule.debounce.events
            ):
                continue
            yield state.window_opened + rule.debounce.hold_s, rule, key, state

    def due(self, now: float) -> list[Firing]:
        """Rules whose debounce hold has run out at ``now`` with all their events counted."""
        firings = []
        for at, rule, key, state in list(self._timers()):
            if at <= now and state.pending is not None:
                self.dirty.add(key)
                firings.append(self._fire(rule, state, state.pending, now))
        return firings

    def next_due(self) -> float | None:
        """When the next debounce timer runs out (engine clock), if one is set."""
        return min((at for at, _, _, _ in self._timers()), default=None)

    def take_dirty(self) -> dict[StateKey, RuleState | None]:
        """The states changed since the last call (None: forgotten), to persist."""
        changed = {key: self.states.get(key) for key in self.dirty}
        self.dirty = set()
        return changed
