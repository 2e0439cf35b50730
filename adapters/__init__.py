"""The dialect registry: the one place that lists every supported device dialect.

Adding a dialect = one module under ``adapters/`` exporting ``DIALECT``, one line here, and a
simulator in ``device_sims/`` (a test fails if either is missing).
"""

from __future__ import annotations

from types import MappingProxyType

from adapters import (
    ctwing_smoke,
    hightoss_mqtt,
    hik_isapi_acs,
    hik_isapi_anpr,
    shed_mqtt,
    uface_mqtt,
    vz_lpr_mqtt,
)
from adapters.base import Dialect

DIALECTS: MappingProxyType[str, Dialect] = MappingProxyType(
    {
        module.DIALECT.name: module.DIALECT
        for module in (
            hik_isapi_acs,
            uface_mqtt,
            hik_isapi_anpr,
            vz_lpr_mqtt,
            hightoss_mqtt,
            ctwing_smoke,
            shed_mqtt,
        )
    }
)


def dialect_named(name: str) -> Dialect:
    """The dialect with this name; KeyError lists the known ones."""
    try:
        return DIALECTS[name]
    except KeyError:
        raise KeyError(f"unknown dialect {name!r}; known: {', '.join(sorted(DIALECTS))}") from None
