"""Token buckets: the uplink's replay pace, and how often each peer may push to the gateway.

A device that pushes faster than any real gate or camera would (a firmware loop, a misconfigured
platform, an attacker on the compound network) must not crowd out the other devices, fill the outbox
or keep the intake busy. Each peer gets its own bucket; the number of buckets is bounded so that a
peer spraying made-up device ids cannot grow the table.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from foundation.health import MetricFamilies


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up.

    The default capacity (a tenth of a second's worth) keeps every window at the pace; a larger one
    allows a burst of that size after a quiet spell.
    """

    def __init__(
        self, rate: float, capacity: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = max(capacity if capacity is not None else rate / 10, 1.0)
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def available(self) -> int:
        """Whole tokens available now."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return int(self._tokens)

    def take(self, count: int) -> None:
        """Spend tokens (never more than available)."""
        self._tokens -= count

    def seconds_until(self, count: int) -> float:
        """How long until ``count`` tokens are there."""
        return max(0.0, (count - self._tokens) / self.rate)


class PeerRateLimiter:
    """One token bucket per peer; refusals counted per peer for ``/metrics``.

    At most ``max_peers`` buckets are kept (least recently seen dropped first): a dropped peer
    starts again with a full bucket, which costs at most one burst.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_peers: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        counted_as: Callable[[str], str] = str,
    ) -> None:
        """``counted_as`` maps a peer to the label its refusals are counted under (bounded cardinality)."""
        self.counted_as = counted_as
        self.rate = rate
        self.burst = burst
        self._max_peers = max_peers
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.refused: Counter[str] = Counter()

    def admit(self, peer: str) -> float | None:
        """Take one token for ``peer``: None if admitted, else the seconds until it may try again."""
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, clock=self._clock)
            self._buckets[peer] = bucket
            if len(self._buckets) > self._max_peers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(peer)
        if bucket.available() >= 1:
            bucket.take(1)
            return None
        self.refused[self.counted_as(peer)] += 1
        return bucket.seconds_until(1)

    def blocked(self, peer: str) -> float | None:
        """Without taking a token: None if ``peer`` has one left, else the seconds until it has (counted)."""
        bucket = self._buckets.get(peer)
        if bucket is None or bucket.available() >= 1:
            return None
        self.refused[self.counted_as(peer)] += 1
        return bucket.seconds_until(1)

    def spend(self, peer: str) -> None:
        """Take a token for ``peer`` if it has one (what ``blocked`` then reports)."""
        if self.admit(peer) is not None:
            label = self.counted_as(peer)
            self.refused[label] -= 1  # spending is not a refusal; ``admit`` counted it as one
            if not self.refused[label]:
                del self.refused[label]

    def peers(self) -> int:
        """How many peers have a bucket now."""
        return len(self._buckets)

    def write_metrics(self, families: MetricFamilies, name: str, help_text: str) -> None:
        """Refusals per peer as one counter family."""
        families.counter(name, help_text, [({"peer": peer}, n) for peer, n in sorted(self.refused.items())])
