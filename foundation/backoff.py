"""Jittered, capped exponential backoff for reconnects."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field


class BackoffConfig(BaseModel):
    """Reconnect pacing: exponential, jittered, capped."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    initial_s: float = Field(default=0.5, gt=0)
    max_s: float = Field(default=30.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1.0)


class Backoff:
    """Full-jitter exponential backoff: a random delay in [0, min(cap, initial * multiplier**n)].

    Full jitter keeps hundreds of gateways from reconnecting in lockstep after a district outage.
    """

    def __init__(self, config: BackoffConfig, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._attempt = 0

    def reset(self) -> None:
        """Call once a connection is established."""
        self._attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt (grows until the cap)."""
        ceiling = min(self._config.max_s, self._config.initial_s * self._config.multiplier**self._attempt)
        self._attempt = min(self._attempt + 1, 64)
        return max(self._config.initial_s / 10, self._rng.uniform(0, ceiling))
