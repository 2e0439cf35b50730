"""设备指令 in the console, in a real browser, through the whole path to a simulated barrier.

Headless Chromium -> the console (``serve_api`` with its command desk) -> the district Mosquitto ->
the real gateway -> the compound Mosquitto -> the simulated LPR camera's barrier, and back: the
operator clicks 下发 and watches the command's state change in place until it reads back verified.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from device_sims.broker import Mosquitto
from foundation.events import Direction, utc_now
from gateway.runtime import run_gateway
from tests.command_orders import BARRIER
from tests.console_browser import CHROMEDRIVER, CHROMIUM, browser, log_in_to, screenshot, wait_for
from tests.district_data import running
from tests.evidence_double import C1, seed
from tests.test_command_desk import district_config, district_up, gateway_online
from tests.test_command_service import gateway_config
from tests.test_commands import camera, camera_online
from tests.test_console_pages import _event, _pass

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (scripts/dev test installs them)",
)

WAIT_S = 60
REASON = "救护车进入小区"


async def test_an_operator_opens_the_barrier_from_the_devices_page_and_watches_it_verified(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """下发 with a reason: the state appears in place and moves on to 已执行 without a reload; a viewer has no panel.

    The camera's relay moved once; the audit log holds the command with the operator and the reason.
    Broken on purpose once: with the state fragment final from the start (no polling) the page
    stayed at 待发送 and the wait for 已执行 timed out.
    """
    sim = camera()
    gateway = gateway_config(tmp_path, mosquitto, district_broker)
    config = district_config(tmp_path / "district", district_broker)
    # the district knows the barrier from its traffic (the devices page lists what reported)
    await seed(
        config,
        [
            _event(
                "cmd-pass-0001",
                C1,
                BARRIER,
                utc_now() - timedelta(minutes=5),
                _pass("赣A12345", Direction.IN),
                dialect="vz-lpr-mqtt",
            )
        ],
    )
    async with (
        district_up(config) as district,
        camera_online(mosquitto, sim),
        running(lambda ready: run_gateway(gateway, ready=ready), "gateway"),
    ):
        await gateway_online(district_broker)

        def operator() -> tuple[str, str]:
            with browser() as driver:
                log_in_to(driver, district.url, district.tokens["operator"], "/devices")
                wait_for(driver, "#command-panel")
                driver.execute_script("window.__marker = 'no reload';")
                Select(driver.find_element(By.ID, "command-device")).select_by_value(BARRIER)
                Select(driver.find_element(By.ID, "command-action")).select_by_value("barrier_open")
                driver.find_element(By.ID, "command-reason").send_keys(REASON)
                driver.find_element(By.ID, "command-send").click()
                WebDriverWait(driver, WAIT_S).until(
                    lambda d: d.find_elements(By.CSS_SELECTOR, ".command-state[data-state='verified']"),
                    "the command's state, followed in place until verified",
                )
                state = driver.find_element(By.CSS_SELECTOR, ".command-state .state").text
                screenshot(driver, "devices-command")
                return state, str(driver.execute_script("return window.__marker"))

        def viewer() -> int:
            with browser() as driver:
                log_in_to(driver, district.url, district.tokens["viewer"], "/devices")
                wait_for(driver, "#devices")
                return len(driver.find_elements(By.ID, "command-panel"))

        state, marker = await asyncio.to_thread(operator)
        panels = await asyncio.to_thread(viewer)
        audit = [r.entry for r in await district.ops.audit_records(limit=50) if r.entry.action == "command"]
    assert (state, marker) == ("已执行（回读核实）", "no reload")
    assert (sim.commands_executed, sim.gate_open) == (1, True)
    assert [(e.actor, e.channel, e.outcome, e.reason) for e in audit] == [
        ("operator", "console", "ok", REASON)
    ]
    assert panels == 0
