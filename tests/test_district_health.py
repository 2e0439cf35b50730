"""/healthz, /readyz and /metrics of the district ingester and the operator API, on real daemons."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from aiohttp import web

from device_sims.broker import Mosquitto, free_port
from device_sims.inventory import DISTRICT_ID
from district.config import load_district_config
from district.ingester import run_ingester
from district.operations import OperationsDb
from district.operator_api import build_api
from district.operator_service import open_operator_service
from district.query_model import Role
from foundation.errors import ConfigError
from foundation.events import Event
from foundation.health import Health
from tests.delivery import sqlite_ids
from tests.district_data import district_toml, running
from tests.metrics import scrape, value
from tests.processes import IngesterProcess
from tests.test_operations import NotifyListener
from tests.test_uplink_e2e import district_config, wait_until
from tests.test_uplink_protocol import thrown
from uplink.protocol import DEFAULT_PREFIX, decode_receipt, encode_batch, receipt_topic

OWN = "36010400012160000101"
TOPIC = f"{DEFAULT_PREFIX}/{DISTRICT_ID}/{OWN}/thrown_object"
CLOSED_INFLUX = 'type = "influx_v1"\nurl = "http://127.0.0.1:{port}"\ndatabase = "d"\ncreate_database = false'


def batch(*events: Event) -> bytes:
    return encode_batch(DISTRICT_ID, OWN, [e.model_dump_json().encode() for e in events])


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached before the timeout"
        await asyncio.sleep(0.1)


async def test_ingester_metrics_count_what_was_stored_and_readyz_follows_the_broker(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """An ingester process: its counters equal what the store and the compound saw; readyz follows the broker.

    Checked once to fail with the broker check left out of the ingester's probes (readyz stayed 200).
    """
    store_path = tmp_path / "district.db"
    config = district_config(tmp_path, district_broker, f'type = "sqlite"\npath = "{store_path}"')
    url = f"http://127.0.0.1:{config.ingest.http_port}"
    now = datetime.now(UTC) - timedelta(minutes=1)
    events = [thrown(n, at=now, compound=OWN, district=DISTRICT_ID) for n in range(5)]
    ingester = IngesterProcess(tmp_path / "district-i1.toml", tmp_path / "ingester.log")
    await ingester.start()
    try:
        receipted: list[str] = []
        receipt_messages: list[str] = []
        async with aiomqtt.Client("127.0.0.1", district_broker.port, identifier="compound-1") as client:
            await client.subscribe(receipt_topic(DEFAULT_PREFIX, DISTRICT_ID, OWN), qos=1)

            async def receipts() -> None:
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    receipted.extend(decode_receipt(message.payload))
                    receipt_messages.append(message.topic.value)

            listening = asyncio.create_task(receipts())
            try:
                await client.publish(TOPIC, batch(*events[:2]), qos=1)
                await client.publish(TOPIC, b"not json at all", qos=1)
                await client.publish(TOPIC, batch(*events[2:]), qos=1)

                async def all_acked() -> bool:
                    text, _ = await scrape(url + "/metrics")
                    return value(text, "cgw_ingest_messages_total") == 3

                await eventually(all_acked)
                await wait_until(lambda: len(receipted) >= len(events))
            finally:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening
        text, content_type = await scrape(url + "/metrics")
        assert content_type.startswith("text/plain; version=")
        stored = sqlite_ids(store_path)
        assert sorted(stored) == sorted(e.event_id for e in events)
        assert value(text, "cgw_ingest_events_stored_total") == len(stored)
        assert value(text, "cgw_ingest_dead_letters_total", reason="malformed_json") == 1
        assert sorted(receipted) == sorted(stored)
        assert value(text, "cgw_ingest_receipts_sent_total") == len(receipt_messages)
        assert value(text, "cgw_ingest_store_write_failures_total") == 0
        assert value(text, "cgw_transport_up", transport="ingester") == 1
        assert await get_json(url + "/healthz") == (200, {"status": "ok"})
        status, ready = await get_json(url + "/readyz")
        assert (status, ready["ready"]) == (200, True)
        assert ready["checks"] == {"district_broker": "ok", "store": "ok", "store_writes": "ok"}

        district_broker.stop()

        async def unready() -> bool:
            return (await get_json(url + "/readyz"))[0] == 503

        await eventually(unready)
        _, ready = await get_json(url + "/readyz")
        assert ready["checks"]["district_broker"] == "not connected to the district broker"
        assert ready["checks"]["store"] == "ok"
        assert ready["transports"]["ingester"]["up"] is False
        text, _ = await scrape(url + "/metrics")
        assert value(text, "cgw_transport_up", transport="ingester") == 0
        assert (await get_json(url + "/healthz"))[0] == 200  # alive, just not ready

        district_broker.start()

        async def ready_again() -> bool:
            return (await get_json(url + "/readyz"))[0] == 200

        await eventually(ready_again)
        text, _ = await scrape(url + "/metrics")
        assert value(text, "cgw_transport_connects_total", transport="ingester") == 2
    finally:
        ingester.stop()


async def test_ingester_with_its_store_down_is_not_ready_and_counts_failures(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """A store that does not answer: readyz says so, failed writes are counted, nothing is acknowledged."""
    config = district_config(tmp_path, district_broker, CLOSED_INFLUX.format(port=free_port()))
    url = f"http://127.0.0.1:{config.ingest.http_port}"
    event = thrown(1, at=datetime.now(UTC) - timedelta(minutes=1), compound=OWN, district=DISTRICT_ID)
    async with running(lambda ready: run_ingester(config, ready=ready), "ingester"):
        async with aiomqtt.Client("127.0.0.1", district_broker.port, identifier="compound-1") as client:
            await client.publish(TOPIC, batch(event), qos=1)

        async def failing() -> bool:
            text, _ = await scrape(url + "/metrics")
            return value(text, "cgw_ingest_store_failing") == 1

        await eventually(failing)
        status, ready = await get_json(url + "/readyz")
        assert (status, ready["ready"]) == (503, False)
        assert ready["checks"]["district_broker"] == "ok"
        assert ready["checks"]["store"].startswith("influxdb /ping")
        assert ready["checks"]["store_writes"] != "ok"
        text, _ = await scrape(url + "/metrics")
        assert value(text, "cgw_ingest_store_write_failures_total") >= 1
        assert value(text, "cgw_ingest_events_stored_total") == 0
        assert value(text, "cgw_ingest_messages_total") == 0  # nothing acknowledged while the store is down


async def test_ingester_port_in_use_names_the_setting(tmp_path: Path, district_broker: Mosquitto) -> None:
    """A second ingester on a taken port fails at start with an error naming [ingest] http_port."""
    store = f'type = "sqlite"\npath = "{tmp_path / "district.db"}"'
    config = district_config(tmp_path, district_broker, store)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", config.ingest.http_port))
        taken.listen()
        with pytest.raises(
            ConfigError, match=rf"\[ingest\] http_port: cannot listen on 127.0.0.1:{taken.getsockname()[1]}"
        ):
            async with asyncio.timeout(30):
                await run_ingester(config)


@contextlib.asynccontextmanager
async def operator_api(tmp_path: Path, store: str) -> AsyncIterator[tuple[str, str, OperationsDb]]:
    """The operator API on ``store``: its URL, an admin token and the operations database."""
    path = tmp_path / "district.toml"
    path.write_text(district_toml(tmp_path, store=store), "utf-8")
    config = load_district_config(path)
    async with OperationsDb(config.api.ops_db) as ops, open_operator_service(config) as service:
        token = await ops.create_token("admin", Role.ADMIN, DISTRICT_ID, (), "test")
        runner = web.AppRunner(build_api(service, Health()))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}", token, ops
        finally:
            await runner.cleanup()


async def test_operator_api_counts_requests_as_the_audit_log_does(tmp_path: Path) -> None:
    """The API's request counter agrees with its audit log, by action and outcome; readyz checks both files."""
    store = f'type = "sqlite"\npath = "{tmp_path / "events.db"}"'
    async with operator_api(tmp_path, store) as (url, token, ops):
        end = datetime.now(UTC)
        window = {"start": (end - timedelta(hours=1)).isoformat(), "end": end.isoformat()}
        calls: list[tuple[str, dict[str, str], str | None, int]] = [
            ("/events", window, token, 200),
            ("/events", window, token, 200),
            ("/events", window, None, 401),
            ("/events", {**window, "limit": "-1"}, token, 400),
            ("/devices", {}, "not-a-token", 401),
            ("/audit", {}, token, 200),
        ]
        async with aiohttp.ClientSession() as session:
            for path, params, bearer, expected in calls:
                headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
                async with session.get(f"{url}/api/v1{path}", params=params, headers=headers) as response:
                    assert response.status == expected, await response.text()
        text, _ = await scrape(url + "/metrics")
        audited = Counter((r.entry.action, r.entry.outcome) for r in await ops.audit_records(limit=100))
        assert sum(audited.values()) == len(calls)
        for (action, outcome), n in audited.items():
            assert value(text, "cgw_api_requests_total", action=action, outcome=outcome) == n
        assert value(text, "cgw_api_requests_total", action="events", outcome="ok") == 2
        assert await get_json(url + "/healthz") == (200, {"status": "ok"})
        status, ready = await get_json(url + "/readyz")
        assert (status, ready) == (
            200,
            {"ready": True, "checks": {"ops_db": "ok", "store": "ok"}, "transports": {}},
        )


