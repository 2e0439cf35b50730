"""Commands on the uplink: what the district orders a compound's device to do, and how it went.

Our own protocol, like ``uplink/evidence.py`` (both ends import this module and nothing else of
each other), over the district broker's TLS sessions, one level below a compound's event topics::

    <prefix>/<district>/<compound>/request/command    district -> compound  CommandOrder (JSON)
    <prefix>/<district>/<compound>/command/status     compound -> district  CommandReport (JSON)

The broker's ACL lets a compound read only its own ``request/command`` (a compound never sees
another's commands) and write only its own ``command/status``; only the district's command desk
may order. Every message is QoS 1: an order may arrive more than once, and the compound executes
each ``command_id`` at most once however often it arrives (``gateway/command_ledger.py``).

An order carries its expiry. The compound never executes an order after it (one that expired while
the compound was offline is reported ``expired``, never run late); the district bounds how far
ahead an expiry may lie (``MAX_LIFETIME``), and the compound keeps every id it has seen for longer
than that, so a very late redelivery of an executed order is expired, not executed again.

A command moves ``queued -> sent -> acknowledged -> verified``, or ends ``failed``, ``expired`` or
``refused`` (with the reason, and the compound's policy rule for refusals). ``acknowledged`` means
the device answered OK; ``verified`` that the state read back after the device kind's settle time
is what the command asked for. A device that answers OK and does not move ends ``failed``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from foundation import strict_json
from foundation.commands import ActuatorState, CommandAction, CommandId
from foundation.events import Code, GbId, Text

COMMAND_VERSION: Literal[1] = 1
MAX_LIFETIME = timedelta(hours=24)
"""The furthest an order's expiry may lie after its issue (a remote open is for now, not tomorrow)."""

ORDER = "request/command"
REPORT = "command/status"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def order_topic(prefix: str, district_id: str, compound_id: str) -> str:
    """Where the district orders one compound (only that compound may read it)."""
    return f"{prefix}/{district_id}/{compound_id}/{ORDER}"


def report_topic(prefix: str, district_id: str, compound_id: str) -> str:
    """Where a compound reports its commands' states."""
    return f"{prefix}/{district_id}/{compound_id}/{REPORT}"


def report_filter(prefix: str) -> str:
    """What the district's command desk subscribes to: every compound's reports."""
    return f"{prefix}/+/+/{REPORT}"


class CommandOrigin(StrEnum):
    """Who issued a command."""

    DISTRICT = "district"  # an operator at the district (CLI, API, console)
    RULE = "rule"  # one of the compound's local rules


class CommandOrder(_Message):
    """One command to one device of the compound, as the district issued it.

    Attributes:
        command_id: the issuer's id; executed at most once per compound however often it arrives.
        device_id: the device's GB/T 28181 id in the compound's inventory.
        action: what to do (``foundation.commands.CommandAction``).
        channel: which barrier or door, counted from 1 as installers label them.
        clip: a broadcast's preset clip on the speaker (never free text).
        issued_by: the operator (token name) or the rule.
        role: the issuer's role at the district.
        reason: why (kept in both audit logs).
        issued_at: when it was issued.
        expires_at: never executed at or after this moment.
    """

    v: Literal[1] = COMMAND_VERSION
    command_id: CommandId
    device_id: GbId
    action: CommandAction
    channel: int = Field(default=1, ge=1, le=64)
    clip: int | None = Field(
        default=None, ge=1, le=255, description="broadcast only: the speaker's preset clip"
    )
    issued_by: Code
    role: Code
    reason: Text = Field(min_length=1)
    issued_at: AwareDatetime
    expires_at: AwareDatetime

    @model_validator(mode="after")
    def _lifetime(self) -> Self:
        if (self.action is CommandAction.BROADCAST) != (self.clip is not None):
            raise ValueError("a broadcast names its preset clip (clip), and only a broadcast has one")
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        if self.expires_at - self.issued_at > MAX_LIFETIME:
            raise ValueError(f"expires_at may lie at most {MAX_LIFETIME} after issued_at")
        return self

    def expired(self, now: datetime) -> bool:
        """Whether it is too late to execute it."""
        return now >= self.expires_at


class CommandState(StrEnum):
    """Where a command stands."""

    QUEUED = "queued"  # accepted by the compound; waiting for its device
    SENT = "sent"  # the request went to the device
    ACKNOWLEDGED = "acknowledged"  # the device answered OK (not yet proof that it moved)
    VERIFIED = "verified"  # the read-back shows the state the command asked for
    FAILED = "failed"  # the device refused, did not answer, answered garbage, or did not move
    EXPIRED = "expired"  # its expiry passed before it could be executed
    REFUSED = "refused"  # the compound's policy or rate limit said no (``rule`` names it)


FINAL_STATES = frozenset(
    {CommandState.VERIFIED, CommandState.FAILED, CommandState.EXPIRED, CommandState.REFUSED}
)
"""States a command never leaves."""


class CommandReport(_Message):
    """A command's state, as the compound reports it (one per state it reaches).

    Attributes:
        command_id: the issuer's id.
        device_id: the device.
        action: what was asked.
        state: where it stands now.
        at: when it got there.
        origin: who issued it (the district, or a local rule: ``issued_by`` names it).
        issued_by: the operator or the rule.
        reason: why it failed, expired or was refused; None otherwise.
        rule: the compound's policy rule that refused it.
        device_code: the vendor's status code, when the device gave one.
        observed: the state read back from the device.
    """

    v: Literal[1] = COMMAND_VERSION
    command_id: CommandId
    device_id: GbId
    action: CommandAction
    state: CommandState
    at: AwareDatetime
    origin: CommandOrigin = CommandOrigin.DISTRICT
    issued_by: Code
    reason: Text | None = None
    rule: Code | None = None
    device_code: Code | None = None
    observed: ActuatorState | None = None


def encode_json(message: CommandOrder | CommandReport) -> bytes:
    """The message as compact JSON."""
    return message.model_dump_json(exclude_none=True).encode()


def decode_order(body: bytes) -> CommandOrder:
    """An order, or ``PayloadRejected`` naming the field."""
    return strict_json.decode_model(CommandOrder, body)


def decode_report(body: bytes) -> CommandReport:
    """A report, or ``PayloadRejected`` naming the field."""
    return strict_json.decode_model(CommandReport, body)
