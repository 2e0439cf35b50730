"""Hikvision ISAPI commands: the barrier and door encoders against simulated devices over real HTTP.

Each simulated device serves its ISAPI interface on a private port with digest authentication
(``device_sims.isapi_server``); the client is aiohttp's own digest middleware, as the command
plumbing's will be, so neither side checks itself. The devices' clocks are moved by hand: a barrier's
travel and a door's hold time pass without sleeping. The property tests drive the same simulators in
memory.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
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
    CommandReply,
    HttpRequest,
    ReplyStatus,
    StateReading,
)
from adapters.isapi import STATUS_MEANINGS
from device_sims.devices import CST, HikAcsSim, HikAnprSim, HttpPost, SimDevice, isapi_status
from device_sims.isapi_server import IsapiServer
from foundation.errors import PayloadRejected
from foundation.events import AccessResult, FaceAccessPayload, VerifyMode
from foundation.identity import Pseudonymizer
from tests.device_commands import ManualClock

ANPR: CommandEncoder = COMMAND_ENCODERS["hik-isapi-anpr"]
ACS: CommandEncoder = COMMAND_ENCODERS["hik-isapi-acs"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)

command_ids = st.from_regex(ID_PATTERN, fullmatch=True)


def barrier_camera(clock: ManualClock) -> HikAnprSim:
    return HikAnprSim(SimDevice(id="36010400011210000001", dialect="hik-isapi-anpr"), clock=clock)


def access_controller(clock: ManualClock) -> HikAcsSim:
    return HikAcsSim(SimDevice(id="36010400011240000001", dialect="hik-isapi-acs"), clock=clock)


@dataclass
class Client:
    """Sends device requests over HTTP with digest and decodes the answers with one encoder."""

    session: aiohttp.ClientSession
    url: str
    encoder: CommandEncoder

    async def exchange(self, request: HttpRequest) -> RawMessage:
        async with self.session.request(
            request.method,
            self.url + request.path,
            data=request.body or None,
            headers={"Content-Type": request.content_type} if request.content_type else None,
        ) as response:
            assert response.status != 401, "the device refused our digest answer"
            return RawMessage(await response.read(), content_type=response.headers.get("Content-Type"))

    async def command(self, command: Command) -> CommandReply:
        request = self.encoder.request(command, "unused-ref")
        assert isinstance(request, HttpRequest)
        return self.encoder.decode_reply(await self.exchange(request), request)

    async def read_back(self, query_id: str, channel: int = 1) -> StateReading:
        query = self.encoder.state_request(query_id, channel, "unused-ref")
        assert isinstance(query, HttpRequest)
        reading = self.encoder.decode_state(await self.exchange(query), query)
        assert (reading.query_id, reading.channel) == (query_id, channel)
        return reading


@contextlib.asynccontextmanager
async def online(
    sim: HikAnprSim | HikAcsSim, encoder: CommandEncoder, *, password: str | None = None
) -> AsyncIterator[tuple[Client, IsapiServer]]:
    """The simulated device serving ISAPI, and a digest client logged in as its admin."""
    async with IsapiServer(sim) as server:
        auth = aiohttp.DigestAuthMiddleware("admin", password or sim.device.secret)
        async with aiohttp.ClientSession(middlewares=(auth,), timeout=REQUEST_TIMEOUT) as session:
            yield Client(session, server.url, encoder), server


# --- the barrier camera ----------------------------------------------------------------------------


async def test_barrier_travels_then_reads_open_and_closed() -> None:
    """Open: OK, no limit switch while the arm travels (unknown), open once there; close likewise."""
    clock = ManualClock()
    sim = barrier_camera(clock)
    async with online(sim, ANPR) as (client, server):
        assert (await client.read_back("q-0")).state is ActuatorState.CLOSED
        for number, action in enumerate((CommandAction.BARRIER_OPEN, CommandAction.BARRIER_CLOSE), 1):
            command = Command(command_id=f"cmd-{number}", action=action)
            reply = await client.command(command)
            assert (reply.command_id, reply.status, reply.device_code) == (
                command.command_id,
                ReplyStatus.OK,
                "1/ok",
            )
            moving = await client.read_back(f"q-{number}a")
            assert moving.state is ActuatorState.UNKNOWN
            assert moving.detail is not None
            assert "moving" in moving.detail
            clock.advance(sim.travel_s)
            assert (await client.read_back(f"q-{number}b")).state is command.expected_state
    assert sim.commands_executed == 2
    assert ("PUT", "/ISAPI/Parking/channels/1/barrierGate") in server.requests


async def test_held_barrier_says_ok_to_close_and_stays_open_until_released() -> None:
    """Hold open (ctrlMode lock): open; a close is answered OK and does nothing; release brings it down."""
    clock = ManualClock()
    sim = barrier_camera(clock)
    async with online(sim, ANPR) as (client, _):
        hold = Command(command_id="hold", action=CommandAction.BARRIER_HOLD_OPEN)
        assert (await client.command(hold)).status is ReplyStatus.OK
        clock.advance(sim.travel_s)
        assert (await client.read_back("after-hold")).state is hold.expected_state is ActuatorState.OPEN
        close = Command(command_id="close-held", action=CommandAction.BARRIER_CLOSE)
        assert (await client.command(close)).status is ReplyStatus.OK
        clock.advance(sim.travel_s)
        held = await client.read_back("after-close")
        assert held.state is ActuatorState.OPEN
        assert held.state is not close.expected_state  # what a verifier reports as a failed command
        release = Command(command_id="release", action=CommandAction.BARRIER_RELEASE)
        assert (await client.command(release)).status is ReplyStatus.OK
        clock.advance(sim.travel_s)
        assert (
            (await client.read_back("after-release")).state is release.expected_state is ActuatorState.CLOSED
        )


async def test_stuck_barrier_answers_ok_but_the_read_back_says_closed() -> None:
    """A stuck barrier acknowledges the open; only the read-back shows it did not move.

    Broken on purpose once: with ``barrierGateStatus`` 1 decoded as open, this test failed.
    """
    clock = ManualClock()
    sim = barrier_camera(clock)
    sim.stuck = True
    command = Command(command_id="open-stuck", action=CommandAction.BARRIER_OPEN)
    async with online(sim, ANPR) as (client, _):
        reply = await client.command(command)
        clock.advance(sim.travel_s * 10)
        reading = await client.read_back("after-open-stuck")
    assert reply.status is ReplyStatus.OK
    assert reading.state is ActuatorState.CLOSED
    assert reading.state is not command.expected_state
    assert sim.commands_executed == 0


async def test_barrier_refusals_decode_with_the_cameras_reason() -> None:
    """Camera control and a second channel are refused with the camera's status words and codes.

    Broken on purpose once: with every ``statusCode`` decoded as OK, this test (and the door's, the
    round trip's and the status code property) failed.
    """
    clock = ManualClock()
    sim = barrier_camera(clock)
    async with online(sim, ANPR) as (client, _):
        sim.camera_control = True
        reply = await client.command(Command(command_id="by-camera", action=CommandAction.BARRIER_OPEN))
        assert (reply.command_id, reply.status) == ("by-camera", ReplyStatus.REFUSED)
        assert (reply.reason, reply.device_code) == (
            "Invalid Operation: barrierControlledByCamera",
            "4/barrierControlledByCamera",
        )
        sim.camera_control = False
        second = Command(command_id="lane-2", action=CommandAction.BARRIER_OPEN, channel=2)
        reply = await client.command(second)
        assert (reply.status, reply.reason) == (ReplyStatus.REFUSED, "Invalid Operation: invalidChannel")
        reading = await client.read_back("lane-2-state", channel=2)
        assert (reading.state, reading.detail) == (
            ActuatorState.UNKNOWN,
            "the camera refused the query: Invalid Operation: invalidChannel",
        )
        assert (await client.read_back("after-refusals")).state is ActuatorState.CLOSED
    assert sim.commands_executed == 0


async def test_garbled_isapi_answers_are_errors_naming_the_field() -> None:
    """``<statusCode>OK</statusCode>`` or ``<barrierGateStatus>up</barrierGateStatus>`` is unreadable, not OK."""
    sim = barrier_camera(ManualClock())
    sim.garbled_replies = True
    async with online(sim, ANPR) as (client, _):
        with pytest.raises(PayloadRejected) as reply_error:
            await client.command(Command(command_id="garbled", action=CommandAction.BARRIER_OPEN))
        with pytest.raises(PayloadRejected) as state_error:
            await client.read_back("q-garbled")
    assert (reply_error.value.rejection.reason, reply_error.value.rejection.field) == (
        "bad_field",
        "statusCode",
    )
    assert (state_error.value.rejection.reason, state_error.value.rejection.field) == (
        "bad_field",
        "barrierGateStatus",
    )


async def test_wrong_password_is_refused_by_the_device_and_nothing_moves() -> None:
    """The simulated camera checks the digest answer: a wrong secret gets 401 and the arm stays down.

    Broken on purpose once: with ``DigestGuard._check`` returning True the command went through and
    this test failed on the status.
    """
    sim = barrier_camera(ManualClock())
    request = ANPR.request(Command(command_id="intruder", action=CommandAction.BARRIER_OPEN), "")
    assert isinstance(request, HttpRequest)
    async with (
        online(sim, ANPR, password="not-the-secret") as (client, server),
        client.session.put(client.url + request.path, data=request.body) as response,
    ):
        status = response.status
    assert status == 401
    assert server.guard.rejected >= 1
    assert (sim.commands_executed, sim.barrier_status()) == (0, 1)


# --- the access controller -------------------------------------------------------------------------


async def test_door_opens_for_its_hold_time_and_reports_it() -> None:
    """Door open: OK, the lock reads open, closed again after the hold; the controller posts both."""
    clock = ManualClock()
    sim = access_controller(clock)
    command = Command(command_id="visitor-1", action=CommandAction.DOOR_OPEN, channel=2)
    async with online(sim, ACS) as (client, server):
        assert (await client.read_back("before", channel=2)).state is ActuatorState.CLOSED
        reply = await client.command(command)
        assert (reply.command_id, reply.status) == ("visitor-1", ReplyStatus.OK)
        assert (await client.read_back("during", channel=2)).state is command.expected_state
        assert (await client.read_back("other-door", channel=1)).state is ActuatorState.CLOSED
        clock.advance(sim.hold_s)
        assert (await client.read_back("after", channel=2)).state is ActuatorState.CLOSED
        assert ("PUT", "/ISAPI/AccessControl/RemoteControl/door/2") in server.requests
    rng = random.Random(7)
    posts = sim.door_reports(datetime(2026, 6, 1, 8, 0, tzinfo=CST), rng)
    assert len(posts) == 2
    opened, locked = (parse_acs(post) for post in posts)
    assert len(opened) == 1
    assert isinstance(opened[0], FaceAccessPayload)
    assert (opened[0].result, opened[0].verify_mode) == (AccessResult.GRANTED, VerifyMode.REMOTE)
    assert locked == []  # a door-locked post is numbered, not a passage
    assert sim.door_reports(datetime(2026, 6, 1, 8, 1, tzinfo=CST), rng) == []


def parse_acs(post: HttpPost) -> list[object]:
    ctx = DeviceContext(
        district_id="36010400005000000001",
        compound_id="36010400012160000101",
        device_id="36010400011240000001",
        received_at=datetime(2026, 6, 1, tzinfo=UTC),
        local_tz=CST,
        pseudonymizer=Pseudonymizer(b"k" * 32, "36010400012160000101"),
    )
    result = DIALECTS["hik-isapi-acs"].parse(RawMessage(post.body, post.content_type), ctx)
    return [event.payload for event in result.events]


async def test_door_refusal_and_garbled_answers() -> None:
    """Remote opening turned off is refused with the controller's words; garbled answers name the field."""
    sim = access_controller(ManualClock())
    sim.remote_disabled = True
    async with online(sim, ACS) as (client, _):
        reply = await client.command(Command(command_id="no-remote", action=CommandAction.DOOR_OPEN))
        assert (reply.status, reply.reason, reply.device_code) == (
            ReplyStatus.REFUSED,
            "Invalid Operation: remoteOpenDoorDisabled",
            "4/remoteOpenDoorDisabled",
        )
        assert (await client.read_back("after-refusal")).state is ActuatorState.CLOSED
        sim.remote_disabled = False
        sim.garbled_replies = True
        with pytest.raises(PayloadRejected) as reply_error:
            await client.command(Command(command_id="garbled", action=CommandAction.DOOR_OPEN))
        with pytest.raises(PayloadRejected) as state_error:
            await client.read_back("q-garbled")
    assert reply_error.value.rejection.field == "statusCode"
    assert (state_error.value.rejection.reason, state_error.value.rejection.field) == (
        "bad_field",
        "AcsWorkStatus.doorLockStatus[0]",
    )
    assert sim.commands_executed == 0


# --- encoder units and properties ------------------------------------------------------------------


@SETTINGS
@given(
    command_id=command_ids,
    action=st.sampled_from(sorted(ANPR.actions)),
    channel=st.integers(1, 64),
    travelled=st.booleans(),
)
def test_any_barrier_command_round_trips_through_the_camera(
    command_id: str, action: CommandAction, channel: int, travelled: bool
) -> None:
    """Every encodable barrier command is answered under its own id and read back as expected once there."""
    clock = ManualClock()
    sim = barrier_camera(clock)
    command = Command(command_id=command_id, action=action, channel=channel)
    request = ANPR.request(command, "")
    assert isinstance(request, HttpRequest)
    answer = sim.answer(request.method, request.path, request.body)
    reply = ANPR.decode_reply(RawMessage(answer.body, answer.content_type), request)
    assert reply.command_id == command_id
    assert reply.status is (ReplyStatus.OK if channel == 1 else ReplyStatus.REFUSED)
    if travelled:
        clock.advance(sim.travel_s)
    query = ANPR.state_request("q1", 1, "")
    assert isinstance(query, HttpRequest)
    answer = sim.answer(query.method, query.path, query.body)
    reading = ANPR.decode_state(RawMessage(answer.body, answer.content_type), query)
    moved = channel == 1 and command.expected_state is ActuatorState.OPEN
    if moved and not travelled:
        assert reading.state is ActuatorState.UNKNOWN
    else:
        assert reading.state is (command.expected_state if channel == 1 else ActuatorState.CLOSED)


@SETTINGS
@given(
    command_id=command_ids,
    code=st.integers(0, 99),
    text=st.text(alphabet="ABCDEFGHIJ abcdefghij", max_size=20),
    sub=st.text(alphabet="abcdefghijklmnopXYZ", max_size=20),
    json_form=st.booleans(),
)
def test_response_status_is_ok_only_for_code_1(
    command_id: str, code: int, text: str, sub: str, json_form: bool
) -> None:
    """A statusCode of 1 is the only OK, in XML and JSON; a refusal carries the status words and sub-code."""
    request = ACS.request(Command(command_id=command_id, action=CommandAction.DOOR_OPEN), "")
    answer = isapi_status("/ISAPI/x", code, text, sub, json_form=json_form)
    reply = ACS.decode_reply(RawMessage(answer.body, answer.content_type), request)
    assert reply.command_id == command_id
    assert reply.device_code == (f"{code}/{sub.strip()}" if sub.strip() else str(code))
    if code == 1:
        assert (reply.status, reply.reason) == (ReplyStatus.OK, None)
    else:
        said = text.strip() or STATUS_MEANINGS.get(code, f"status code {code}")
        assert reply.status is ReplyStatus.REFUSED
        assert reply.reason == ": ".join(p for p in (said, sub.strip()) if p)


@SETTINGS
@given(body=st.binary(max_size=300) | st.sampled_from([b"<ResponseStatus/>", b"{}", b'{"statusCode": "1"}']))
def test_hostile_isapi_answers_decode_or_are_rejected(body: bytes) -> None:
    """Any answer bytes decode or raise PayloadRejected; nothing else escapes the decoders."""
    for encoder, query_path in ((ANPR, "/ISAPI/Parking/channels/1/barrierGate"), (ACS, "/ISAPI/x")):
        sent = HttpRequest("PUT", query_path, correlation_id="c1")
        for content_type in ("application/xml", "application/json", None):
            for decode in (encoder.decode_reply, encoder.decode_state):
                with contextlib.suppress(PayloadRejected):
                    decode(RawMessage(body, content_type), sent)


def test_requests_are_the_isapi_documents() -> None:
    """The exact paths and XML bodies; ctrlMode lock/unlock are hold-open/release, not shut."""
    modes = {}
    for action in sorted(ANPR.actions):
        request = ANPR.request(Command(command_id="c1", action=action, channel=3), "")
        assert isinstance(request, HttpRequest)
        assert (request.method, request.path, request.channel) == (
            "PUT",
            "/ISAPI/Parking/channels/3/barrierGate",
            3,
        )
        assert request.body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<BarrierGate version="2.0"')
        modes[action] = request.body.split(b"<ctrlMode>")[1].split(b"</ctrlMode>")[0].decode()
    assert modes == {
        CommandAction.BARRIER_OPEN: "open",
        CommandAction.BARRIER_CLOSE: "close",
        CommandAction.BARRIER_HOLD_OPEN: "lock",
        CommandAction.BARRIER_RELEASE: "unlock",
    }
    door = ACS.request(Command(command_id="d1", action=CommandAction.DOOR_OPEN, channel=2), "")
    assert isinstance(door, HttpRequest)
    assert (door.method, door.path) == ("PUT", "/ISAPI/AccessControl/RemoteControl/door/2")
    assert b"<RemoteControlDoor" in door.body
    assert b"<cmd>open</cmd>" in door.body
    state = ACS.state_request("q1", 2, "")
    assert isinstance(state, HttpRequest)
    assert (state.method, state.path) == ("GET", "/ISAPI/AccessControl/AcsWorkStatus?format=json")


def test_encoders_refuse_what_the_device_cannot_do() -> None:
    """A barrier has no door and a door controller no barrier; a bad query id is refused before sending."""
    with pytest.raises(CommandNotSupportedError, match="door_open"):
        ANPR.request(Command(command_id="d1", action=CommandAction.DOOR_OPEN), "")
    with pytest.raises(CommandNotSupportedError, match="barrier_open"):
        ACS.request(Command(command_id="b1", action=CommandAction.BARRIER_OPEN), "")
    for encoder in (ANPR, ACS):
        with pytest.raises(CommandNotSupportedError, match="query id"):
            encoder.state_request("no spaces", 1, "")


def test_http_answers_need_the_request_they_answer() -> None:
    """HTTP answers carry no id: decoding one without ``sent`` is a programming error, not a guess."""
    answer = isapi_status("/ISAPI/x", 1, "OK", "ok")
    with pytest.raises(TypeError, match="sent="):
        ANPR.decode_reply(RawMessage(answer.body, answer.content_type))


def test_door_lock_alarms_and_missing_doors_read_unknown() -> None:
    """Lock states 2..4 (``doorLockStatus``) are alarms of the lock, a door the controller lacks is unknown: never a guess."""
    query = ACS.state_request("q1", 2, "")
    assert isinstance(query, HttpRequest)
    body = json.dumps({"AcsWorkStatus": {"doorLockStatus": [0, 3]}}).encode()
    reading = ACS.decode_state(RawMessage(body, "application/json"), query)
    assert (reading.state, reading.detail) == (ActuatorState.UNKNOWN, "lock broken-circuit alarm")
    body = json.dumps({"AcsWorkStatus": {"doorLockStatus": [1]}}).encode()
    reading = ACS.decode_state(RawMessage(body, "application/json"), query)
    assert (reading.state, reading.detail) == (ActuatorState.UNKNOWN, "the controller has 1 doors")
