"""The console browser tests' district and browser: ``serve_api`` in the test's loop, headless Chromium.

The district runs for real (``serve_api`` on a free port, an embedded SQLite store seeded with
events, the operations database); the browser is Debian's ``chromium`` driven through Selenium and
``chromedriver``. Selenium blocks, so tests run their browser steps in a thread
(``asyncio.to_thread``) while the server answers in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from device_sims.broker import free_port
from device_sims.inventory import DISTRICT_ID, compound_id
from district.config import DistrictConfig, load_district_config
from district.console import registry as console_registry
from district.operations import AuditRecord, OperationsDb
from district.operator_cli import serve_api
from district.query_model import Role
from foundation.events import (
    DeviceState,
    DeviceStatusPayload,
    Event,
    Provenance,
    Severity,
    ThrownObjectPayload,
    utc_now,
)
from uplink.stores.sqlite import SqliteStore, SqliteStoreConfig

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "console"
WAIT_S = 30  # generous: a loaded CI machine
C1, C2 = compound_id(1), compound_id(2)
ONLINE = "36010400011320000001"  # reported a minute ago
REPORTED_OFFLINE = "36010400011320000002"  # its last word: "offline"
SILENT = "36010400011320000003"  # nothing for three hours
LATE = "36010400011320000004"  # first reports while the page is open
XSS = "<script>window.__xss=1;alert(1)</script>"
"""A dialect name a compound could send: the console must show it as text."""
LOGIN_ATTEMPTS = 3


def _event(
    event_id: str, compound: str, device: str, at: datetime, payload: object, *, dialect: str
) -> Event:
    return Event.model_validate(
        {
            "event_id": event_id,
            "kind": payload.kind,  # type: ignore[attr-defined]
            "district_id": DISTRICT_ID,
            "compound_id": compound,
            "device_id": device,
            "occurred_at": at,
            "received_at": at,
            "severity": Severity.INFO,
            "source": Provenance(vendor="test", dialect=dialect),
            "payload": payload,
        }
    )


def seeded_events() -> list[Event]:
    """Three devices: one online, one that reported itself offline, one silent (offline by silence)."""
    now = utc_now()
    return [
        _event("console-online", C1, ONLINE, now - timedelta(minutes=1), ThrownObjectPayload(), dialect=XSS),
        _event(
            "console-offline",
            C1,
            REPORTED_OFFLINE,
            now - timedelta(minutes=5),
            DeviceStatusPayload(state=DeviceState.OFFLINE, reason="断电"),
            dialect="hik_isapi",
        ),
        _event(
            "console-silent",
            C2,
            SILENT,
            now - timedelta(hours=3),
            ThrownObjectPayload(),
            dialect="dahua_http",
        ),
    ]


def late_event() -> Event:
    """A fourth device's first event (written while a browser shows the page)."""
    return _event("console-late", C2, LATE, utc_now(), ThrownObjectPayload(), dialect="hik_isapi")


def write_config(workdir: Path, *, tls: str = "", api: str = "", sections: str = "") -> DistrictConfig:
    """A district: embedded SQLite store, no broker (the evidence desk off), a low login limit.

    ``sections``: more TOML sections (a ``[broker]`` to publish watch lists to).
    """
    path = workdir / "district.toml"
    registry = "\n".join(
        f'[[compounds]]\nid = "{c}"\nname = "青云小区{i}"\n' for i, c in enumerate((C1, C2), 1)
    )
    path.write_text(
        f'district_id = "{DISTRICT_ID}"\n'
        f'[api]\nops_db = "{workdir}/operations.db"\nport = {free_port()}\n'
        f'timezone = "Asia/Shanghai"\nconsole_login_attempts = {LOGIN_ATTEMPTS}\n{api}\n'
        f"{tls}\n[evidence]\nenabled = false\n"
        f'[store]\ntype = "sqlite"\npath = "{workdir}/district.db"\n{sections}\n\n{registry}',
        encoding="utf-8",
    )
    return load_district_config(path)


