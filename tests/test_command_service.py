"""Commands end to end in the compound: district broker -> gateway -> compound broker -> the camera's barrier.

Real Mosquittos (the district broker, and the compound broker with the sample accounts and ACL),
the real gateway (``run_gateway``), and the simulated LPR camera (``VzLprSim``) answering on the
compound broker with its own account. The test plays the district's command desk: it publishes
orders on the compound's order topic and reads the reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiomqtt

from device_sims.broker import Mosquitto, free_port
from device_sims.devices import HikAnprSim, SirenSim, build_sim
from device_sims.inventory import DISTRICT_ID, compound_id, sample_devices, write_sample_config
from device_sims.isapi_server import IsapiServer
from foundation.commands import ActuatorState, CommandAction
from foundation.events import utc_now
from gateway.config import GatewayConfig, load_config
from gateway.runtime import run_gateway
from tests.command_orders import BARRIER, barrier_open
from tests.district_data import running
from tests.test_commands import camera, camera_online
from tests.test_local_rules import SHED, SHED_TOPIC, action_results, shed_client, shed_report
from uplink.commands import (
    CommandOrder,
    CommandReport,
    CommandState,
    decode_report,
    encode_json,
    order_topic,
    report_filter,
)
from uplink.protocol import DEFAULT_PREFIX, status_topic

COMPOUND = compound_id(1)
WAIT_S = 30


def gateway_config(
    tmp_path: Path,
    device_broker: Mosquitto,
    district_broker: Mosquitto,
    commands: str = "",
    *,
    rules: str = "",
    control: dict[str, str] | None = None,
) -> GatewayConfig:
    """The sample compound with an MQTT uplink and fast backoff.

    ``commands``: ``[commands]`` lines; ``rules`` appended; ``control``: device id -> its ``control_url``.
    """
    path = write_sample_config(
        tmp_path / "gateway.toml",
        state_dir=tmp_path / "state",
        http_port=free_port(),
        mqtt_port=device_broker.port,
    )
    text = path.read_text(encoding="utf-8")
    for device_id, url in (control or {}).items():  # where the gateway reaches an HTTP device's commands
        text = text.replace(f'id = "{device_id}"\n', f'id = "{device_id}"\ncontrol_url = "{url}"\n', 1)
    path.write_text(text, encoding="utf-8")
    with path.open("a", encoding="utf-8") as handle:
        handle.write(
            "\n[backoff]\ninitial_s = 0.05\nmax_s = 0.5\n"
            "\n[commands]\npoll_s = 0.1\n"
            + ("" if "settle_s" in commands else "settle_s = { barrier = 2.0 }\n")
            + f"{commands}\n"
            + '\n[uplink]\nmode = "mqtt"\nbatch_max_delay_ms = 20\n'
            f'[uplink.broker]\nhost = "127.0.0.1"\nport = {district_broker.port}\n'
            f"\n{rules}"
        )
    return load_config(path)


def order(command_id: str, *, lifetime: timedelta = timedelta(minutes=2)) -> CommandOrder:
    """A remote barrier open, as the district issues it."""
    return barrier_open(command_id, lifetime=lifetime)


@dataclass
class Desk:
    """The district's side of the broker: orders out, reports in."""

    client: aiomqtt.Client
    reports: list[CommandReport] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    statuses: list[str] = field(default_factory=list)  # the gateway's announced states, in order

    async def online(self) -> None:
        """Wait until the gateway announced itself online on the district broker (it has subscribed)."""
        async with asyncio.timeout(WAIT_S):
            while not self.statuses or self.statuses[-1] != "online":
                self.arrived.clear()
                await self.arrived.wait()

    async def send(self, sent: CommandOrder) -> None:
        """Publish an order to the compound (QoS 1)."""
        await self.client.publish(
            order_topic(DEFAULT_PREFIX, DISTRICT_ID, COMPOUND), encode_json(sent), qos=1
        )

    def states(self, command_id: str) -> list[CommandState]:
        """The states reported for one command, in arrival order."""
        return [r.state for r in self.reports if r.command_id == command_id]

    async def final(self, command_id: str) -> CommandReport:
        """Wait for the command's final report."""
        async with asyncio.timeout(WAIT_S):
            while True:
                done = [
                    r
                    for r in self.reports
                    if r.command_id == command_id
                    and r.state
                    in {
                        CommandState.VERIFIED,
                        CommandState.FAILED,
                        CommandState.EXPIRED,
                        CommandState.REFUSED,
                    }
                ]
                if done:
                    return done[-1]
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def desk(district_broker: Mosquitto) -> AsyncIterator[Desk]:
    """Subscribed to every compound's reports (persistent session) for the block."""
    async with aiomqtt.Client(
        "127.0.0.1", district_broker.port, identifier="district-commands", clean_session=False
    ) as client:
        await client.subscribe(report_filter(DEFAULT_PREFIX), qos=1)
        await client.subscribe(status_topic(DEFAULT_PREFIX, DISTRICT_ID, COMPOUND), qos=1)
        ours = Desk(client)

        async def read() -> None:
            async for message in client.messages:
                if message.topic.value.endswith("/status") and not message.topic.value.endswith(
                    "command/status"
                ):
                    ours.statuses.append(json.loads(bytes(message.payload))["state"])
                else:
                    ours.reports.append(decode_report(bytes(message.payload)))
                ours.arrived.set()

        task = asyncio.create_task(read(), name="desk")
        try:
            yield ours
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def gateway(config: GatewayConfig, district: Desk) -> AsyncIterator[None]:
    """The gateway running in this loop for the block, once its uplink announced itself online."""
    async with running(lambda ready: run_gateway(config, ready=ready), "gateway"):
        await district.online()
        yield
    district.statuses.clear()


