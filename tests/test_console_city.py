"""The console's 上级平台 page in a real browser: the city link's state from a real queue file.

The city service's files are written here as the service would (a ``CityQueue`` with objects, the
city's answers settled, a ``LinkState`` saved; a subscription in the book beside it); the page must
show what was written: registered since when, the last keepalive, the backlog per collection, the
refusal with the city's reason, the subscription. Without ``[city]`` the page says the link is not
configured.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By

from district.city.model import Category, LinkState, ObjectResult, Outcome
from district.city.objects import event_objects
from district.city.queue import CityQueue
from district.city.subscription_book import Subscription, SubscriptionBook, SubscriptionState, book_path
from district.query_model import Role
from foundation.events import utc_now
from tests.city_events import ZONE, city_config, face_access, vehicle_pass
from tests.console_browser import browser, log_in_to, pages_for, running_district, screenshot, wait_for

CITY = """
[city]
server_url = "http://10.0.0.5:8080"
platform_id = "36010400005030000001"
org_code = "360104000000"
password = "secret"
queue_path = "{queue}"

[city.subscriptions]
enabled = true
upper_platform_id = "36000000005030000001"
username = "city-viid"
password = "up-secret"
receive_addresses = ["http://10.0.0.5:8080/VIID/SubscribeNotifications"]
"""
REFUSAL = "StatusCode 6 PlateNo 不合法"
SUBSCRIBE_ID = "360000000000032026120610000000001"


def local(moment: datetime) -> str:
    """A time as the console prints it (the district's zone)."""
    return moment.astimezone(ZONE).strftime("%Y-%m-%d %H:%M:%S")


async def write_city_files(queue_path: Path, now: datetime) -> LinkState:
    """Three vehicles (one accepted, one refused) and a face queued; the link state; one subscription."""
    city = city_config()
    objects = [
        o
        for e in [
            *(vehicle_pass(now - timedelta(minutes=i), plate=f"赣A0000{i}") for i in range(3)),
            face_access(now),
        ]
        for o in event_objects(e, city, ZONE)
    ]
    state = LinkState(
        registered=True,
        registered_at=now - timedelta(hours=2, minutes=3),
        last_keepalive_at=now - timedelta(seconds=17),
        accepted_total=1,
        updated_at=now,
    )
    async with CityQueue(queue_path) as queue:
        assert await queue.add(objects) == 4
        taken = await queue.take(Category.MOTOR_VEHICLE, 10, now)
        await queue.settle(
            [
                ObjectResult(taken[0].seq, Outcome.ACCEPTED),
                ObjectResult(taken[1].seq, Outcome.REFUSED, REFUSAL),
            ],
            now,
        )
        await queue.save_link_state(state)
    async with SubscriptionBook(book_path(queue_path)) as book:
        await book.put(
            Subscription(
                subscribe_id=SUBSCRIBE_ID,
                title="区级车辆订阅",
                details=(13,),
                resource_class=4,
                resources=(),
                begin_at=now - timedelta(days=1),
                end_at=now + timedelta(days=29),
                receive_addr="http://10.0.0.5:8080/VIID/SubscribeNotifications",
                image_declare="-1",
                body={},
                state=SubscriptionState.ACTIVE,
                cursor=0,
                created_at=now,
                updated_at=now,
            )
        )
    return state


async def test_the_city_page_shows_the_link_state_from_the_queue_file(tmp_path: Path) -> None:
    """Registered since, last keepalive, backlog per collection, the refusal and its reason, the subscription.

    Broken on purpose: the query reading the backlog from ``counts.accepted`` instead of
    ``counts.backlog`` showed 1 waiting vehicle instead of 2, and this failed.
    """
    queue_path = tmp_path / "city" / "city-queue.db"
    now = utc_now().replace(microsecond=0)
    state = await write_city_files(queue_path, now)
    sections = CITY.format(queue=queue_path)
    async with running_district(tmp_path, sections=sections) as district:

        def steps() -> dict[str, Any]:
            with browser() as driver:
                log_in_to(driver, district.url, district.tokens["operator"], "/city")
                wait_for(driver, "#city-queue")
                screenshot(driver, "city")

                def cells(row: str) -> list[str]:
                    return [c.text for c in driver.find_elements(By.CSS_SELECTOR, f"{row} td")]

                return {
                    "heading": driver.find_element(By.CSS_SELECTOR, "main h1").text,
                    "registered": driver.find_element(By.ID, "city-registered").text,
                    "keepalive": driver.find_element(By.ID, "city-keepalive").text,
                    "backlog": driver.find_element(By.ID, "city-backlog").text,
                    "refused": driver.find_element(By.ID, "city-refused").text,
                    "vehicles": cells('#city-queue tr[data-category="MotorVehicle"]'),
                    "faces": cells('#city-queue tr[data-category="Face"]'),
                    "refusals": [
                        [c.text for c in row.find_elements(By.CSS_SELECTOR, "td")]
                        for row in driver.find_elements(
                            By.CSS_SELECTOR, "#city-refusals tbody tr[data-object]"
                        )
                    ],
                    "subscription": cells(f'#city-subscriptions tr[data-subscription="{SUBSCRIBE_ID}"]'),
                }

        shown = await asyncio.to_thread(steps)
    assert state.registered_at is not None
    assert state.last_keepalive_at is not None
    assert shown["heading"] == "上级平台"
    assert shown["registered"] == f"已注册 自 {local(state.registered_at)}"
    assert shown["keepalive"] == local(state.last_keepalive_at)
    assert shown["backlog"] == "3"  # two vehicles (the refused one waits to retry) and the face
    assert shown["refused"] == "1"
    assert shown["vehicles"] == ["机动车", "2", "1", "0", "1"]
    assert shown["faces"] == ["人脸", "1", "0", "0", "0"]
    assert len(shown["refusals"]) == 1
    assert shown["refusals"][0][1] == "机动车"
    assert shown["refusals"][0][4] == REFUSAL
    assert shown["subscription"][0] == SUBSCRIBE_ID
    assert shown["subscription"][3] == "订阅中"
    assert shown["subscription"][4] == "http://10.0.0.5:8080/VIID/SubscribeNotifications"
    assert "city" in pages_for(Role.OPERATOR)
    assert "city" not in pages_for(Role.VIEWER)


async def test_without_city_the_page_says_so_and_a_viewer_may_not_open_it(tmp_path: Path) -> None:
    """No ``[city]``: the page says the link is not configured; a viewer is refused (403)."""
    async with running_district(tmp_path) as district:
        operator = await district.login(district.tokens["operator"])
        viewer = await district.login(district.tokens["viewer"])
        status, body, _ = await district.request("GET", "/console/city", operator)
        assert status == 200
        assert 'id="city-unconfigured"' in body
        assert "未配置上级平台" in body
        status, _, _ = await district.request("GET", "/console/city", viewer)
        assert status == 403
        reads = await district.audit("city_status")
        assert [(r.entry.actor, r.entry.outcome) for r in reads] == [("operator", "ok")]
