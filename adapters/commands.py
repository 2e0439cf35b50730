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

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

# the vocabulary both ends of the uplink share lives in foundation; re-exported for the dialects
from foundation.commands import (
    EXPECTED_STATE,
    ID_PATTERN,
    ActuatorState,
    CommandAction,
    CommandId,
    is_valid_id,
)
from foundation.errors import GatewayError

if TYPE_CHECKING:
    from adapters.base import RawMessage

__all__ = [
    "EXPECTED_STATE",
    "ID_PATTERN",
    "ActuatorState",
    "Command",
    "CommandAction",
    "CommandEncoder",
    "CommandId",
    "CommandNotSupportedError",
    "CommandReply",
    "DeviceRequest",
    "HttpRequest",
    "MqttRequest",
    "ReplyStatus",
    "StateReading",
    "is_valid_id",
]

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
