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


def is_valid_id(value: str) -> bool:
    """Whether a command or query id has the shape every dialect can carry."""
    return _ID.fullmatch(value) is not None
