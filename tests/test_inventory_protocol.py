"""The device inventory on the wire and in the district's registry (real SQLite).

The wire: what a gateway builds from its config decodes at the district as it was; a bad document
is refused naming the field and why. The registry: each inventory's differences land in the history
as added, changed (with the fields, old and new) or removed, with the district's time; the same
version again changes nothing.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from adapters import DEVICE_KINDS
from device_sims.broker import free_port
from device_sims.inventory import DISTRICT_ID, compound_id
from district.device_registry import Applied, Change, DeviceRegistry
from district.query_model import Role
from foundation.errors import PayloadRejected
from foundation.events import Location, utc_now
from gateway.config import load_config
from gateway.inventory import configured_inventory
from tests.conftest import sample_config
from uplink.inventory import (
    Inventory,
    InventoryDevice,
    decode_inventory,
    encode_inventory,
    inventory_address,
    inventory_filter,
    inventory_topic,
)

C1 = compound_id(1)
GATE = "36010400011320000101"
CAMERA = "36010400011320000102"
SIREN = "36010400011320000103"


def _device(device_id: str, name: str, **extra: object) -> InventoryDevice:
    return InventoryDevice.model_validate(
        {"device_id": device_id, "gb28181_id": device_id, "name": name, "kind": "face_gate",
         "dialect": "hik-isapi-acs", **extra}
    )  # fmt: skip


def _inventory(*devices: InventoryDevice, minutes: int = 0) -> Inventory:
    return Inventory.of(DISTRICT_ID, C1, devices, utc_now() + timedelta(minutes=minutes))


def test_the_gateway_config_travels_as_it_is(tmp_path: Path) -> None:
    """Every configured device, with its kind from the dialect table, decodes at the district unchanged."""
    config = load_config(sample_config(tmp_path, free_port()))
    inventory = configured_inventory(config)
    decoded = decode_inventory(encode_inventory(inventory))
    assert decoded == inventory
    assert {d.device_id for d in decoded.devices} == {d.id for d in config.devices}
    by_id = {d.id: d for d in config.devices}
    for device in decoded.devices:
        configured = by_id[device.device_id]
        assert (device.name, device.dialect, device.location, device.vendor_ref, device.gb28181_id) == (
            configured.name,
            configured.dialect,
            configured.location,
            configured.ref,
            configured.id,
        )
    assert {d.kind for d in decoded.devices} == {DEVICE_KINDS[d.dialect] for d in config.devices}
    assert {"face_gate", "lpr_camera"} <= {d.kind for d in decoded.devices}  # not all "unknown"
    # the same config later: the same version (a restart with an unchanged config changes nothing)
    assert configured_inventory(config, utc_now() + timedelta(hours=1)).version == inventory.version


def test_topics_sit_below_the_event_topics() -> None:
    """The inventory topic parses back to its compound, matches the desk's filter, and is no ``+/+/+`` event topic."""
    topic = inventory_topic("cgw/v1", DISTRICT_ID, C1)
    assert inventory_address("cgw/v1", topic) == (DISTRICT_ID, C1)
    assert inventory_filter("cgw/v1") == "cgw/v1/+/+/registry/inventory"
    assert len(topic.split("/")) == 2 + 4  # the ingesters' cgw/v1/+/+/+ never matches it
    assert inventory_address("cgw/v1", f"cgw/v1/{DISTRICT_ID}/{C1}/status") is None


def _document(**change: object) -> bytes:
    document = json.loads(encode_inventory(_inventory(_device(GATE, "东门"))))
    for key, value in change.items():
        if key.startswith("device_"):
            document["devices"][0][key.removeprefix("device_")] = value
        else:
            document[key] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("body", "field", "why"),
    [
        (b"not json", None, "not JSON"),
        (_document(v=2), "v", "Input should be 1"),
        (_document(compound_id="123"), "compound_id", "String should match pattern"),
        (_document(version="0" * 32), None, "version does not match"),
        (_document(device_gb28181_id=CAMERA), "devices.0", "must equal device_id"),
        (_document(device_kind="Face Gate"), "devices.0.kind", "String should match pattern"),
        (_document(device_colour="red"), "devices.0.colour", "Extra inputs are not permitted"),
        (_document(generated_at="2026-01-01T00:00:00"), "generated_at", "timezone"),
    ],
)
def test_a_bad_inventory_is_refused_naming_the_field(body: bytes, field: str | None, why: str) -> None:
    """Each broken document is refused with the field and the reason."""
    with pytest.raises(PayloadRejected) as raised:
        decode_inventory(body)
    assert raised.value.rejection.field == field
    assert why in raised.value.rejection.detail


