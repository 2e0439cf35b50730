"""The compound's own command policy: which commands it refuses, how many it accepts, how long devices take.

The district checks the operator's role, scope and reason before it orders anything; the compound
does not trust that alone. ``[commands]`` in the gateway config says what the compound refuses
whoever asks (a gate whose remote open the property forbids: a rule with a name, reported and
audited by that name), and how fast it accepts commands at all (a burst of opens from a stolen
district token meets a limit in the compound too).

```toml
[commands]
per_device_per_minute = 6
per_compound_per_minute = 60

[[commands.policy]]
name = "east-gate-no-remote-open"
devices = ["36010400011320000021"]
actions = ["barrier_open"]
origins = ["district"]          # a local rule may still open it
```

Rules are checked in order; the first that matches refuses. A command no rule matches is allowed.
The rate limits are token buckets kept in memory: a restart starts with full buckets (at most one
extra burst), which is acceptable because every accepted command is still audited and reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field, model_validator

from foundation.commands import CommandAction
from foundation.config_types import ConfigModel
from foundation.events import GbId
from gateway.rate_limits import TokenBucket
from uplink.commands import CommandOrder, CommandOrigin

RATE_LIMIT_RULE = "rate_limit"
"""The ``rule`` a refusal for too many commands carries."""


class CommandPolicyRule(ConfigModel):
    """One refusal: commands matching every field given are refused, naming ``name``."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    devices: tuple[GbId, ...] = Field(default=(), description="empty: every device")
    actions: tuple[CommandAction, ...] = Field(default=(), description="empty: every action")
    origins: tuple[CommandOrigin, ...] = Field(
        default=(CommandOrigin.DISTRICT,),
        description="who is refused: district, rule (default: the district)",
    )
    reason: str = Field(default="", max_length=200, description="told to the issuer with the rule's name")

    def matches(self, order: CommandOrder, origin: CommandOrigin) -> bool:
        """Whether this rule refuses the order."""
        return (
            (not self.devices or order.device_id in self.devices)
            and (not self.actions or order.action in self.actions)
            and origin in self.origins
        )


class CommandsConfig(ConfigModel):
    """``[commands]``: the compound's command policy, limits and timing."""

    enabled: bool = Field(default=True, description="execute commands at all (false: every order is refused)")
    per_device_per_minute: float = Field(default=6.0, gt=0, le=600, description="commands one device accepts")
    per_compound_per_minute: float = Field(
        default=60.0, gt=0, le=6000, description="commands the compound accepts"
    )
    reply_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="how long a device may take to answer"
    )
    settle_s: dict[str, float] = Field(
        default_factory=lambda: {"barrier": 8.0, "door": 3.0, "siren": 2.0},
        description="per action family (the action's first word): how long the device may take to get"
        " to the commanded state before the read-back calls it failed (a barrier travels for seconds)",
    )
    poll_s: float = Field(default=0.5, gt=0, le=10, description="read-back interval while settling")
    workers: int = Field(default=4, ge=1, le=64, description="commands executed at once (one per device)")
    queue_size: int = Field(
        default=256, ge=1, le=100_000, description="accepted commands waiting for a worker"
    )
    keep_days: int = Field(
        default=180,
        ge=2,
        le=3650,
        description="how long the compound's command ledger keeps each command (who ordered what, why, how it"
        " ended); ids are kept at least a day longer than any order may live either way",
    )
    policy: tuple[CommandPolicyRule, ...] = ()

    @model_validator(mode="after")
    def _unique_rule_names(self) -> CommandsConfig:
        names = [r.name for r in self.policy]
        if len(names) != len(set(names)):
            raise ValueError("every [[commands.policy]] rule needs its own name")
        return self

    def settle(self, action: CommandAction) -> float:
        """How long the device may take to reach the commanded state."""
        return self.settle_s.get(action.value.split("_", 1)[0], max(self.settle_s.values(), default=5.0))


@dataclass(frozen=True)
class Refusal:
    """Why the compound refuses a command: the rule's name and the words for the issuer."""

    rule: str
    reason: str


class CommandGate:
    """The policy rules and the rate limits, applied to each order before it is queued."""

    def __init__(self, config: CommandsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._compound: dict[CommandOrigin, TokenBucket] = {}
        self._devices: dict[tuple[CommandOrigin, str], TokenBucket] = {}

    def judge(self, order: CommandOrder, origin: CommandOrigin) -> Refusal | None:
        """None: accepted (and counted against the limits); otherwise why not."""
        if not self._config.enabled:
            return Refusal(
                "commands_disabled", "this compound executes no commands ([commands] enabled = false)"
            )
        for rule in self._config.policy:
            if rule.matches(order, origin):
                told = f": {rule.reason}" if rule.reason else ""
                return Refusal(rule.name, f"refused by the compound's policy rule {rule.name!r}{told}")
        # each origin its own buckets: a burst from the district (a stolen token) must not use up
        # what the compound's own fire rule needs to sound its siren
        per_minute = self._config.per_device_per_minute
        device = self._devices.get((origin, order.device_id))
        if device is None:
            device = self._devices[(origin, order.device_id)] = TokenBucket(
                per_minute / 60, per_minute, self._clock
            )
        compound = self._compound.get(origin)
        if compound is None:
            limit = self._config.per_compound_per_minute
            compound = self._compound[origin] = TokenBucket(limit / 60, limit, self._clock)
        if device.available() < 1:
            return Refusal(
                RATE_LIMIT_RULE,
                f"device {order.device_id} accepts {per_minute:g} commands a minute from the {origin.value}",
            )
        if compound.available() < 1:
            limit = self._config.per_compound_per_minute
            return Refusal(
                RATE_LIMIT_RULE, f"this compound accepts {limit:g} commands a minute from the {origin.value}"
            )
        device.take(1)
        compound.take(1)
        return None
