"""Inventory topics on the district broker as deployed: a compound retains only its own inventory.

The shipped ``deploy/mosquitto/district.conf`` and ``acl`` run on a real Mosquitto with TLS client
certificates (CN = MQTT user name). Each compound retains its inventory; C1 also tries to retain
one as C2. The registry desk (``district-registry``), subscribing afterwards, must receive exactly
the two genuine inventories (retained), and the ingesters' account must not be able to read them.

Teeth: the ``too_broad`` parameter (strict xfail) runs the same test against an ACL that lets every
compound write every inventory, as a careless ``pattern write cgw/v1/+/+/registry/inventory``
would; C1's forgery then replaces C2's retained inventory and the exact comparison fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiomqtt
import pytest

from device_sims.broker import Mosquitto
from device_sims.inventory import DISTRICT_ID
from foundation.events import EventKind, utc_now
from gateway.config import load_config
from tests.processes import GatewayProcess
from tests.test_district_tls import C1, C2, ROOT, District, district, make_certs, received
from tests.test_evidence_acl import _reload_acl
from tests.test_uplink_e2e import play
from uplink.inventory import Inventory, InventoryDevice, encode_inventory, inventory_filter, inventory_topic
from uplink.protocol import decode_batch, parse_topic

__all__ = ["district"]  # the fixture, imported for pytest

PREFIX = "cgw/v1"
DESK = "district-registry"


def _inventory(compound: str, name: str) -> bytes:
    device_id = compound[:16] + "0101"
    device = InventoryDevice(
        device_id=device_id, gb28181_id=device_id, name=name, kind="face_gate", dialect="hik-isapi-acs"
    )
    return encode_inventory(Inventory.of(DISTRICT_ID, compound, (device,), utc_now()))


@pytest.mark.parametrize(
    "acl",
    [
        "shipped",
        pytest.param(
            "too_broad",
            marks=pytest.mark.xfail(
                strict=True, reason="every compound writes every inventory", raises=AssertionError
            ),
        ),
    ],
)
async def test_a_compound_retains_only_its_own_inventory(district: District, acl: str) -> None:
    """The desk reads both genuine inventories and not C1's forgery of C2's; the ingester reads none.

    Broken on purpose by the ``too_broad`` ACL (strict xfail): the forgery reached the desk.
    """
    make_certs(district.certs, DESK, "ingester")
    for key in district.certs.glob("*.key"):
        key.chmod(0o644)
    if acl == "too_broad":
        shipped = (district.certs / "acl").read_text(encoding="utf-8")
        await _reload_acl(district, shipped + "\npattern write cgw/v1/+/+/registry/inventory\n")
    own_c1, own_c2 = _inventory(C1, "C1 东门"), _inventory(C2, "C2 东门")
    async with district.client(C1) as first, district.client(C2) as second:
        await second.publish(inventory_topic(PREFIX, DISTRICT_ID, C2), own_c2, qos=1, retain=True)
        await first.publish(inventory_topic(PREFIX, DISTRICT_ID, C1), own_c1, qos=1, retain=True)
        with contextlib.suppress(aiomqtt.MqttCodeError):  # v5: refused with 0x87, or dropped
            await first.publish(
                inventory_topic(PREFIX, DISTRICT_ID, C2), _inventory(C2, "forged by C1"), qos=1, retain=True
            )
    await asyncio.sleep(0.2)
    async with district.client(DESK) as desk, district.client("ingester") as ingester:
        # retained: they arrive on subscribing, after their publishers left
        await desk.subscribe(inventory_filter(PREFIX), qos=1)
        await ingester.subscribe(f"{PREFIX}/#", qos=1)
        got = await received(desk, 1.0)
        ingester_got = await received(ingester, 0.3)
    assert sorted(got) == sorted(
        [
            (inventory_topic(PREFIX, DISTRICT_ID, C1), own_c1),
            (inventory_topic(PREFIX, DISTRICT_ID, C2), own_c2),
        ]
    )
    assert [t for t, _ in ingester_got if t.endswith("/registry/inventory")] == []


def test_the_shipped_acl_names_the_registry_desk() -> None:
    """The desk's account exists in the shipped ACL with exactly its one read right, and compounds write their own."""
    acl = (ROOT / "deploy" / "mosquitto" / "acl").read_text(encoding="utf-8")
    section = acl.split(f"user {DESK}\n", 1)[1].split("\n\n", 1)[0].strip().splitlines()
    assert section == ["topic read cgw/v1/+/+/registry/inventory"]
    assert "pattern write cgw/v1/+/%u/registry/inventory" in acl.splitlines()


async def test_a_refused_inventory_never_holds_back_the_events(
    district: District, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A district ACL from before the registry refuses the inventory: the gateway says so once and every event arrives.

    Broken on purpose: letting ``_publish_inventory`` raise the refusal (as the other publishes
    do) kept the uplink reconnecting, no event reached the district, and the wait timed out.
    """
    shipped = (district.certs / "acl").read_text(encoding="utf-8")
    older = "\n".join(line for line in shipped.splitlines() if "registry/inventory" not in line)
    await _reload_acl(district, older + "\n")
    config_path = district.gateway_config(tmp_path, mosquitto, certificate=C1)
    config = load_config(config_path)
    gateway = GatewayProcess(config_path, tmp_path / "gateway.log")
    arrived: set[str] = set()
    own: set[str] = set()
    async with district.client("ingester") as ingester:
        await ingester.subscribe("$share/district-ingesters/cgw/v1/+/+/+", qos=1)
        await gateway.start_gateway(config)
        try:
            sent = await play(config, mosquitto, seed=43, count=40)
            assert sent.expected
            async with asyncio.timeout(60):
                async for message in ingester.messages:
                    address = parse_topic("cgw/v1", message.topic.value)
                    if address.channel == "status":
                        continue
                    for event in decode_batch(address, bytes(message.payload)).events:
                        arrived.add(event.event_id)
                        if event.kind is EventKind.DEVICE_STATUS:
                            own.add(event.event_id)
                    if arrived >= sent.expected:
                        break
        finally:
            gateway.stop()
    assert arrived - (own - sent.expected) == sent.expected
    log = [
        json.loads(line)
        for line in gateway.log_path.read_text(encoding="utf-8").splitlines()
        if line.startswith("{")
    ]
    refused = [entry for entry in log if entry.get("event") == "uplink_inventory_refused"]
    assert [(r["level"], r["reason"]) for r in refused] == [("error", "Not authorized")]
