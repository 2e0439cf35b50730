"""Door commands of the MQTT face terminal: the encoder against the simulated terminal through Mosquitto.

The terminal's clock is moved by hand, so its hold time passes without sleeping.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import COMMAND_ENCODERS, DIALECTS
from adapters.base import RawMessage
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
from device_sims.devices import MqttPublish, SimDevice, UfaceSim
from device_sims.embedded_broker import topic_matches
from foundation.errors import PayloadRejected
from tests.device_commands import ManualClock, wired

SN = "UF20231107A01"  # the sample compound's face terminal: its account on the test broker
ENCODER: CommandEncoder = COMMAND_ENCODERS["uface-mqtt"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def terminal(clock: ManualClock, sn: str = SN) -> UfaceSim:
    return UfaceSim(SimDevice(id="36010400011240000003", dialect="uface-mqtt", ref=sn), clock=clock)


async def test_door_opens_for_its_hold_time(mosquitto: Mosquitto) -> None:
    """Open: OK under its own id, the relay reads open, then closed once the hold time has passed."""
    clock = ManualClock()
    sim = terminal(clock)
    command = Command(command_id="visitor-7", action=CommandAction.DOOR_OPEN)
    async with wired(mosquitto, sim, ENCODER) as ctl:
        assert (await ctl.read_back("q-before")).state is ActuatorState.CLOSED
        request = ENCODER.request(command, SN)
        assert isinstance(request, MqttRequest)
        reply = ENCODER.decode_reply(await ctl.exchange(request))
        assert (reply.command_id, reply.status, reply.device_code) == ("visitor-7", ReplyStatus.OK, "0")
        assert (await ctl.read_back("q-during")).state is command.expected_state
        clock.advance(sim.hold_s)
        assert (await ctl.read_back("q-after")).state is ActuatorState.CLOSED
    assert sim.commands_executed == 1


async def test_refusal_and_garbled_answers(mosquitto: Mosquitto) -> None:
    """Remote opening turned off is refused with the terminal's words; garbled answers name the field."""
    sim = terminal(ManualClock())
    sim.remote_disabled = True
    async with wired(mosquitto, sim, ENCODER) as ctl:
        request = ENCODER.request(Command(command_id="no-remote", action=CommandAction.DOOR_OPEN), SN)
        assert isinstance(request, MqttRequest)
        reply = ENCODER.decode_reply(await ctl.exchange(request))
        assert (reply.status, reply.reason, reply.device_code) == (
            ReplyStatus.REFUSED,
            "remote open disabled",
            "1001",
        )
        assert (await ctl.read_back("q-refused")).state is ActuatorState.CLOSED
        sim.garbled_replies = True
        garbled_reply = await ctl.exchange(request)
        query = ENCODER.state_request("q-garbled", 1, SN)
        assert isinstance(query, MqttRequest)
        garbled_state = await ctl.exchange(query)
    with pytest.raises(PayloadRejected) as reply_error:
        ENCODER.decode_reply(garbled_reply)
    assert (reply_error.value.rejection.reason, reply_error.value.rejection.field) == (
        "bad_field",
        "data.code",
    )
    with pytest.raises(PayloadRejected) as state_error:
        ENCODER.decode_state(garbled_state)
    assert state_error.value.rejection.field == "data.code"
    assert sim.commands_executed == 0


@SETTINGS
@given(command_id=st.from_regex(ID_PATTERN, fullmatch=True), channel=st.integers(1, 64))
def test_any_door_command_round_trips_through_the_terminal(command_id: str, channel: int) -> None:
    """Every door command reaches the terminal's topic, is answered under its own id, and is read back."""
    sim = terminal(ManualClock())
    command = Command(command_id=command_id, action=CommandAction.DOOR_OPEN, channel=channel)
    request = ENCODER.request(command, SN)
    assert isinstance(request, MqttRequest)
    answer = sim.handle(MqttPublish(request.topic, request.payload))
    assert answer is not None
    assert answer.topic == request.reply_topic
    reply = ENCODER.decode_reply(RawMessage(answer.payload, topic=answer.topic))
    assert reply.command_id == command_id
    assert reply.status is (ReplyStatus.OK if channel == 1 else ReplyStatus.REFUSED)
    query = ENCODER.state_request("q1", 1, SN)
    assert isinstance(query, MqttRequest)
    state = sim.handle(MqttPublish(query.topic, query.payload))
    assert state is not None
    reading = ENCODER.decode_state(RawMessage(state.payload, topic=state.topic))
    assert reading.state is (ActuatorState.OPEN if channel == 1 else ActuatorState.CLOSED)


def test_wrong_answers_and_impossible_commands_are_refused() -> None:
    """Answers off the reply topic or for another request are rejected; a barrier command is not sent."""
    state_answer = json.dumps(
        {"msgId": "q1", "sn": SN, "type": "door_state_ack", "data": {"code": 0, "doorNo": 1, "relay": 1}}
    ).encode()
    with pytest.raises(PayloadRejected) as wrong_kind:
        ENCODER.decode_reply(RawMessage(state_answer, topic=f"uface/{SN}/cmd/resp"))
    assert wrong_kind.value.rejection.field == "type"
    with pytest.raises(PayloadRejected) as wrong_topic:
        ENCODER.decode_state(RawMessage(state_answer, topic=f"uface/{SN}/event"))
    assert wrong_topic.value.rejection.reason == "bad_topic"
    with pytest.raises(CommandNotSupportedError, match="barrier_open"):
        ENCODER.request(Command(command_id="b1", action=CommandAction.BARRIER_OPEN), SN)
    with pytest.raises(CommandNotSupportedError, match="MQTT topic"):
        ENCODER.request(Command(command_id="d1", action=CommandAction.DOOR_OPEN), "a/b")
    event_filter = DIALECTS["uface-mqtt"].topic_filter
    assert event_filter is not None
    request = ENCODER.request(Command(command_id="d1", action=CommandAction.DOOR_OPEN), SN)
    assert isinstance(request, MqttRequest)
    assert not topic_matches(event_filter, request.topic)
    assert not topic_matches(event_filter, request.reply_topic)


hostile = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=20)
    | st.sampled_from(["remote_open_ack", "door_state_ack", " ", "x" * 300]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
answers = st.fixed_dictionaries(
    {},
    optional={
        "msgId": st.from_regex(ID_PATTERN, fullmatch=True) | hostile,
        "type": st.sampled_from(["remote_open_ack", "door_state_ack"]) | hostile,
        "data": st.fixed_dictionaries(
            {},
            optional={
                "code": st.sampled_from([0, 1001, "0"]) | hostile,
                "msg": hostile,
                "doorNo": st.sampled_from([1, 2]) | hostile,
                "relay": st.integers(0, 3) | hostile,
            },
        )
        | hostile,
    },
)


@SETTINGS
@given(doc=answers, channel=st.sampled_from(["cmd", "state"]))
def test_hostile_answers_decode_or_are_rejected(doc: dict[str, object], channel: str) -> None:
    """Any answer document decodes or raises PayloadRejected naming a reason; nothing else escapes."""
    raw = RawMessage(json.dumps(doc).encode(), topic=f"uface/{SN}/{channel}/resp")
    decode = ENCODER.decode_reply if channel == "cmd" else ENCODER.decode_state
    try:
        decode(raw)
    except PayloadRejected as exc:
        assert exc.rejection.reason in {"bad_field", "missing_field", "out_of_range"}
