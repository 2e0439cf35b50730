"""Per-device sequence numbers: which messages never arrived, told apart from restarts and redelivery.

Devices that number their messages (``Dialect.sequence``: a shed sensor's ``seq``, an LPR camera's
``plateid``, an access controller's ``serialNo``) let the gateway see a loss that no acknowledgement
shows: a device broker whose queue for the gateway overflowed drops messages *after* the device had
its PUBACK, and says so only in its own log and ``$SYS`` counter.

What one number means, given the next number expected from the device (the highest so far + 1):

- **next**: it is the expected one.
- **gap**: it is higher; the numbers in between are *missing* (counted, and remembered as an open
  gap). A gap is seen only when a later number arrives, so losses at the end of a burst show with
  the device's next message (a heartbeat at the latest).
- **late**: it is lower and inside an open gap: it arrived out of order (QoS 1 redelivery after a
  reconnect, a device resending after its own reconnect). It is counted as *late* and the gap
  shrinks; ``missing - late`` (``outstanding``) is what has not arrived so far. Counters only grow
  (Prometheus counters), so a filled gap is counted separately rather than subtracted.
- **duplicate**: it is lower, in no open gap, and within ``redelivery_window`` of the expected
  number: seen before (a redelivery of a message that had arrived).
- **restart**: it is lower by more than ``redelivery_window``, or higher by more than
  ``MAX_PLAUSIBLE_GAP``: the device started counting again (a reboot, a counter wrap, a counter
  reinitialized to an arbitrary value; one bogus number must not count as billions missing). Open gaps are forgotten (whatever was missing stays counted) and the
  count continues from the new number. A device that restarts before it has sent
  ``redelivery_window`` messages is taken for redelivering: its numbers count as duplicates until
  they pass the old ones; no gap is invented either way.

The first number of a device since the gateway started is taken as it is (nothing before it is
known). Open gaps are bounded per device (``max_open_gaps``; the oldest are forgotten, and a number
from a forgotten gap counts as a duplicate).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from enum import StrEnum

REDELIVERY_WINDOW = 10_000
"""How far behind a redelivered message can be: Mosquitto resends a reconnecting session's messages in
flight, measured at up to 2,698 for a Receive Maximum of 256 (docs/architecture.md); further back
than this, a lower number is a device that started counting again."""

MAX_OPEN_GAPS = 256

MAX_PLAUSIBLE_GAP = 1_000_000
"""The most messages one device can lose in one gap: the shipped compound broker queues at most a
million messages for the gateway (deploy/mosquitto/compound.conf); a longer jump is a new count."""


class Verdict(StrEnum):
    """What one sequence number meant."""

    FIRST = "first"
    NEXT = "next"
    GAP = "gap"
    LATE = "late"
    DUPLICATE = "duplicate"
    RESTART = "restart"


@dataclass(frozen=True, slots=True)
class Observation:
    """The verdict on one number, with what was expected and, for a gap, how many are missing."""

    verdict: Verdict
    number: int
    expected: int | None
    skipped: int = 0


@dataclass(slots=True)
class DeviceSequence:
    """One device's count: the next number expected, open gaps, and what was seen so far."""

    expected: int
    # open gaps as inclusive [low, high] pairs, sorted by low, never overlapping
    lows: list[int] = field(default_factory=list)
    highs: list[int] = field(default_factory=list)
    gaps: int = 0  # gaps opened
    missing: int = 0  # numbers skipped when a gap opened
    late: int = 0  # skipped numbers that arrived afterwards
    duplicates: int = 0
    restarts: int = 0

    @property
    def outstanding(self) -> int:
        """Numbers skipped that have not arrived (so far): ``missing - late``."""
        return self.missing - self.late

    def fill(self, number: int) -> bool:
        """Take ``number`` out of the open gap holding it; False if it is in none."""
        i = bisect.bisect_right(self.lows, number) - 1
        if i < 0 or number > self.highs[i]:
            return False
        low, high = self.lows[i], self.highs[i]
        if low == high:
            del self.lows[i], self.highs[i]
        elif number == low:
            self.lows[i] = number + 1
        elif number == high:
            self.highs[i] = number - 1
        else:  # split in two
            self.highs[i] = number - 1
            self.lows.insert(i + 1, number + 1)
            self.highs.insert(i + 1, high)
        return True


class SequenceTracker:
    """Tracks the sequence numbers of many devices (pure bookkeeping; no I/O, no clock)."""

    def __init__(
        self, *, redelivery_window: int = REDELIVERY_WINDOW, max_open_gaps: int = MAX_OPEN_GAPS
    ) -> None:
        self.redelivery_window = redelivery_window
        self.max_open_gaps = max_open_gaps
        self.devices: dict[str, DeviceSequence] = {}

    def observe(self, device: str, number: int) -> Observation:
        """Record one number from ``device`` (in arrival order) and say what it meant."""
        state = self.devices.get(device)
        if state is None:
            self.devices[device] = DeviceSequence(expected=number + 1)
            return Observation(Verdict.FIRST, number, None)
        expected = state.expected
        if number == expected:
            state.expected = number + 1
            return Observation(Verdict.NEXT, number, expected)
        if number - expected > MAX_PLAUSIBLE_GAP:
            return self._restart(state, number, expected)
        if number > expected:
            skipped = number - expected
            state.gaps += 1
            state.missing += skipped
            state.lows.append(expected)
            state.highs.append(number - 1)
            if len(state.lows) > self.max_open_gaps:
                del state.lows[0], state.highs[0]
            state.expected = number + 1
            return Observation(Verdict.GAP, number, expected, skipped)
        if state.fill(number):
            state.late += 1
            return Observation(Verdict.LATE, number, expected)
        if expected - number > self.redelivery_window:
            return self._restart(state, number, expected)
        state.duplicates += 1
        return Observation(Verdict.DUPLICATE, number, expected)

    @staticmethod
    def _restart(state: DeviceSequence, number: int, expected: int) -> Observation:
        state.restarts += 1
        state.lows.clear()
        state.highs.clear()
        state.expected = number + 1
        return Observation(Verdict.RESTART, number, expected)
