"""Barrier commands of the MQTT LPR camera: the encoder against the simulated camera.

Integration tests run the encoder's requests through a real Mosquitto to the simulator (wired with a
plain aiomqtt client, as the device's firmware would be) and decode what comes back. The property
tests drive the same simulator in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters import COMMAND_ENCODERS, DIALECTS
from adapters.base import RawMessage
from adapters.commands import (
    ID_PATTERN,
    ActuatorState,
    Command,
    CommandAction,
    CommandEncoder,
    CommandNotSupportedError,
    DeviceRequest,
    MqttRequest,
    ReplyStatus,
)
from adapters.vz_lpr_mqtt import REFUSAL_CODES
from device_sims.broker import Mosquitto
from device_sims.devices import MqttPublish, SimDevice, VzLprSim
from device_sims.embedded_broker import topic_matches
from foundation.errors import PayloadRejected
from tests.conftest import device_client, gateway_client
from tests.device_commands import ActingMqttSim

SERIAL = "e2e0c7a4-5f0d4a1b"  # the sample compound's barrier camera: its account on the test broker
ENCODER: CommandEncoder = COMMAND_ENCODERS["vz-lpr-mqtt"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REPLY_TIMEOUT_S = 10

command_ids = st.from_regex(ID_PATTERN, fullmatch=True)
serials = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZabcdef0123456789-_.", min_size=1, max_size=64)


def camera(serial: str = SERIAL) -> VzLprSim:
    return VzLprSim(SimDevice(id="36010400011210000002", dialect="vz-lpr-mqtt", ref=serial))


def in_memory(sim: VzLprSim, request: MqttRequest) -> RawMessage:
    """The simulated camera's answer to a request, without a broker."""
    answer = sim.handle(MqttPublish(request.topic, request.payload, request.qos))
    assert answer is not None, f"the camera does not listen on {request.topic}"
    assert answer.topic == request.reply_topic
    return RawMessage(answer.payload, topic=answer.topic)


# --- through a real Mosquitto ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def camera_online(broker: Mosquitto, sim: ActingMqttSim) -> AsyncIterator[None]:
    """The simulated camera (or any acting MQTT device) connected to the broker, answering on its reply topics."""
    async with device_client(broker.port, sim.device) as client:
        for topic in sim.request_topics:
            await client.subscribe(topic, qos=1)

        async def serve() -> None:
            async for message in client.messages:
                answer = sim.handle(MqttPublish(message.topic.value, bytes(message.payload)))
                if answer is not None:
                    await client.publish(answer.topic, answer.payload, qos=answer.qos)

        task = asyncio.create_task(serve(), name="vz-camera")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass
class Controller:
    """Sends device requests and returns the device's raw answer (one request in flight at a time)."""

    client: aiomqtt.Client
    answers: asyncio.Queue[RawMessage]

    async def exchange(self, request: DeviceRequest) -> RawMessage:
        """Publish the request; the next message on its reply topic."""
        assert isinstance(request, MqttRequest)
        await self.client.publish(request.topic, request.payload, qos=request.qos)
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            answer = await self.answers.get()
        assert answer.topic == request.reply_topic
        return answer


@contextlib.asynccontextmanager
async def controller(broker: Mosquitto, serial: str = SERIAL) -> AsyncIterator[Controller]:
    """A client that has subscribed to the camera's reply topics before sending anything."""
    async with gateway_client(
        broker.port, identifier="commander"
    ) as client:  # commands: the gateway's account
        await client.subscribe(f"vzlpr/{serial}/+/resp", qos=1)
        answers: asyncio.Queue[RawMessage] = asyncio.Queue()

        async def take() -> None:
            async for message in client.messages:
                answers.put_nowait(RawMessage(bytes(message.payload), topic=message.topic.value))

        task = asyncio.create_task(take(), name="commander")
        try:
            yield Controller(client, answers)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def read_back(ctl: Controller, query_id: str) -> ActuatorState:
    reading = ENCODER.decode_state(await ctl.exchange(ENCODER.state_request(query_id, 1, SERIAL)))
    assert reading.query_id == query_id
    assert reading.channel == 1
    return reading.state


