"""The console's 统计 page in a real browser (headless Chromium) on a real store and operations database.

The district runs for real (``serve_api`` on an embedded SQLite store, ``tests/console_browser.py``);
this file writes events over this local month and the two before it, and records alarm steps in
the operations database. Every figure the page must show is recounted here from the events the
store holds (read back from its file) and the steps taken here, never from the code under test.
``CGW_CONSOLE_SCREENSHOTS=1`` saves the page to ``docs/console/statistics.png``.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Collection
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from device_sims.inventory import DISTRICT_ID
from district.console.pages.overview import KIND_ZH
from district.console.pages.statistics import add_months
from district.query_model import AlarmState
from foundation.events import (
    EbikeShedPayload,
    Event,
    EventKind,
    Provenance,
    Severity,
    ShedCondition,
    ThrownObjectPayload,
    utc_now,
)
from tests.console_browser import (
    C1,
    C2,
    CHROMEDRIVER,
    CHROMIUM,
    District,
    browser,
    log_in_to,
    running_district,
    screenshot,
    wait_for,
)
from uplink.stores.sqlite import SqliteStore, SqliteStoreConfig

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (scripts/dev test installs them)",
)

CST = ZoneInfo("Asia/Shanghai")
CAMERA = {C1: "36010400011320000031", C2: "36010400021320000032"}
PATHS: tuple[tuple[AlarmState, ...], ...] = (
    (),
    (AlarmState.ACKNOWLEDGED,),
    (AlarmState.ACKNOWLEDGED, AlarmState.CONFIRMED),
    (AlarmState.ACKNOWLEDGED, AlarmState.FALSE_ALARM),
    (AlarmState.ACKNOWLEDGED, AlarmState.CONFIRMED, AlarmState.RESOLVED),
)
Figures = dict[str, int]


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=CST)


def generated(now: datetime, seed: int = 40) -> list[Event]:
    """Events of both compounds over this local month (up to now) and the two months before."""
    rng = random.Random(seed)
    this_month = now.astimezone(CST).date().replace(day=1)
    events: list[Event] = []
    for first in (add_months(this_month, -2), add_months(this_month, -1), this_month):
        start = midnight(first)
        end = min(midnight(add_months(first, 1)), now - timedelta(minutes=1))
        if end <= start:  # the month's first minute: nothing of it has happened yet
            continue
        for compound in (C1, C2):
            for _ in range(rng.randint(15, 30)):
                at = start + (end - start) * rng.random()
                thrown = rng.random() < 0.6
                events.append(
                    Event(
                        event_id=f"5a7c{len(events):08x}",
                        kind=EventKind.THROWN_OBJECT if thrown else EventKind.EBIKE_SHED,
                        district_id=DISTRICT_ID,
                        compound_id=compound,
                        device_id=CAMERA[compound],
                        occurred_at=at,
                        received_at=at,
                        severity=Severity.CRITICAL if rng.random() < 0.5 else Severity.INFO,
                        source=Provenance(vendor="test", dialect="test"),
                        payload=ThrownObjectPayload()
                        if thrown
                        else EbikeShedPayload(condition=ShedCondition.FIRE_ALARM),
                    )
                )
    return events


async def seed(district: District) -> tuple[list[Event], dict[str, tuple[AlarmState, ...]]]:
    """Write the events and record alarm steps; every event the store holds, and the steps taken."""
    now = utc_now()
    assert isinstance(district.config.store, SqliteStoreConfig)
    mine = generated(now)
    async with SqliteStore(district.config.store) as store:
        await store.write(mine)
    rng = random.Random(41)
    taken: dict[str, tuple[AlarmState, ...]] = {}
    for e in mine:
        if e.severity is Severity.CRITICAL:
            taken[e.event_id] = rng.choice(PATHS)
            for step in taken[e.event_id]:
                await district.ops.move_alarm(
                    e.event_id,
                    e.compound_id,
                    step,
                    "tester",
                    "seeded",
                    kind=e.kind.value,
                    occurred_at=e.occurred_at,
                )
    assert {AlarmState.CONFIRMED, AlarmState.RESOLVED} <= {s for p in taken.values() for s in p}
    with sqlite3.connect(district.config.store.path) as db:
        stored = [Event.model_validate_json(body) for (body,) in db.execute("SELECT body FROM events")]
    return stored, taken


def expected(
    events: list[Event],
    taken: dict[str, tuple[AlarmState, ...]],
    periods: list[date],
    *,
    by_month: bool,
    compounds: Collection[str] = (C1, C2),
) -> dict[str, Figures]:
    """Per local day (or month, ``by_month``) of ``periods``: events per kind and the alarms' outcomes."""
    rows: dict[str, Figures] = {
        p.isoformat(): {**dict.fromkeys(KIND_ZH, 0), "alarms": 0, "confirmed": 0, "false_alarm": 0, "open": 0}
        for p in periods
    }
    for e in events:
        local = e.occurred_at.astimezone(CST).date()
        row = rows.get((local.replace(day=1) if by_month else local).isoformat())
        if row is None or e.compound_id not in compounds:
            continue
        row[e.kind.value] += 1
        if e.severity is Severity.CRITICAL:
            steps = taken.get(e.event_id, ())
            row["alarms"] += 1
            row["confirmed"] += AlarmState.CONFIRMED in steps
            row["false_alarm"] += AlarmState.FALSE_ALARM in steps
            row["open"] += AlarmState.RESOLVED not in steps
    return rows


