"""The device inventory on the uplink: what a compound's gateway is configured with.

Our own protocol, like ``uplink/commands.py`` (both ends import this module and nothing else of
each other). The gateway publishes its configured devices, RETAINED and at QoS 1, every time its
uplink session connects, so the district broker always holds the current list of every compound
and a gateway restarted with a changed config replaces it::

    <prefix>/<district>/<compound>/registry/inventory    compound -> district  Inventory (JSON)

One level below the event topics (like ``receipt/stored``), so the ingesters' ``+/+/+`` shared
subscription never receives it. The broker's ACL lets a compound write only its own inventory;
the district's registry desk (user ``district-registry``) reads every compound's. The desk needs
its own, non-shared subscription: a shared subscription never receives retained messages.

``version`` is a digest of the device list alone (not of ``generated_at``), so a gateway restarted
with an unchanged config publishes the same version and the district records no change.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from foundation import strict_json
from foundation.events import GbId, Location

INVENTORY_VERSION: Literal[1] = 1
INVENTORY = "registry/inventory"
MAX_DEVICES = 5_000
"""The most devices one compound's inventory may list (a large compound has a few hundred)."""

Token = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.\-]{0,63}$")]
Version = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16,64}$")]


def inventory_topic(prefix: str, district_id: str, compound_id: str) -> str:
    """Where a compound retains its inventory (only that compound may write it)."""
    return f"{prefix}/{district_id}/{compound_id}/{INVENTORY}"


def inventory_filter(prefix: str) -> str:
    """What the district's registry desk subscribes to (not shared: it must get the retained ones)."""
    return f"{prefix}/+/+/{INVENTORY}"


def inventory_address(prefix: str, topic: str) -> tuple[str, str] | None:
    """(district, compound) of an inventory topic, or None for any other topic."""
    head = prefix + "/"
    parts = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(parts) == 4 and "/".join(parts[2:]) == INVENTORY and parts[0] and parts[1]:
        return parts[0], parts[1]
    return None


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InventoryDevice(_Message):
    """One configured device.

    Attributes:
        device_id: the device's id in the compound's config (its GB/T 28181 id, 20 digits).
        name: the installer's name for it.
        kind: what it is (``adapters.device_kind``: face_gate, lpr_camera, ...).
        dialect: the vendor dialect the gateway reads it with.
        location: where it stands, as configured.
        gb28181_id: its GB/T 28181 id; always the device id (a separate field so the wire says so).
        vendor_ref: the vendor's identity (serial, MAC, IMEI) for shared transports; None otherwise.
    """

    device_id: GbId
    name: str = Field(min_length=1, max_length=64)
    kind: Token
    dialect: Token
    location: Location | None = None
    gb28181_id: GbId
    vendor_ref: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _gb_id_is_the_device_id(self) -> Self:
        if self.gb28181_id != self.device_id:
            raise ValueError(
                f"gb28181_id {self.gb28181_id} must equal device_id {self.device_id}"
                " (the device id is its GB/T 28181 id)"
            )
        return self


def devices_version(devices: tuple[InventoryDevice, ...]) -> str:
    """The digest of a device list (sorted by id): equal lists, equal versions."""
    canonical = json.dumps(
        # as sent (``exclude_none``): a release that adds an optional field keeps the same digest
        [d.model_dump(mode="json", exclude_none=True) for d in sorted(devices, key=lambda d: d.device_id)],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class Inventory(_Message):
    """A compound's configured devices, as its gateway publishes them.

    Attributes:
        district_id: the compound's district (must match the topic).
        compound_id: the compound (must match the topic).
        version: ``devices_version(devices)``; checked on decoding.
        generated_at: when the gateway built it (by the gateway's clock: shown, never used to order).
        devices: every configured device, each id once.
    """

    v: Literal[1] = INVENTORY_VERSION
    district_id: GbId
    compound_id: GbId
    version: Version
    generated_at: AwareDatetime
    devices: tuple[InventoryDevice, ...] = Field(max_length=MAX_DEVICES)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        seen: set[str] = set()
        for device in self.devices:
            if device.device_id in seen:
                raise ValueError(f"device {device.device_id} is listed twice")
            seen.add(device.device_id)
        if self.version != devices_version(self.devices):
            raise ValueError("version does not match the device list (a digest of it)")
        return self

    @classmethod
    def of(
        cls, district_id: str, compound_id: str, devices: tuple[InventoryDevice, ...], generated_at: datetime
    ) -> Inventory:
        """An inventory with its version computed."""
        return cls(
            district_id=district_id,
            compound_id=compound_id,
            version=devices_version(devices),
            generated_at=generated_at,
            devices=devices,
        )


def encode_inventory(inventory: Inventory) -> bytes:
    """The inventory as compact JSON."""
    return inventory.model_dump_json(exclude_none=True).encode()


def decode_inventory(body: bytes) -> Inventory:
    """An inventory, or ``PayloadRejected`` naming the field and why."""
    return strict_json.decode_model(Inventory, body)
