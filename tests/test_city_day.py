"""A simulated day end to end: events in the district store -> GA/T 1400 objects -> queue -> city service -> the double.

The events are the sample compound's day as the gateway reads them (``tests/test_city_objects.py``),
stored in a real SQLite district store; each stored event's objects are queued as the ingester
queues them at commit (``event_objects`` then ``CityQueue.add``); the service runs in-process with
its real device list (``devices_for_city``: the device registry, filled from the sample gateway's inventory) and the double checks every object's
ids, codes and times as the standard says (``tests/viid_double/validation.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_sims.broker import free_port
from district.city.model import Category
from district.city.objects import event_objects
from district.city.queue import CityQueue
from district.city.service import run_city
from district.config import DistrictConfig, load_district_config
from district.device_registry import DeviceRegistry
from foundation.events import Event, utc_now
from gateway.config import load_config
from gateway.inventory import configured_inventory
from tests.city_events import BARRIER, CITY_APE, ORG_CODE, TOLLGATE, ZONE
from tests.conftest import sample_config
from tests.test_city_objects import simulated_day
from tests.viid_double import Credentials, ViidDouble, ViidDoubleConfig
from uplink.stores.sqlite import SqliteStore, SqliteStoreConfig

PLATFORM = "36010400005030000001"


@pytest.fixture
def viid_double_config() -> ViidDoubleConfig:
    """The double knows our district platform (the ids of ``tests/city_events.py``)."""
    return ViidDoubleConfig(clients={PLATFORM: Credentials(username="district", password="district-secret")})


def district_toml(tmp_path: Path, url: str) -> Path:
    """The district config: the SQLite store, [city] at the double, the barrier known by the city's id."""
    path = tmp_path / "district.toml"
    path.write_text(
        f"""
district_id = "36010400005000000001"
[store]
type = "sqlite"
path = "{tmp_path / "events.db"}"
[api]
ops_db = "{tmp_path / "ops.db"}"
[city]
server_url = "{url}"
platform_id = "{PLATFORM}"
org_code = "{ORG_CODE}"
username = "district"
password = "district-secret"
queue_path = "{tmp_path / "city-queue.db"}"
batch_max = 50
linger_s = 0.05
retry_initial_s = 0.05
retry_max_s = 0.5
http_port = 0
[[city.devices]]
device_id = "{BARRIER}"
ape_id = "{CITY_APE}"
tollgate_id = "{TOLLGATE}"
lane = 2
""",
        encoding="utf-8",
    )
    return path


@contextlib.asynccontextmanager
async def running(config: DistrictConfig) -> AsyncIterator[None]:
    """The city service with its real device source, for the block."""
    ready = asyncio.Event()
    task = asyncio.create_task(run_city(config, ready=ready), name="city-under-test")
    async with asyncio.timeout(20):
        while not ready.is_set():
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_day_of_passages_arrives_with_every_id_and_code_valid(
    tmp_path: Path, viid_double: ViidDouble
) -> None:
    """Every vehicle and face pass of the day is accepted by the double's per-object checks; nothing refused.

    Each passage arrives once (no re-send: ``resends`` empty), the set accepted equals the set
    queued, and the APE list is the device registry's (the gateway's inventory) exactly, the
    barrier under the id the city's registry gave it. Checked to fail: with the wire time written with dashes (objects.py) the double
    gave 550 refusals ("PassTime must be yyyyMMddHHmmss", ids no longer 41/48 digits).
    """
    config = load_district_config(district_toml(tmp_path, viid_double.url))
    assert config.city is not None
    events: list[Event] = simulated_day(tmp_path / "day")
    store_config = config.store
    assert isinstance(store_config, SqliteStoreConfig)
    async with SqliteStore(store_config) as store:
        await store.write(events)
    objects = [obj for event in events for obj in event_objects(event, config.city, ZONE)]
    by_category = Counter(obj.category for obj in objects)
    assert by_category[Category.MOTOR_VEHICLE] > 100
    assert by_category[Category.FACE] > 100
    passages = {o.object_id for o in objects}
    # the compound's gateway has published its inventory: the registry lists every configured device
    gateway = load_config(sample_config(tmp_path / "gateway", free_port()))
    inventory = configured_inventory(gateway)
    async with DeviceRegistry(config.device_registry_path()) as registry:
        await registry.apply(inventory, utc_now())
    registered = {d.device_id for d in inventory.devices}
    async with CityQueue(config.city.queue_path) as queue:
        assert await queue.add(objects) == len(objects)
        async with running(config):
            await viid_double.wait_for(
                lambda c: (
                    set(c.accepted["MotorVehicle"]) | set(c.accepted["Face"]) == passages
                    or any(r.category != "APE" for r in c.refusals)
                ),
                timeout=60,
            )
            await viid_double.wait_for(lambda c: CITY_APE in c.accepted["APE"], timeout=30)
            refused_at_the_double = sum(r.category == "APE" for r in viid_double.refusals)

            async def settled() -> bool:  # the double records before it answers: wait for the queue
                return (await queue.counts()).refused.get("APE", 0) == refused_at_the_double

            async with asyncio.timeout(20):
                while not await settled():
                    await asyncio.sleep(0.05)
            refusals = await queue.refusals()
    assert [r for r in viid_double.refusals if r.category != "APE"] == []
    assert set(viid_double.accepted["MotorVehicle"]) == {
        o.object_id for o in objects if o.category is Category.MOTOR_VEHICLE
    }
    assert set(viid_double.accepted["Face"]) == {o.object_id for o in objects if o.category is Category.FACE}
    assert viid_double.resends == Counter()
    # the APE list: the registry's devices, exactly; the barrier under the id the city's registry gave it
    apes = set(viid_double.accepted["APE"]) | {
        r.object_id or "" for r in viid_double.refusals if r.category == "APE"
    }
    assert apes == (registered - {BARRIER}) | {CITY_APE}
    # the day is over: every device silent since, so offline
    assert {ape["IsOnline"] for ape in viid_double.accepted["APE"].values()} == {"0"}
    # A device listed under its own id is an APE to the city only if that id is of type 119 (§5.10):
    # the double refuses the others, and the queue keeps each refusal with the city's reason.
    refused_apes = {r.object_id or "" for r in viid_double.refusals if r.category == "APE"}
    assert refused_apes == {ape for ape in apes if ape[10:13] != "119"}
    assert {
        r.object_id: r.reason.split(",")[0] for r in refusals if r.category is Category.APE
    } == dict.fromkeys(refused_apes, "8 ApeID must have type 119 at chars 11-13")
