"""The console's 总览, 事件 and 道闸查询 pages in a real browser (headless Chromium through Selenium).

The district runs for real (``serve_api`` on an embedded SQLite store, see ``tests/console_browser.py``);
this file adds its own events (barrier passes, alarms, older days) to the store, and every number
the pages must show is worked out here from the events in the store, never from the code under
test. ``CGW_CONSOLE_SCREENSHOTS=1`` saves the pages to ``docs/console/``.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from device_sims.inventory import DISTRICT_ID
from district.console.sessions import CSRF_FIELD, csrf_token
from district.query_model import Role
from foundation.events import (
    BarrierAction,
    DeviceState,
    DeviceStatusPayload,
    Direction,
    EbikeShedPayload,
    Event,
    EventKind,
    ListType,
    PlateColor,
    Provenance,
    Severity,
    ShedCondition,
    ThrownObjectPayload,
    VehiclePassPayload,
    VehicleType,
    utc_now,
)
from tests.console_browser import (
    C1,
    C2,
    CHROMEDRIVER,
    CHROMIUM,
    XSS,
    District,
    browser,
    log_in,
    pages_for,
    running_district,
    screenshot,
    seeded_events,
    wait_for,
)
from uplink.stores.sqlite import SqliteStore, SqliteStoreConfig

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (scripts/dev test installs them)",
)

CST = ZoneInfo("Asia/Shanghai")
BARRIER = "36010400011320000021"  # compound 1's barrier camera
BARRIER2 = "36010400021320000022"  # compound 2's
PLATE = "赣A12345"
FORMULA = '=HYPERLINK("http://evil.example/x","点我")'
"""A source name a compound could send: a spreadsheet must not run it."""


def _event(event_id: str, compound: str, device: str, at: datetime, payload: Any, **extra: Any) -> Event:
    return Event.model_validate(
        {
            "event_id": event_id,
            "kind": payload.kind,
            "district_id": DISTRICT_ID,
            "compound_id": compound,
            "device_id": device,
            "occurred_at": at,
            "received_at": at,
            "severity": extra.get("severity", Severity.INFO),
            "source": Provenance(vendor="test", dialect=extra.get("dialect", "hik_isapi")),
            "payload": payload,
        }
    )


def _pass(plate: str | None, direction: Direction, **raw: str) -> VehiclePassPayload:
    return VehiclePassPayload(
        plate=plate,
        plate_color=PlateColor.BLUE,
        vehicle_type=VehicleType.CAR,
        direction=direction,
        barrier_action=BarrierAction.OPENED,
        list_type=ListType.ALLOW,
        **raw,
    )


def page_events(now: datetime) -> list[Event]:
    """Barrier passes (one with a formula for a source, one unread plate), alarms, older days."""
    m = timedelta(minutes=1)
    return [
        _event("pg-pass-1", C1, BARRIER, now - 50 * m, _pass(PLATE, Direction.IN)),
        _event("pg-pass-2", C1, BARRIER, now - 30 * m, _pass("赣B54321", Direction.OUT), dialect=FORMULA),
        _event("pg-pass-3", C1, BARRIER, now - 10 * m, _pass(None, Direction.IN, plate_raw="京?12 34")),
        _event("pg-pass-old", C1, BARRIER, now - 180 * m, _pass(PLATE, Direction.OUT)),
        _event("pg-pass-c2", C2, BARRIER2, now - 20 * m, _pass(PLATE, Direction.IN)),
        _event("pg-alarm-1", C1, BARRIER, now - 15 * m, ThrownObjectPayload(), severity=Severity.CRITICAL),
        _event(
            "pg-alarm-2", C1, BARRIER, now - 2 * 1440 * m, ThrownObjectPayload(), severity=Severity.CRITICAL
        ),
        _event("pg-shed-1", C1, BARRIER, now - 25 * m, EbikeShedPayload(condition=ShedCondition.SELF_TEST)),
        _event("pg-old-01", C1, BARRIER, now - 4 * 1440 * m, ThrownObjectPayload()),
    ]


async def add_events(district: District) -> list[Event]:
    """Write this file's events into the running district's store; every event the store holds."""
    assert isinstance(district.config.store, SqliteStoreConfig)
    mine = page_events(utc_now())
    async with SqliteStore(district.config.store) as store:
        await store.write(mine)
    return seeded_events() + mine  # seeded_events' ids and times: what running_district wrote


def expected(events: list[Event], compounds: set[str]) -> dict[str, Any]:
    """The overview's figures of these compounds, from the events alone."""
    now = utc_now()
    today = now.astimezone(CST).date()
    mine = [e for e in events if e.compound_id in compounds]

    def day(e: Event) -> date:
        return e.occurred_at.astimezone(CST).date()

    days = [today - timedelta(days=n) for n in range(6, -1, -1)]
    last: dict[str, Event] = {}
    for e in sorted(mine, key=lambda e: e.occurred_at):
        last[e.device_id] = e
    online = sum(
        e.payload.state is DeviceState.ONLINE
        if isinstance(e.payload, DeviceStatusPayload)
        else now - e.occurred_at <= timedelta(hours=1)
        for e in last.values()
    )
    per_day = Counter(day(e) for e in mine)
    return {
        "online": f"{online}/{len(last)}",
        "today": {k.value: sum(1 for e in mine if day(e) == today and e.kind is k) for k in EventKind},
        "today_total": sum(1 for e in mine if day(e) == today),
        "open_alarms": sum(1 for e in mine if e.severity is Severity.CRITICAL and day(e) in days),
        "trend": [per_day.get(d, 0) for d in days],
    }