def test_a_device_listed_twice_is_refused() -> None:
    """Two entries for one id cannot both be the device."""
    twice = (_device(GATE, "东门"), _device(GATE, "西门"))
    document = json.loads(encode_inventory(_inventory(_device(GATE, "东门"))))
    document["devices"] = [d.model_dump(mode="json", exclude_none=True) for d in twice]
    with pytest.raises(PayloadRejected, match="listed twice"):
        decode_inventory(json.dumps(document).encode())


async def test_the_registry_keeps_the_history(tmp_path: Path) -> None:
    """Added, changed (old and new), removed, each with the district's time; the same version again changes nothing.

    Broken on purpose: comparing only the name in ``_apply`` (not the location) lost the camera's
    move, and the exact comparison of its change row failed.
    """
    first_at = utc_now()
    later = first_at + timedelta(minutes=5)
    moved = Location(gate="北门")
    async with DeviceRegistry(tmp_path / "registry.db") as registry:
        first = _inventory(_device(GATE, "东门"), _device(CAMERA, "车道"), _device(SIREN, "警号"))
        outcome = await registry.apply(first, first_at)
        assert (outcome.applied, outcome.added, outcome.changed, outcome.removed) == (
            Applied.UPDATED,
            3,
            0,
            0,
        )
        assert (await registry.apply(first, later)).applied is Applied.UNCHANGED
        second = _inventory(_device(GATE, "东门人脸"), _device(CAMERA, "车道", location=moved), minutes=1)
        outcome = await registry.apply(second, later)
        assert (outcome.applied, outcome.added, outcome.changed, outcome.removed) == (
            Applied.UPDATED,
            0,
            2,
            1,
        )
        current = await registry.devices(DISTRICT_ID)
        changes = await registry.changes(DISTRICT_ID, None)
        removals = await registry.removals(DISTRICT_ID)
        assert await registry.registered_compounds(DISTRICT_ID) == {C1}
        assert await registry.purge(later) == 3  # the three added rows are older than the cut-off
        assert {c.change for c in await registry.changes(DISTRICT_ID, None)} == {
            Change.CHANGED,
            Change.REMOVED,
        }
    assert {(d.device_id, d.name, d.place) for d in current} == {
        (GATE, "东门人脸", None),
        (CAMERA, "车道", "北门"),
    }
    newest = {(c.device_id, c.change): (c.fields, c.at) for c in changes if c.at == later}
    assert newest == {
        (GATE, Change.CHANGED): ({"name": ["东门", "东门人脸"]}, later),
        (CAMERA, Change.CHANGED): ({"location": [None, {"gate": "北门"}]}, later),
        (SIREN, Change.REMOVED): (
            {"name": ["警号", None], "kind": ["face_gate", None], "dialect": ["hik-isapi-acs", None],
             "location": [None, None], "vendor_ref": [None, None]},
            later,
        ),
    }  # fmt: skip
    assert sorted((c.device_id, c.change) for c in changes if c.at == first_at) == [
        (GATE, Change.ADDED),
        (CAMERA, Change.ADDED),
        (SIREN, Change.ADDED),
    ]
    assert removals == {(C1, SIREN): later}


