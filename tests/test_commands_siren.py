"""The alarm output (siren / broadcast speaker): commands through Mosquitto, its reports, its faults.

The simulated device runs on its own account of the sample compound's broker; its clock is moved by
hand, so its own time limit passes without sleeping.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import COMMAND_ENCODERS, DIALECTS
from adapters.base import DeviceContext, RawMessage
from adapters.commands import (
    ID_PATTERN,
    ActuatorState,
    Command,
    CommandAction,
    CommandEncoder,
    CommandNotSupportedError,
    MqttRequest,
    ReplyStatus,
)
from device_sims.broker import Mosquitto
from device_sims.devices import CST, MqttPublish, SirenSim
from device_sims.inventory import sample_broker_accounts, sample_devices
from foundation.errors import PayloadRejected
from foundation.events import DeviceState, DeviceStatusPayload
from foundation.identity import Pseudonymizer
from tests.device_commands import Controller, ManualClock, wired

ENCODER: CommandEncoder = COMMAND_ENCODERS["siren-mqtt"]
DEVICE = next(d for d in sample_devices() if d.dialect == "siren-mqtt")
SN = DEVICE.username
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AT = datetime(2026, 6, 1, 8, 0, tzinfo=CST)


def siren(clock: ManualClock) -> SirenSim:
    return SirenSim(DEVICE, clock=clock)


def parse(message: MqttPublish | RawMessage) -> list[DeviceStatusPayload]:
    raw = message if isinstance(message, RawMessage) else RawMessage(message.payload, topic=message.topic)
    ctx = DeviceContext(
        district_id="36010400005000000001",
        compound_id="36010400012160000101",
        device_id=DEVICE.id,
        received_at=datetime(2026, 6, 1, tzinfo=UTC),
        local_tz=CST,
        pseudonymizer=Pseudonymizer(b"k" * 32, "36010400012160000101"),
    )
    payloads = [event.payload for event in DIALECTS["siren-mqtt"].parse(raw, ctx).events]
    assert all(isinstance(p, DeviceStatusPayload) for p in payloads)
    return payloads  # type: ignore[return-value]


async def command(ctl: Controller, command: Command) -> tuple[ReplyStatus, str | None]:
    request = ENCODER.request(command, SN)
    assert isinstance(request, MqttRequest)
    reply = ENCODER.decode_reply(await ctl.exchange(request))
    assert reply.command_id == command.command_id
    return reply.status, reply.reason


async def test_siren_sounds_broadcasts_and_falls_silent(mosquitto: Mosquitto) -> None:
    """On: sounding; a clip: sounding; off: silent; each read back, and each change reported over the broker."""
    clock = ManualClock()
    sim = siren(clock)
    on = Command(command_id="fire-1", action=CommandAction.SIREN_ON)
    clip = Command(command_id="fire-2", action=CommandAction.BROADCAST, clip=3)
    off = Command(command_id="fire-3", action=CommandAction.SIREN_OFF)
    async with wired(mosquitto, sim, ENCODER, lambda: sim.take_reports(AT)) as ctl:
        assert (await ctl.read_back("q-0")).state is ActuatorState.SILENT
        for number, sent in enumerate((on, clip, off), 1):
            assert await command(ctl, sent) == (ReplyStatus.OK, None)
            assert (await ctl.read_back(f"q-{number}")).state is sent.expected_state
            assert sim.mode == ("alarm", "clip", "idle")[number - 1]
        reports = await ctl.reports(3)
    assert {r.topic for r in reports} == {f"siren/{SN}/report"}
    documents = [json.loads(r.body) for r in reports]
    assert [(d["event"], d.get("clip"), d["cause"]) for d in documents] == [
        ("sounding", None, "remote"),
        ("sounding", 3, "remote"),
        ("silent", None, "remote"),
    ]
    assert [d["seq"] for d in documents] == [1, 2, 3]
    assert all(parse(r) == [] for r in reports)  # reports of sounding are no events
    assert sim.commands_executed == 3


async def test_siren_stops_by_itself_after_its_time_limit(mosquitto: Mosquitto) -> None:
    """A siren left on (its off command lost) falls silent after its own limit and says why."""
    clock = ManualClock()
    sim = siren(clock)
    async with wired(mosquitto, sim, ENCODER) as ctl:
        await command(ctl, Command(command_id="left-on", action=CommandAction.SIREN_ON))
        clock.advance(sim.max_sound_s)
        assert (await ctl.read_back("q-late")).state is ActuatorState.SILENT
    assert [json.loads(p.payload)["cause"] for p in sim.take_reports(AT)] == ["remote", "timeout"]


async def test_refusals_faults_and_garbled_answers(mosquitto: Mosquitto) -> None:
    """A broken speaker refuses with its reason; an unknown clip is refused; garbled answers name the field.

    The speaker's fault report becomes a device_status fault.
    """
    sim = siren(ManualClock())
    sim.speaker_fault = True
    async with wired(mosquitto, sim, ENCODER) as ctl:
        assert await command(ctl, Command(command_id="on", action=CommandAction.SIREN_ON)) == (
            ReplyStatus.REFUSED,
            "speaker open circuit",
        )
        sim.speaker_fault = False
        unknown_clip = Command(command_id="clip-99", action=CommandAction.BROADCAST, clip=99)
        assert await command(ctl, unknown_clip) == (ReplyStatus.REFUSED, "no such clip 99")
        assert (await ctl.read_back("q-refused")).state is ActuatorState.SILENT
        sim.garbled_replies = True
        request = ENCODER.request(Command(command_id="garbled", action=CommandAction.SIREN_ON), SN)
        assert isinstance(request, MqttRequest)
        garbled_reply = await ctl.exchange(request)
        query = ENCODER.state_request("q-garbled", 1, SN)
        assert isinstance(query, MqttRequest)
        garbled_state = await ctl.exchange(query)
    fault = sim.alarm(AT, random.Random(1))
    assert isinstance(fault, MqttPublish)
    with pytest.raises(PayloadRejected) as reply_error:
        ENCODER.decode_reply(garbled_reply)
    assert (reply_error.value.rejection.reason, reply_error.value.rejection.field) == ("bad_field", "ret")
    with pytest.raises(PayloadRejected) as state_error:
        ENCODER.decode_state(garbled_state)
    assert (state_error.value.rejection.reason, state_error.value.rejection.field) == ("bad_field", "mode")
    (payload,) = parse(fault)
    assert payload.state is DeviceState.FAULT
    assert payload.reason is not None
    assert payload.reason.startswith("speaker_open: impedance ")
    assert sim.commands_executed == 0


@SETTINGS
@given(
    command_id=st.from_regex(ID_PATTERN, fullmatch=True),
    action=st.sampled_from(sorted(ENCODER.actions)),
    clip=st.integers(1, 255),
    channel=st.integers(1, 64),
)
def test_any_siren_command_round_trips_through_the_device(
    command_id: str, action: CommandAction, clip: int, channel: int
) -> None:
    """Every encodable command is answered under its own id; the read-back shows its state when it could act."""
    sim = siren(ManualClock())
    command = Command(
        command_id=command_id,
        action=action,
        channel=channel,
        clip=clip if action is CommandAction.BROADCAST else None,
    )
    request = ENCODER.request(command, SN)
    assert isinstance(request, MqttRequest)
    answer = sim.handle(MqttPublish(request.topic, request.payload))
    assert answer is not None
    reply = ENCODER.decode_reply(RawMessage(answer.payload, topic=answer.topic))
    acted = channel == 1 and (action is not CommandAction.BROADCAST or clip <= sim.clips)
    assert (reply.command_id, reply.status) == (command_id, ReplyStatus.OK if acted else ReplyStatus.REFUSED)
    query = ENCODER.state_request("q1", 1, SN)
    assert isinstance(query, MqttRequest)
    state = sim.handle(MqttPublish(query.topic, query.payload))
    assert state is not None
    reading = ENCODER.decode_state(RawMessage(state.payload, topic=state.topic))
    assert reading.state is (command.expected_state if acted else ActuatorState.SILENT)


def test_requests_and_what_the_encoder_refuses() -> None:
    """The exact request documents; a barrier or door command and an unsafe serial are refused."""
    request = ENCODER.request(Command(command_id="b1", action=CommandAction.BROADCAST, clip=7), SN)
    assert isinstance(request, MqttRequest)
    assert (request.topic, request.reply_topic) == (f"siren/{SN}/cmd/req", f"siren/{SN}/cmd/resp")
    assert json.loads(request.payload) == {"id": "b1", "op": "play", "output": 1, "clip": 7}
    off = ENCODER.request(Command(command_id="o1", action=CommandAction.SIREN_OFF), SN)
    assert isinstance(off, MqttRequest)
    assert json.loads(off.payload) == {"id": "o1", "op": "alarm_off", "output": 1}
    for action in (CommandAction.BARRIER_OPEN, CommandAction.DOOR_OPEN):
        with pytest.raises(CommandNotSupportedError, match=action.value):
            ENCODER.request(Command(command_id="x1", action=action), SN)
    with pytest.raises(CommandNotSupportedError, match="MQTT topic"):
        ENCODER.request(Command(command_id="x1", action=CommandAction.SIREN_ON), "a+b")


def test_the_sample_compound_has_a_siren_on_its_own_account() -> None:
    """The sample shed's siren is an inventory device whose broker account reads only its own requests."""
    accounts = sample_broker_accounts()
    assert accounts.allows(SN, "read", f"siren/{SN}/cmd/req")
    assert not accounts.allows(SN, "read", "siren/OTHER/cmd/req")
    assert accounts.allows(SN, "write", f"siren/{SN}/report")


