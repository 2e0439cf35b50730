"""Shared fixtures: real Mosquitto processes on private ports, a gateway running in-process.

A missing mosquitto binary is an error, never a skip: the integration tests exist to talk to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import pytest
import structlog

from adapters.base import DeviceContext
from device_sims.broker import Mosquitto, free_port
from device_sims.devices import SimDevice
from device_sims.influx import InfluxServer
from device_sims.inventory import sample_broker_accounts, sample_device_secrets, write_sample_config
from foundation.identity import Pseudonymizer
from gateway.broker_drops import drop_counter_user
from gateway.config import GatewayConfig, load_config
from gateway.device_secrets import GATEWAY_BROKER_USER
from gateway.outbox import Outbox
from gateway.runtime import run_gateway
from tests.district_data import DistrictData, produce
from tests.viid_double import ViidDouble, ViidDoubleConfig

PARSE_CONTEXT = DeviceContext(
    district_id="36010400005000000001",
    compound_id="36010400012160000101",
    device_id="36010400011240000001",
    received_at=datetime(2026, 6, 1, tzinfo=UTC),
    local_tz=ZoneInfo("Asia/Shanghai"),
    pseudonymizer=Pseudonymizer(b"k" * 32, "36010400012160000101"),
)
"""What a parser test tells a dialect about the sending device."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak runs (the ``soak`` marker) are left out unless the ``-m`` expression names them."""
    if "soak" in (config.option.markexpr or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private compound broker for one test, with the sample compound's accounts and ACL."""
    broker = Mosquitto(tmp_path / "broker", accounts=sample_broker_accounts()).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def open_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private Mosquitto without accounts: anonymous clients may do anything (transport tests)."""
    broker = Mosquitto(tmp_path / "open-broker").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxServer]:
    """A private InfluxDB 1.6.7 (Debian's influxd) for one test."""
    server = InfluxServer(tmp_path / "influx").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def district_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A second private Mosquitto: the district broker."""
    broker = Mosquitto(tmp_path / "district-broker").start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class RunningGateway:
    """A gateway running in this event loop against a private broker."""

    config: GatewayConfig
    config_path: Path
    broker: Mosquitto

    @property
    def http(self) -> str:
        """Base URL of the HTTP receiver."""
        return f"http://127.0.0.1:{self.config.http.port}"

    def outbox(self) -> Outbox:
        """A second connection to the outbox file (WAL allows concurrent readers)."""
        return Outbox(
            self.config.state.dir / "outbox.db", max_bytes=self.config.state.outbox_max_bytes
        ).open()

    async def wait_for(self, predicate: Callable[[Outbox], bool], timeout: float = 20.0) -> None:
        """Poll until ``predicate(outbox)`` is true."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            with self.outbox() as box:
                if predicate(box):
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not reached before the timeout")
            await asyncio.sleep(0.05)


def sample_config(tmp_path: Path, broker_port: int, **overrides: str) -> Path:
    """The sample compound's config on private ports, with optional extra TOML lines per section."""
    path = write_sample_config(
        tmp_path / "gateway.toml", state_dir=tmp_path / "state", http_port=free_port(), mqtt_port=broker_port
    )
    if overrides:
        text = path.read_text(encoding="utf-8")
        for section, extra in overrides.items():
            text = text.replace(f"[{section}]\n", f"[{section}]\n{extra}\n", 1)
        path.write_text(text, encoding="utf-8")
    return path


async def until_quiet(
    client: aiomqtt.Client, quiet_s: float, count: int | None = None, limit_s: float = 60
) -> list[tuple[str, bytes]]:
    """(topic, payload) of the messages that arrive until ``quiet_s`` passes without one.

    At most ``count`` of them (None: no limit) and for at most ``limit_s`` in all.
    """
    got: list[tuple[str, bytes]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            while count is None or len(got) < count:
                async with asyncio.timeout(quiet_s):
                    message = await anext(aiter(client.messages))
                got.append((str(message.topic), bytes(message.payload)))
    return got


def device_client(port: int, device: SimDevice, **kwargs: Any) -> aiomqtt.Client:
    """An MQTT client logged in with ``device``'s own account on the compound broker (``mosquitto``)."""
    kwargs.setdefault("identifier", f"device-{device.username}")
    return aiomqtt.Client("127.0.0.1", port, username=device.username, password=device.secret, **kwargs)


def gateway_client(port: int, **kwargs: Any) -> aiomqtt.Client:
    """An MQTT client logged in with the sample gateway's account (reads every device's topics).

    Never while a gateway runs on the same broker: it would take over the gateway's session.
    """
    kwargs.setdefault("identifier", f"gateway-account-{os.getpid()}-{id(kwargs)}")
    password = sample_device_secrets().gateway
    assert password is not None
    return aiomqtt.Client(
        "127.0.0.1", port, username=GATEWAY_BROKER_USER, password=password.get_secret_value(), **kwargs
    )


def drop_counter_client(port: int, **kwargs: Any) -> aiomqtt.Client:
    """An MQTT client logged in as the sample gateway's ``-sys`` account, which reads only the drop counter.

    Not the gateway's own account: the compound broker binds sessions to accounts, so a second
    login as the gateway would take over a running gateway's session.
    """
    kwargs.setdefault("identifier", f"gateway-sys-{os.getpid()}-{id(kwargs)}")
    password = sample_device_secrets().gateway
    assert password is not None
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        username=drop_counter_user(GATEWAY_BROKER_USER),
        password=password.get_secret_value(),
        **kwargs,
    )


@contextlib.asynccontextmanager
async def gateway_in_process(config_path: Path, broker: Mosquitto) -> AsyncIterator[RunningGateway]:
    """A gateway running in this event loop from ``config_path``, ready (HTTP listening, MQTT subscribed)."""
    config = load_config(config_path)
    ready = asyncio.Event()
    task = asyncio.create_task(run_gateway(config, ready=ready), name="test-gateway")
    try:
        async with asyncio.timeout(20):
            await ready.wait()
        yield RunningGateway(config, config_path, broker)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def gateway(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[RunningGateway]:
    """The sample compound's gateway, ready (HTTP listening, MQTT subscribed)."""
    async with gateway_in_process(sample_config(tmp_path, mosquitto.port), mosquitto) as running:
        yield running


TEST_TIME_LIMIT_S = float(os.environ.get("CGW_TEST_TIME_LIMIT_S", "300"))


@pytest.fixture(autouse=True)
async def stuck_test_report(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A test still running after the limit prints every task's stack and is cancelled (never hangs CI)."""
    loop = asyncio.get_running_loop()

    def report() -> None:
        # a file as well as stderr: a test's own output capture must not swallow the report
        report_path = Path(tempfile.gettempdir()) / "cgw-stuck-tests.log"
        with report_path.open("a", encoding="utf-8") as saved:
            for out in (saved, sys.stderr):
                print(
                    f"\n{request.node.nodeid} still running after {TEST_TIME_LIMIT_S:g} s; tasks:", file=out
                )
                for task in asyncio.all_tasks(loop):
                    task.print_stack(file=out)
        for task in asyncio.all_tasks(loop):  # the test's own task among them: it fails, cancelled
            task.cancel()

    timer = loop.call_later(TEST_TIME_LIMIT_S, report)
    try:
        yield
    finally:
        timer.cancel()


@pytest.fixture(autouse=True)
async def no_lingering_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running (cf. Home Assistant's verify_cleanup)."""
    before = asyncio.all_tasks()
    yield
    await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() - before if not t.done()} - {asyncio.current_task()}
    for task in leftover:
        task.cancel()
    assert not leftover, f"lingering tasks: {leftover!r}"


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def session_influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One private InfluxDB for the tests that only read what the pipeline stored."""
    server = InfluxServer(tmp_path_factory.mktemp("session-influx")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def district_data(tmp_path_factory: pytest.TempPathFactory, session_influx: InfluxServer) -> DistrictData:
    """Two compounds' simulated day through the real pipeline into both district stores (once)."""
    workdir = tmp_path_factory.mktemp("district-data")
    # its own thread and loop: a session fixture must not borrow a test's event loop
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, produce(workdir, session_influx)).result()


@pytest.fixture
def viid_double_config() -> ViidDoubleConfig:
    """The city VIID double's config; override this fixture in a test module to change it."""
    return ViidDoubleConfig()


@pytest.fixture
async def viid_double(viid_double_config: ViidDoubleConfig) -> AsyncIterator[ViidDouble]:
    """The city platform (GA/T 1400 upper VIID, ``tests/viid_double``) listening on ``viid_double.url``."""
    async with ViidDouble(viid_double_config) as city:
        yield city
