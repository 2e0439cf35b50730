"""Events and registry entries as GA/T 1400 objects: ids, codes and times per the standard.

SKELETON: the signatures are the contract between the parts; the bodies are being written.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from district.city.config import CityConfig
from district.city.model import CityObject
from foundation.events import Event


@dataclass(frozen=True)
class DeviceForCity:
    """What the APE list says of one device (from the district's device registry)."""

    device_id: str
    compound_id: str
    name: str
    kind: str  # the registry's device kind (e.g. face_gate, lpr_camera)
    dialect: str
    place: str | None
    online: bool


def event_objects(event: Event, city: CityConfig, zone: ZoneInfo) -> list[CityObject]:
    """The objects one stored event becomes under the privacy policy (often none).

    vehicle_pass: a MotorVehicle; face_access: a Face record without images (if allowed);
    watchlist_hit: a Face with its crop (if allowed). Ids are derived from the event alone, so an
    event built twice gives the same objects.
    """
    raise NotImplementedError


def ape_object(device: DeviceForCity, city: CityConfig, zone: ZoneInfo) -> CityObject:
    """The APE object of one device with its online status; its source names the state sent."""
    raise NotImplementedError