async def test_devices_lists_the_registry_and_what_still_reports(tmp_path: Path) -> None:
    """The ``devices`` rule on a real store and registry: who is listed, why, and what the rate counts.

    Compound 1 has a registry: a reporting device (online), a silent one registered today (never
    reported), one registered 40 days ago and silent since (silent for over 30 d), a removed device
    silent since its removal (not listed), a removed one that reports after its removal and one
    never registered (both listed, unregistered, outside the rate). Compound 2 has none: its
    reporting device is listed and counted, as before the registry.

    Broken on purpose: dropping the ``last_seen <= removed_at`` check listed the removed, silent
    device, and the exact set comparison failed.
    """
    from district.operator_service import Caller, open_operator_service  # noqa: PLC0415
    from foundation.events import ThrownObjectPayload  # noqa: PLC0415
    from tests.console_browser import _event, write_config  # noqa: PLC0415
    from uplink.stores.sqlite import SqliteStore  # noqa: PLC0415

    config = write_config(tmp_path)
    now = utc_now()
    reporting, fresh, old, gone, back, stranger = (f"360104000113200002{i:02d}" for i in range(6))
    c2 = compound_id(2)
    c2_device = "36010400021320000299"
    async with DeviceRegistry(config.device_registry_path()) as registry:
        with_old = Inventory.of(DISTRICT_ID, C1, (_device(old, "老设备"),), now - timedelta(days=41))
        await registry.apply(with_old, now - timedelta(days=40))
        full = Inventory.of(
            DISTRICT_ID,
            C1,
            tuple(_device(d, f"设备{d[-2:]}") for d in (reporting, fresh, old, gone, back)),
            now - timedelta(hours=2),
        )
        await registry.apply(full, now - timedelta(hours=2))
        kept = tuple(_device(d, f"设备{d[-2:]}") for d in (reporting, fresh, old))
        await registry.apply(
            Inventory.of(DISTRICT_ID, C1, kept, now - timedelta(hours=1)), now - timedelta(hours=1)
        )
    minutes = timedelta(minutes=1)
    events = [
        _event("reg-reporting", C1, reporting, now - minutes, ThrownObjectPayload(), dialect="hightoss-mqtt"),
        _event("reg-gone-01", C1, gone, now - 90 * minutes, ThrownObjectPayload(), dialect="hightoss-mqtt"),
        _event("reg-back-01", C1, back, now - 5 * minutes, ThrownObjectPayload(), dialect="hightoss-mqtt"),
        _event(
            "reg-stranger", C1, stranger, now - 2 * minutes, ThrownObjectPayload(), dialect="hightoss-mqtt"
        ),
        _event(
            "reg-c2-0001", c2, c2_device, now - 3 * minutes, ThrownObjectPayload(), dialect="hightoss-mqtt"
        ),
    ]
    async with SqliteStore(config.store) as store:  # type: ignore[arg-type]
        await store.write(events)
    async with open_operator_service(config) as service:
        token = await service.operations.create_token("viewer", Role.VIEWER, DISTRICT_ID, (), "test")
        answer = await service.handle(token, "devices", {}, Caller("cli", "test"))
    rows = {(d.device_id, d.registered, d.status, d.why) for d in answer.result.devices}
    assert rows == {
        (reporting, True, "online", "reporting"),
        (fresh, True, "offline", "never reported"),
        (old, True, "offline", "silent for over 30 d"),
        (back, False, "online", "reporting"),
        (stranger, False, "online", "reporting"),
        (c2_device, False, "online", "reporting"),
    }
    summary = {
        c.compound_id: (c.devices, c.online, c.from_registry, c.unregistered) for c in answer.result.compounds
    }
    assert summary == {C1: (3, 1, True, 2), c2: (1, 1, False, 0)}


async def test_the_desk_refuses_what_does_not_match_its_topic(tmp_path: Path) -> None:
    """An inventory under another compound's topic, another district's, or not JSON is refused and counted; the registry keeps nothing of it.

    Broken on purpose: without the compound check in ``RegistryDesk._read`` C1's document under
    C2's topic was applied (``handle`` answered updated) and the first assertion failed.
    """
    from district.registry_desk import RegistryDesk  # noqa: PLC0415
    from tests.console_browser import write_config  # noqa: PLC0415

    config = write_config(tmp_path)
    body = encode_inventory(_inventory(_device(GATE, "东门")))
    other = "36010300005000000001"
    async with DeviceRegistry(config.device_registry_path()) as registry:
        desk = RegistryDesk(config, registry)
        assert await desk.handle(inventory_topic("cgw/v1", DISTRICT_ID, compound_id(2)), body) is None
        assert await desk.handle(inventory_topic("cgw/v1", other, C1), body) is None
        assert await desk.handle(inventory_topic("cgw/v1", DISTRICT_ID, C1), b"{not json") is None
        assert await desk.handle(inventory_topic("cgw/v1", DISTRICT_ID, C1), b"") is None  # a cleared retain
        assert await registry.registered_compounds(DISTRICT_ID) == set()
        assert await desk.handle(inventory_topic("cgw/v1", DISTRICT_ID, C1), body) is Applied.UPDATED
        assert await desk.handle(inventory_topic("cgw/v1", DISTRICT_ID, C1), body) is Applied.UNCHANGED
    assert dict(desk.rejected) == {"identity_mismatch": 1, "foreign_district": 1, "malformed_json": 1}
    assert dict(desk.inventories) == {"updated": 1, "unchanged": 1, "rejected": 3}


