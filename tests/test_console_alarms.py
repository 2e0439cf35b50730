"""The console's alarm queue in a real browser, against the real pipeline.

A simulated e-bike shed sensor publishes a fire on the compound's Mosquitto; the gateway (in
process) forwards it over its uplink to the district broker, the ingester stores it in the
embedded SQLite store, and ``serve_api`` (with its alarm feed) serves the console that headless
Chromium has open. Nothing in between is a double, except the second compound's evidence sender
(``CompoundDouble``), which sends a snapshot over the district broker exactly as a compound does.

The sound and the notification are observed through a shim injected before the page's scripts
(``Page.addScriptToEvaluateOnNewDocument``): ``HTMLMediaElement.prototype.play`` and
``window.Notification`` record their calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import random
import re
import sqlite3
import struct
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from device_sims.broker import Mosquitto
from device_sims.demo import expected_event_ids
from device_sims.devices import CST, MqttPublish, ShedSim, build_sim
from device_sims.inventory import DISTRICT_ID, sample_devices
from district import operator_cli
from district.alarm_feed import AlarmFeed
from district.console.pages import alarms as alarms_page
from district.console.sessions import CSRF_FIELD, csrf_token
from district.ingester import run_ingester
from district.operations import AuditRecord
from foundation.events import (
    Event,
    EventKind,
    Provenance,
    Severity,
    ThrownObjectPayload,
    TrajectoryPoint,
    utc_now,
)
from gateway.runtime import run_gateway
from tests.conftest import device_client
from tests.console_browser import browser, screenshot
from tests.district_data import running
from tests.evidence_double import C2, CompoundDouble, District, item_of, running_district, seed, write_config
from tests.test_evidence_e2e import _gateway_config

WAIT_S = 60  # generous: the suite shares two cores
CLIP = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40  # bytes standing for a clip
XSS_BUILDING = "<script>window.__xss=1</script>"
EVIDENCE_ALARM = "console-alarm-evidence-0001"
XSS_ALARM = "console-alarm-xss-0001"
CAMERA = "36010400011320000009"
TRAJECTORY = ((0.5, 0.1), (0.52, 0.4), (0.55, 0.9))
SHIM = """
window.__played = []; window.__notes = []; window.__asked = 0;
HTMLMediaElement.prototype.play = function () { window.__played.push(this.currentSrc || this.src); return Promise.resolve(); };
class RecordedNotification {
  constructor(title, options) { window.__notes.push({ title: title, body: (options || {}).body || "" }); }
  static requestPermission() { window.__asked += 1; RecordedNotification.permission = "granted"; return Promise.resolve("granted"); }
}
RecordedNotification.permission = "default";
window.Notification = RecordedNotification;
"""


def png(width: int = 480, height: int = 270) -> bytes:
    """A small grey PNG (a snapshot the browser can decode)."""
    raw = b"".join(b"\x00" + bytes([128] * width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def thrown(event_id: str, at: datetime, *, building: str, trajectory: bool = False) -> Event:
    """A critical thrown-object alarm of compound 2 (written straight into the store)."""
    return Event(
        event_id=event_id,
        kind=EventKind.THROWN_OBJECT,
        district_id=DISTRICT_ID,
        compound_id=C2,
        device_id=CAMERA,
        occurred_at=at,
        received_at=at,
        severity=Severity.CRITICAL,
        source=Provenance(vendor="test", dialect="hightoss-mqtt"),
        payload=ThrownObjectPayload(
            building=building,
            start_floor=12,
            trajectory=tuple(TrajectoryPoint(t_ms=i * 100, x=x, y=y) for i, (x, y) in enumerate(TRAJECTORY))
            if trajectory
            else (),
        ),
    )


def until(driver: WebDriver, check: Callable[[WebDriver], Any], what: str) -> Any:
    """Wait (generously) for ``check`` to return something true."""
    # the queue is swapped in place (a reload after an action): an element read may go stale
    wait = WebDriverWait(
        driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(check, message=what)


def log_in(driver: WebDriver, url: str, token: str) -> None:
    """The login form, filled in and sent."""
    driver.get(f"{url}/console/login")
    until(driver, lambda d: d.find_elements(By.ID, "token"), "the login form")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    until(driver, lambda d: d.get_cookie("cgw_console"), "a session cookie")


def row_of(driver: WebDriver, event_id: str) -> Any:
    """The queue's row of one alarm (or None)."""
    rows = driver.find_elements(By.CSS_SELECTOR, f'#queue tr[data-event="{event_id}"]')
    return rows[0] if rows else None


