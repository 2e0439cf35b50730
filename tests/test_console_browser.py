"""The district console in a real browser: Debian's headless Chromium through Selenium and chromedriver.

The district runs for real (``serve_api``: the operator API with the console inside it, an embedded
SQLite store seeded with events, the operations database); see ``tests/console_browser.py``.
``CGW_CONSOLE_SCREENSHOTS=1`` saves the pages to ``docs/console/`` (``docs/console.md`` shows them).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.command import Command
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from district.console import registry
from district.console.page import ConsoleAction, ConsolePage, PageContext
from district.console.sessions import csrf_token
from district.query_model import Role
from tests.console_browser import (
    CHROMEDRIVER,
    CHROMIUM,
    LATE,
    LOGIN_ATTEMPTS,
    ONLINE,
    REPORTED_OFFLINE,
    SILENT,
    WAIT_S,
    XSS,
    browser,
    late_event,
    log_in,
    log_in_to,
    pages_for,
    running_district,
    screenshot,
    self_signed,
    session_cookie,
    start_browser,
    wait_for,
)
from uplink.stores.sqlite import SqliteStore, SqliteStoreConfig

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (scripts/dev test installs them)",
)


def _rows(driver: WebDriver) -> list[tuple[str, str, str]]:
    # (device, status text, dialect) of each row, top to bottom
    rows = driver.find_elements(By.CSS_SELECTOR, "#devices tbody tr[data-device]")
    return [
        (
            str(r.get_attribute("data-device")),
            r.find_element(By.CSS_SELECTOR, ".badge").text,
            r.find_element(By.CSS_SELECTOR, ".dialect").text,
        )
        for r in rows
    ]


async def test_login_then_devices_offline_first(tmp_path: Path) -> None:
    """A valid token opens a session (HttpOnly, SameSite=Strict cookie on /console); 设备 lists the seeded devices, offline first.

    Broken on purpose: sorting the page's rows by compound and device only (offline not first)
    put the online device of compound 1 above the silent device of compound 2, and this failed;
    ``offline_reasons`` answering ``{}`` lost the device's own reason ("断电"), and this failed.
    """
    async with running_district(tmp_path) as district:

        def steps() -> tuple[
            list[tuple[str, str, str]], dict[str, object], str, str, object, list[object], dict[str, str]
        ]:
            with browser() as driver:
                driver.get(f"{district.url}/")
                wait_for(driver, "#token")  # / -> /console/ -> the login page
                screenshot(driver, "login")
                log_in_to(driver, district.url, district.tokens["operator"])
                wait_for(driver, "#devices")  # the login page has a heading too: wait for the table
                heading = driver.find_element(By.CSS_SELECTOR, "main h1").text
                screenshot(driver, "devices")
                whys = {
                    str(r.get_attribute("data-device")): r.find_element(By.CSS_SELECTOR, ".why").text
                    for r in driver.find_elements(By.CSS_SELECTOR, "#devices tbody tr[data-device]")
                }
                # the vendored scripts loaded under the page's policy (no CSP violation, no 404)
                WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script("return !!window.htmx;"))
                htmx = driver.execute_script("return [htmx.version, typeof htmx.createEventSource];")
                # chromium's get_log, which selenium leaves untyped
                logged = driver.execute(Command.GET_LOG, {"type": "browser"})["value"]
                problems = [e for e in logged if e.get("level") == "SEVERE"]
                return (
                    _rows(driver),
                    session_cookie(driver),
                    heading,
                    driver.find_element(By.TAG_NAME, "html").get_attribute("lang") or "",
                    htmx,
                    problems,
                    whys,
                )

        rows, cookie, heading, lang, htmx, problems, whys = await asyncio.to_thread(steps)
        # why: the device's own words where it gave them (its status event's reason), else the silence
        assert whys.keys() == {REPORTED_OFFLINE, SILENT, ONLINE}
        assert (whys[REPORTED_OFFLINE], whys[ONLINE]) == ("设备上报离线：断电", "正常上报")
        assert whys[SILENT].startswith("静默 3 h ")  # silent for three hours (and the minutes the test took)
        assert heading == "设备"
        assert lang == "zh-CN"
        assert htmx == [
            "2.0.11",
            "function",
        ]  # htmx 2 and its SSE extension (which defines createEventSource)
        assert problems == []
        assert [(device, status) for device, status, _ in rows] == [
            (REPORTED_OFFLINE, "离线"),
            (SILENT, "离线"),
            (ONLINE, "在线"),
        ]
        assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"], cookie["secure"]) == (
            True,
            "Strict",
            "/console",
            False,  # plain HTTP here; Secure when the request came over TLS
        )
        logins = await district.audit("console.login")
        assert [(r.entry.actor, r.entry.outcome, r.entry.channel) for r in logins] == [
            ("operator", "ok", "console")
        ]
        # the page read the data through the operator service: audited as the devices action
        reads = await district.audit("devices")
        assert [(r.entry.actor, r.entry.channel, r.entry.rows) for r in reads] == [("operator", "console", 3)]


async def test_wrong_token_refused_and_rate_limited(tmp_path: Path) -> None:
    """A wrong token is refused and counted; past the limit even a valid token is refused (429), all audited.

    Broken on purpose: not calling ``limiter.failed`` on a refused login let the valid token in
    after three wrong ones, and this failed.
    """
    async with running_district(tmp_path) as district:

        def steps() -> tuple[list[str], str, object]:
            messages = []
            with browser() as driver:
                for attempt in range(LOGIN_ATTEMPTS):
                    log_in(driver, district.url, f"cgw_wrong{attempt}")
                    messages.append(wait_for(driver, "#login-error"))
                log_in(driver, district.url, district.tokens["admin"])
                return messages, wait_for(driver, "#login-error"), driver.get_cookie("cgw_console")

        messages, last, cookie = await asyncio.to_thread(steps)
        assert messages == ["令牌无效或已吊销"] * LOGIN_ATTEMPTS
        assert "次数过多" in last
        assert cookie is None
        logins = await district.audit("console.login")
        assert [(r.entry.outcome, r.entry.status) for r in logins] == [
            ("unauthenticated", 401)
        ] * LOGIN_ATTEMPTS + [("rate_limited", 429)]
        async with aiohttp.ClientSession() as http, http.get(f"{district.url}/metrics") as response:
            metrics = await response.text()
        assert (
            f'cgw_console_requests_total{{action="console.login",outcome="unauthenticated"}} {LOGIN_ATTEMPTS}.0'
            in metrics
        )
        assert 'cgw_console_requests_total{action="console.login",outcome="rate_limited"} 1.0' in metrics


async def test_script_in_a_device_field_renders_as_text(tmp_path: Path) -> None:
    """A dialect name carrying ``<script>`` is shown as text: it runs nothing and reads as typed.

    Broken on purpose: ``autoescape=False`` in the console's jinja2 environment made the script an
    element (the page's policy still kept it from running), the cell's text was empty, and this failed.
    """
    async with running_district(tmp_path) as district:

        def steps() -> tuple[str, list[object], object]:
            with browser() as driver:
                log_in_to(driver, district.url, district.tokens["viewer"])
                wait_for(driver, "#devices")
                cell = driver.find_element(By.CSS_SELECTOR, f'tr[data-device="{ONLINE}"] .dialect').text
                try:
                    alert: object = driver.switch_to.alert.text
                except NoAlertPresentException:
                    alert = None
                traces = driver.execute_script("return [window.__xss, window.__alerts];")
                return cell, list(traces), alert

        cell, traces, alert = await asyncio.to_thread(steps)
        assert cell == XSS
        assert (traces, alert) == ([None, []], None)


async def test_post_without_csrf_token_refused_and_audited(tmp_path: Path) -> None:
    """A state-changing request without the session's CSRF token is refused (403), audited, and changes nothing.

    Broken on purpose: making ``_csrf_ok`` return True logged the session out on the forged
    request, and this failed; making ``_same_origin`` return True let the cross-site login in.
    """
    async with running_district(tmp_path) as district:

        def steps() -> str:
            with browser() as driver:
                log_in_to(driver, district.url, district.tokens["operator"])
                wait_for(driver, "#devices")
                return str(session_cookie(driver)["value"])

        session_id = await asyncio.to_thread(steps)
        status, body, _ = await district.request("POST", "/console/logout", session_id)
        assert status == 403
        assert "CSRF" in body
        status, _, _ = await district.request(
            "POST", "/console/logout", session_id, data={"csrf_token": "0" * 64}
        )
        assert status == 403
        refused = await district.audit("console.csrf")
        assert [(r.entry.actor, r.entry.status) for r in refused] == [("operator", 403)] * 2
        status, body, _ = await district.request("GET", "/console/devices", session_id)
        assert status == 200, "the session must survive a refused forgery"
        assert await district.audit("console.logout") == []
        # the login has no session to hold a token yet: a login posted from another site is refused by its Origin
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{district.url}/console/login",
                data={"token": district.tokens["admin"]},
                headers={"Origin": "http://attacker.example"},
                allow_redirects=False,
            ) as response,
        ):
            assert (response.status, response.cookies.get("cgw_console")) == (403, None)
        assert [(r.entry.detail, r.entry.status) for r in await district.audit("console.csrf")][2:] == [
            ("a login from another origin", 403)
        ]


async def _dummy_load(ctx: PageContext) -> Mapping[str, object]:
    return {}


async def _dummy_run(ctx: PageContext, fields: Mapping[str, str]) -> str:
    return "已执行"


ADMIN_PAGE = ConsolePage(
    name="dummy-admin",
    path="/dummy-admin",
    title="测试管理页",
    role=Role.ADMIN,
    order=99,
    template="base.html",
    load=_dummy_load,
    actions=(ConsoleAction("act", Role.ADMIN, _dummy_run),),
)


async def test_viewer_sees_no_admin_entry_and_forged_admin_requests_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The navigation shows a viewer only its pages; an admin page and action are refused (403, audited) anyway.

    Broken on purpose: dropping the ``authorise_role`` checks of the page and action handlers let
    the viewer's forged GET and POST through (200), and this failed; listing every page in the
    navigation showed the viewer the admin entry, and this failed too.
    """
    monkeypatch.setitem(registry.PAGES, ADMIN_PAGE.name, ADMIN_PAGE)
    async with running_district(tmp_path) as district:

        def steps(token: str) -> tuple[list[str], bool, str]:
            with browser() as driver:
                log_in_to(driver, district.url, token)
                wait_for(driver, "#devices")
                nav = [
                    str(a.get_attribute("data-page")) for a in driver.find_elements(By.CSS_SELECTOR, ".nav a")
                ]
                has_logout = bool(driver.find_elements(By.CSS_SELECTOR, "form.logout button"))
                return nav, has_logout, str(session_cookie(driver)["value"])

        nav, has_logout, viewer_session = await asyncio.to_thread(steps, district.tokens["viewer"])
        assert (nav, has_logout) == (pages_for(Role.VIEWER), True)
        assert "dummy-admin" not in nav
        admin_nav, _, _ = await asyncio.to_thread(steps, district.tokens["admin"])
        assert admin_nav == pages_for(Role.ADMIN)
        assert "dummy-admin" in admin_nav  # the entry exists: the viewer's was hidden

        status, body, _ = await district.request("GET", "/console/dummy-admin", viewer_session)
        assert status == 403
        assert "admin" in body
        status, _, _ = await district.request(
            "POST",
            "/console/dummy-admin/act",
            viewer_session,
            data={"csrf_token": csrf_token(viewer_session)},
        )
        assert status == 403
        refused = [
            (r.entry.action, r.entry.actor, r.entry.status)
            for r in await district.ops.audit_records(limit=100)
        ]
        assert ("console.dummy-admin", "viewer", 403) in refused
        assert ("console.dummy-admin.act", "viewer", 403) in refused


async def test_logout_ends_the_session(tmp_path: Path) -> None:
    """Logging out deletes the session: the old cookie opens nothing; the logout is audited.

    Broken on purpose: leaving out ``end_session`` in the logout handler kept the old cookie
    working (200 on the devices page), and this failed.
    """
    async with running_district(tmp_path) as district:

        def steps() -> tuple[str, str, object]:
            with browser() as driver:
                log_in_to(driver, district.url, district.tokens["viewer"])
                wait_for(driver, "#devices")
                session_id = str(session_cookie(driver)["value"])
                driver.find_element(By.ID, "logout").click()
                wait_for(driver, "#token")
                return session_id, str(driver.current_url), driver.get_cookie("cgw_console")

        session_id, where, cookie = await asyncio.to_thread(steps)
        assert where.endswith("/console/login")
        assert cookie is None
        status, _, location = await district.request("GET", "/console/devices", session_id)
        assert (status, location) == (303, "/console/login")
        assert [r.entry.actor for r in await district.audit("console.logout")] == ["viewer"]
        assert await district.ops.session_count() == 0


async def test_revoking_the_token_ends_its_session(tmp_path: Path) -> None:
    """A revoked token's session ends at its next request (back to the login page), audited as revoked.

    Two locks: ``touch_session`` ends a session whose token is revoked, and the token the session
    opens is looked up live (``OperationsDb.principal``) on every request. Broken on purpose: with
    both removed the page stayed open after the revocation, and this failed; with one removed it
    still ended (the other held).
    """
    async with running_district(tmp_path) as district:

        def first() -> WebDriver:
            driver = start_browser()
            log_in_to(driver, district.url, district.tokens["operator"])
            wait_for(driver, "#devices")
            return driver

        driver = await asyncio.to_thread(first)
        try:
            assert await district.ops.revoke_token("operator")

            def again() -> str:
                driver.get(f"{district.url}/console/devices")
                wait_for(driver, "#token")
                return str(driver.current_url)

            assert (await asyncio.to_thread(again)).endswith("/console/login")
        finally:
            await asyncio.to_thread(driver.quit)
        ended = await district.audit("console.session_end")
        assert [(r.entry.actor, r.entry.outcome) for r in ended] == [("operator", "revoked")]


async def test_the_api_serves_https_and_the_session_cookie_is_secure_over_it(tmp_path: Path) -> None:
    """With ``[api.tls]`` the API and console answer over HTTPS and the session cookie is ``Secure``.

    Broken on purpose: ``secure=False`` in the login's ``set_cookie`` sent the cookie without
    ``Secure`` over TLS, and this failed.
    """
    cert_file, key_file = self_signed(tmp_path)
    tls = f'[api.tls]\ncert_file = "{cert_file}"\nkey_file = "{key_file}"\n'
    async with running_district(tmp_path, tls=tls) as district:
        assert district.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(cert_file))
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{district.url}/console/login",
                data={"token": district.tokens["viewer"]},
                ssl=trust,
                allow_redirects=False,
            ) as response,
        ):
            assert response.status == 303
            cookie = response.cookies["cgw_console"]
            assert (bool(cookie["secure"]), bool(cookie["httponly"]), cookie["samesite"], cookie["path"]) == (
                True,
                True,
                "Strict",
                "/console",
            )
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{district.url}/api/v1/devices",
                ssl=trust,
                headers={"Authorization": f"Bearer {district.tokens['viewer']}"},
            ) as answer,
        ):
            assert answer.status == 200
            assert {d["device_id"] for d in (await answer.json())["devices"]} == {
                ONLINE,
                REPORTED_OFFLINE,
                SILENT,
            }


