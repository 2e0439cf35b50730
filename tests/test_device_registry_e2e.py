"""The device registry end to end: a real gateway's config -> district broker -> registry -> queries, CLI, console.

Real components: the compound's device broker and the district broker (Mosquitto), the gateway
runtime, the district ingester into an embedded SQLite store, and ``serve_api`` with its registry
desk (and the operator API and console beside it); the CLI runs as a subprocess and the console in
headless Chromium. The gateway's config has two smoke detectors no simulator plays: configured,
never reported. What the district must show is worked out from the gateway's config and the
events in the store, never from the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from selenium.webdriver.common.by import By

from device_sims.broker import Mosquitto
from device_sims.demo import expected_event_ids
from device_sims.devices import build_sim
from device_sims.inventory import DISTRICT_ID, compound_id, sample_broker_accounts, sample_devices
from device_sims.runner import Runner
from device_sims.scenarios import build
from district.config import DistrictConfig, load_district_config
from district.ingester import run_ingester
from district.operations import OperationsDb
from district.operator_cli import serve_api
from district.queries.devices import registry_with_status
from district.query_model import Role
from foundation.events import DeviceState, DeviceStatusPayload, Event, utc_now
from gateway.config import GatewayConfig, load_config
from gateway.runtime import run_gateway
from tests.conftest import sample_config
from tests.console_browser import CHROMEDRIVER, CHROMIUM, browser, log_in_to, wait_for
from tests.delivery import sqlite_ids
from tests.district_data import district_toml, running

C1 = compound_id(1)
NEVER_A = "36010400011250000901"  # configured, never reports; taken out of the config later
NEVER_B = "36010400011250000902"  # configured, never reports; stays
RENAMED = "36010400011240000001"  # the first sample device: renamed in the second config
NEW_NAME = "东门人脸门禁1（新）"
WAIT_S = 60


def _extra_devices(*device_ids: str) -> str:
    # smoke detectors on the CTWing platform: they need no secret of their own (the platform's)
    return "".join(
        f'\n[[devices]]\nid = "{d}"\nname = "3号车棚烟感{d[-1]}"\ndialect = "ctwing-smoke"\n'
        f'ref = "86900000000{d[-4:]}"\n[devices.location]\nbuilding = "3号车棚"\n'
        for d in device_ids
    )


def _gateway_config(workdir: Path, device_port: int, district_port: int, *, second: bool) -> GatewayConfig:
    path = sample_config(workdir, device_port)
    text = path.read_text(encoding="utf-8")
    if second:
        old = sample_name(text, RENAMED)
        text = text.replace(f'id = "{RENAMED}"\nname = "{old}"', f'id = "{RENAMED}"\nname = "{NEW_NAME}"')
    text += _extra_devices(NEVER_B) if second else _extra_devices(NEVER_A, NEVER_B)
    text += (
        '\n[backoff]\ninitial_s = 0.05\nmax_s = 0.5\n\n[uplink]\nmode = "mqtt"\nbatch_max_delay_ms = 20\n'
        f'[uplink.broker]\nhost = "127.0.0.1"\nport = {district_port}\n'
    )
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def sample_name(config_text: str, device_id: str) -> str:
    """The configured name of a device, read from the config text."""
    after = config_text.split(f'id = "{device_id}"\nname = "', 1)[1]
    return after.split('"', 1)[0]


class Api:
    """The running operator API over HTTP, with a viewer token."""

    def __init__(self, config: DistrictConfig, token: str) -> None:
        self.url = f"http://127.0.0.1:{config.api.port}"
        self.token = token

    async def get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.url}/api/v1{path}", headers=headers) as r,
        ):
            assert r.status == 200, await r.text()
            return await r.json()

    async def devices_when(self, ready: Any) -> dict[str, Any]:
        """The devices answer once ``ready(answer)`` holds (the desk applies inventories as they come)."""
        async with asyncio.timeout(WAIT_S):
            while True:
                answer = await self.get("/devices")
                if ready(answer):
                    return answer  # type: ignore[no-any-return]
                await asyncio.sleep(0.2)


def _stored(path: Path) -> list[Event]:
    import sqlite3  # noqa: PLC0415 - only the oracle reads the store directly

    with sqlite3.connect(path) as db:
        return [Event.model_validate_json(body) for (body,) in db.execute("SELECT body FROM events")]


def _online_by_the_store(events: list[Event], now: datetime, silent_after: timedelta) -> set[str]:
    last: dict[str, Event] = {}
    for event in sorted(events, key=lambda e: e.occurred_at):
        last[event.device_id] = event
    return {
        d
        for d, e in last.items()
        if not (isinstance(e.payload, DeviceStatusPayload) and e.payload.state is DeviceState.OFFLINE)
        and now - e.received_at <= silent_after
    }


@contextlib.asynccontextmanager
async def _district(workdir: Path) -> AsyncIterator[tuple[Mosquitto, Mosquitto, DistrictConfig, str]]:
    devices = Mosquitto(workdir / "devices", accounts=sample_broker_accounts(1)).start()
    district = Mosquitto(workdir / "district").start()
    try:
        path = workdir / "district.toml"
        store = f'type = "sqlite"\npath = "{workdir}/district.db"'
        path.write_text(district_toml(workdir, store=store, broker_port=district.port), encoding="utf-8")
        config = load_district_config(path)
        async with OperationsDb(config.api.ops_db) as ops:
            token = await ops.create_token("viewer", Role.VIEWER, DISTRICT_ID, (), "test")
        async with (
            running(partial(run_ingester, config), "ingester"),
            running(partial(serve_api, config), "api"),
        ):
            yield devices, district, config, token
    finally:
        devices.stop()
        district.stop()


def _cli(config: Path, token: str, *args: str) -> str:
    env = {**os.environ, "CGW_TOKEN": token}
    result = subprocess.run(
        [sys.executable, "-m", "cli", "query", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _console_rows(url: str, token: str) -> tuple[dict[str, tuple[str, str, str]], str]:
    with browser() as driver:
        log_in_to(driver, url, token)
        wait_for(driver, "#devices")
        rows = {
            str(r.get_attribute("data-device")): (
                r.find_element(By.CSS_SELECTOR, ".badge").text,
                r.find_element(By.CSS_SELECTOR, ".why").text,
                r.find_element(By.CSS_SELECTOR, ".last-seen").text,
            )
            for r in driver.find_elements(By.CSS_SELECTOR, "#devices tbody tr[data-device]")
        }
        return rows, driver.find_element(By.CSS_SELECTOR, ".registered-count").text


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs Debian's chromium and chromium-driver"
)
async def test_registered_devices_never_reported_removed_and_renamed(tmp_path: Path) -> None:
    """Never-reported devices are offline "never reported" in the API, CLI and console; the rate is over the registry.

    The city link's ``registry_with_status`` gives the same devices and states. Then the gateway restarts with one of them removed and another device renamed: the removed one
    leaves the list and the registry's history records the removal and the rename with their time.

    Broken on purpose, each once: ``device_rows`` ignoring the registry (``registry = None`` at its
    top) listed only the devices that reported, and the wait for every configured device timed
    out; so did the gateway without ``_publish_inventory``; a registry that applies only a
    compound's first inventory kept NEVER_A listed after the restart, and the wait for its removal
    timed out.
    """
    async with _district(tmp_path) as (devices, district, config, token):
        api = Api(config, token)
        first = _gateway_config(tmp_path, devices.port, district.port, second=False)
        configured = {d.id for d in first.devices}
        assert {NEVER_A, NEVER_B} <= configured
        async with running(partial(run_gateway, first), "gateway"):
            sims = [build_sim(d) for d in sample_devices(1)][:4]
            runner = Runner(f"http://127.0.0.1:{first.http.port}", "127.0.0.1", devices.port)
            report = await runner.run(build("burst", sims, 7, 8, utc_now() - timedelta(minutes=10)))
            assert report.failed == 0
            expected = expected_event_ids(first, report.acked + report.births)
            async with asyncio.timeout(WAIT_S):
                while not expected <= set(sqlite_ids(tmp_path / "district.db")):
                    await asyncio.sleep(0.2)
            answer = await api.devices_when(
                lambda a: {d["device_id"] for d in a["devices"] if d["registered"]} == configured
            )
        events = _stored(tmp_path / "district.db")
        reported = {e.device_id for e in events}
        online = _online_by_the_store(events, utc_now(), timedelta(seconds=config.api.device_silent_after_s))
        rows = {d["device_id"]: d for d in answer["devices"]}
        assert set(rows) == configured  # every configured device, the silent ones included
        assert reported < configured
        for device_id in configured - reported:
            assert (rows[device_id]["status"], rows[device_id]["why"], rows[device_id]["last_seen"]) == (
                "offline",
                "never reported",
                None,
            )
        assert {d for d, r in rows.items() if r["status"] == "online"} == online
        assert (rows[NEVER_A]["name"], rows[NEVER_A]["kind"], rows[NEVER_A]["place"]) == (
            "3号车棚烟感1",
            "smoke_detector",
            "3号车棚",
        )
        [summary] = [c for c in answer["compounds"] if c["compound_id"] == C1]
        # the rate over the registry: the silent devices count, not only those that reported
        assert (summary["devices"], summary["online"], summary["from_registry"]) == (
            len(configured),
            len(online),
            True,
        )
        assert summary["rate"] == round(len(online) / len(configured), 4)

        # the gateway restarts with NEVER_A out of its config and the first device renamed
        second = _gateway_config(tmp_path, devices.port, district.port, second=True)
        before_restart = utc_now()
        async with running(partial(run_gateway, second), "gateway"):
            answer = await api.devices_when(lambda a: NEVER_A not in {d["device_id"] for d in a["devices"]})
        after = utc_now()
        rows = {d["device_id"]: d for d in answer["devices"]}
        assert set(rows) == configured - {NEVER_A}
        assert rows[RENAMED]["name"] == NEW_NAME
        [summary] = [c for c in answer["compounds"] if c["compound_id"] == C1]
        assert summary["devices"] == len(configured) - 1
        # the overview's online rate is the same figure
        overview = await api.get("/overview")
        [row] = [c for c in overview["compounds"] if c["compound_id"] == C1]
        assert (row["devices"], row["online"]) == (summary["devices"], summary["online"])
        changes = (await api.get("/device-changes"))["changes"]
        latest = [c for c in changes if datetime.fromisoformat(c["at"]) >= before_restart]
        assert sorted((c["device_id"], c["change"]) for c in latest) == [
            (RENAMED, "changed"),
            (NEVER_A, "removed"),
        ]
        for change in latest:
            assert before_restart <= datetime.fromisoformat(change["at"]) <= after
        renamed = next(c for c in latest if c["change"] == "changed")
        assert renamed["fields"] == {"name": ["东门人脸门禁1", NEW_NAME]}
        assert sorted(c["device_id"] for c in changes if c["change"] == "added") == sorted(configured)

        # the city link's APE list: every registered device with the same online status
        city = await registry_with_status(config)
        assert {(d.device_id, d.online) for d in city} == {
            (d, r["status"] == "online") for d, r in rows.items()
        }
        assert {(d.compound_id, d.kind) for d in city if d.device_id == NEVER_B} == {(C1, "smoke_detector")}

        # the CLI, from the same stores
        config_path = tmp_path / "district.toml"
        listed = _cli(config_path, token, "devices")
        [never_line] = [line for line in listed.splitlines() if NEVER_B in line]
        assert "never reported" in never_line
        assert "3号车棚烟感2" in never_line
        assert NEVER_A not in listed
        history = _cli(config_path, token, "device-changes", "--format", "json")
        # the CLI shows the same history as the API: every addition, the removal and the rename
        assert sorted((c["device_id"], c["change"]) for c in json.loads(history)["changes"]) == sorted(
            (c["device_id"], c["change"]) for c in changes
        )

        # the console's devices page (a viewer may open it)
        console, registered = await asyncio.to_thread(
            _console_rows, f"http://127.0.0.1:{config.api.port}", token
        )
        assert set(console) == configured - {NEVER_A}
        assert console[NEVER_B] == ("离线", "从未上报", "—")
        assert registered == str(len(configured) - 1)
