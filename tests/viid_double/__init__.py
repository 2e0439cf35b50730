"""A GA/T 1400 (视图库, VIID) server double: the city platform our district uplinks to.

Written from the protocol reference (``/work/shared/reference/device-protocols.md`` §5, §6) and from
nothing of the product: ``tests/test_architecture.py`` fails if any module here imports one of our
packages. ``server.py`` is the server (digest register, keepalive, time, collections, notifications,
test switches), ``validation.py`` the per-object checks, ``upper.py`` the city's own requests to a
lower platform (subscribe, cancel). The pytest fixture ``viid_double`` lives in ``tests/conftest.py``.
"""

from tests.viid_double.server import (
    Credentials,
    Outage,
    Poison,
    Post,
    Refusal,
    Registration,
    ViidDouble,
    ViidDoubleConfig,
)
from tests.viid_double.upper import LowerPlatform, UpperAnswer

__all__ = [
    "Credentials",
    "LowerPlatform",
    "Outage",
    "Poison",
    "Post",
    "Refusal",
    "Registration",
    "UpperAnswer",
    "ViidDouble",
    "ViidDoubleConfig",
]
