"""End to end: simulated devices -> gateway -> district broker -> ingester -> district store."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from device_sims.broker import Mosquitto, free_port
from device_sims.demo import expected_event_ids
from device_sims.devices import build_sim
from device_sims.influx import InfluxServer
from device_sims.inventory import DISTRICT_ID, sample_devices
from device_sims.runner import Runner
from device_sims.scenarios import build
from district.config import DistrictConfig, load_district_config
from district.ingester import run_ingester
from foundation.events import Event
from gateway.config import GatewayConfig, load_config
from gateway.outbox import Outbox
from gateway.runtime import run_gateway
from tests.conftest import sample_config
from tests.delivery import UplinkObserver, assert_exactly, sqlite_ids, wait_settled
from tests.district_data import running
from tests.test_uplink_protocol import thrown
from uplink.protocol import encode_batch
from uplink.stores import InfluxV1StoreConfig


def gateway_config(
    tmp_path: Path, device_broker: Mosquitto, district: Mosquitto, **uplink: object
) -> GatewayConfig:
    path = sample_config(tmp_path, device_broker.port)
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in uplink.items())
    with path.open("a", encoding="utf-8") as handle:
        handle.write(
            f'\n[backoff]\ninitial_s = 0.05\nmax_s = 0.5\n\n[uplink]\nmode = "mqtt"\nbatch_max_delay_ms = 20\n{extra}'
            f'[uplink.broker]\nhost = "127.0.0.1"\nport = {district.port}\n'
        )
    return load_config(path)


def district_config(tmp_path: Path, district: Mosquitto, store: str, name: str = "i1") -> DistrictConfig:
    path = tmp_path / f"district-{name}.toml"
    path.write_text(
        f'district_id = "{DISTRICT_ID}"\n[broker]\nhost = "127.0.0.1"\nport = {district.port}\n'
        f'[ingest]\nname = "{name}"\ndead_letter_path = "{tmp_path}/ingest-{name}.db"\n'
        f"http_port = {free_port()}\n[store]\n{store}\n",
        encoding="utf-8",
    )
    return load_district_config(path)


@dataclass
class Sent:
    """What the devices saw acknowledged, as the event ids the district must end up with."""

    expected: set[str]


async def play(config: GatewayConfig, broker: Mosquitto, seed: int, count: int = 150) -> Sent:
    sims = [build_sim(d) for d in sample_devices()]
    runner = Runner(f"http://127.0.0.1:{config.http.port}", "127.0.0.1", broker.port)
    steps = (
        build("normal-day", sims, seed, count)
        + build("shed-fire", sims, seed, 0)
        + build("thrown-object", sims, seed, 0)
    )
    report = await runner.run(steps)
    assert report.failed == 0
    return Sent(expected_event_ids(config, report.acked + report.births))


async def wait_until(predicate: object, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached before the timeout"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind", ["sqlite", "influx_v1"])
async def test_events_reach_the_district_store_exactly_once(
    kind: str,
    tmp_path: Path,
    mosquitto: Mosquitto,
    district_broker: Mosquitto,
    request: pytest.FixtureRequest,
) -> None:
    """Every acknowledged event is stored once and nothing else is, in SQLite and InfluxDB 1.6.7.

    The outbox is drained (every committed event confirmed) and the compound's status is retained.

    Checked to fail when broken: with ``report.births`` left out of the acknowledged set (the
    devices' birth messages), the outbox's delivered set and the store hold events not in it.
    """
    if kind == "influx_v1":
        influx: InfluxServer = request.getfixturevalue("influx")
        store = f'type = "influx_v1"\nurl = "{influx.url}"\ndatabase = "district"'
    else:
        store = f'type = "sqlite"\npath = "{tmp_path / "district.db"}"'
    config = gateway_config(tmp_path, mosquitto, district_broker)
    district = district_config(tmp_path, district_broker, store)
    async with (
        UplinkObserver(district_broker) as observer,
        running(lambda ready: run_ingester(district, ready=ready), "ingester"),
        running(lambda ready: run_gateway(config, ready=ready), "gateway"),
    ):
        sent = await play(config, mosquitto, seed=5)
        stored = await wait_settled(config, sent.expected, district)
        await observer.wait_for(sent.expected)
        with Outbox(config.state.dir / "outbox.db", max_bytes=1 << 30) as box:
            # the district's receipts turn "sent" into "delivered": every committed event
            assert set(box.event_ids("delivered")) == sent.expected
            assert box.stats().pending == 0
        async with aiomqtt.Client("127.0.0.1", district_broker.port) as client:
            await client.subscribe(f"cgw/v1/{DISTRICT_ID}/{config.compound.compound_id}/status", qos=1)
            async with asyncio.timeout(5):
                message = await anext(aiter(client.messages))
            assert message.retain
            assert isinstance(message.payload, bytes)
            assert json.loads(message.payload)["state"] == "online"
    print(observer.report(kind))
    assert_exactly(sent.expected, stored, kind)
    assert observer.deliveries.keys() == sent.expected


@pytest.mark.slow
async def test_district_broker_outage_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """The district broker is stopped while devices keep sending, then comes back: nothing lost.

    Messages the broker accepted while no ingester was subscribed yet are not lost either: without
    the district's receipt they are sent again after the receipt timeout (3 s here).
    """
    config = gateway_config(tmp_path, mosquitto, district_broker, receipt_timeout_s=3)
    store_path = tmp_path / "district.db"
    district = district_config(tmp_path, district_broker, f'type = "sqlite"\npath = "{store_path}"')
    async with (
        running(lambda ready: run_ingester(district, ready=ready), "ingester"),
        running(lambda ready: run_gateway(config, ready=ready), "gateway"),
    ):
        first = await play(config, mosquitto, seed=8, count=100)
        district_broker.stop()
        during = await play(config, mosquitto, seed=9, count=200)
        await asyncio.sleep(random.uniform(0.5, 1.5))
        district_broker.start()
        after = await play(config, mosquitto, seed=10, count=100)
        expected = first.expected | during.expected | after.expected
        stored = await wait_settled(config, expected, district)
    assert_exactly(expected, stored, "SQLite store")


async def test_direct_mode_into_influxdb(tmp_path: Path, mosquitto: Mosquitto, influx: InfluxServer) -> None:
    """A small district without a broker: the gateway writes straight into InfluxDB, exactly once."""
    path = sample_config(tmp_path, mosquitto.port)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(
            f'\n[uplink]\nmode = "direct"\nbatch_max_delay_ms = 20\n'
            f'[uplink.store]\ntype = "influx_v1"\nurl = "{influx.url}"\ndatabase = "direct"\n'
        )
    config = load_config(path)
    assert config.uplink is not None
    async with running(lambda ready: run_gateway(config, ready=ready), "gateway"):
        sent = await play(config, mosquitto, seed=12, count=120)
        store = InfluxV1StoreConfig(url=influx.url, database="direct")
        stored = await wait_settled(config, sent.expected, store)
        with Outbox(config.state.dir / "outbox.db", max_bytes=1 << 30) as box:
            assert set(box.event_ids("delivered")) == sent.expected
    assert_exactly(sent.expected, stored, "InfluxDB (direct)")


async def test_ingester_dead_letters_garbage_and_keeps_storing(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """Whatever lands on the district broker: refused with a reason, kept, and the good batches still stored.

    The compound identity comes from the topic (which the deployed broker binds to the client
    certificate); a batch that claims another compound in its payload is refused.
    """
    path = tmp_path / "district.db"
    config = district_config(tmp_path, district_broker, f'type = "sqlite"\npath = "{path}"')
    config = config.model_copy(
        update={"ingest": config.ingest.model_copy(update={"max_message_bytes": 64 * 1024})}
    )
    own, other = "36010400012160000101", "36010400012160000102"
    now = datetime.now(UTC) - timedelta(minutes=1)
    good = [thrown(n, at=now, compound=own, district=DISTRICT_ID) for n in range(3)]
    spoofed = thrown(9, at=now, compound=other, district=DISTRICT_ID)

    def batch(compound: str, *events: Event) -> bytes:
        return encode_batch(DISTRICT_ID, compound, [e.model_dump_json().encode() for e in events])

    topic = f"cgw/v1/{DISTRICT_ID}/{own}/thrown_object"
    garbage = [
        (topic, b"not json at all", "malformed_json"),
        (topic, b"[" * 50_000, "malformed_json"),
        (f"cgw/v1/{DISTRICT_ID}/{own}/status", b"[" * 50_000, "malformed_json"),  # crashed the decoder once
        (topic, batch(other, spoofed), "identity_mismatch"),  # envelope speaks for another compound
        (topic, batch(own, spoofed), "identity_mismatch"),  # an event inside does
        (f"cgw/v1/36010400005000000999/{own}/thrown_object", batch(own, good[0]), "foreign_district"),
        (f"cgw/v1/{DISTRICT_ID}/{own}/no_such_kind", batch(own, good[0]), "bad_topic"),
        (topic, b"{" + b" " * 70_000 + b"}", "payload_too_large"),
        (
            topic,
            json.dumps({"v": 1, "district_id": DISTRICT_ID, "compound_id": own, "events": []}).encode(),
            "bad_field",
        ),
    ]
    async with running(lambda ready: run_ingester(config, ready=ready), "ingester"):
        async with aiomqtt.Client("127.0.0.1", district_broker.port, identifier="hostile-compound") as client:
            await client.publish(topic, batch(own, good[0]), qos=1)
            for where, body, _ in garbage:
                await client.publish(where, body, qos=1)
            await client.publish(topic, batch(own, good[1], good[2]), qos=1)
        await wait_until(lambda: {e.event_id for e in good} <= set(sqlite_ids(path)))
        assert spoofed.event_id not in sqlite_ids(path)
        letters_path = tmp_path / "ingest-i1.db"
        await wait_until(lambda: len(_ingest_letters(letters_path)) >= len(garbage))
    letters = _ingest_letters(letters_path)
    assert sorted(reason for _, reason, _ in letters) == sorted(reason for _, _, reason in garbage)
    by_reason = {reason: (topic_, field) for topic_, reason, field in letters}
    assert by_reason["identity_mismatch"][1] in {"compound_id", "events[0].compound_id"}
    assert len(sqlite_ids(path)) == len(good)


def _ingest_letters(path: Path) -> list[tuple[str, str, str | None]]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT topic, reason, field FROM dead_letters ORDER BY id"))


async def test_alarms_lost_by_the_district_are_resent_sooner(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """Published while no ingester listened (the broker drops them): alarms come again after their short wait.

    The routine events wait for the ordinary receipt timeout; the alarms must not.
    """
    config = gateway_config(
        tmp_path, mosquitto, district_broker, receipt_timeout_s=600, alarm_receipt_timeout_s=1.0
    )
    store_path = tmp_path / "district.db"
    district = district_config(tmp_path, district_broker, f'type = "sqlite"\npath = "{store_path}"')
    async with running(lambda ready: run_gateway(config, ready=ready), "gateway"):
        sent = await play(config, mosquitto, seed=41, count=30)
        with Outbox(config.state.dir / "outbox.db", max_bytes=1 << 30) as box:
            # taken by the broker, which had no subscriber and so kept nothing
            await wait_until(lambda: set(box.event_ids("sent")) >= sent.expected)
            alarms = {
                row[0] for row in box.db.execute("SELECT event_id FROM events WHERE alarm = 1").fetchall()
            }
        assert alarms
        async with running(lambda ready: run_ingester(district, ready=ready), "ingester"):
            await wait_until(lambda: alarms <= set(sqlite_ids(store_path)), timeout=20)
            routine = sent.expected - alarms
            assert not routine & set(sqlite_ids(store_path))  # still waiting for their receipt timeout