@dataclass
class District:
    """The running API and console, tokens by name, and the operations database."""

    config: DistrictConfig
    url: str
    tokens: dict[str, str]
    ops: OperationsDb

    async def audit(self, action: str) -> list[AuditRecord]:
        """The audit entries of one action, oldest first."""
        return [r for r in reversed(await self.ops.audit_records(limit=1000)) if r.entry.action == action]

    async def login(self, token: str) -> str | None:
        """Log in without a browser: the session id the console set, or None if refused."""
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.url}/console/login", data={"token": token}, allow_redirects=False) as response,
        ):
            cookie = response.cookies.get("cgw_console")
            return cookie.value if cookie is not None and response.status == 303 else None

    async def request(
        self, method: str, path: str, session_id: str | None, *, data: dict[str, str] | None = None
    ) -> tuple[int, str, str | None]:
        """One request outside the browser (a forged one): (status, body, Location)."""
        headers = {"Cookie": f"cgw_console={session_id}"} if session_id else {}
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                method, self.url + path, data=data, headers=headers, allow_redirects=False
            ) as response,
        ):
            return response.status, await response.text(), response.headers.get("Location")


@contextlib.asynccontextmanager
async def running_district(
    workdir: Path, *, tls: str = "", api: str = "", sections: str = ""
) -> AsyncIterator[District]:
    """``serve_api`` in this loop on a seeded store, with a token per role (named after it).

    ``tls``: an ``[api.tls]`` section (the API then serves HTTPS); ``api``: more ``[api]`` lines;
    ``sections``: more TOML sections.
    """
    config = write_config(workdir, tls=tls, api=api, sections=sections)
    assert isinstance(config.store, SqliteStoreConfig)
    async with SqliteStore(config.store) as store:
        await store.write(seeded_events())
    async with OperationsDb(config.api.ops_db) as ops:
        tokens = {
            role.value: await ops.create_token(role.value, role, DISTRICT_ID, (), "test") for role in Role
        }
        ready = asyncio.Event()
        task = asyncio.create_task(serve_api(config, ready=ready), name="operator-api")
        try:
            async with asyncio.timeout(WAIT_S):
                await ready.wait()
            scheme = "https" if tls else "http"
            yield District(config, f"{scheme}://127.0.0.1:{config.api.port}", tokens, ops)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def start_browser() -> WebDriver:
    """Headless Chromium at 1366x768 (the smallest screen the console is made for)."""
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--window-size=1366,768",
        "--lang=zh-CN",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    # the page itself 1366x768 (the window size includes the browser's frame)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1366, "height": 768, "deviceScaleFactor": 1, "mobile": False},
    )
    # record alerts instead of blocking on them: a script that ran would leave its trace here
    driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {"source": "window.__alerts = []; window.alert = (m) => window.__alerts.push(String(m));"},
    )
    return driver


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = workdir / "api.crt", workdir / "api.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@contextlib.contextmanager
def browser() -> Iterator[WebDriver]:
    """A browser for the block."""
    driver = start_browser()
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, css: str) -> str:
    """The text of the first element matching ``css``, once it is there."""
    element = WebDriverWait(driver, WAIT_S).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )
    return str(element.text)


def log_in(driver: WebDriver, url: str, token: str) -> None:
    """Fill in the login form and send it."""
    driver.get(f"{url}/console/login")
    wait_for(driver, "#token")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()


def log_in_to(driver: WebDriver, url: str, token: str, path: str = "/devices") -> None:
    """Log in, then open one page (the login itself lands on the first page of the navigation)."""
    log_in(driver, url, token)
    WebDriverWait(driver, WAIT_S).until(lambda d: d.get_cookie("cgw_console") is not None)
    driver.get(f"{url}/console{path}")


def pages_for(role: Role) -> list[str]:
    """The navigation a role should see: the registry's pages it may open, in their order."""
    return [
        p.name for p in sorted(console_registry.PAGES.values(), key=lambda p: p.order) if role.allows(p.role)
    ]


def session_cookie(driver: WebDriver) -> dict[str, object]:
    """The console's session cookie as the browser keeps it."""
    cookie = driver.get_cookie("cgw_console")
    assert cookie is not None, "no session cookie"
    return dict(cookie)


def screenshot(driver: WebDriver, name: str) -> None:
    """Save the page to ``docs/console/<name>.png`` when ``CGW_CONSOLE_SCREENSHOTS=1``."""
    if os.environ.get("CGW_CONSOLE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