def _row_there(event_id: str) -> Callable[[WebDriver], Any]:
    return lambda driver: row_of(driver, event_id)


def act(driver: WebDriver, event_id: str, step: str, note: str) -> None:
    """Fill in the row's note and press one of its lifecycle buttons."""
    row = until(driver, lambda d: row_of(d, event_id), f"the row of {event_id}")
    note_box = row.find_element(By.CSS_SELECTOR, "input.note")
    note_box.clear()
    note_box.send_keys(note)
    row.find_element(By.CSS_SELECTOR, f"button.step-{step}").click()


def state_of(driver: WebDriver, event_id: str) -> str | None:
    """The state text of the alarm's row."""
    row = row_of(driver, event_id)
    return str(row.find_element(By.CSS_SELECTOR, ".state").text) if row else None


async def audit(district: District, action: str) -> list[AuditRecord]:
    """The audit entries of one action, oldest first."""
    records = await district.ops.audit_records(limit=2000)
    return [r for r in reversed(records) if r.entry.action == action]


async def session_of(url: str, token: str) -> str:
    """Log in outside the browser; the session id."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/console/login", data={"token": token}, allow_redirects=False) as response,
    ):
        cookie = response.cookies.get("cgw_console")
        assert response.status == 303
        assert cookie is not None
        return cookie.value


async def post(url: str, path: str, session_id: str, data: dict[str, str]) -> tuple[int, str]:
    """A POST with the session's cookie (a forged request: outside any page)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url + path, data=data, headers={"Cookie": f"cgw_console={session_id}"}, allow_redirects=False
        ) as response,
    ):
        return response.status, await response.text()


def month_confirmed(driver: WebDriver, url: str) -> tuple[int, int]:
    """The statistics page's confirmed alarms of this month: (headline, the month table's total)."""
    driver.get(f"{url}/console/statistics")
    until(driver, lambda d: d.find_elements(By.ID, "stat-table"), "the statistics page")
    return (
        int(driver.find_element(By.ID, "confirmed-this-month").text),
        int(driver.find_element(By.CSS_SELECTOR, "#stat-table tfoot .confirmed").text),
    )


def _shed() -> ShedSim:
    sim = build_sim(next(d for d in sample_devices() if d.dialect == "shed-mqtt"))
    assert isinstance(sim, ShedSim)
    return sim


