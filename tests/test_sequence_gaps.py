"""Per-device sequence numbers: gaps counted exactly; restarts, redelivery and duplicates are no gaps.

The tracker is pure bookkeeping (``gateway/sequence_gaps.py``); the dialects say where the number is
(``Dialect.sequence``), and the intake reads it from accepted and refused payloads alike.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import DIALECTS
from adapters.base import RawMessage
from device_sims.devices import HikAcsSim, MqttPublish, ShedSim, SimDevice, VzLprSim, build_sim
from device_sims.inventory import sample_devices
from gateway.sequence_gaps import MAX_PLAUSIBLE_GAP, SequenceTracker, Verdict
from tests.conftest import PARSE_CONTEXT

WINDOW = 10_000


def run(numbers: list[int], **kwargs: int) -> SequenceTracker:
    tracker = SequenceTracker(**kwargs)
    for number in numbers:
        tracker.observe("d", number)
    return tracker


def test_a_gap_counts_the_missing_numbers_and_a_late_arrival_fills_it() -> None:
    tracker = SequenceTracker()
    verdicts = [tracker.observe("d", n).verdict for n in (5, 6, 9, 7, 12, 8, 8)]
    assert verdicts == [
        Verdict.FIRST,
        Verdict.NEXT,
        Verdict.GAP,
        Verdict.LATE,
        Verdict.GAP,
        Verdict.LATE,
        Verdict.DUPLICATE,
    ]
    state = tracker.devices["d"]
    assert (state.gaps, state.missing, state.late, state.duplicates) == (2, 4, 2, 1)
    assert state.outstanding == 2  # 10 and 11 never came
    assert state.expected == 13


def test_devices_are_counted_apart() -> None:
    tracker = SequenceTracker()
    for n in (1, 2, 4):
        tracker.observe("a", n)
    for n in (1, 3):
        tracker.observe("b", n)
    assert tracker.devices["a"].missing == 1
    assert tracker.devices["b"].missing == 1


def test_a_restart_is_no_gap_and_forgets_the_old_gaps() -> None:
    tracker = run([*range(1, 20_001), 20_005, 1, 2, 3, 5])
    state = tracker.devices["d"]
    assert state.restarts == 1
    # 20001..20004 were lost before the reboot, 4 after it; nothing else
    assert (state.missing, state.late, state.outstanding) == (5, 0, 5)
    # a number of the old gap arriving after the restart is not mistaken for filling it
    assert tracker.observe("d", 20_002).verdict is Verdict.GAP


def test_an_implausible_jump_forward_is_a_new_count_not_billions_missing() -> None:
    """One bogus number far ahead (a counter reinitialized) is a restart; later losses still count.

    Checked to fail without the ``MAX_PLAUSIBLE_GAP`` test: 2**40 numbers missing, and every normal
    number after it a restart.
    """
    tracker = SequenceTracker()
    for number in (1, 2, 3):
        tracker.observe("d", number)
    assert tracker.observe("d", 2**40).verdict is Verdict.RESTART
    assert tracker.observe("d", 2**40 + 1).verdict is Verdict.NEXT
    assert tracker.observe("d", 2**40 + 3).verdict is Verdict.GAP
    state = tracker.devices["d"]
    assert (state.missing, state.restarts, state.outstanding) == (1, 1, 1)
    assert tracker.observe("d", 2**40 + 4 + MAX_PLAUSIBLE_GAP).verdict is Verdict.GAP
    assert state.missing == 1 + MAX_PLAUSIBLE_GAP


def test_a_reboot_early_in_life_counts_duplicates_but_invents_no_gap() -> None:
    tracker = run([*range(1, 51), *range(1, 61)])
    state = tracker.devices["d"]
    assert (state.gaps, state.missing, state.restarts, state.duplicates) == (0, 0, 0, 50)
    assert state.expected == 61


def test_open_gaps_are_bounded() -> None:
    numbers = [n for n in range(1, 2_000) if n % 2]  # every even number missing
    state = run(numbers, max_open_gaps=8).devices["d"]
    assert len(state.lows) == 8
    assert state.missing == 999


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(min_value=1, max_value=400),
    start=st.integers(min_value=0, max_value=5_000_000),
    dropped=st.sets(st.integers(min_value=1, max_value=398), max_size=60),
    seed=st.integers(min_value=0, max_value=2**32),
    swaps=st.integers(min_value=0, max_value=40),
    redelivered=st.integers(min_value=0, max_value=40),
)
def test_only_numbers_that_never_arrive_are_outstanding(  # noqa: PLR0917 - hypothesis arguments
    length: int, start: int, dropped: set[int], seed: int, swaps: int, redelivered: int
) -> None:
    """Messages lost, arriving out of order (swaps within a redelivery's reach) and arriving twice.

    Whatever the order, once everything that will arrive has arrived, ``outstanding`` is exactly the
    number of messages that never did, and ``missing - late`` never counts a redelivered one.
    """
    rng = random.Random(seed)
    sent = list(range(start, start + length))
    # the first and last arrive (a gap is only seen when a later number comes)
    lost = {start + i for i in dropped if i < length - 1}
    arriving = [n for n in sent if n not in lost]
    for _ in range(swaps):  # QoS 1 redelivery: a few positions out of order
        i = rng.randrange(1, len(arriving)) if len(arriving) > 1 else 0
        j = min(len(arriving) - 1, i + rng.randrange(1, 30))
        if i > 0:
            arriving[i], arriving[j] = arriving[j], arriving[i]
    for _ in range(redelivered):  # some arrive a second time, shortly after
        if len(arriving) > 1:
            i = rng.randrange(1, len(arriving))
            arriving.insert(min(len(arriving), i + rng.randrange(1, 30)), arriving[i])
    assert arriving[0] == start  # the first is never moved: the baseline is the lowest number
    state = run(arriving).devices["d"]
    assert state.outstanding == len(lost)
    assert state.missing - state.late == len(lost)
    assert state.restarts == 0


@settings(max_examples=100, deadline=None)
@given(
    before=st.integers(min_value=WINDOW + 2, max_value=3 * WINDOW),
    after=st.integers(min_value=1, max_value=500),
    lost_after=st.sets(st.integers(min_value=2, max_value=498)),
)
def test_a_restart_loses_nothing_and_later_losses_are_still_counted(
    before: int, after: int, lost_after: set[int]
) -> None:
    lost = {n for n in lost_after if n < after}
    numbers = [*range(1, before + 1), *(n for n in range(1, after + 1) if n not in lost)]
    state = run(numbers).devices["d"]
    assert state.restarts == 1
    assert state.outstanding == len(lost)


# --- where the dialects keep the number -------------------------------------------------------------

AT = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
NUMBERED = {"shed-mqtt", "vz-lpr-mqtt", "hik-isapi-acs", "siren-mqtt"}


def test_exactly_the_numbering_dialects_have_a_sequence() -> None:
    assert {name for name, d in DIALECTS.items() if d.sequence is not None} == NUMBERED


def _raw(message: object) -> RawMessage:
    if isinstance(message, MqttPublish):
        return RawMessage(message.payload, topic=message.topic)
    body, ctype = message.body, message.content_type  # type: ignore[attr-defined]
    return RawMessage(body, content_type=ctype)


def test_parse_and_the_reader_agree_with_the_simulators_count() -> None:
    rng = random.Random(7)
    for device in sample_devices():
        if device.dialect not in NUMBERED:
            continue
        sim = build_sim(device)
        dialect = DIALECTS[device.dialect]
        assert dialect.sequence is not None
        numbers = []
        for _ in range(3):
            raw = _raw(sim.routine(AT, rng))
            parsed = dialect.parse(raw, PARSE_CONTEXT).sequence
            assert parsed is not None
            assert parsed == dialect.sequence.read(raw)
            numbers.append(parsed)
        assert numbers == [numbers[0], numbers[0] + 1, numbers[0] + 2], device.dialect


def test_a_restarted_simulator_counts_from_one() -> None:
    rng = random.Random(1)
    shed = ShedSim(SimDevice("36010400011340000001", "shed-mqtt", "860812045678901"))
    vz = VzLprSim(SimDevice("36010400011210000002", "vz-lpr-mqtt", "e2e0c7a4-5f0d4a1b"))
    for sim in (shed, vz):
        sim.routine(AT, rng)
        sim.routine(AT, rng)
        sim.restart()
        raw = _raw(sim.routine(AT, rng))
        reader = DIALECTS[sim.device.dialect].sequence
        assert reader is not None
        assert reader.read(raw) == 1


def test_the_reader_never_raises_on_garbage() -> None:
    for name in NUMBERED:
        reader = DIALECTS[name].sequence
        assert reader is not None
        for body in (b"", b"\xff", b"[1]", b'{"seq": -1}', b'{"seq": true}', b"{" * 3000):
            assert reader.read(RawMessage(body, topic="shed/x/up", content_type="application/json")) is None


def test_door_state_posts_carry_the_access_controllers_number() -> None:
    sim = HikAcsSim(SimDevice("36010400011240000001", "hik-isapi-acs"))
    post = sim.routine(AT, random.Random(3))
    raw = _raw(post)
    door_state = RawMessage(raw.body.replace(b'"subEventType": 75', b'"subEventType": 22'), raw.content_type)
    result = DIALECTS["hik-isapi-acs"].parse(door_state, PARSE_CONTEXT)
    assert result.events == ()
    assert result.sequence == sim.serial
