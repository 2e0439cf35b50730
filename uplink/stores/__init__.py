"""District event stores: the registry. Adding a store = one module here plus one member of ``StoreConfig``.

Every store is idempotent: writing an event twice leaves one copy, so a redelivered batch is
harmless. A write returns only once the store has confirmed it; errors say whether retrying can
help (a server down, a timeout) or not (a malformed point, a revoked credential, a missing database).
A config names its store and ``config.build()`` makes it: selection is the config's own method, so a
new store cannot fall into another's branch.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from uplink.stores.base import (
    EventStore,
    RetentionCounts,
    RetentionPass,
    RetentionPolicyCheck,
    RetentionRules,
    RetentionTally,
    StoreError,
)
from uplink.stores.influx_v1 import InfluxV1Store, InfluxV1StoreConfig
from uplink.stores.influx_v2 import InfluxV2Store, InfluxV2StoreConfig
from uplink.stores.sqlite import SqliteStore, SqliteStoreConfig, sqlite_event_ids

StoreConfig = Annotated[
    SqliteStoreConfig | InfluxV1StoreConfig | InfluxV2StoreConfig, Field(discriminator="type")
]

__all__ = [
    "EventStore",
    "InfluxV1Store",
    "InfluxV1StoreConfig",
    "InfluxV2Store",
    "InfluxV2StoreConfig",
    "RetentionCounts",
    "RetentionPass",
    "RetentionPolicyCheck",
    "RetentionRules",
    "RetentionTally",
    "SqliteStore",
    "SqliteStoreConfig",
    "StoreConfig",
    "StoreError",
    "sqlite_event_ids",
]
