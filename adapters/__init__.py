"""The dialect registry: the one place that lists every supported device dialect.

Adding a dialect = one module under ``adapters/`` exporting ``DIALECT``, one line here, and a
simulator in ``device_sims/`` (a test fails if either is missing). A dialect whose devices take
commands sets ``commands`` to its ``CommandEncoder`` and appears in ``COMMAND_ENCODERS`` too.
"""

from __future__ import annotations

from types import MappingProxyType

from adapters import (
    ctwing_smoke,
    hightoss_mqtt,
    hik_isapi_acs,
    hik_isapi_anpr,
    shed_mqtt,
    siren_mqtt,
    uface_mqtt,
    vz_lpr_mqtt,
)
from adapters.base import Dialect
from adapters.commands import CommandEncoder

# Listed as values (not modules) so that mypy checks each against the Dialect protocol.
_ALL: tuple[Dialect, ...] = (
    hik_isapi_acs.DIALECT,
    uface_mqtt.DIALECT,
    hik_isapi_anpr.DIALECT,
    vz_lpr_mqtt.DIALECT,
    hightoss_mqtt.DIALECT,
    ctwing_smoke.DIALECT,
    shed_mqtt.DIALECT,
    siren_mqtt.DIALECT,
)

DIALECTS: MappingProxyType[str, Dialect] = MappingProxyType({dialect.name: dialect for dialect in _ALL})

COMMAND_ENCODERS: MappingProxyType[str, CommandEncoder] = MappingProxyType(
    {dialect.name: dialect.commands for dialect in _ALL if dialect.commands is not None}
)
"""The dialects whose devices take commands, by name (derived from ``Dialect.commands``)."""


DEVICE_KINDS: MappingProxyType[str, str] = MappingProxyType(
    {
        hik_isapi_acs.DIALECT.name: "face_gate",
        uface_mqtt.DIALECT.name: "face_gate",
        hik_isapi_anpr.DIALECT.name: "lpr_camera",
        vz_lpr_mqtt.DIALECT.name: "lpr_camera",
        hightoss_mqtt.DIALECT.name: "thrown_object_camera",
        ctwing_smoke.DIALECT.name: "smoke_detector",
        shed_mqtt.DIALECT.name: "shed_sensor",
        siren_mqtt.DIALECT.name: "siren",
    }
)
"""What a dialect's devices are (the device registry's ``kind``), by dialect name.

A dialect's ``kind`` is the event kind its payloads carry, not what the device is (a siren
reports device_status; two shed dialects are a smoke alarm and a sensor), hence this table.
Every dialect is in it (``tests/test_registry.py`` checks).
"""


def device_kind(dialect: str) -> str:
    """What a device of this dialect is (face_gate, lpr_camera, ...)."""
    return DEVICE_KINDS[dialect]


def dialect_named(name: str) -> Dialect:
    """The dialect with this name; KeyError lists the known ones."""
    try:
        return DIALECTS[name]
    except KeyError:
        raise KeyError(f"unknown dialect {name!r}; known: {', '.join(sorted(DIALECTS))}") from None