def shown(driver: WebDriver, compound: str) -> dict[str, Any]:
    """The same figures read off the overview table's row."""
    row = driver.find_element(By.CSS_SELECTOR, f'#overview-table tr[data-compound="{compound}"]')
    return {
        "online": row.find_element(By.CSS_SELECTOR, ".online").text,
        "today": {
            str(c.get_attribute("data-kind")): int(c.text)
            for c in row.find_elements(By.CSS_SELECTOR, "td[data-kind]")
        },
        "today_total": int(row.find_element(By.CSS_SELECTOR, ".today-total").text),
        "open_alarms": int(row.find_element(By.CSS_SELECTOR, ".open-alarms").text),
        "trend": [
            int(str(r.get_attribute("data-count"))) for r in row.find_elements(By.CSS_SELECTOR, "rect")
        ],
    }


def event_ids(driver: WebDriver) -> set[str]:
    """The events the events table lists."""
    return {
        str(r.get_attribute("data-event"))
        for r in driver.find_elements(By.CSS_SELECTOR, "#events tr[data-event]")
    }


async def test_overview_shows_the_seeded_numbers(tmp_path: Path) -> None:
    """总览 is the first page; compound 1's row and the district's totals are the numbers worked out here.

    Broken on purpose: the template's today cells reading ``f.today["thrown_object"]`` instead of
    ``f.today[kind]`` showed one number in every kind column, and this failed; drawing bars only
    for days with events (zero days dropped) left fewer than 7 bars, and this failed too.
    """
    async with running_district(tmp_path) as district:
        events = await add_events(district)

        def steps() -> tuple[str, dict[str, Any], dict[str, Any], list[str]]:
            with browser() as driver:
                log_in(driver, district.url, district.tokens["viewer"])
                wait_for(driver, "#overview-table")
                screenshot(driver, "overview")
                titles = [a.text for a in driver.find_elements(By.CSS_SELECTOR, ".nav a")]
                return (
                    driver.find_element(By.CSS_SELECTOR, "main h1").text,
                    shown(driver, C1),
                    shown(driver, "district"),
                    titles,
                )

        heading, c1, total, titles = await asyncio.to_thread(steps)
        assert heading == "总览"
        assert titles[0] == "总览"
        assert c1 == expected(events, {C1})
        assert total == expected(events, {C1, C2})
        assert sum(c1["trend"]) >= 3  # the figures are not all zero (whatever the local hour: not "today")
        reads = await district.audit("overview")
        assert [(r.entry.actor, r.entry.channel, r.entry.outcome) for r in reads] == [
            ("viewer", "console", "ok")
        ]


async def test_events_filter_by_kind_and_fields_render_as_text(tmp_path: Path) -> None:
    """事件 filtered to 车辆通行 lists exactly the seeded passes of the last day; a ``<script>`` source is text.

    Broken on purpose: not passing the form's kind on (``"kinds": None``) listed the thrown objects
    and the shed event too, and this failed; marking the source cell ``| safe`` in the template
    made the seeded ``<script>`` markup (its text gone from the cell), and this failed too.
    """
    async with running_district(tmp_path) as district:
        events = await add_events(district)
        since = utc_now() - timedelta(hours=24)

        def steps() -> tuple[set[str], set[str], str, list[object]]:
            with browser() as driver:
                log_in(driver, district.url, district.tokens["operator"])
                wait_for(driver, "#overview-table")
                driver.get(f"{district.url}/console/events")
                wait_for(driver, "#events")
                everything = event_ids(driver)
                source = driver.find_element(By.CSS_SELECTOR, 'tr[data-event="console-online"] .dialect').text
                driver.find_element(By.CSS_SELECTOR, '#kind option[value="vehicle_pass"]').click()
                driver.find_element(By.ID, "search").click()
                wait_for(driver, '#kind option[value="vehicle_pass"][selected]')
                screenshot(driver, "events")
                return everything, event_ids(driver), source, driver.execute_script("return window.__alerts;")

        everything, passes, source, alerts = await asyncio.to_thread(steps)
        assert everything == {e.event_id for e in events if e.occurred_at >= since}
        assert passes == {
            e.event_id for e in events if e.kind is EventKind.VEHICLE_PASS and e.occurred_at >= since
        }
        assert source == XSS
        assert alerts == []


