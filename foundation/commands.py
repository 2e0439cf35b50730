"""The command vocabulary both ends share: ids, actions, and the states a device reports.

The district names actions when it issues a command, the uplink carries them, the compound's
dialects translate them (``adapters/commands.py``), so the words live here, below all three.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
CommandId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
"""Chosen by the issuer, unique per command; safe in JSON, XML, URLs and MQTT topics."""
_ID = re.compile(ID_PATTERN)


class CommandAction(StrEnum):
    """What a command asks a device to do (the canonical vocabulary; dialects map it to theirs)."""

    BARRIER_OPEN = "barrier_open"
    BARRIER_CLOSE = "barrier_close"
    DOOR_OPEN = "door_open"


class ActuatorState(StrEnum):
    """The state a device reports for its barrier or door."""

    OPEN = "open"
    CLOSED = "closed"
    MOVING = "moving"
    UNKNOWN = "unknown"  # no signal from the position sensor, or the device would not say


EXPECTED_STATE: dict[CommandAction, ActuatorState] = {
    CommandAction.BARRIER_OPEN: ActuatorState.OPEN,
    CommandAction.BARRIER_CLOSE: ActuatorState.CLOSED,
    CommandAction.DOOR_OPEN: ActuatorState.OPEN,
}


def is_valid_id(value: str) -> bool:
    """Whether a command or query id has the shape every dialect can carry."""
    return _ID.fullmatch(value) is not None