async def test_the_desk_takes_a_compound_only_under_its_own_district_and_no_huge_document(
    tmp_path: Path,
) -> None:
    """The ACL lets a compound write under any district segment: the desk keeps only its own district's copy.

    C1 belongs to the district; its inventory under another district the config also serves is
    refused, as is a compound not in ``[[compounds]]`` and a document over 4 MiB (refused unread).
    Broken on purpose once: without the compound's district check C1's document under the other
    district was applied (``handle`` answered updated).
    """
    from district.config import CompoundEntry  # noqa: PLC0415
    from district.registry_desk import MAX_INVENTORY_BYTES, RegistryDesk  # noqa: PLC0415
    from tests.console_browser import write_config  # noqa: PLC0415

    other = "36010300005000000001"
    base = write_config(tmp_path)
    config = base.model_copy(
        update={
            "compounds": (
                *base.compounds,
                CompoundEntry(id="36010300005210000001", name="外区", district_id=other),
            )
        }
    )
    mine = Inventory.of(other, C1, (_device(GATE, "东门"),), utc_now())
    stranger = Inventory.of(DISTRICT_ID, compound_id(3), (_device(GATE, "东门"),), utc_now())
    huge = b"{" + b" " * MAX_INVENTORY_BYTES + b"}"
    async with DeviceRegistry(config.device_registry_path()) as registry:
        desk = RegistryDesk(config, registry)
        assert await desk.handle(inventory_topic("cgw/v1", other, C1), encode_inventory(mine)) is None
        assert (
            await desk.handle(
                inventory_topic("cgw/v1", DISTRICT_ID, compound_id(3)), encode_inventory(stranger)
            )
            is None
        )
        assert await desk.handle(inventory_topic("cgw/v1", DISTRICT_ID, C1), huge) is None
        assert await registry.registered_compounds(DISTRICT_ID) == set()
        assert await registry.registered_compounds(other) == set()
    assert dict(desk.rejected) == {"foreign_district": 2, "payload_too_large": 1}


async def test_an_empty_location_is_no_change_and_an_empty_ref_no_ref(tmp_path: Path) -> None:
    """A device with ``Location()`` (no fields) is not recorded as changed each time another device changes.

    And a gateway device with ``ref = ""`` still gives an inventory (without a vendor ref); the
    version is the digest of the devices as sent (no ``null`` fields), so an optional field a later
    release adds does not change it. Broken on purpose once: with ``{}`` stored as NULL and compared
    as ``{}`` the second apply recorded a location change of the gate.
    """
    async with DeviceRegistry(tmp_path / "registry.db") as registry:
        first = _inventory(_device(GATE, "东门", location=Location()), _device(CAMERA, "南门"))
        await registry.apply(first, utc_now())
        renamed = _inventory(_device(GATE, "东门", location=Location()), _device(CAMERA, "南门2"))
        await registry.apply(renamed, utc_now())
        changes = await registry.changes(DISTRICT_ID, None, limit=10)
        assert sorted((c.device_id, c.change.value) for c in changes) == sorted(
            [(GATE, "added"), (CAMERA, "added"), (CAMERA, "changed")]
        )
    config = load_config(sample_config(tmp_path, free_port()))
    device = config.devices[0].model_copy(update={"ref": ""})
    inventory = configured_inventory(config.model_copy(update={"devices": (device, *config.devices[1:])}))
    assert inventory.devices[0].vendor_ref is None
    sent = json.loads(encode_inventory(inventory))["devices"]
    import hashlib  # noqa: PLC0415

    wire = json.dumps(
        sorted(sent, key=lambda d: d["device_id"]), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert inventory.version == hashlib.sha256(wire.encode()).hexdigest()[:32]
