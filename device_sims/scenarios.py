"""Scenarios: reproducible sequences of device messages (same seed, same bytes)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from device_sims.devices import CST, CtwingSim, DeviceSim, HighTossSim, Outgoing, ShedSim, SirenSim

Expect = Literal["accept", "reject", "duplicate", "none"]
SCENARIOS = (
    "normal-day",
    "morning-rush",
    "shed-fire",
    "thrown-object",
    "offline",
    "resend",
    "malformed",
    "burst",
)


@dataclass(frozen=True)
class Step:
    """One thing a simulated device does."""

    sim: DeviceSim
    message: Outgoing | None
    action: Literal["send", "drop_connection"] = "send"
    expect: Expect = "accept"


def _clock(start: datetime | None) -> datetime:
    return start or datetime.now(CST).replace(microsecond=0)


def normal_day(
    sims: Sequence[DeviceSim], rng: random.Random, count: int = 200, start: datetime | None = None
) -> list[Step]:
    """A day's mix compressed: mostly routine traffic, one event in twenty an alarm."""
    day = _clock(start).replace(hour=0, minute=0, second=0)
    times = sorted(day + timedelta(seconds=rng.uniform(0, 86_399)) for _ in range(count))
    steps = []
    for at in times:
        sim = rng.choice(list(sims))
        if rng.random() < 0.05:
            steps.append(Step(sim, sim.alarm(at, rng)))
        else:
            steps.append(Step(sim, sim.routine(at, rng)))
    return steps


def morning_rush(
    sims: Sequence[DeviceSim], rng: random.Random, count: int = 500, start: datetime | None = None
) -> list[Step]:
    """Residents leaving between 07:00 and 09:00: gates and barriers only, routine events."""
    gates = [
        s
        for s in sims
        if s.device.dialect in {"hik-isapi-acs", "uface-mqtt", "hik-isapi-anpr", "vz-lpr-mqtt"}
    ]
    if not gates:
        return []
    base = _clock(start).replace(hour=7, minute=0, second=0)
    return [
        Step(sim, sim.routine(base + timedelta(seconds=i * 7200 / count), rng))
        for i, sim in enumerate(rng.choice(gates) for _ in range(count))
    ]


def shed_fire(sims: Sequence[DeviceSim], rng: random.Random, start: datetime | None = None) -> list[Step]:
    """A battery catches fire in a shed: rising readings, a fire alarm, then recovery."""
    at = _clock(start)
    steps: list[Step] = []
    for sim in sims:
        if isinstance(sim, ShedSim):
            for i, temp in enumerate((28.0, 41.5, 57.0)):
                steps.append(
                    Step(
                        sim,
                        sim.report(
                            at + timedelta(seconds=i * 30),
                            "heartbeat",
                            0,
                            smoke=i * 4.0,
                            temp=temp,
                            battery=88,
                        ),
                    )
                )
            steps.append(
                Step(
                    sim,
                    sim.report(at + timedelta(seconds=95), "alarm", 0x03, smoke=48.0, temp=83.0, battery=88),
                )
            )
            steps.append(
                Step(
                    sim,
                    sim.report(at + timedelta(seconds=900), "alarm", 0x00, smoke=1.0, temp=30.0, battery=87),
                )
            )
        elif isinstance(sim, CtwingSim):
            steps.append(Step(sim, sim.report(at, "0", temp_tenths=290, smoke=2, battery=76)))
            steps.append(
                Step(sim, sim.report(at + timedelta(seconds=95), "1", temp_tenths=790, smoke=77, battery=76))
            )
            steps.append(
                Step(sim, sim.report(at + timedelta(seconds=900), "f", temp_tenths=300, smoke=1, battery=75))
            )
    rng.shuffle(steps)  # arrival order across devices is not the order of occurrence
    return steps


def thrown_object(sims: Sequence[DeviceSim], rng: random.Random, start: datetime | None = None) -> list[Step]:
    """An object thrown from a balcony; the camera's heartbeats around it produce nothing."""
    at = _clock(start)
    steps = []
    for sim in sims:
        if isinstance(sim, HighTossSim):
            steps.append(Step(sim, sim.routine(at, rng), expect="none"))
            steps.append(Step(sim, sim.alarm(at + timedelta(seconds=2), rng)))
    return steps


def offline(sims: Sequence[DeviceSim], rng: random.Random, start: datetime | None = None) -> list[Step]:
    """MQTT devices report once, then lose power: the broker publishes their last will."""
    mqtt = [sim for sim in sims if sim.transport == "mqtt"]
    at = _clock(start)
    return [
        Step(
            sim, sim.routine(at, rng), expect="none" if isinstance(sim, HighTossSim | SirenSim) else "accept"
        )
        for sim in mqtt
    ] + [Step(sim, None, action="drop_connection") for sim in mqtt]


def resend(
    sims: Sequence[DeviceSim], rng: random.Random, count: int = 50, start: datetime | None = None
) -> list[Step]:
    """Devices re-send events they think were lost: the second copy must be a duplicate."""
    steps = []
    for step in normal_day(sims, rng, count, start):
        steps.append(step)
        steps.append(Step(step.sim, step.message, expect="duplicate"))
    return steps


def malformed(sims: Sequence[DeviceSim], rng: random.Random) -> list[Step]:
    """Every simulator's catalogue of broken payloads."""
    return [Step(sim, message, expect="reject") for sim in sims for message in sim.malformed(rng)]


def burst(
    sims: Sequence[DeviceSim], rng: random.Random, count: int, start: datetime | None = None
) -> list[Step]:
    """``count`` routine events round-robin over the devices, for load and crash tests."""
    return list(itertools.islice(endless_burst(sims, rng, start), count))


def endless_burst(
    sims: Sequence[DeviceSim], rng: random.Random, start: datetime | None = None
) -> Iterator[Step]:
    """:func:`burst` without an end, for load that must last until something has been observed."""
    at = _clock(start)
    for i in itertools.count():
        sim = sims[i % len(sims)]
        yield Step(sim, sim.routine(at + timedelta(seconds=i), rng))


def build(
    name: str, sims: Sequence[DeviceSim], seed: int, count: int, start: datetime | None = None
) -> list[Step]:
    """A named scenario; the same seed (and start) gives the same bytes.

    Without ``start`` the scenario happens on a day of 2026 chosen by the seed (in the past, so
    that district-side checks for sane timestamps accept it).
    """
    rng = random.Random(seed)
    start = start or datetime(2026, 1, 1, 8, 0, tzinfo=CST) + timedelta(days=seed % 300)
    match name:
        case "normal-day":
            return normal_day(sims, rng, count, start)
        case "morning-rush":
            return morning_rush(sims, rng, count, start)
        case "shed-fire":
            return shed_fire(sims, rng, start)
        case "thrown-object":
            return thrown_object(sims, rng, start)
        case "offline":
            return offline(sims, rng, start)
        case "resend":
            return resend(sims, rng, count, start)
        case "malformed":
            return malformed(sims, rng)
        case "burst":
            return burst(sims, rng, count, start)
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
