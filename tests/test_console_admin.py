"""The console's 管理 (Admin) page in a real browser: audit log, tokens, watch lists.

The district runs for real (``serve_api`` on an embedded SQLite store, see ``tests/console_browser.py``);
publishing goes to a real Mosquitto (the ``district_broker`` fixture), and the retained document
is read back from it. Face photos are the shared fixtures (``tests/face_fixtures.py``).
``CGW_CONSOLE_SCREENSHOTS=1`` saves the page to ``docs/console/admin.png``.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import sqlite3
from pathlib import Path

import aiohttp
import aiomqtt
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from device_sims.broker import Mosquitto
from device_sims.inventory import DISTRICT_ID
from district.console.sessions import CSRF_FIELD, csrf_token
from district.operations import AuditRecord
from district.query_model import Role
from tests.console_browser import (
    CHROMEDRIVER,
    CHROMIUM,
    XSS,
    District,
    browser,
    log_in_to,
    pages_for,
    running_district,
    screenshot,
    session_cookie,
    wait_for,
)
from tests.face_fixtures import face_fixtures
from uplink.protocol import watchlist_topic
from uplink.watchlist_document import decode_document

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (scripts/dev test installs them)",
)

FACES = face_fixtures()
SECRET = re.compile(r"cgw_[A-Za-z0-9_\-]{20,}")
REASON = "测试：新值班员入职"


def _texts(driver: WebDriver | WebElement, css: str) -> list[str]:
    return [str(e.text) for e in driver.find_elements(By.CSS_SELECTOR, css)]


def _fill(driver: WebDriver, fields: dict[str, str]) -> None:
    for element_id, value in fields.items():
        element = driver.find_element(By.ID, element_id)
        element.clear()
        element.send_keys(value)


async def _all_audit(district: District) -> list[AuditRecord]:
    return list(reversed(await district.ops.audit_records(limit=10_000)))


async def test_audit_log_filters_pages_and_checks_the_chain(tmp_path: Path) -> None:
    """The audit log as the database holds it, its reading audited, its chain checked.

    Newest first, filtered by actor and outcome; reading it is audited; the chain check reports
    intact, then the entry edited behind SQLite's back.

    Broken on purpose: dropping the ``outcome`` clause in ``audit_records`` listed the viewer's
    successful requests under 结果 forbidden, and the set comparison failed.
    """
    async with running_district(tmp_path) as district:
        # the viewer makes some history: pages read (ok) and the admin page refused (forbidden)
        viewer = await district.login(district.tokens["viewer"])
        for path in ("/console/devices", "/console/admin", "/console/admin"):
            await district.request("GET", path, viewer)

        def steps() -> tuple[list[str], list[str], list[str], str, str, str]:
            with browser() as driver:
                log_in_to(driver, district.url, district.tokens["admin"], "/admin")
                wait_for(driver, "#audit")
                first = [
                    str(r.get_attribute("data-seq"))
                    for r in driver.find_elements(By.CSS_SELECTOR, "#audit tbody tr")
                ]
                _fill(driver, {"audit-actor": "viewer", "audit-outcome": "forbidden"})
                driver.find_element(By.ID, "audit-filter").click()
                wait_for(driver, "#audit-actor[value='viewer']")
                refused = [
                    str(r.get_attribute("data-seq"))
                    for r in driver.find_elements(By.CSS_SELECTOR, "#audit tbody tr")
                ]
                actions = _texts(driver, "#audit td.action")
                before = wait_for(driver, "#chain-status")
                driver.find_element(By.ID, "verify").click()
                intact = wait_for(driver, "#chain-status.chain-ok")
                screenshot(driver, "admin")
                return first, refused, actions, before, intact, str(driver.current_url)

        first, refused, actions, before, intact, _ = await asyncio.to_thread(steps)
        records = await _all_audit(district)
        seqs = [r.seq for r in records]
        assert seqs == list(range(1, len(seqs) + 1))
        # the first page: the 50 entries before the page's own reading (audited after it), newest first
        first_read = next(r.seq for r in records if r.entry.action == "audit")
        assert [int(s) for s in first] == sorted((s for s in seqs if s < first_read), reverse=True)[:50]
        expected = [r.seq for r in records if r.entry.actor == "viewer" and r.entry.outcome == "forbidden"]
        assert sorted(int(s) for s in refused) == expected
        assert len(expected) == 2  # the two refused openings of the admin page
        assert set(actions) == {"console.admin"}
        assert "未校验" in before
        # the walk covered every entry before its own audit entry (sequence numbers start at 1)
        verified = next(r.seq for r in records if r.entry.action == "audit_verify")
        assert intact == f"哈希链完整：已校验 {verified - 1} 条"
        # reading the log is audited: the console's audit reads, with the filters given
        reads = [r.entry for r in records if r.entry.action == "audit"]
        assert {(e.actor, e.channel, e.outcome) for e in reads} == {("admin", "console", "ok")}
        assert {"actor": "viewer", "outcome": "forbidden", "limit": 50} in [e.filters for e in reads]
        assert [r.entry.actor for r in records if r.entry.action == "audit_verify"] == ["admin"]

        # an entry edited behind SQLite's back (its append-only trigger dropped): the check names it
        victim = expected[0]
        with sqlite3.connect(district.config.api.ops_db) as db:
            db.execute("DROP TRIGGER audit_no_update")
            db.execute("UPDATE audit SET outcome = 'ok' WHERE seq = ?", (victim,))

        def check() -> str:
            with browser() as driver:
                log_in_to(driver, district.url, district.tokens["admin"], "/admin?tab=audit&verify=1")
                return wait_for(driver, "#chain-status.chain-broken")

        broken = await asyncio.to_thread(check)
        assert broken.startswith(f"哈希链在第 {victim} 条处断裂")


async def test_tokens_issue_once_render_names_as_text_and_revocation_ends_sessions(tmp_path: Path) -> None:
    """Issue a token (a ``<script>`` in its name), see its secret once, log in with it, revoke it.

    The secret is in no audit entry and not in the database files (only its hash is); the new
    token's console session ends at its next request after the revocation; a change without a
    reason is refused and audited.

    Broken on purpose: turning the console's jinja2 autoescape off put the token name's script
    into the page (the list no longer showed the name as text), and this failed.
    """
    name = f"{XSS}值班员"
    async with running_district(tmp_path) as district:

        def issue() -> tuple[str, list[str], object, str]:
            with browser() as driver:
                log_in_to(driver, district.url, district.tokens["admin"], "/admin?tab=tokens")
                wait_for(driver, "#issue-form")
                _fill(driver, {"token-name": name, "token-reason": REASON})
                Select(driver.find_element(By.ID, "token-role")).select_by_value("operator")
                driver.find_element(By.ID, "issue").click()
                message = wait_for(driver, "p.message")
                driver.get(f"{district.url}/console/admin?tab=tokens")
                names = _texts(driver, "#tokens td.name")
                xss = driver.execute_script("return window.__xss === undefined ? null : window.__xss;")
                return message, names, xss, str(session_cookie(driver)["value"])

        message, names, xss, admin_session = await asyncio.to_thread(issue)
        found = SECRET.findall(message)
        assert len(found) == 1
        assert "只显示这一次" in message
        secret = found[0]
        assert name in names  # the name as text, its script not run
        assert xss is None
        principal = await district.ops.principal(secret)
        assert principal is not None
        assert (principal.name, principal.role, principal.compounds) == (name, Role.OPERATOR, ())

        # the secret is in no audit entry and nowhere in the operations database's files
        records = await _all_audit(district)
        assert all(secret not in r.model_dump_json() for r in records)
        created = [r.entry for r in records if r.entry.action == "token.create"]
        assert [(e.actor, e.outcome, e.reason, e.filters["name"], e.filters["role"]) for e in created] == [
            ("admin", "ok", REASON, name, "operator")
        ]
        ops_db = Path(district.config.api.ops_db)
        for path in ops_db.parent.glob(ops_db.name + "*"):
            assert secret.encode() not in path.read_bytes(), path

        # the new token's console session works until its token is revoked
        session = await district.login(secret)
        assert session is not None
        status, _, _ = await district.request("GET", "/console/devices", session)
        assert status == 200

        # a revocation without a reason is refused (and audited); the token stays live
        form = {CSRF_FIELD: csrf_token(admin_session), "name": name, "reason": ""}
        status, body, _ = await district.request(
            "POST", "/console/admin/revoke_token", admin_session, data=form
        )
        assert status == 400
        assert "必须填写事由" in body
        assert await district.ops.principal(secret) is not None

        def revoke() -> tuple[str, list[str]]:
            with browser() as driver:
                log_in_to(driver, district.url, district.tokens["admin"], "/admin?tab=tokens")
                row = driver.find_element(By.CSS_SELECTOR, f"#tokens tr[data-token='{name}']")
                row.find_element(By.NAME, "reason").send_keys("测试：离职收回")
                row.find_element(By.CSS_SELECTOR, "button.revoke").click()
                message = wait_for(driver, "p.message")
                driver.get(f"{district.url}/console/admin?tab=tokens")
                wait_for(driver, "#tokens")
                return message, _texts(driver, f"#tokens tr[data-token='{name}'] .badge")

        message, badge = await asyncio.to_thread(revoke)
        assert "已吊销" in message
        assert badge[0].startswith("已吊销")
        assert await district.ops.principal(secret) is None
        status, _, location = await district.request("GET", "/console/devices", session)
        assert (status, location) == (303, "/console/login")
        revoked = [
            (r.entry.outcome, r.entry.reason)
            for r in await _all_audit(district)
            if r.entry.action == "token.revoke"
        ]
        assert revoked == [("invalid_query", None), ("ok", "测试：离职收回")]


async def test_watch_lists_enrol_from_an_upload_list_plates_and_publish(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """Enrol from an upload, list and remove plates, publish to the real broker; all audited.

    Only the embedding of the uploaded photo is kept; a photo with two faces is refused in
    Chinese; the retained document on the broker carries the new version and the entries; every
    change is audited with its reason, never the photo.

    Broken on purpose: enrolling through ``analyse_bytes`` without the one-face check enrolled the
    astronaut photo's two faces, and the refusal's assertion failed.
    """
    broker = f'[broker]\nhost = "127.0.0.1"\nport = {district_broker.port}\n'
    photo = FACES / "obama.jpg"
    async with running_district(tmp_path, sections=broker) as district:

        def steps() -> tuple[str, str, str, str, dict[str, list[str]], list[str], object]:
            with browser() as driver:
                log_in_to(driver, district.url, district.tokens["admin"], "/admin?tab=lists")
                wait_for(driver, "#enroll-form")
                _fill(
                    driver,
                    {
                        "enroll-list": "key-persons",
                        "enroll-subject": "A-0001",
                        "enroll-label": XSS,
                        "enroll-reason": "测试：布控录入",
                    },
                )
                driver.find_element(By.ID, "enroll-photo").send_keys(str(photo))
                driver.find_element(By.ID, "enroll").click()
                enrolled = wait_for(driver, "p.message")
                driver.get(f"{district.url}/console/admin?tab=lists")
                _fill(
                    driver,
                    {
                        "enroll-list": "key-persons",
                        "enroll-subject": "C-0001",
                        "enroll-reason": "测试：布控录入",
                    },
                )
                driver.find_element(By.ID, "enroll-photo").send_keys(str(FACES / "astronaut.png"))
                driver.find_element(By.ID, "enroll").click()
                two_faces = wait_for(driver, "p.error, .message")
                for plate in ("赣A12345", "赣B54321"):
                    driver.get(f"{district.url}/console/admin?tab=lists")
                    _fill(
                        driver,
                        {
                            "plate-list": "watched-plates",
                            "plate-plate": plate,
                            "plate-reason": "测试：车辆布控",
                        },
                    )
                    driver.find_element(By.ID, "add-plate").click()
                    wait_for(driver, "p.message")
                driver.get(f"{district.url}/console/admin?tab=lists")
                item = driver.find_element(
                    By.CSS_SELECTOR, "tr[data-entries='watched-plates'] li[data-ref='赣B54321']"
                )
                item.find_element(By.NAME, "reason").send_keys("测试：解除布控")
                item.find_element(By.CSS_SELECTOR, "button.remove").click()
                wait_for(driver, "p.message")
                driver.get(f"{district.url}/console/admin?tab=lists")
                row = driver.find_element(By.CSS_SELECTOR, "#lists tr[data-list='key-persons']")
                row.find_element(By.NAME, "reason").send_keys("测试：发布名单")
                row.find_element(By.CSS_SELECTOR, "button.publish").click()
                published = wait_for(driver, "p.message")
                driver.get(f"{district.url}/console/admin?tab=lists")
                wait_for(driver, "#lists")
                shown = {
                    str(r.get_attribute("data-list")): _texts(r, "td")[:4]
                    for r in driver.find_elements(By.CSS_SELECTOR, "#lists tr[data-list]")
                }
                labels = _texts(driver, "tr[data-entries='key-persons'] .label")
                xss = driver.execute_script("return window.__xss === undefined ? null : window.__xss;")
                return enrolled, two_faces, published, str(driver.current_url), shown, labels, xss

        enrolled, two_faces, published, _, shown, labels, xss = await asyncio.to_thread(steps)
        assert "A-0001" in enrolled
        assert "不保存照片" in enrolled
        assert "恰好有一张人脸" in two_faces
        assert published.startswith("名单 key-persons 已发布第 1 版（1 条）")
        assert shown == {
            "key-persons": ["key-persons", "人脸", "1", "1"],
            "watched-plates": ["watched-plates", "车牌", "0", "1"],
        }
        assert labels == [XSS]
        assert xss is None

        # the retained document on the district broker: version 1, the one subject and its embedding
        topic = watchlist_topic(district.config.ingest.topic_prefix, DISTRICT_ID, "key-persons")
        async with aiomqtt.Client("127.0.0.1", district_broker.port, identifier="admin-test") as client:
            await client.subscribe(topic, qos=1)
            async with asyncio.timeout(30):
                message = await anext(aiter(client.messages))
        assert message.retain
        document = decode_document(bytes(message.payload), district_id=DISTRICT_ID)
        assert (document.version, document.kind) == (1, "face")
        assert [(s.subject_id, s.label, len(s.embeddings)) for s in document.subjects] == [("A-0001", XSS, 1)]

        # the photo is nowhere in the database files (a slice of its bytes would be)
        data = photo.read_bytes()
        ops_db = Path(district.config.api.ops_db)
        for path in ops_db.parent.glob(ops_db.name + "*"):
            assert data[5000:5064] not in path.read_bytes(), path

        records = await _all_audit(district)
        changes = [
            (r.entry.action, r.entry.outcome, r.entry.reason)
            for r in records
            if r.entry.action.startswith("watchlist")
        ]
        assert changes == [
            ("watchlist.enroll", "ok", "测试：布控录入"),
            ("watchlist.enroll", "face_count", "测试：布控录入"),
            ("watchlist.add_plate", "ok", "测试：车辆布控"),
            ("watchlist.add_plate", "ok", "测试：车辆布控"),
            ("watchlist.remove", "ok", "测试：解除布控"),
            ("watchlist.published", "ok", "测试：发布名单"),
            ("watchlist.publish", "ok", "测试：发布名单"),
        ]
        enrol = next(r.entry for r in records if r.entry.action == "watchlist.enroll")
        assert enrol.filters["photo"] == f"<{len(data)} bytes>"
        assert json.dumps(enrol.filters).count("bytes") == 1
        published_entry = next(r.entry for r in records if r.entry.action == "watchlist.published")
        assert (published_entry.filters["list"], published_entry.filters["version"]) == ("key-persons", 1)


async def test_viewers_and_operators_neither_see_nor_use_the_admin_page(tmp_path: Path) -> None:
    """Viewers and operators have no 管理 entry, and the server refuses them the page (audited).

    Opening it or forging its actions (a token, an upload) with a valid CSRF token is refused
    (403) and audited, and nothing changes.

    Broken on purpose: giving the page and its issue action the operator role showed the operator
    the 管理 entry, and this failed (the service, whose spec needs the admin role, still refused
    the forged token: the second line of defence).
    """
    async with running_district(tmp_path) as district:

        def navigation(token: str) -> tuple[list[str], str]:
            with browser() as driver:
                log_in_to(driver, district.url, token, "/admin")
                heading = wait_for(driver, "main")
                nav = [
                    str(a.get_attribute("data-page")) for a in driver.find_elements(By.CSS_SELECTOR, ".nav a")
                ]
                return nav, heading

        for role in (Role.VIEWER, Role.OPERATOR):
            nav, shown = await asyncio.to_thread(navigation, district.tokens[role.value])
            assert nav == pages_for(role)
            assert "admin" not in nav
            assert "admin" in shown  # the refusal says which role the page needs
        admin_nav, _ = await asyncio.to_thread(navigation, district.tokens["admin"])
        assert admin_nav == pages_for(Role.ADMIN)
        assert admin_nav[-1] == "admin"

        before = await district.ops.tokens()
        for role in (Role.VIEWER, Role.OPERATOR):
            session = await district.login(district.tokens[role.value])
            assert session is not None
            status, _, _ = await district.request("GET", "/console/admin?tab=tokens", session)
            assert status == 403
            form = {
                CSRF_FIELD: csrf_token(session),
                "name": "forged",
                "role": "admin",
                "reason": "forged reason",
            }
            status, _, _ = await district.request("POST", "/console/admin/issue_token", session, data=form)
            assert status == 403
            # a forged upload, multipart like the browser's
            upload = aiohttp.FormData()
            for key, value in {
                CSRF_FIELD: csrf_token(session),
                "list_id": "x",
                "subject_id": "x",
                "reason": "forged",
            }.items():
                upload.add_field(key, value)
            upload.add_field(
                "photo", (FACES / "obama-240p.jpg").read_bytes(), filename="p.jpg", content_type="image/jpeg"
            )
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{district.url}/console/admin/enroll",
                    data=upload,
                    headers={"Cookie": f"cgw_console={session}"},
                    allow_redirects=False,
                ) as response,
            ):
                assert response.status == 403
        assert await district.ops.tokens() == before
        refused = {
            (r.entry.action, r.entry.actor, r.entry.status)
            for r in await _all_audit(district)
            if r.entry.status == 403
        }
        for name in ("viewer", "operator"):
            assert {
                ("console.admin", name, 403),
                ("console.admin.issue_token", name, 403),
                ("console.admin.enroll", name, 403),
            } <= refused
        assert not [
            r for r in await _all_audit(district) if r.entry.action.startswith(("token.", "watchlist"))
        ]


async def test_an_upload_that_is_no_picture_or_too_big_is_refused_in_chinese(tmp_path: Path) -> None:
    """Uploads that are no picture or too big are refused in Chinese and enrol nothing.

    Not a picture: 400, audited ``not_a_picture``; over 8 MB: 400 before the service is asked.

    Broken on purpose: an ``upload_limit`` of 0 on the enrol action read the form with the API's
    16 KiB body limit, and even the small text upload was refused with 413, failing this.
    """
    async with running_district(tmp_path) as district:
        session = await district.login(district.tokens["admin"])
        assert session is not None

        async def enrol(data: bytes) -> tuple[int, str]:
            upload = aiohttp.FormData()
            fields = {CSRF_FIELD: csrf_token(session), "list_id": "key-persons", "subject_id": "A-1"}
            for key, value in (fields | {"reason": "测试：录入"}).items():
                upload.add_field(key, value)
            # a stream: aiohttp refuses to serialise a large bytes value in a form
            upload.add_field("photo", io.BytesIO(data), filename="photo.jpg", content_type="image/jpeg")
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{district.url}/console/admin/enroll",
                    data=upload,
                    headers={"Cookie": f"cgw_console={session}"},
                    allow_redirects=False,
                ) as response,
            ):
                return response.status, await response.text()

        status, body = await enrol(b"not a picture at all" * 2000)
        assert status == 400
        assert "无法读取该照片" in body
        status, body = await enrol(b"\xff" * (9 * 1024 * 1024))
        assert status == 400
        assert "上传内容超过 8 MB" in body
        outcomes = [
            r.entry.outcome for r in await _all_audit(district) if r.entry.action == "watchlist.enroll"
        ]
        assert outcomes == ["not_a_picture"]
        status, body, _ = await district.request("GET", "/console/admin?tab=lists", session)
        assert status == 200
        assert 'data-list="key-persons"' not in body