async def test_a_remote_open_is_executed_once_and_verified_by_read_back(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """The order goes queued -> sent -> acknowledged -> verified; the relay moved once; the barrier is open."""
    sim = camera()
    config = gateway_config(tmp_path, mosquitto, district_broker)
    async with desk(district_broker) as district, camera_online(mosquitto, sim), gateway(config, district):
        await district.send(order("cmd-open-1"))
        final = await district.final("cmd-open-1")
    assert district.states("cmd-open-1") == [
        CommandState.QUEUED,
        CommandState.SENT,
        CommandState.ACKNOWLEDGED,
        CommandState.VERIFIED,
    ]
    assert final.observed is ActuatorState.OPEN
    assert (final.issued_by, final.device_id) == ("op-wang", BARRIER)
    assert (sim.commands_executed, sim.gate_open) == (1, True)


async def test_the_same_id_three_times_with_a_restart_between_opens_once(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """Delivered twice, the gateway restarted, delivered again: the relay moved once; one final report.

    Broken on purpose once: with the ledger forgetting ids (``submit`` skipping ``known``, ``admit``
    calling a known id new, ``claim`` taking a command in any state) the camera counted 4
    executions instead of 2. A report sent just before a stop may go again after the restart
    (reports are at least once; the district keeps each state once).
    """
    sim = camera()
    config = gateway_config(tmp_path, mosquitto, district_broker)
    async with desk(district_broker) as district, camera_online(mosquitto, sim):
        async with gateway(config, district):
            await district.send(order("cmd-thrice"))
            await district.send(order("cmd-thrice"))
            await district.final("cmd-thrice")
        async with gateway(config, district):
            await district.send(order("cmd-thrice"))
            await district.send(order("cmd-after"))  # a marker: the third copy was read before it
            await district.final("cmd-after")
    assert sim.commands_executed == 2  # cmd-thrice once, cmd-after once
    # reports go at least once (one sent just before the stop may go again): the states, once each
    assert list(dict.fromkeys(district.states("cmd-thrice"))) == [
        CommandState.QUEUED,
        CommandState.SENT,
        CommandState.ACKNOWLEDGED,
        CommandState.VERIFIED,
    ]


async def test_a_command_that_expires_while_its_compound_is_offline_is_never_executed(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """Sent while the gateway is down (the broker keeps it in the gateway's session), expired on arrival.

    Broken on purpose once: with ``CommandOrder.expired`` always False it was executed and verified.
    """
    sim = camera()
    config = gateway_config(tmp_path, mosquitto, district_broker)
    async with desk(district_broker) as district, camera_online(mosquitto, sim):
        async with gateway(config, district):  # its persistent session on the district broker subscribes
            pass
        await district.send(order("cmd-stale", lifetime=timedelta(seconds=1)))
        await asyncio.sleep(1.5)
        async with gateway(config, district):
            final = await district.final("cmd-stale")
    assert final.state is CommandState.EXPIRED
    assert final.reason is not None
    assert "after its expiry" in final.reason
    assert sim.commands_executed == 0


async def test_a_stuck_barrier_that_answers_ok_is_reported_failed(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """OK from the camera, but the read-back still says closed after the settle time: failed, with why.

    Broken on purpose once: with the read-back skipped (acknowledged taken as verified) the final
    state was verified.
    """
    sim = camera()
    sim.stuck = True
    config = gateway_config(tmp_path, mosquitto, district_broker)
    async with desk(district_broker) as district, camera_online(mosquitto, sim), gateway(config, district):
        await district.send(order("cmd-stuck"))
        final = await district.final("cmd-stuck")
    assert district.states("cmd-stuck")[-2:] == [CommandState.ACKNOWLEDGED, CommandState.FAILED]
    assert final.observed is ActuatorState.CLOSED
    assert final.reason is not None
    assert "answered OK but reports closed" in final.reason
    assert sim.gate_open is False


async def test_a_forbidden_remote_open_is_refused_in_the_compound_with_the_rule_name(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """A policy rule of the compound refuses the district's open: refused, named, never sent."""
    sim = camera()
    policy = (
        '[[commands.policy]]\nname = "south-gate-no-remote-open"\n'
        f'devices = ["{BARRIER}"]\nactions = ["barrier_open"]\nreason = "物业要求南门只能现场开闸"\n'
    )
    config = gateway_config(tmp_path, mosquitto, district_broker, policy)
    async with desk(district_broker) as district, camera_online(mosquitto, sim), gateway(config, district):
        await district.send(order("cmd-forbidden"))
        final = await district.final("cmd-forbidden")
    assert district.states("cmd-forbidden") == [CommandState.REFUSED]
    assert final.rule == "south-gate-no-remote-open"
    assert final.reason is not None
    assert "物业要求南门只能现场开闸" in final.reason
    assert sim.commands_executed == 0


async def test_the_rate_limit_refuses_a_burst(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """Two commands a minute for the device: of a burst of five, the first two run, three are refused."""
    sim = camera()
    config = gateway_config(tmp_path, mosquitto, district_broker, "per_device_per_minute = 2\n")
    ids = [f"cmd-burst-{n}" for n in range(5)]
    async with desk(district_broker) as district, camera_online(mosquitto, sim), gateway(config, district):
        for command_id in ids:
            await district.send(order(command_id))
        finals = [await district.final(command_id) for command_id in ids]
    assert [f.state for f in finals] == [CommandState.VERIFIED] * 2 + [CommandState.REFUSED] * 3
    assert {f.rule for f in finals[2:]} == {"rate_limit"}
    assert sim.commands_executed == 2


def test_reports_are_json_the_district_can_read() -> None:
    """A report as published: compact JSON with the state's value (what the desk stores)."""
    report = CommandReport(
        command_id="cmd-1",
        device_id=BARRIER,
        action=CommandAction.BARRIER_OPEN,
        state=CommandState.VERIFIED,
        at=utc_now(),
        issued_by="op-wang",
        observed=ActuatorState.OPEN,
    )
    assert json.loads(encode_json(report))["state"] == "verified"


async def test_a_local_rule_opens_the_barrier_with_the_district_unreachable(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A shed fire fires a rule whose command opens the barrier while no district broker is up.

    The command goes through the same service (ledger, policy, read-back): the rule's action is
    recorded ok once the barrier reads back open; the command's states reach the district once
    its broker is up.

    Broken on purpose once: with ``run_gateway`` giving the rules ``NotWiredCommandPort`` (as before
    the command service existed) the action was recorded failed and the camera never moved.
    """
    sim = camera()
    rules = (
        '[[rules]]\nname = "shed-fire-open-gate"\n[rules.match]\nkind = "ebike_shed"\n'
        f'devices = ["{SHED}"]\n[[rules.match.conditions]]\nfield = "condition"\nequals = "fire_alarm"\n'
        f'[[rules.actions]]\ntype = "command"\ndevice = "{BARRIER}"\naction = "barrier_open"\n'
    )
    later = Mosquitto(tmp_path / "district-broker", free_port())  # not started yet: the district is away
    config = gateway_config(tmp_path, mosquitto, later, rules=rules)
    async with (
        camera_online(mosquitto, sim),
        running(lambda ready: run_gateway(config, ready=ready), "gateway"),
    ):
        async with shed_client(mosquitto.port) as shed:
            await shed.publish(SHED_TOPIC, shed_report(41, alert=1), qos=1)
        async with asyncio.timeout(WAIT_S):
            while not action_results(config):
                await asyncio.sleep(0.05)
        results = action_results(config)
        later.start()
        try:
            async with desk(later) as district:
                async with asyncio.timeout(WAIT_S):
                    while not [r for r in district.reports if r.state is CommandState.VERIFIED]:
                        district.arrived.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(1):
                                await district.arrived.wait()
        finally:
            later.stop()
    assert [(rule, kind, ok) for rule, kind, ok, _ in results] == [("shed-fire-open-gate", "command", 1)]
    assert (sim.commands_executed, sim.gate_open) == (1, True)
    verified = [r for r in district.reports if r.state is CommandState.VERIFIED]
    assert [(r.origin.value, r.issued_by) for r in verified] == [("rule", "shed-fire-open-gate")]


SIREN = "36010400011350000001"  # the sample compound's shed siren (siren-mqtt)
ANPR = "36010400011210000001"  # the east gate's ISAPI barrier camera (hik-isapi-anpr)


async def test_a_shed_fire_sounds_the_siren_with_the_district_broker_stopped(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """The district broker goes down; a shed fire fires the rule; the simulated siren sounds (read back).

    Broken on purpose once: with the rule's action ``siren_off`` instead of ``siren_on`` the siren
    stayed idle and the action was recorded failed (the read-back said silent, not sounding).
    """
    siren = build_sim(next(d for d in sample_devices() if d.id == SIREN))
    assert isinstance(siren, SirenSim)
    rules = (
        '[[rules]]\nname = "shed-fire-siren"\n[rules.match]\nkind = "ebike_shed"\n'
        f'devices = ["{SHED}"]\n[[rules.match.conditions]]\nfield = "condition"\nequals = "fire_alarm"\n'
        f'[[rules.actions]]\ntype = "command"\ndevice = "{SIREN}"\naction = "siren_on"\n'
    )
    config = gateway_config(tmp_path, mosquitto, district_broker, rules=rules)
    async with (
        camera_online(mosquitto, siren),
        running(lambda ready: run_gateway(config, ready=ready), "gateway"),
    ):
        async with desk(district_broker) as district:
            await district.online()  # the uplink was up; now the district broker goes away
        district_broker.stop()
        async with shed_client(mosquitto.port) as shed:
            await shed.publish(SHED_TOPIC, shed_report(51, alert=1), qos=1)
        async with asyncio.timeout(WAIT_S):
            while not action_results(config):
                await asyncio.sleep(0.05)
        results = action_results(config)
    assert [(rule, kind, ok) for rule, kind, ok, _ in results] == [("shed-fire-siren", "command", 1)]
    assert (siren.mode, siren.commands_executed) == ("alarm", 1)


async def test_an_isapi_barrier_opens_over_http_digest_and_reads_back_after_its_travel(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """The district opens the Hikvision barrier: a PUT with digest, then the arm travels, then open.

    The read-back sees the arm between its switches first (unknown, "moving") and keeps reading
    until open. Broken on purpose once: with the gateway's ``control_username`` wrong, the camera
    answered 401 to every request and the command ended failed.
    """
    anpr = build_sim(next(d for d in sample_devices() if d.id == ANPR))
    assert isinstance(anpr, HikAnprSim)
    anpr.travel_s = 1.0
    async with IsapiServer(anpr, username="gateway") as camera_http:
        config = gateway_config(
            tmp_path,
            mosquitto,
            district_broker,
            "settle_s = { barrier = 6.0 }\n",
            control={ANPR: camera_http.url},
        )
        async with desk(district_broker) as district, gateway(config, district):
            await district.send(barrier_open("cmd-isapi", device=ANPR))
            final = await district.final("cmd-isapi")
    assert final.state is CommandState.VERIFIED, final.reason
    assert final.observed is ActuatorState.OPEN
    assert anpr.commands_executed == 1
    assert [m for m, _ in camera_http.requests].count("PUT") == 1


async def test_commands_go_on_after_the_compound_broker_restarts(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """The gateway's command session reconnects by itself: a command after a broker restart is verified.

    Broken on purpose once: with the command session's connection held open by an endless wait (the
    first version, which never noticed its reader failing) the second command was never verified
    (the wait timed out).
    """
    sim = camera()
    config = gateway_config(tmp_path, mosquitto, district_broker)
    async with desk(district_broker) as district, gateway(config, district):
        async with camera_online(mosquitto, sim):
            await district.send(order("cmd-before"))
            assert (await district.final("cmd-before")).state is CommandState.VERIFIED
        mosquitto.stop()
        mosquitto.start()
        async with camera_online(mosquitto, sim):
            await asyncio.sleep(2.0)  # the gateway's sessions come back (backoff at most 0.5 s)
            await district.send(order("cmd-after-restart"))
            final = await district.final("cmd-after-restart")
    assert final.state is CommandState.VERIFIED, final.reason
    assert sim.commands_executed == 2