async def test_operator_api_not_ready_when_its_store_does_not_answer(tmp_path: Path) -> None:
    """An InfluxDB store that does not answer makes readyz 503 and names the store, not the ops db."""
    async with operator_api(tmp_path, CLOSED_INFLUX.format(port=free_port())) as (url, _, _):
        status, ready = await get_json(url + "/readyz")
        assert (status, ready["ready"]) == (503, False)
        assert ready["checks"]["ops_db"] == "ok"
        assert ready["checks"]["store"].startswith("influxdb /ping")
        assert (await get_json(url + "/healthz"))[0] == 200


async def test_ingester_tells_systemd_it_is_alive(
    tmp_path: Path, district_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under WatchdogSec the ingester sends READY=1, then WATCHDOG=1 at half the timeout, also with its store down.

    Its unit sets WatchdogSec=30; before, it never pinged and systemd would have killed it every 30 s
    (removing the watchdog task from ``run_ingester`` fails here). The store is down on purpose: a restart
    cannot cure a store outage, so it must not stop the pings.
    """
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.2 s
    config = district_config(tmp_path, district_broker, CLOSED_INFLUX.format(port=free_port()))
    try:
        async with running(lambda ready: run_ingester(config, ready=ready), "ingester"):
            await asyncio.sleep(1.5)
    finally:
        listener.close()
    assert listener.times("READY=1")
    pings = listener.times("WATCHDOG=1")
    assert len(pings) >= 4, pings
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert max(gaps) < 0.6, gaps