async def test_plate_lookup_needs_a_reason(tmp_path: Path) -> None:
    """A plate lookup without a reason is refused (Chinese message, audited as refused); with one it answers.

    Broken on purpose: the refusal mapping testing ``exc.field == "reasons"`` (a typo) showed the
    generic "查询条件有误" without the words 查询事由, and this failed.
    """
    async with running_district(tmp_path) as district:
        events = await add_events(district)
        since = utc_now() - timedelta(hours=24)

        def steps() -> tuple[str, set[str], set[str]]:
            with browser() as driver:
                log_in(driver, district.url, district.tokens["operator"])
                wait_for(driver, "#overview-table")
                driver.get(f"{district.url}/console/events")
                wait_for(driver, "#plate")
                driver.find_element(By.ID, "plate").send_keys(PLATE)
                driver.find_element(By.ID, "search").click()
                refusal = wait_for(driver, "#search-error")
                refused_rows = event_ids(driver)
                driver.find_element(By.ID, "reason").send_keys("业主报案车辆刮擦核查")
                driver.find_element(By.ID, "search").click()
                wait_for(driver, '#reason[value="业主报案车辆刮擦核查"]')
                return refusal, refused_rows, event_ids(driver)

        refusal, refused_rows, found = await asyncio.to_thread(steps)
        assert "查询事由" in refusal
        assert "已拒绝" in refusal
        assert refused_rows == set()
        assert found == {
            e.event_id
            for e in events
            if isinstance(e.payload, VehiclePassPayload)
            and e.payload.plate == PLATE
            and e.occurred_at >= since
        }
        lookups = [r for r in await district.audit("events") if r.entry.filters.get("plate") == PLATE]
        assert [(r.entry.outcome, r.entry.status, r.entry.reason) for r in lookups] == [
            ("invalid_query", 400, None),  # the service's refusal code for a missing reason
            ("ok", 200, "业主报案车辆刮擦核查"),
        ]


async def test_csv_export_is_excel_utf8_with_the_formula_guard(tmp_path: Path) -> None:
    """The export is UTF-8 with a BOM, parses to the search's rows, and a cell starting with = is prefixed.

    Broken on purpose: writing the body without ``BOM`` failed the first assertion; joining the
    cells by hand (``",".join``) instead of ``render_csv`` left ``=HYPERLINK(...)`` unguarded (and
    split it at its comma), and this failed.
    """
    async with running_district(tmp_path) as district:
        events = await add_events(district)
        since = utc_now() - timedelta(hours=24)
        session_id = await district.login(district.tokens["viewer"])
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{district.url}/console/events/export.csv",
                params={"kind": "vehicle_pass"},
                headers={"Cookie": f"cgw_console={session_id}"},
            ) as response,
        ):
            status, disposition, body = (
                response.status,
                response.headers["Content-Disposition"],
                await response.read(),
            )
        assert status == 200
        assert disposition.startswith("attachment;")
        assert "filename*=UTF-8''" in disposition
        assert body.startswith(b"\xef\xbb\xbf")
        table = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
        assert table[0] == ["时间", "小区", "设备", "类型", "内容", "来源", "事件编号"]
        assert {r[6] for r in table[1:]} == {
            e.event_id for e in events if e.kind is EventKind.VEHICLE_PASS and e.occurred_at >= since
        }
        assert {r[6]: r[5] for r in table[1:]}["pg-pass-2"] == "'" + FORMULA
        assert not any(cell.startswith(("=", "+", "-", "@")) for r in table[1:] for cell in r)
        reads = await district.audit("events")
        assert [(r.entry.actor, r.entry.channel, r.entry.rows) for r in reads] == [
            ("viewer", "console", len(table) - 1)
        ]