async def test_open_and_close_are_acknowledged_and_read_back(mosquitto: Mosquitto) -> None:
    """Open: OK, read back open; close: OK, read back closed; each answer echoes its id."""
    sim = camera()
    async with camera_online(mosquitto, sim), controller(mosquitto) as ctl:
        assert await read_back(ctl, "q-0") is ActuatorState.CLOSED
        for number, action in enumerate((CommandAction.BARRIER_OPEN, CommandAction.BARRIER_CLOSE), 1):
            command = Command(command_id=f"cmd-{number}", action=action)
            reply = ENCODER.decode_reply(await ctl.exchange(ENCODER.request(command, SERIAL)))
            assert reply.command_id == command.command_id
            assert reply.status is ReplyStatus.OK
            assert await read_back(ctl, f"q-{number}") is command.expected_state
    assert sim.commands_executed == 2


async def test_stuck_barrier_answers_ok_but_the_read_back_says_closed(mosquitto: Mosquitto) -> None:
    """A stuck barrier acknowledges the open; only the read-back shows it did not move."""
    sim = camera()
    sim.stuck = True
    command = Command(command_id="open-stuck", action=CommandAction.BARRIER_OPEN)
    async with camera_online(mosquitto, sim), controller(mosquitto) as ctl:
        reply = ENCODER.decode_reply(await ctl.exchange(ENCODER.request(command, SERIAL)))
        state = await read_back(ctl, "after-open-stuck")
    assert reply.status is ReplyStatus.OK
    assert state is ActuatorState.CLOSED
    assert state is not command.expected_state  # what a verifier reports as a failed command


async def test_device_refusals_decode_with_the_devices_reason(mosquitto: Mosquitto) -> None:
    """Camera control, an unknown gate and an unknown ctrl code are refused with the camera's reason."""
    sim = camera()
    async with camera_online(mosquitto, sim), controller(mosquitto) as ctl:
        sim.camera_control = True
        held = Command(command_id="by-camera", action=CommandAction.BARRIER_OPEN)
        reply = ENCODER.decode_reply(await ctl.exchange(ENCODER.request(held, SERIAL)))
        assert (reply.command_id, reply.status) == ("by-camera", ReplyStatus.REFUSED)
        assert (reply.reason, reply.device_code) == ("gate controlled by camera", "403")

        sim.camera_control = False
        second_gate = Command(command_id="gate-2", action=CommandAction.BARRIER_OPEN, channel=2)
        reply = ENCODER.decode_reply(await ctl.exchange(ENCODER.request(second_gate, SERIAL)))
        assert (reply.status, reply.reason, reply.device_code) == (ReplyStatus.REFUSED, "no such gate", "404")

        # an action this encoder never sends, as a newer platform might: the camera's refusal still decodes
        unknown = json.dumps({"cmd": "gate_ctrl", "id": "lift-7", "gate": 0, "ctrl": 7}).encode()
        raw_request = MqttRequest(f"vzlpr/{SERIAL}/cmd/req", unknown, f"vzlpr/{SERIAL}/cmd/resp", "lift-7")
        reply = ENCODER.decode_reply(await ctl.exchange(raw_request))
        assert (reply.command_id, reply.status, reply.reason) == (
            "lift-7",
            ReplyStatus.REFUSED,
            "unknown ctrl 7",
        )
        assert await read_back(ctl, "after-refusals") is ActuatorState.CLOSED
    assert sim.commands_executed == 0


async def test_garbled_answers_are_errors_naming_the_field(mosquitto: Mosquitto) -> None:
    """A camera answering ``"state_code": "OK!"`` or ``"gate_state": "up"`` is unreadable, not OK."""
    sim = camera()
    sim.garbled_replies = True
    command = Command(command_id="garbled", action=CommandAction.BARRIER_OPEN)
    async with camera_online(mosquitto, sim), controller(mosquitto) as ctl:
        reply_raw = await ctl.exchange(ENCODER.request(command, SERIAL))
        state_raw = await ctl.exchange(ENCODER.state_request("q-garbled", 1, SERIAL))
    with pytest.raises(PayloadRejected) as reply_error:
        ENCODER.decode_reply(reply_raw)
    assert (reply_error.value.rejection.reason, reply_error.value.rejection.field) == (
        "bad_field",
        "state_code",
    )
    with pytest.raises(PayloadRejected) as state_error:
        ENCODER.decode_state(state_raw)
    assert (state_error.value.rejection.reason, state_error.value.rejection.field) == (
        "bad_field",
        "gate_state",
    )


# --- encoder units and properties ------------------------------------------------------------------


