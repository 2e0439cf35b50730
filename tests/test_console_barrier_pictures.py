"""道闸查询's pictures: requested from the compound, then shown in the page through its own media route.

The district broker is a real Mosquitto; the compound is the evidence double (``CompoundDouble``),
which answers the barrier window request with a picture of one pass exactly as a compound does; the
browser is headless Chromium.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from device_sims.broker import Mosquitto
from district.query_model import Role
from foundation.events import Direction, utc_now
from tests.console_browser import CHROMEDRIVER, CHROMIUM, browser, log_in, wait_for
from tests.evidence_double import C1, CompoundDouble, running_district, seed, write_config
from tests.test_console_alarms import png
from tests.test_console_pages import BARRIER, _event, _pass

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (scripts/dev test installs them)",
)

WAIT_S = 60  # generous: the suite shares two cores
REASON = "业主报案车辆刮擦"


async def test_barrier_pictures_show_through_the_console_with_the_reason_audited(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """The operator asks for a window's pictures; once held, the page shows them as decoded images.

    Each picture is served by ``/console/barrier/media`` (the session, not a bearer token) through
    ``evidence_media``: the audit log holds one read per picture with the form's reason; a viewer's
    session is refused the same URL (403).

    Broken on purpose: with the picture linked to the JSON API's media route (as before this
    test), the image never decoded (401 without a bearer token) and the wait failed; with the
    reason left out of the link, ``evidence_media`` refused it (400) and the wait failed too.
    """
    config = write_config(tmp_path, district_broker.port)
    now = utc_now()
    passes = [
        _event("bp-pass-1", C1, BARRIER, now - timedelta(minutes=40), _pass("赣A12345", Direction.IN)),
        _event("bp-pass-2", C1, BARRIER, now - timedelta(minutes=20), _pass("赣B54321", Direction.OUT)),
    ]
    await seed(config, passes)
    picture = png(320, 180)
    async with (
        running_district(config) as district,
        CompoundDouble(C1, district_broker.port).online() as compound,
    ):
        compound.barrier_files["bp-pass-1"] = [("plate", picture, "image/png")]

        def operator() -> tuple[str, list[str]]:
            with browser() as driver:
                log_in(driver, district.url, district.tokens["operator"])
                wait_for(driver, "nav")
                driver.get(f"{district.url}/console/barrier")
                wait_for(driver, "#device")
                driver.find_element(By.ID, "device").send_keys(BARRIER)
                driver.find_element(By.ID, "reason").send_keys(REASON)
                driver.find_element(By.ID, "search").click()
                wait_for(driver, "#passes")
                driver.find_element(By.ID, "request-pictures").click()
                answer = wait_for(driver, "#request-result .message")
                asyncio.run_coroutine_threadsafe(
                    district.wait_held("bp-pass-1", 1, timeout=WAIT_S), loop
                ).result(WAIT_S * 2)
                driver.find_element(By.ID, "show-pictures").click()
                WebDriverWait(driver, WAIT_S).until(
                    lambda d: d.execute_script(
                        "const i = document.querySelector('img.thumb');"
                        " return i !== null && i.complete && i.naturalWidth > 0"
                    ),
                    "the pass's picture decoded",
                )
                sources = [
                    str(i.get_attribute("src")) for i in driver.find_elements(By.CSS_SELECTOR, "img.thumb")
                ]
                return answer, sources

        loop = asyncio.get_running_loop()
        answer, sources = await asyncio.to_thread(operator)
        assert "请求编号" in answer
        assert len(sources) == 1
        sha = hashlib.sha256(picture).hexdigest()
        assert sources[0].startswith(f"{district.url}/console/barrier/media?")
        assert f"sha={sha}" in sources[0]
        reads = [
            r.entry
            for r in await district.ops.audit_records(limit=1000)
            if r.entry.action == "evidence_media"
        ]
        assert [(e.actor, e.outcome, e.reason, e.filters.get("event_id")) for e in reads] == [
            ("operator", "ok", REASON, "bp-pass-1")
        ]
        # the same URL with a viewer's session: refused by the page's least role, audited
        viewer_session = await _session(district.url, district.tokens[Role.VIEWER.value])
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                sources[0], headers={"Cookie": f"cgw_console={viewer_session}"}, allow_redirects=False
            ) as response,
        ):
            assert response.status == 403
        reads_after = [
            r for r in await district.ops.audit_records(limit=1000) if r.entry.action == "evidence_media"
        ]
        assert len(reads_after) == 1


async def _session(url: str, token: str) -> str:
    """A console session id for ``token`` (the login form, as a browser posts it)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/console/login", data={"token": token}, allow_redirects=False) as response,
    ):
        assert response.status == 303, await response.text()
        cookie = response.cookies.get("cgw_console")
        assert cookie is not None
        return cookie.value
