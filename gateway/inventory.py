"""The gateway's configured devices as the uplink's inventory document (``uplink/inventory.py``).

Built from the config alone (never from what devices sent), so a device that never reported is in
it, and a device taken out of the config leaves it at the next connection.
"""

from __future__ import annotations

from datetime import datetime

from adapters import device_kind
from foundation.events import utc_now
from gateway.config import GatewayConfig
from uplink.inventory import Inventory, InventoryDevice


def configured_inventory(config: GatewayConfig, generated_at: datetime | None = None) -> Inventory:
    """Every configured device of the compound, as the district's registry will keep it."""
    devices = tuple(
        InventoryDevice(
            device_id=device.id,
            name=device.name,
            kind=device_kind(device.dialect),
            dialect=device.dialect,
            location=device.location,
            gb28181_id=device.id,
            vendor_ref=device.ref or None,  # an empty ref is no ref (the wire wants 1+ characters)
        )
        for device in config.devices
    )
    compound = config.compound
    return Inventory.of(compound.district_id, compound.compound_id, devices, generated_at or utc_now())
