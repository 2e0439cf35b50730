"""Deliberate breakage, for proving that the fault tests have teeth.

A guarantee's test must fail when the guarantee is broken. Each switch here breaks one guarantee on
purpose (acknowledging before the commit, forgetting duplicates, ...); a strict-xfail test turns it
on in a daemon it starts and expects its own guarantee check to fail. The switches are read once,
from the environment variable ``CGW_FAULT_SWITCHES`` (comma-separated names), at import: a
production daemon never has it set, and a check on the hot path is one frozenset lookup.

An unknown name is refused at start, so a typo cannot make a teeth test pass by accident.
"""

from __future__ import annotations

import os
from enum import StrEnum

from foundation.errors import ConfigError

ENVIRONMENT_VARIABLE = "CGW_FAULT_SWITCHES"


class FaultSwitch(StrEnum):
    """One guarantee broken on purpose; the value is the name used in ``CGW_FAULT_SWITCHES``."""

    SEQUENCE_GAPS_IGNORED = "sequence_gaps_ignored"
    """The gateway stops reading devices' sequence numbers: lost messages go unnoticed again."""

    INGESTER_ACK_BEFORE_STORE = "ingester_ack_before_store"
    """The ingester acknowledges an uplink round (PUBACK and receipt) before the store has it."""

    INFLUX_DEDUP_OFF = "influx_dedup_off"
    """An InfluxDB point's time no longer derives from its event id: a re-written event is a new point."""

    ACK_BEFORE_COMMIT = "ack_before_commit"
    """The intake pipeline reports a batch's results (so HTTP answers 200 and MQTT sends PUBACKs)
    as soon as the batch is handed to the worker, before it is committed (``gateway/pipeline.py``)."""

    OUTBOX_DEDUP_OFF = "outbox_dedup_off"
    """The outbox no longer recognises a re-sent event: an event id it already holds is stored again
    under a fresh id (``gateway/outbox/event_states.py``), as an id-less intake would."""


def _read(raw: str) -> frozenset[FaultSwitch]:
    names = {name.strip() for name in raw.split(",") if name.strip()}
    known = {switch.value: switch for switch in FaultSwitch}
    unknown = sorted(names - known.keys())
    if unknown:
        raise ConfigError(
            f"{ENVIRONMENT_VARIABLE}: unknown fault switch(es) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known)) or 'none'}"
        )
    return frozenset(known[name] for name in names)


_ACTIVE = _read(os.environ.get(ENVIRONMENT_VARIABLE, ""))


def fault_on(switch: FaultSwitch) -> bool:
    """Whether this process runs with ``switch`` deliberately broken (tests only)."""
    return switch in _ACTIVE


def environment_with(*switches: FaultSwitch) -> dict[str, str]:
    """A copy of this process's environment that turns ``switches`` on in a child daemon."""
    env = dict(os.environ)
    env[ENVIRONMENT_VARIABLE] = ",".join(switch.value for switch in switches)
    return env
