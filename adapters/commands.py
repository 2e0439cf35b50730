"""Commands down to devices: the canonical command, the device request it becomes, and what came back.

A dialect that can actuate its device exposes a ``CommandEncoder`` as ``Dialect.commands``; the
others set ``commands`` to ``None`` (typed as ``None``, so the type checker knows). Like ``parse``,
an encoder is a pure translator with no I/O:

- ``request``: a canonical ``Command`` -> the transport-neutral ``DeviceRequest`` to send
  (``MqttRequest`` or ``HttpRequest``); vendor codes and numbering never leave the encoder.
- ``decode_reply``: the device's answer -> ``CommandReply`` (ok, or refused with the device's
  reason), or ``PayloadRejected`` naming the unreadable field.
- ``state_request`` / ``decode_state``: the read-back. An "OK" answer is not proof of actuation (a
  locked or stuck barrier answers OK and does not move), so whoever sends a command compares
  ``Command.expected_state`` with what the device reports afterwards.

MQTT answers are paired with their requests by the id the device echoes. HTTP devices echo no id
and may not name the barrier or door either: the HTTP exchange pairs answer and request, and the
plumbing hands the decoders the request it sent (``sent``), whose ``correlation_id`` and
``channel`` the answer is then reported under.

Delivery, correlation by id, timeouts, expiry, at-most-once and audit belong to the command plumbing
in ``gateway/``, not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from foundation.errors import GatewayError

if TYPE_CHECKING:
    from adapters.base import RawMessage

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
CommandId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
"""Chosen by the issuer, unique per command; safe in JSON, XML, URLs and MQTT topics."""
_ID = re.compile(ID_PATTERN)


class CommandAction(StrEnum):
    """What a command asks a device to do (the canonical vocabulary; dialects map it to theirs).

    Barrier "lock" is deliberately not a word here: on Hikvision barriers ``ctrlMode`` ``lock``
    keeps the arm *open* (常开) and ``unlock`` releases that hold, while an operator who "locks a
    gate" expects it shut. ``BARRIER_HOLD_OPEN`` and ``BARRIER_RELEASE`` say what happens.
    """

    BARRIER_OPEN = "barrier_open"
    BARRIER_CLOSE = "barrier_close"
    BARRIER_HOLD_OPEN = "barrier_hold_open"  # open and stay open, whatever passes (Hikvision ``lock``)
    BARRIER_RELEASE = "barrier_release"  # end the hold: back to normal operation, arm down (``unlock``)
    DOOR_OPEN = "door_open"  # unlock for the device's own hold time, then lock again
    SIREN_ON = "siren_on"  # sound the alarm tone until siren_off or the device's own time limit
    SIREN_OFF = "siren_off"  # silence the tone and any broadcast
    BROADCAST = "broadcast"  # play a preset voice clip (``Command.clip``) on the loudspeaker


class ActuatorState(StrEnum):
    """The state a device reports for its barrier, door or alarm output.

    Barriers and doors report a position (open / closed / moving); an alarm output reports whether
    it sounds. No device we speak to reports a barrier's hold apart from its position: a held
    barrier reads ``open``.
    """

    OPEN = "open"
    CLOSED = "closed"
    MOVING = "moving"
    SOUNDING = "sounding"  # an alarm output plays its tone or a clip
    SILENT = "silent"
    UNKNOWN = "unknown"  # no signal from the position sensor, or the device would not say


EXPECTED_STATE: dict[CommandAction, ActuatorState] = {
    CommandAction.BARRIER_OPEN: ActuatorState.OPEN,
    CommandAction.BARRIER_CLOSE: ActuatorState.CLOSED,
    CommandAction.BARRIER_HOLD_OPEN: ActuatorState.OPEN,
    CommandAction.BARRIER_RELEASE: ActuatorState.CLOSED,
    # the lock opens for the hold time (seconds): read back within it
    CommandAction.DOOR_OPEN: ActuatorState.OPEN,
    CommandAction.SIREN_ON: ActuatorState.SOUNDING,
    CommandAction.SIREN_OFF: ActuatorState.SILENT,
    CommandAction.BROADCAST: ActuatorState.SOUNDING,
}

MAX_CLIP = 255
"""Broadcast clips are presets stored on the speaker, numbered 1..255; free text is never sent, so a
command cannot make a public loudspeaker say whatever was typed into it."""


class Command(BaseModel):
    """One command to one device, as the issuer stated it.

    Attributes:
        command_id: chosen by the issuer; the device echoes it, and the plumbing executes each id once.
        action: what to do.
        channel: which barrier, door or output of the device, counted from 1 as installers label
            them (a dialect that counts from 0 converts inside its encoder).
        clip: ``BROADCAST`` only (and required there): the preset clip to play, 1..255.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: CommandId
    action: CommandAction
    channel: int = Field(default=1, ge=1, le=64)
    clip: int | None = Field(default=None, ge=1, le=MAX_CLIP)

    @model_validator(mode="after")
    def _clip_with_broadcast(self) -> Command:
        if (self.action is CommandAction.BROADCAST) != (self.clip is not None):
            raise ValueError("a broadcast names its preset clip, and only a broadcast has one")
        return self

    @property
    def expected_state(self) -> ActuatorState:
        """What the read-back should report once the command took effect."""
        return EXPECTED_STATE[self.action]