@pytest.mark.slow
async def test_alarm_queue_live_actions_and_evidence(
    tmp_path: Path, mosquitto: Mosquitto, district_broker: Mosquitto
) -> None:
    """A shed fire appears live with sound and notification; the lifecycle moves; viewers cannot act.

    * the fire from the simulator appears at the top of the open queue without a reload (a marker
      set on the window before survives), the sound played once and a notification carried its
      device, after the click that asked for permission;
    * a thrown-object alarm whose building is ``<script>`` arrives through the stream as text: no
      script element in the queue, the script never ran;
    * a note too short is refused and the reason shown on the status line (audited);
    * acknowledge then confirm with notes: the row's state follows and the month's confirmed
      count goes up by exactly one, on the alarms page and on the statistics page (its headline
      and its month table); the audit log holds both steps with their notes;
    * the alarm page: history, the snapshot shown (through ``evidence_media``) only after a
      reason, with the trajectory's polyline, and the clip requested with a reason (audited);
    * a viewer sees no action buttons and a forged resolve of the confirmed fire (valid session and CSRF token) is
      refused 403 and audited; the alarm's state does not change.

    Broken on purpose once each: with ``autoescape=False`` in the console's environment the XSS
    assertion failed (``window.__xss`` was 1); with the feed task not started in ``serve_api`` the
    wait for the fire's row timed out; with ``announce`` not called in alarms.js the sound and
    notification lists were empty; with the viewer given the operator's ``steps`` in ``row`` the
    button assertion failed; with the action's role set to viewer the forged resolve reached
    ``alarm_action`` and the audit assertion failed (a first version forged it on a malformed
    event id and got 400 for the wrong reason: it now uses the fire's real id); with the media
    shown without the reason form (``{% if true %}`` in alarm.html) the "no snapshot before a
    reason" assertion failed. With the statistics page's month rows not adding the confirmed
    alarms, the statistics assertion failed ((1, 0) against (1, 1)).
    """
    config_dir = tmp_path / "district"
    config_dir.mkdir()
    district_config = write_config(config_dir, district_broker.port)
    now = utc_now()
    await seed(
        district_config,
        [thrown(EVIDENCE_ALARM, now - timedelta(hours=1), building="7幢", trajectory=True)],
    )
    shed = _shed()
    snapshot = png()
    config = _gateway_config(tmp_path, mosquitto, district_broker, "http://127.0.0.1:9")
    async with (
        running(lambda ready: run_ingester(district_config, ready=ready), "ingester"),
        running_district(district_config) as district,
        running(lambda ready: run_gateway(config, ready=ready), "gateway"),
        CompoundDouble(C2, district_broker.port).online() as compound,
    ):
        await compound.send_file(item_of(EVIDENCE_ALARM, "snapshot", snapshot, "image/png"), snapshot, None)
        compound.files[EVIDENCE_ALARM] = [("clip", CLIP)]  # what the compound sends when asked
        await district.wait_held(EVIDENCE_ALARM, 1, timeout=WAIT_S)
        fire = shed.alarm(datetime.now(CST), random.Random(3))
        assert isinstance(fire, MqttPublish)
        fire_ids = expected_event_ids(config, [fire])
        store_path = config_dir / "district.db"
        loop = asyncio.get_running_loop()

        def in_loop(coroutine: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result(WAIT_S * 2)

        def operator_steps() -> str:
            with browser() as driver:
                driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": SHIM})
                log_in(driver, district.url, district.tokens["operator"])
                stats_before = month_confirmed(driver, district.url)
                driver.get(f"{district.url}/console/alarms")
                until(driver, lambda d: row_of(d, EVIDENCE_ALARM), "the seeded alarm in the queue")
                until(driver, lambda d: "正常" in d.find_element(By.ID, "live-state").text, "the stream open")
                confirmed_before = int(driver.find_element(By.ID, "confirmed-month").text)
                driver.find_element(By.ID, "enable-notifications").click()
                until(driver, lambda d: d.execute_script("return window.__asked") == 1, "permission asked")
                driver.execute_script("window.__marker = 'no reload';")

                # the fire, from the simulated sensor through the whole pipeline
                in_loop(_publish(mosquitto, shed, fire))
                critical = in_loop(_critical_stored(store_path, fire_ids))
                assert critical, "the fire stored no alarm"
                fire_id = str(critical[0])
                for event_id in critical:
                    new = until(driver, _row_there(event_id), "the fire's row, inserted live")
                    assert new.find_element(By.CSS_SELECTOR, ".kind").text == "电动车棚火警"
                    assert new.find_element(By.CSS_SELECTOR, ".device").text == shed.device.id
                assert driver.execute_script("return window.__marker") == "no reload"
                top = driver.find_elements(By.CSS_SELECTOR, "#queue tr")[: len(critical)]
                assert {r.get_attribute("data-event") for r in top} == set(critical)
                until(
                    driver,
                    lambda d: len(d.execute_script("return window.__notes")) == len(critical),
                    "a notification per alarm",
                )
                played = driver.execute_script("return window.__played")
                assert played == [f"{district.url}/console/static/alarm.wav"] * len(critical)
                notes = driver.execute_script("return window.__notes")
                assert {n["title"] for n in notes} == {"新告警"}
                assert all(shed.device.id in n["body"] for n in notes), notes
                screenshot(driver, "alarms")

                # a hostile field, inserted by the stream: text, never markup
                in_loop(seed(district_config, [thrown(XSS_ALARM, utc_now(), building=XSS_BUILDING)]))
                hostile = until(driver, lambda d: row_of(d, XSS_ALARM), "the hostile alarm, inserted live")
                assert XSS_BUILDING in hostile.find_element(By.CSS_SELECTOR, ".what").text
                assert driver.find_elements(By.CSS_SELECTOR, "#queue script") == []
                assert driver.execute_script("return window.__xss") is None
                assert driver.execute_script("return window.__alerts") == []
                until(
                    driver,
                    lambda d: len(d.execute_script("return window.__notes")) == len(critical) + 1,
                    "the hostile alarm's notification",
                )
                hostile_note = driver.execute_script("return window.__notes")[-1]["body"]
                assert XSS_BUILDING in hostile_note

                # acknowledge, then confirm: the state follows, the month's count goes up by one
                act(driver, fire_id, "acknowledge", "短")  # a note too short
                until(
                    driver,
                    lambda d: "操作未完成（400）" in d.find_element(By.ID, "live-state").text,
                    "the refusal's reason shown",
                )
                assert "note" in driver.find_element(By.ID, "live-state").text
                assert state_of(driver, fire_id) == "新告警"
                act(driver, fire_id, "acknowledge", "值班员已到场查看")
                until(driver, lambda d: state_of(d, fire_id) == "已接警", "acknowledged")
                act(driver, fire_id, "confirm", "确认起火 已通知消防")
                until(driver, lambda d: state_of(d, fire_id) == "已确认", "confirmed")
                until(
                    driver,
                    lambda d: d.find_element(By.ID, "confirmed-month").text == str(confirmed_before + 1),
                    "the month's confirmed count up by one",
                )
                # the statistics page too: this month's confirmed alarms, headline and table, one more
                assert month_confirmed(driver, district.url) == (stats_before[0] + 1, stats_before[1] + 1)

                # the alarm's page: media only after a reason, the trajectory over the frame
                driver.get(f"{district.url}/console/alarms")
                until(driver, lambda d: row_of(d, EVIDENCE_ALARM), "the queue")
                row_of(driver, EVIDENCE_ALARM).find_element(By.CSS_SELECTOR, "a.detail").click()
                until(driver, lambda d: d.find_elements(By.ID, "reason-form"), "the reason form")
                assert driver.find_elements(By.ID, "snapshot") == []
                driver.find_element(By.ID, "reason").send_keys("核查7幢抛物 楼层")
                driver.find_element(By.ID, "show-media").click()
                until(
                    driver,
                    lambda d: (
                        d.execute_script(
                            "const i = document.getElementById('snapshot'); return i && i.complete && i.naturalWidth"
                        )
                        == 480
                    ),
                    "the snapshot decoded",
                )
                points = driver.find_element(By.CSS_SELECTOR, "#trajectory polyline").get_attribute("points")
                assert points == " ".join(f"{x * 1000:.1f},{y * 1000:.1f}" for x, y in TRAJECTORY)
                driver.find_element(By.ID, "clip-reason").send_keys("调取录像 核查抛物")
                driver.find_element(By.ID, "request-clip").click()
                until(
                    driver,
                    lambda d: [
                        r.text
                        for r in d.find_elements(By.CSS_SELECTOR, "#requests tbody tr")
                        if "operator" in r.text
                    ],
                    "the clip request listed after the page reloaded",
                )

                def clip_shown(d: WebDriver) -> Any:
                    if d.find_elements(By.ID, "clip"):
                        return d.find_element(By.ID, "clip").get_attribute("src")
                    d.refresh()
                    return None

                clip_src = until(driver, clip_shown, "the clip, once the compound sent it")
                assert f"sha={hashlib.sha256(CLIP).hexdigest()}" in clip_src
                assert driver.find_elements(By.ID, "request-clip") == []  # held: nothing to ask for
                states = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#requests .request-state")]
                assert states == ["已到达"]  # the request's state in the operators' words
                screenshot(driver, "alarm-detail")
                return fire_id

        fire_id = await asyncio.to_thread(operator_steps)

        steps = [
            (r.entry.actor, r.entry.reason, r.entry.outcome) for r in await audit(district, "alarm_action")
        ]
        assert steps == [
            ("operator", "短", "invalid_query"),
            ("operator", "值班员已到场查看", "ok"),
            ("operator", "确认起火 已通知消防", "ok"),
        ]
        # the media route without a reason: refused by evidence_media, and audited
        operator = await session_of(district.url, district.tokens["operator"])
        no_reason = f"/console/alarms/media?id={EVIDENCE_ALARM}&sha={hashlib.sha256(snapshot).hexdigest()}"
        async with (
            aiohttp.ClientSession() as http,
            http.get(district.url + no_reason, headers={"Cookie": f"cgw_console={operator}"}) as response,
        ):
            assert response.status == 400
        media = await audit(district, "evidence_media")
        assert {(r.entry.actor, r.entry.reason, r.entry.outcome) for r in media} == {
            ("operator", "核查7幢抛物 楼层", "ok"),
            ("operator", None, "invalid_query"),
        }
        asked = [(r.entry.actor, r.entry.reason) for r in await audit(district, "evidence_request")]
        assert asked == [("operator", "调取录像 核查抛物")]

        # a viewer: no buttons; a forged acknowledge with a valid session and CSRF token is refused
        def viewer_steps() -> None:
            with browser() as driver:
                log_in(driver, district.url, district.tokens["viewer"])
                driver.get(f"{district.url}/console/alarms")
                until(driver, lambda d: row_of(d, XSS_ALARM), "the queue")
                assert driver.find_elements(By.CSS_SELECTOR, "#queue button, form.alarm-action") == []

        await asyncio.to_thread(viewer_steps)
        viewer = await session_of(district.url, district.tokens["viewer"])
        status, _ = await post(
            district.url,
            "/console/alarms/resolve",
            viewer,
            {CSRF_FIELD: csrf_token(viewer), "event_id": fire_id, "note": "伪造的处置完毕请求"},
        )
        assert status == 403
        refused = await audit(district, "console.alarms.resolve")
        assert [(r.entry.actor, r.entry.status) for r in refused] == [("viewer", 403)]
        assert [r.entry.reason for r in await audit(district, "alarm_action")] == [
            "短",
            "值班员已到场查看",
            "确认起火 已通知消防",
        ]


async def _critical_stored(store_path: Path, event_ids: set[str]) -> list[str]:
    """Once every id is stored: the critical ones (the alarms), oldest first."""

    def read() -> list[tuple[str, str]]:
        marks = ",".join("?" * len(event_ids))
        with contextlib.closing(sqlite3.connect(store_path)) as db:
            return db.execute(
                f"SELECT event_id, json_extract(body, '$.severity') FROM events WHERE event_id IN ({marks})"
                " ORDER BY time_ns",
                tuple(event_ids),
            ).fetchall()

    async with asyncio.timeout(WAIT_S):
        while len(rows := await asyncio.to_thread(read)) < len(event_ids):
            await asyncio.sleep(0.1)
    return [event_id for event_id, severity in rows if severity == "critical"]


async def _publish(broker: Mosquitto, sim: ShedSim, message: MqttPublish) -> None:
    async with device_client(broker.port, sim.device) as client:
        await client.publish(message.topic, message.payload, qos=1)


async def test_alarm_stream_ends_with_the_session(
    tmp_path: Path, district_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SSE stream refuses a request without a session, and ends (saying so) when the token is revoked.

    Heartbeat comments arrive while nothing happens; after ``revoke_token`` the next heartbeat's
    session check ends the stream with an ``ended`` event and the connection closes.

    Broken on purpose once: with the ``alive()`` check removed from the heartbeat branch the
    stream kept sending heartbeats after the revocation and the wait for its end timed out.
    """
    monkeypatch.setattr(alarms_page, "HEARTBEAT_S", 0.3)
    config_dir = tmp_path / "district"
    config_dir.mkdir()
    district_config = write_config(config_dir, district_broker.port)
    async with running_district(district_config) as district:
        url = f"{district.url}/console/alarms/stream"
        async with aiohttp.ClientSession() as http, http.get(url, allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/console/login"
        session_id = await session_of(district.url, district.tokens["viewer"])
        headers = {"Cookie": f"cgw_console={session_id}"}
        async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            seen: list[bytes] = []
            async with asyncio.timeout(WAIT_S):
                while b": heartbeat\n" not in seen:
                    seen.append(await response.content.readline())
                assert await district.ops.revoke_token("viewer")
                rest = await response.content.read()  # to the end: the server closes the stream
            assert rest.endswith(b"event: ended\ndata: \n\n")
        ended = await audit(district, "console.session_end")
        assert [(r.entry.actor, r.entry.outcome) for r in ended] == [("viewer", "revoked")]


async def test_a_stalled_queue_is_told_what_it_missed_and_filters_apply(
    tmp_path: Path, district_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alarms dropped from a full per-connection queue arrive as a ``missed`` count; the filters narrow the queue.

    The feed's per-connection queue holds one alarm here: three alarms in one poll leave the newest
    and a ``missed`` of 2 before it (the page reloads the queue on it). The page's filters by
    state, kind and compound give exactly the matching rows; an unknown compound is refused (400).

    Broken on purpose once: without the ``missed`` write in the stream the first event read was
    the alarm itself and the assertion on ``event: missed`` failed.
    """
    monkeypatch.setattr(operator_cli, "AlarmFeed", functools.partial(AlarmFeed, queue_size=1, poll_s=0.2))
    config_dir = tmp_path / "district"
    config_dir.mkdir()
    district_config = write_config(config_dir, district_broker.port)
    async with running_district(district_config) as district:
        session_id = await session_of(district.url, district.tokens["viewer"])
        headers = {"Cookie": f"cgw_console={session_id}"}
        now = utc_now()
        burst = [
            thrown(f"console-burst-000{i}", now + timedelta(seconds=i), building=f"{i}幢") for i in (1, 2, 3)
        ]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{district.url}/console/alarms/stream", headers=headers) as response,
        ):
            assert await response.content.readuntil(b"\n\n") == b": connected\n\n"
            await seed(district_config, burst)
            events: list[tuple[str, str]] = []
            async with asyncio.timeout(WAIT_S):
                while len(events) < 2:
                    block = (await response.content.readuntil(b"\n\n")).decode()
                    if block.startswith(":"):
                        continue
                    name = block.split("\n", 1)[0].removeprefix("event: ")
                    events.append((name, block))
        assert [name for name, _ in events] == ["missed", "alarm"]
        assert "data: 2\n" in events[0][1]
        assert 'data-event="console-burst-0003"' in events[1][1]

        async def rows(query: str) -> tuple[int, set[str]]:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{district.url}/console/alarms?{query}", headers=headers) as response,
            ):
                body = await response.text()
            return response.status, set(re.findall(r'data-event="([^"]+)"', body))

        everything = {e.event_id for e in burst}
        assert await rows("") == (200, everything)
        assert await rows("state=new") == (200, everything)
        assert await rows("state=confirmed") == (200, set())
        assert await rows("kind=ebike_shed") == (200, set())
        assert await rows(f"kind=thrown_object&compound={C2}") == (200, everything)
        assert (await rows("compound=36010400012160009999"))[0] == 400