@SETTINGS
@given(
    command_id=st.from_regex(ID_PATTERN, fullmatch=True),
    ret=st.integers(0, 99_999),
    msg=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xD7FF), max_size=40)
    | st.sampled_from(["", "  "]),
)
def test_reply_codes_decode_as_ok_only_for_ret_0(command_id: str, ret: int, msg: str) -> None:
    """``ret`` 0 is the only OK; a refusal carries ``msg`` (or the code when it is blank) and the code."""
    body = json.dumps({"id": command_id, "op": "alarm_on", "ret": ret, "msg": msg}).encode()
    reply = ENCODER.decode_reply(RawMessage(body, topic=f"siren/{SN}/cmd/resp"))
    assert (reply.command_id, reply.device_code) == (command_id, str(ret))
    if ret == 0:
        assert (reply.status, reply.reason) == (ReplyStatus.OK, None)
    else:
        assert (reply.status, reply.reason) == (ReplyStatus.REFUSED, msg.strip() or f"ret {ret}")


def test_an_answer_whose_op_is_not_text_is_rejected_naming_the_field() -> None:
    """``"op": []`` is refused as ``PayloadRejected`` on ``op``, not a ``TypeError`` that ends the session.

    (Found in review: a list is unhashable, so ``op not in ops`` raised.)
    """
    ops: list[object] = [[], {}, 7, None]
    for op in ops:
        body = json.dumps({"id": "a", "op": op, "ret": 0}).encode()
        with pytest.raises(PayloadRejected) as caught:
            ENCODER.decode_reply(RawMessage(body, topic=f"siren/{SN}/cmd/resp"))
        assert caught.value.rejection.field == "op"