def shown(driver: WebDriver) -> dict[str, Figures]:
    """The table's rows as read off the page."""
    rows: dict[str, Figures] = {}
    for tr in driver.find_elements(By.CSS_SELECTOR, "#stat-table tbody tr[data-period]"):
        figures = {
            str(td.get_attribute("data-kind")): int(td.text)
            for td in tr.find_elements(By.CSS_SELECTOR, "td[data-kind]")
        }
        for name, css in (
            ("alarms", ".alarms"),
            ("confirmed", ".confirmed"),
            ("false_alarm", ".false-alarm"),
            ("open", ".open"),
        ):
            figures[name] = int(tr.find_element(By.CSS_SELECTOR, css).text)
        rows[str(tr.get_attribute("data-period"))] = figures
    return rows


def headline(driver: WebDriver) -> tuple[int, int]:
    return int(driver.find_element(By.ID, "thrown-year").text), int(
        driver.find_element(By.ID, "confirmed-this-month").text
    )


def days_of(first: date, today: date) -> list[date]:
    out, at = [], first
    while at < add_months(first, 1) and at <= today:
        out.append(at)
        at += timedelta(days=1)
    return out


async def test_statistics_month_and_year_views_show_what_was_stored(tmp_path: Path) -> None:
    """This month per day, the month before (上月), the year per month (按年查看), one compound: as stored.

    The headline: the confirmed thrown-object alarms of this year and the confirmed alarms of this
    month. Broken on purpose: the page's alarm rows keyed by UTC day (``_key`` without
    ``ctx.local``) moved the alarms of 00:00-08:00 local to the day before and the month view's
    comparison failed; the headline summing every kind's confirmed alarms failed the thrown count.
    """
    async with running_district(tmp_path) as district:
        events, taken = await seed(district)
        today = utc_now().astimezone(CST).date()
        this_month = today.replace(day=1)
        before = add_months(this_month, -1)
        all_months = [date(today.year, n, 1) for n in range(1, today.month + 1)]

        def steps() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with browser() as driver:
                log_in_to(driver, district.url, district.tokens["viewer"], "/statistics")
                wait_for(driver, "#stat-table")
                seen["title"] = driver.find_element(By.CSS_SELECTOR, "main h1").text
                seen["nav"] = driver.find_element(
                    By.CSS_SELECTOR, '.nav a[data-page="statistics"]'
                ).get_attribute("class")
                seen["month"] = shown(driver)
                seen["headline"] = headline(driver)
                screenshot(driver, "statistics")
                driver.find_element(By.ID, "prev").click()
                wait_for(driver, f'#stat-table tr[data-period="{before.isoformat()}"]')
                seen["before"] = shown(driver)
                driver.find_element(By.ID, "switch-view").click()
                wait_for(driver, '#stat-period[data-by="year"]')
                seen["year"] = shown(driver)
                driver.get(f"{district.url}/console/statistics?year={today.year}&compound={C1}")
                wait_for(driver, '#stat-period[data-by="year"]')
                seen["year_c1"] = shown(driver)
                seen["headline_c1"] = headline(driver)
                driver.get(f"{district.url}/console/statistics?month=2026-13")
                seen["bad"] = wait_for(driver, "main")
            return seen

        seen = await asyncio.to_thread(steps)
        assert seen["title"] == "统计"
        assert "current" in str(seen["nav"])
        assert seen["month"] == expected(events, taken, days_of(this_month, today), by_month=False)
        assert seen["before"] == expected(events, taken, days_of(before, today), by_month=False)
        assert seen["year"] == expected(events, taken, all_months, by_month=True)
        assert seen["year_c1"] == expected(events, taken, all_months, by_month=True, compounds={C1})
        assert any(r["confirmed"] for r in seen["month"].values()) or any(
            r["confirmed"] for r in seen["before"].values()
        )

        def confirmed(compounds: Collection[str], *, thrown: bool, month: bool) -> int:
            return sum(
                1
                for e in events
                if e.compound_id in compounds
                and AlarmState.CONFIRMED in taken.get(e.event_id, ())
                and e.occurred_at.astimezone(CST).year == today.year
                and (not thrown or e.kind is EventKind.THROWN_OBJECT)
                and (not month or e.occurred_at.astimezone(CST).date().replace(day=1) == this_month)
            )

        assert seen["headline"] == (
            confirmed((C1, C2), thrown=True, month=False),
            confirmed((C1, C2), thrown=False, month=True),
        )
        assert seen["headline_c1"] == (
            confirmed((C1,), thrown=True, month=False),
            confirmed((C1,), thrown=False, month=True),
        )
        assert seen["headline"][0] > 0
        assert "month" in seen["bad"]  # the refusal names the field
        reads = await district.audit("alarm_counts")
        assert {(r.entry.actor, r.entry.channel) for r in reads} == {("viewer", "console")}