@SETTINGS
@given(
    command_id=command_ids,
    action=st.sampled_from(sorted(ENCODER.actions)),
    channel=st.integers(1, 64),
    serial=serials,
)
def test_any_command_round_trips_through_the_camera(
    command_id: str, action: CommandAction, channel: int, serial: str
) -> None:
    """Every encodable command reaches the camera's topic, is answered with its own id, and is read back."""
    sim = camera(serial)
    command = Command(command_id=command_id, action=action, channel=channel)
    request = ENCODER.request(command, serial)
    assert isinstance(request, MqttRequest)
    assert (request.topic, request.correlation_id) == (f"vzlpr/{serial}/cmd/req", command_id)
    reply = ENCODER.decode_reply(in_memory(sim, request))
    assert reply.command_id == command_id
    assert reply.status is (ReplyStatus.OK if channel == 1 else ReplyStatus.REFUSED)
    query = ENCODER.state_request(f"{command_id[:60]}-q", 1, serial)
    assert isinstance(query, MqttRequest)
    reading = ENCODER.decode_state(in_memory(sim, query))
    assert reading.query_id == f"{command_id[:60]}-q"
    expected_if_moved = command.expected_state if channel == 1 else ActuatorState.CLOSED
    assert reading.state is expected_if_moved


@SETTINGS
@given(
    command_id=command_ids,
    code=st.integers(0, 999),
    err_msg=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xD7FF), max_size=40)
    | st.sampled_from(["", "  "]),
)
def test_reply_codes_decode_as_ok_only_for_200(command_id: str, code: int, err_msg: str) -> None:
    """state_code 200 is the only OK; a refusal carries err_msg (or the code's meaning) and the code."""
    body = json.dumps({"cmd": "gate_ctrl", "id": command_id, "state_code": code, "err_msg": err_msg})
    reply = ENCODER.decode_reply(RawMessage(body.encode(), topic=f"vzlpr/{SERIAL}/cmd/resp"))
    assert (reply.command_id, reply.device_code) == (command_id, str(code))
    if code == 200:
        assert reply.status is ReplyStatus.OK
        assert reply.reason is None
    else:
        assert reply.status is ReplyStatus.REFUSED
        assert reply.reason == (err_msg.strip() or REFUSAL_CODES.get(code, f"state code {code}"))