async def test_barrier_window_lists_the_passes_and_a_viewer_has_no_requests(tmp_path: Path) -> None:
    """道闸查询 of the last hour lists compound 1's barrier passes in time order; a viewer has no lookups or requests.

    Broken on purpose: listing the page's passes reversed (newest first, the events page's order)
    failed the order check; giving the page ``Role.VIEWER`` put 道闸查询 in the viewer's navigation
    and let the viewer open it, and this failed too; answering a refused picture request with the
    service's English message only (no ``refusal_zh``) failed the check for 事由; dropping the form's
    ``hx-post`` left the answer on a page of its own (no ``#request-result``), and this failed.
    """
    async with running_district(tmp_path) as district:
        events = await add_events(district)
        since = utc_now() - timedelta(hours=1)

        def operator() -> tuple[list[tuple[str, str, str]], list[str], str]:
            with browser() as driver:
                log_in(driver, district.url, district.tokens["operator"])
                wait_for(driver, "#overview-table")
                driver.get(f"{district.url}/console/barrier")
                wait_for(driver, "#device")
                driver.find_element(By.ID, "device").send_keys(BARRIER)
                driver.find_element(By.ID, "reason").send_keys("业主报案车辆刮擦")
                driver.find_element(By.ID, "search").click()
                wait_for(driver, "#passes")
                rows = [
                    (
                        str(r.get_attribute("data-event")),
                        r.find_element(By.CSS_SELECTOR, ".plate").text,
                        r.find_element(By.CSS_SELECTOR, ".direction").text,
                    )
                    for r in driver.find_elements(By.CSS_SELECTOR, "#passes tr[data-event]")
                ]
                # the pictures held (none: nothing was requested yet), one evidence lookup per pass
                driver.find_element(By.ID, "show-pictures").click()
                wait_for(driver, "#request-pictures")
                held = [
                    c.text
                    for c in driver.find_elements(By.CSS_SELECTOR, "#passes tr[data-event] td:last-child")
                ]
                driver.find_element(By.ID, "request-pictures").click()
                # htmx posts it (with the CSRF header) and shows the answer in the page
                requested = wait_for(driver, "#request-result .message")
                screenshot(driver, "barrier")
                return rows, held, requested

        def viewer() -> tuple[list[str], int, int, str]:
            with browser() as driver:
                log_in(driver, district.url, district.tokens["viewer"])
                wait_for(driver, "#overview-table")
                nav = [
                    str(a.get_attribute("data-page")) for a in driver.find_elements(By.CSS_SELECTOR, ".nav a")
                ]
                driver.get(f"{district.url}/console/events")
                wait_for(driver, "#events")
                lookups = len(driver.find_elements(By.CSS_SELECTOR, "#plate, #person, #reason"))
                requests = len(driver.find_elements(By.CSS_SELECTOR, "#request-pictures, form.request"))
                driver.get(f"{district.url}/console/barrier")
                return nav, lookups, requests, wait_for(driver, "#error-message")

        rows, held, requested = await asyncio.to_thread(operator)
        passes = sorted(
            (
                e
                for e in events
                if e.device_id == BARRIER and e.kind is EventKind.VEHICLE_PASS and e.occurred_at >= since
            ),
            key=lambda e: e.occurred_at,
        )
        assert [r[0] for r in rows] == [e.event_id for e in passes]
        assert [(r[1], r[2]) for r in rows] == [(PLATE, "入"), ("赣B54321", "出"), ("未识别：京?12 34", "入")]
        assert held == ["未调取"] * 3
        assert "请求编号" in requested
        reads = await district.audit("barrier")
        assert [(r.entry.actor, r.entry.outcome, r.entry.reason, r.entry.rows) for r in reads] == [
            ("operator", "ok", "业主报案车辆刮擦", 3),
            ("operator", "ok", "业主报案车辆刮擦", 3),
        ]
        evidence_reads = await district.audit("evidence")
        assert sorted(r.entry.filters["event_id"] for r in evidence_reads) == sorted(
            e.event_id for e in passes
        )
        asked = await district.audit("evidence_barrier")
        assert [
            (r.entry.actor, r.entry.outcome, r.entry.reason, r.entry.filters["device"]) for r in asked
        ] == [("operator", "ok", "业主报案车辆刮擦", BARRIER)]
        # a request without a reason (the form requires one; a forged POST) is refused, in Chinese
        session_id = await district.login(district.tokens["operator"])
        assert session_id is not None
        status, body, _ = await district.request(
            "POST",
            "/console/barrier/request",
            session_id,
            data={
                CSRF_FIELD: csrf_token(session_id),
                "device": BARRIER,
                "since": since.isoformat(),
                "until": utc_now().isoformat(),
                "reason": "",
            },
        )
        assert status == 200
        assert "未能调取" in body
        assert "事由" in body
        asked = await district.audit("evidence_barrier")
        assert [r.entry.outcome for r in asked] == ["ok", "invalid_query"]
        nav, lookups, requests, refusal = await asyncio.to_thread(viewer)
        assert nav == pages_for(Role.VIEWER)
        assert "barrier" not in nav  # no 道闸查询
        assert (lookups, requests) == (0, 0)
        assert (
            "operator" in refusal
        )  # the server refuses the page itself (403), whatever the navigation showed
        refused = await district.audit("console.barrier")
        assert [(r.entry.actor, r.entry.outcome, r.entry.status) for r in refused] == [
            ("viewer", "forbidden", 403)
        ]
