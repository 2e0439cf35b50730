"""SIGKILL mid-burst, three ways, then recovery: the gateway side of reliability test T1.

HTTP-push devices (re-sending until they get a 200, as real ones do) and MQTT devices publishing
with QoS 1 send a burst at full speed. At a seeded random point one of three kills lands:

* ``worker``: the intake worker alone (the outbox's only writer). The gateway lives on, its
  in-flight batches fail, and it replaces the worker (``_replace_broken_worker``); the MQTT intake
  reconnects and the broker redelivers what was not acknowledged; HTTP pushes get a 503 and are
  sent again.
* ``gateway``: the gateway's main process alone. The orphaned worker notices and exits (after
  finishing its batch, or not); the gateway is restarted.
* ``group``: the whole process group at the same instant, as systemd kills a unit
  (``KillMode=control-group``); the gateway is restarted.

Each kill is made to land mid-flight, proved through observable state rather than a sleep, in one
of two moments:

* ``uncommitted``: the worker is paused (SIGSTOP) and the gateway's ``/metrics`` shows events
  acknowledged and at least one batch handed to the worker and not committed; the kill lands on
  that batch (the paused worker cannot finish it in between).
* ``unacknowledged``: the gateway's main process is paused and the outbox grows: a batch was
  committed that the gateway cannot have acknowledged; the kill lands before its acknowledgement,
  so its messages are certainly delivered again and must be recognised as duplicates.

After the devices are done and the gateway has settled, the set of event ids the devices saw
acknowledged equals the set of device event ids in the outbox, exactly: nothing missing, nothing
extra. Duplicates cannot show in the outbox's rows (``event_id`` is unique there); they are counted
where they arise, in the outbox's duplicate counter, which must be non-zero after an
``unacknowledged`` kill.

CI runs five seeds per kill mode with 1,500-event bursts (with the teeth tests about 3 minutes on
the 2-core test machine); ``-m soak`` runs twenty seeds per mode with 10,000-event bursts (about
16 s each). The strict-xfail tests at the end turn on a fault switch
(``foundation/fault_switches.py``) in the gateway and expect the exactness check to fail.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil
import pytest

from device_sims.broker import Mosquitto
from device_sims.demo import expected_event_ids
from device_sims.devices import build_sim
from device_sims.inventory import sample_devices
from device_sims.runner import Report, Runner
from device_sims.scenarios import Step, endless_burst
from foundation.fault_switches import FaultSwitch, environment_with
from gateway.config import GatewayConfig, load_config
from tests.conftest import sample_config
from tests.metrics import scrape, total, value
from tests.processes import GatewayProcess

KillMode = Literal["worker", "gateway", "group"]
Moment = Literal["uncommitted", "unacknowledged"]

CI_EVENTS = 1500
SOAK_EVENTS = 10_000
BURST_DIALECTS = {"hik-isapi-acs", "hik-isapi-anpr", "ctwing-smoke", "uface-mqtt", "vz-lpr-mqtt", "shed-mqtt"}
HOOK_LIMIT_S = 60  # waiting for an observable state; exceeded only if the state never comes
PAUSED_SCRAPE_S = 3  # a /metrics answer slower than this with the worker paused is stuck behind it
COMMIT_WAIT_S = 5  # a let-go worker commits the batch it holds in milliseconds; this is slack for CI
CONFIRM_GAP_S = 0.1  # time for the main process to read an answer the worker sent before its pause


class NotExactError(AssertionError):
    """The acknowledged and the stored event ids differ (what the teeth tests expect)."""


def _runs() -> Iterator[object]:
    for seed in range(1, 6):
        yield pytest.param(seed, CI_EVENTS, id=f"seed{seed}")
    for seed in range(1, 21):
        yield pytest.param(seed, SOAK_EVENTS, id=f"soak{seed}", marks=pytest.mark.soak)


RUNS = list(_runs())


@dataclass(frozen=True)
class Scenario:
    """Which kill, when, and which guarantee (if any) is broken on purpose."""

    seed: int
    events: int
    mode: KillMode
    moment: Moment
    switches: tuple[FaultSwitch, ...] = ()


@dataclass
class Evidence:
    """What the hooks saw, for the assertions that the fault landed where it should."""

    acked_by_devices_at_kill: int = 0
    gateway_acked_before: float = 0.0  # the gateway's own PUBACK count when the kill was decided
    in_flight_at_kill: float = 0.0  # batches handed to the worker and not committed (uncommitted)
    committed_while_paused: int = 0  # rows committed while the main process was paused
    killed_worker: int = 0
    pauses: int = 0


class KillTest:
    """One burst, one kill, one restart (or replacement), then the settled outbox."""

    def __init__(self, tmp_path: Path, mosquitto: Mosquitto, scenario: Scenario) -> None:
        self.rng = random.Random(scenario.seed)
        self.events = events = scenario.events
        self.mode = scenario.mode
        self.moment = scenario.moment
        config_path = sample_config(tmp_path, mosquitto.port)
        self.config: GatewayConfig = load_config(config_path)
        self.db_path = self.config.state.dir / "outbox.db"
        self.log_path = tmp_path / "gateway.log"
        env = environment_with(*scenario.switches) if scenario.switches else None
        self.gateway = GatewayProcess(config_path, self.log_path, env)
        self.metrics_url = f"http://127.0.0.1:{self.config.http.port}/metrics"
        self.runner = Runner(
            f"http://127.0.0.1:{self.config.http.port}",
            "127.0.0.1",
            mosquitto.port,
            workers=16,
            retry_http=True,
        )
        self.sims = [build_sim(d) for d in sample_devices() if d.dialect in BURST_DIALECTS]
        self.kill_after = self.rng.randint(events // 5, events * 3 // 5)
        self.evidence = Evidence()
        self.recovery_s = 0.0
        self.kill_landed = False
        self.steps_made = 0

    def _steps(self) -> Iterator[Step]:
        """The burst's ``events`` steps, and more while the kill has not landed.

        The killer needs load to catch a batch in flight; on a busy machine a 1,500-event burst can
        end before it does. Extended load ends with a fifth of the burst after the kill, so that
        events are acknowledged after it too.
        """
        source = endless_burst(self.sims, self.rng)
        planned = itertools.islice(source, self.events)
        until_killed = itertools.takewhile(lambda _step: not self.kill_landed, source)
        for step in itertools.chain(planned, until_killed):
            self.steps_made += 1
            yield step
        if self.steps_made > self.events:  # extended: leave load after the kill
            for step in itertools.islice(source, self.events // 5):
                self.steps_made += 1
                yield step

    async def run(self) -> Report:
        """Play the burst with the kill in it; returns what the devices saw."""
        await self.gateway.start_gateway(self.config)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._killer(), name="killer")
            return await self.runner.run(self._steps())

    # --- the kill ------------------------------------------------------------------------------------

    async def _killer(self) -> None:
        while self.runner.report.sent < self.kill_after:
            await asyncio.sleep(0.005)
        worker = self.gateway.worker()
        self.evidence.killed_worker = worker.pid
        if self.moment == "uncommitted":
            await self._pause_worker_with_batch_in_flight(worker)
        else:
            await self._pause_gateway_after_a_commit(worker)
        self.evidence.acked_by_devices_at_kill = len(self.runner.report.acked)
        self.kill_landed = True  # decided and about to happen: the load may end after a last stretch
        if self.mode == "worker":
            os.kill(worker.pid, signal.SIGKILL)
            await self._wait_for(lambda: not _alive(worker), "the killed worker to go")
            return  # the gateway replaces it on its own
        if self.mode == "gateway":
            self.gateway.kill()
            worker.resume()  # if paused: an orphan now, mid-batch, that must notice and exit
            await self._wait_for(lambda: not _alive(worker), "the orphaned worker to exit")
        else:
            self.gateway.kill_group()
            await self._wait_for(lambda: not _alive(worker), "the worker to die with its group")
        self.recovery_s = await self.gateway.start_gateway(self.config)

    async def _pause_worker_with_batch_in_flight(
        self, worker: psutil.Process, confirmations: int = 1
    ) -> None:
        """Leave the worker paused while /metrics shows a batch handed to it and not answered.

        With ``confirmations`` above one, the batch must still be in flight ``CONFIRM_GAP_S``
        later: by then the main process has read any answer the worker sent before its pause, so
        the batch in flight is one the paused worker holds.
        """
        deadline = time.monotonic() + HOOK_LIMIT_S
        while True:
            worker.suspend()  # SIGSTOP: whatever it was doing, it now stays half-done
            self.evidence.pauses += 1
            try:
                async with asyncio.timeout(PAUSED_SCRAPE_S):
                    text = await self._metrics_when(_batch_in_flight_after_acks, "a batch in flight")
                    for _ in range(confirmations - 1):
                        await asyncio.sleep(CONFIRM_GAP_S)
                        text = await self._metrics_when(_batch_in_flight_after_acks, "a batch in flight")
            except TimeoutError:
                # /metrics reads the outbox through the gateway's one reader thread, which may be
                # waiting (up to SQLite's busy timeout) for a write lock the paused worker holds:
                # let the worker go on and pause it again at another point.
                worker.resume()
                await scrape(self.metrics_url)
                assert time.monotonic() < deadline, "never saw a batch in flight with the worker paused"
                continue
            self.evidence.in_flight_at_kill = value(text, "cgw_intake_batches_in_flight")
            self.evidence.gateway_acked_before = value(text, "cgw_mqtt_intake_acked_total")
            return

    async def _pause_gateway_after_a_commit(self, worker: psutil.Process) -> None:
        """Leave the main process paused with a batch committed by the worker and not acknowledged.

        Deterministic, not a race against the commit: the worker is paused holding a batch (seen in
        flight twice, so the main process has read every answer already sent), then the main
        process is paused, then the worker is let go and commits the batch it holds. A worker
        paused between its commit and its answer commits nothing new: then both go on and the
        hook tries again.
        """
        assert self.gateway.process is not None
        main = psutil.Process(self.gateway.process.pid)
        deadline = time.monotonic() + HOOK_LIMIT_S
        while True:
            await self._pause_worker_with_batch_in_flight(worker, confirmations=2)
            main.suspend()
            # counted after the pause: whatever is committed from now on, the gateway cannot have
            # acknowledged (acknowledging needs the paused main process)
            before = await asyncio.to_thread(_row_count, self.db_path)
            worker.resume()
            commit_deadline = time.monotonic() + COMMIT_WAIT_S
            while time.monotonic() < commit_deadline:
                now = await asyncio.to_thread(_row_count, self.db_path)
                if now > before:
                    self.evidence.committed_while_paused = now - before
                    return  # killed while still paused
                await asyncio.sleep(0.02)
            main.resume()  # the held batch had been committed before the pause: try again
            assert time.monotonic() < deadline, "never caught a commit while the gateway was paused"

    async def _metrics_when(self, ready: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + HOOK_LIMIT_S
        while True:
            text, _ = await scrape(self.metrics_url)
            if ready(text):
                return text
            assert time.monotonic() < deadline, f"never saw {what}"
            await asyncio.sleep(0.01)

    async def _wait_for(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + HOOK_LIMIT_S
        while not done():
            assert time.monotonic() < deadline, f"waited {HOOK_LIMIT_S}s for {what}"
            await asyncio.sleep(0.02)

    # --- afterwards ----------------------------------------------------------------------------------

    async def settle(self, expected: set[str]) -> tuple[set[str], str]:
        """The outbox's device event ids once the gateway is idle (all redeliveries processed).

        Idle: connected, nothing in flight, and nothing changed since the previous look; then
        either every expected event is stored, or nothing has changed for 5 s (so that a gateway
        that lost events is judged too, without an arbitrary wait in the good case).
        """
        deadline = time.monotonic() + 120
        last: tuple[int, float, float] | None = None
        unchanged_since = time.monotonic()
        while True:
            stored = await asyncio.to_thread(_device_event_ids, self.db_path)
            text, _ = await scrape(self.metrics_url)
            state = (
                len(stored),
                value(text, "cgw_mqtt_intake_messages_total"),
                value(text, "cgw_mqtt_intake_acked_total"),
            )
            idle = (
                state == last
                and value(text, "cgw_intake_batches_in_flight") == 0
                and value(text, "cgw_transport_up", transport="mqtt-intake") == 1
            )
            if state != last:
                last, unchanged_since = state, time.monotonic()
            if idle and (expected <= stored or time.monotonic() - unchanged_since > 5):
                return stored, text
            if time.monotonic() > deadline:
                return stored, text
            await asyncio.sleep(0.2)


def _batch_in_flight_after_acks(metrics: str) -> bool:
    in_flight = value(metrics, "cgw_intake_batches_in_flight")
    return in_flight >= 1 and value(metrics, "cgw_mqtt_intake_acked_total") > 0


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _row_count(db_path: Path) -> int:
    with sqlite3.connect(db_path) as db:
        (n,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
    return int(n)


def _device_event_ids(db_path: Path) -> set[str]:
    # device_status rows come from the simulators' birth messages, which the runner does not count
    with sqlite3.connect(db_path) as db:
        return {row[0] for row in db.execute("SELECT event_id FROM events WHERE kind != 'device_status'")}


def _outbox_figures(db_path: Path) -> tuple[int, int, str]:
    with sqlite3.connect(db_path) as db:
        (duplicates,) = db.execute(
            "SELECT COALESCE(SUM(value), 0) FROM counters WHERE name='duplicates'"
        ).fetchone()
        (dead,) = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
        (integrity,) = db.execute("PRAGMA integrity_check").fetchone()
    return int(duplicates), int(dead), str(integrity)


def _assert_exact(expected: set[str], stored: set[str]) -> None:
    missing, extra = expected - stored, stored - expected
    if missing or extra:
        raise NotExactError(
            f"{len(missing)} acknowledged events missing (e.g. {sorted(missing)[:3]}), "
            f"{len(extra)} events stored that no device had acknowledged (e.g. {sorted(extra)[:3]})"
        )


async def kill_mid_burst(tmp_path: Path, mosquitto: Mosquitto, scenario: Scenario) -> None:
    """The whole test: burst, kill, recovery, then acknowledged == stored and the evidence."""
    test = KillTest(tmp_path, mosquitto, scenario)
    seed, events, mode, moment = scenario.seed, scenario.events, scenario.mode, scenario.moment
    try:
        report = await test.run()
        assert report.failed == 0, report.summary()
        assert report.rejected == 0, report.summary()
        assert report.sent == test.steps_made >= events
        expected = expected_event_ids(test.config, report.acked)
        stored, text = await test.settle(expected)
        _assert_exact(expected, stored)  # first: the check the teeth tests expect to fail

        evidence = test.evidence
        duplicates, dead_letters, integrity = await asyncio.to_thread(_outbox_figures, test.db_path)
        assert integrity == "ok"
        assert dead_letters == 0
        # the fault landed mid-flight: events acknowledged before it and after it ...
        assert evidence.gateway_acked_before > 0
        assert 0 < evidence.acked_by_devices_at_kill < len(report.acked)
        # ... with a batch in flight
        if moment == "uncommitted":
            assert evidence.in_flight_at_kill >= 1
        else:
            assert evidence.committed_while_paused > 0
            # that batch was delivered again (broker redelivery, HTTP re-send) and recognised
            assert duplicates > 0, "the committed, unacknowledged batch was never delivered again"
        worker_now = test.gateway.worker()
        assert worker_now.pid != evidence.killed_worker
        replaced = value(text, "cgw_intake_worker_replaced_total")
        if mode == "worker":
            assert test.gateway.process is not None
            assert test.gateway.process.poll() is None, "the gateway died with its worker"
            assert replaced == 1, "the gateway did not replace its dead worker (exactly once)"
            assert value(text, "cgw_intake_batches_lost_total") >= 1
            assert b'"intake_worker_replaced"' in test.log_path.read_bytes()
            # the same gateway kept acknowledging after the kill
            assert value(text, "cgw_mqtt_intake_acked_total") > evidence.gateway_acked_before
        else:
            assert replaced == 0
            assert value(text, "cgw_mqtt_intake_acked_total") > 0  # the restarted gateway acknowledges
        print(
            f"{mode}/{moment} seed {seed}: killed after {test.kill_after} of {report.sent} sent "
            f"({evidence.acked_by_devices_at_kill} acknowledged to devices, "
            f"{evidence.in_flight_at_kill:.0f} batches in flight, "
            f"{evidence.committed_while_paused} rows committed unacknowledged, {evidence.pauses} pauses); "
            f"{len(expected)} acknowledged events == stored; {duplicates} duplicates recognised; "
            f"{total(text, 'cgw_intake_batches_lost_total'):.0f} batches lost to the dead worker; "
            f"restart {test.recovery_s:.2f}s; burst {report.seconds:.1f}s"
        )
    finally:
        test.gateway.stop()


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "events"), RUNS)
async def test_worker_killed_mid_batch_is_replaced_and_loses_nothing(
    seed: int, events: int, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """SIGKILL of the intake worker alone, on an uncommitted batch: replaced, nothing lost or extra.

    Fails when broken: ``test_teeth_ack_before_commit_worker_kill`` (strict xfail) acknowledges
    before the commit and loses the in-flight batches' events.
    """
    await kill_mid_burst(tmp_path, mosquitto, Scenario(seed, events, "worker", "uncommitted"))


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "events"), RUNS)
async def test_gateway_killed_alone_mid_flight_loses_and_duplicates_nothing(
    seed: int, events: int, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """SIGKILL of the gateway's main process alone: the orphaned worker exits, nothing lost or extra.

    On odd seeds the kill lands between a commit and its acknowledgement: after the restart the
    redelivered batch is recognised (duplicates counted). On even seeds it lands while the paused
    worker holds an uncommitted batch; the worker is let go as an orphan, may finish that batch,
    and must exit by itself. Fails when broken: ``test_teeth_dedup_off_gateway_kill`` (strict
    xfail) stores the redelivered batch again.
    """
    moment: Moment = "unacknowledged" if seed % 2 else "uncommitted"
    await kill_mid_burst(tmp_path, mosquitto, Scenario(seed, events, "gateway", moment))


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "events"), RUNS)
async def test_process_group_killed_mid_flight_loses_and_duplicates_nothing(
    seed: int, events: int, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """SIGKILL of gateway and worker at once (systemd's way): nothing lost, nothing extra.

    On odd seeds the kill lands on an uncommitted batch, on even seeds on a batch committed and not
    yet acknowledged.
    Fails when broken: ``test_teeth_ack_before_commit_group_kill`` and
    ``test_teeth_dedup_off_group_kill`` (strict xfail).
    """
    moment: Moment = "uncommitted" if seed % 2 else "unacknowledged"
    await kill_mid_burst(tmp_path, mosquitto, Scenario(seed, events, "group", moment))


# --- teeth: each guarantee broken on purpose, and its test must fail --------------------------------


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=NotExactError, reason="acknowledged before the commit: events lost")
async def test_teeth_ack_before_commit_worker_kill(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """With ``ack_before_commit`` the worker kill loses acknowledged events: the exactness check fails."""
    await kill_mid_burst(
        tmp_path, mosquitto, Scenario(1, CI_EVENTS, "worker", "uncommitted", (FaultSwitch.ACK_BEFORE_COMMIT,))
    )


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=NotExactError, reason="acknowledged before the commit: events lost")
async def test_teeth_ack_before_commit_group_kill(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """With ``ack_before_commit`` the group kill loses acknowledged events: the exactness check fails."""
    await kill_mid_burst(
        tmp_path, mosquitto, Scenario(2, CI_EVENTS, "group", "uncommitted", (FaultSwitch.ACK_BEFORE_COMMIT,))
    )


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=NotExactError, reason="re-sends not recognised: extra events")
async def test_teeth_dedup_off_gateway_kill(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """With ``outbox_dedup_off`` the redelivered batch is stored again: the exactness check fails."""
    await kill_mid_burst(
        tmp_path,
        mosquitto,
        Scenario(3, CI_EVENTS, "gateway", "unacknowledged", (FaultSwitch.OUTBOX_DEDUP_OFF,)),
    )


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=NotExactError, reason="re-sends not recognised: extra events")
async def test_teeth_dedup_off_group_kill(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """With ``outbox_dedup_off`` the redelivered batch is stored again: the exactness check fails."""
    await kill_mid_burst(
        tmp_path,
        mosquitto,
        Scenario(4, CI_EVENTS, "group", "unacknowledged", (FaultSwitch.OUTBOX_DEDUP_OFF,)),
    )