@dataclass(frozen=True, slots=True)
class MqttRequest:
    """A publish to the device, and where its answer will arrive.

    Attributes:
        topic: where to publish.
        payload: the exact bytes.
        qos: MQTT QoS of the publish.
        reply_topic: subscribe here (before publishing) for the answer.
        correlation_id: the id the answer echoes (command id or query id).
    """

    topic: str
    payload: bytes
    reply_topic: str
    correlation_id: str
    qos: Literal[0, 1, 2] = 1


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP request to the device's own address (scheme, host and authentication are the plumbing's).

    The device's answer carries neither id nor, always, the channel: pass this request as ``sent``
    when decoding it.

    Attributes:
        method: HTTP method.
        path: path and query, starting with ``/``.
        correlation_id: the command or query id the answer is reported under.
        channel: the barrier, door or output it is about, counted from 1.
        body: the exact bytes (empty for GET).
        content_type: of the body, if there is one.
    """

    method: Literal["GET", "PUT", "POST"]
    path: str
    correlation_id: str
    channel: int = 1
    body: bytes = b""
    content_type: str | None = None


DeviceRequest = MqttRequest | HttpRequest


class ReplyStatus(StrEnum):
    """What the device said to a command (not what it did: that is the read-back's job)."""

    OK = "ok"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class CommandReply:
    """The device's answer to a command.

    Attributes:
        command_id: the id the device echoed (HTTP: the id of the request it answers).
        status: accepted or refused.
        reason: the device's own words when it refused.
        device_code: the vendor's status code, for the audit trail.
    """

    command_id: str
    status: ReplyStatus
    reason: str | None = None
    device_code: str | None = None


@dataclass(frozen=True, slots=True)
class StateReading:
    """The device's answer to a state query.

    Attributes:
        query_id: the id the device echoed (HTTP: the id of the request it answers).
        channel: which barrier, door or output, counted from 1.
        state: what it reports.
        detail: why the state is unknown, when the device said.
    """

    query_id: str
    channel: int
    state: ActuatorState
    detail: str | None = None


class CommandNotSupportedError(GatewayError):
    """The dialect cannot express this command for this device (action, channel or device identity).

    Attributes:
        dialect: the dialect's name.
        reason: what cannot be expressed, in a sentence.
    """

    def __init__(self, dialect: str, reason: str) -> None:
        super().__init__(f"{dialect} cannot send this command: {reason}")
        self.dialect = dialect
        self.reason = reason


def is_valid_id(value: str) -> bool:
    """Whether a command or query id has the shape every dialect can carry."""
    return _ID.fullmatch(value) is not None


class CommandEncoder(Protocol):
    """How one dialect turns commands into device requests and reads the answers; pure, no I/O."""

    @property
    def actions(self) -> frozenset[CommandAction]:
        """The actions this dialect's devices accept; ``request`` refuses any other."""
        ...

    def request(self, command: Command, device_ref: str) -> DeviceRequest:
        """The request that carries ``command`` to the device.

        Args:
            command: what to do.
            device_ref: the device's vendor identity from the inventory (``ref``: the serial in MQTT
                topics). Dialects that address the device by its host may ignore it.

        Raises:
            CommandNotSupportedError: the action, channel or device identity cannot be expressed.
        """
        ...

    def decode_reply(self, raw: RawMessage, sent: DeviceRequest | None = None) -> CommandReply:
        """The device's answer to a command.

        Args:
            raw: the answer as it arrived.
            sent: the request it answers; required by HTTP dialects (their answers carry no id),
                ignored by MQTT dialects (the answer echoes the id).

        Raises:
            PayloadRejected: the answer is unreadable; the rejection names the field and why.
        """
        ...

    def state_request(self, query_id: str, channel: int, device_ref: str) -> DeviceRequest:
        """The request that asks the device for the current state of one barrier or door.

        Raises:
            CommandNotSupportedError: the channel or device identity cannot be expressed.
        """
        ...

    def decode_state(self, raw: RawMessage, sent: DeviceRequest | None = None) -> StateReading:
        """The device's answer to a state query (``sent`` as for ``decode_reply``).

        Raises:
            PayloadRejected: the answer is unreadable; the rejection names the field and why.
        """
        ...