async def test_the_devices_view_refreshes_in_place_and_a_revoked_session_leaves_it(tmp_path: Path) -> None:
    """The device list reloads in place through htmx (no page reload) with a new device; after revocation it goes to the login.

    Broken on purpose: ``hx-select="#devices-view"`` (a typo: nothing to select) left the list
    unchanged, and this failed; answering htmx's request with a plain 303 to the login page instead of
    ``HX-Redirect`` let htmx follow it inside the page, the browser never reached the login page,
    and this failed too.
    """
    async with running_district(tmp_path) as district:
        driver = await asyncio.to_thread(start_browser)
        try:

            def first() -> None:
                log_in_to(driver, district.url, district.tokens["viewer"])
                wait_for(driver, "#devices")
                driver.execute_script("window.__sameDocument = true;")

            await asyncio.to_thread(first)
            assert isinstance(district.config.store, SqliteStoreConfig)
            async with SqliteStore(district.config.store) as store:
                await store.write([late_event()])

            def refreshed() -> tuple[list[str], object]:
                WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script("return !!window.htmx;"))
                driver.execute_script("htmx.trigger('#device-view', 'refresh');")
                WebDriverWait(driver, WAIT_S).until(
                    lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-device="{LATE}"]')
                )
                return [device for device, _, _ in _rows(driver)], driver.execute_script(
                    "return window.__sameDocument;"
                )

            devices, same_document = await asyncio.to_thread(refreshed)
            assert set(devices) == {ONLINE, REPORTED_OFFLINE, SILENT, LATE}
            assert same_document is True
            assert await district.ops.revoke_token("viewer")

            def after_revocation() -> str:
                driver.execute_script("htmx.trigger('#device-view', 'refresh');")
                wait_for(driver, "#token")
                return str(driver.current_url)

            assert (await asyncio.to_thread(after_revocation)).endswith("/console/login")
        finally:
            await asyncio.to_thread(driver.quit)