hostile = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["gate_ctrl", "get_gate_state", "200", "x" * 300, "id\n"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
answer_documents = st.fixed_dictionaries(
    {},
    optional={
        "cmd": st.sampled_from(["gate_ctrl", "get_gate_state"]) | hostile,
        "id": command_ids | hostile,
        "state_code": st.sampled_from([200, 403, "200"]) | hostile,
        "err_msg": hostile,
        "gate": st.sampled_from([0, 1, "0"]) | hostile,
        "gate_state": st.integers(0, 4) | hostile,
    },
)


@SETTINGS
@given(doc=answer_documents, channel=st.sampled_from(["cmd", "state"]))
def test_hostile_answers_decode_or_are_rejected(doc: dict[str, object], channel: str) -> None:
    """Any answer document decodes or raises PayloadRejected naming a reason; nothing else escapes."""
    raw = RawMessage(json.dumps(doc).encode(), topic=f"vzlpr/{SERIAL}/{channel}/resp")
    decode = ENCODER.decode_reply if channel == "cmd" else ENCODER.decode_state
    try:
        decode(raw)
    except PayloadRejected as exc:
        assert exc.rejection.reason in {"bad_field", "missing_field", "out_of_range"}


def test_answers_on_the_wrong_topic_or_for_the_wrong_request_are_rejected() -> None:
    """A state answer is not a command reply, and an answer off the reply topics is refused."""
    state_answer = b'{"cmd": "get_gate_state", "id": "q1", "state_code": 200, "gate": 0, "gate_state": 2}'
    with pytest.raises(PayloadRejected) as wrong_kind:
        ENCODER.decode_reply(RawMessage(state_answer, topic=f"vzlpr/{SERIAL}/cmd/resp"))
    assert wrong_kind.value.rejection.field == "cmd"
    with pytest.raises(PayloadRejected) as wrong_topic:
        ENCODER.decode_state(RawMessage(state_answer, topic=f"vzlpr/{SERIAL}/result"))
    assert wrong_topic.value.rejection.reason == "bad_topic"
    with pytest.raises(PayloadRejected) as truncated:
        ENCODER.decode_reply(RawMessage(b'{"cmd": "gate_ctrl", "id": ', topic=f"vzlpr/{SERIAL}/cmd/resp"))
    assert truncated.value.rejection.reason == "malformed_json"


def test_refused_state_query_reads_unknown_with_the_reason() -> None:
    """A camera that refuses the query gives no state: unknown, never a guess."""
    body = b'{"cmd": "get_gate_state", "id": "q1", "state_code": 404, "gate": 1, "err_msg": "no such gate"}'
    reading = ENCODER.decode_state(RawMessage(body, topic=f"vzlpr/{SERIAL}/state/resp"))
    assert (reading.channel, reading.state) == (2, ActuatorState.UNKNOWN)
    assert reading.detail == "the camera refused the query: no such gate"


def test_encoder_refuses_what_the_camera_cannot_do() -> None:
    """A door command, or a serial that would break the topic, is refused before anything is sent."""
    with pytest.raises(CommandNotSupportedError, match="door_open"):
        ENCODER.request(Command(command_id="d1", action=CommandAction.DOOR_OPEN), SERIAL)
    for serial in ("", "a/b", "cam+1", "cam#", "x" * 65):
        with pytest.raises(CommandNotSupportedError, match="MQTT topic"):
            ENCODER.request(Command(command_id="b1", action=CommandAction.BARRIER_OPEN), serial)
    with pytest.raises(CommandNotSupportedError, match="query id"):
        ENCODER.state_request("no spaces allowed", 1, SERIAL)


def test_command_ids_and_channels_are_validated() -> None:
    """Ids are 1..64 characters safe in every transport; channels count from 1."""
    for bad in ("", "has space", "-leading-dash", "x" * 65, "a/b"):
        with pytest.raises(ValidationError):
            Command(command_id=bad, action=CommandAction.BARRIER_OPEN)
    with pytest.raises(ValidationError):
        Command(command_id="c0", action=CommandAction.BARRIER_OPEN, channel=0)
    assert Command(command_id="c1", action=CommandAction.BARRIER_CLOSE).expected_state is ActuatorState.CLOSED


def test_command_traffic_stays_out_of_the_event_subscription() -> None:
    """The gateway subscribes to vzlpr/+/+ for events; requests and answers never match it."""
    sim = camera()
    event_filter = DIALECTS["vz-lpr-mqtt"].topic_filter
    assert event_filter is not None
    command = Command(command_id="c1", action=CommandAction.BARRIER_OPEN)
    request = ENCODER.request(command, SERIAL)
    query = ENCODER.state_request("q1", 1, SERIAL)
    assert isinstance(request, MqttRequest)
    assert isinstance(query, MqttRequest)
    topics = {request.topic, request.reply_topic, query.topic, query.reply_topic, *sim.request_topics}
    assert len(topics) == 4
    assert not any(topic_matches(event_filter, topic) for topic in topics)
    assert topic_matches(event_filter, sim.topic("result"))


def test_broadcasts_name_a_preset_clip_and_nothing_else_does() -> None:
    """A broadcast needs a clip 1..255 (no free text); other actions refuse one; each action has its state."""
    assert (
        Command(command_id="b1", action=CommandAction.BROADCAST, clip=3).expected_state
        is ActuatorState.SOUNDING
    )
    for bad in (
        {"action": CommandAction.BROADCAST},
        {"action": CommandAction.BROADCAST, "clip": 0},
        {"action": CommandAction.BROADCAST, "clip": 256},
        {"action": CommandAction.BROADCAST, "clip": "请勿滞留"},
        {"action": CommandAction.SIREN_ON, "clip": 1},
    ):
        with pytest.raises(ValidationError):
            Command.model_validate({"command_id": "b1", **bad})
    assert {
        action: Command(
            command_id="c", action=action, clip=1 if action is CommandAction.BROADCAST else None
        ).expected_state
        for action in CommandAction
    } == {
        CommandAction.BARRIER_OPEN: ActuatorState.OPEN,
        CommandAction.BARRIER_CLOSE: ActuatorState.CLOSED,
        CommandAction.BARRIER_HOLD_OPEN: ActuatorState.OPEN,
        CommandAction.BARRIER_RELEASE: ActuatorState.CLOSED,
        CommandAction.DOOR_OPEN: ActuatorState.OPEN,
        CommandAction.SIREN_ON: ActuatorState.SOUNDING,
        CommandAction.SIREN_OFF: ActuatorState.SILENT,
        CommandAction.BROADCAST: ActuatorState.SOUNDING,
    }
