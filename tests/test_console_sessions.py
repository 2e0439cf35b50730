"""Console sessions without a browser: expiry, idle timeout, the bounded session and login tables.

The district runs for real (``serve_api`` on a seeded SQLite store, the operations database);
the requests are aiohttp's. The browser tests are ``tests/test_console_browser.py``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from district.console.sessions import LoginLimiter, new_session_id, seal_token, session_hash
from district.operations import OperationsDb
from district.query_model import Role
from tests.console_browser import running_district


async def test_a_session_ends_after_its_lifetime(tmp_path: Path) -> None:
    """A session older than ``console_session_hours`` opens nothing, and its end is audited as expired.

    Broken on purpose: ``touch_session`` without the ``expires_at`` check kept it open (200), and this failed.
    """
    # 0.0005 h = 1.8 s; the idle limit stays long, so only the lifetime can end it
    async with running_district(tmp_path, api="console_session_hours = 0.0005") as district:
        session_id = await district.login(district.tokens["viewer"])
        assert session_id is not None
        status, _, _ = await district.request("GET", "/console/devices", session_id)
        assert status == 200
        await asyncio.sleep(2.5)
        status, _, location = await district.request("GET", "/console/devices", session_id)
        assert (status, location) == (303, "/console/login")
        ended = await district.audit("console.session_end")
        assert [(r.entry.actor, r.entry.outcome) for r in ended] == [("viewer", "expired")]
        assert await district.ops.session_count() == 0


async def test_a_session_unused_for_the_idle_time_ends_and_use_keeps_it_alive(tmp_path: Path) -> None:
    """Requests keep a session alive past the idle limit; a pause longer than it ends the session (audited idle).

    Broken on purpose: not updating ``last_seen`` in ``touch_session`` ended the session that was
    in use, and this failed.
    """
    # 0.03 min = 1.8 s
    async with running_district(tmp_path, api="console_idle_minutes = 0.03") as district:
        session_id = await district.login(district.tokens["operator"])
        assert session_id is not None
        for _ in range(4):  # 4 x 0.8 s: longer than the idle limit in all, never idle for it
            await asyncio.sleep(0.8)
            status, _, _ = await district.request("GET", "/console/devices", session_id)
            assert status == 200
        await asyncio.sleep(2.5)
        status, _, location = await district.request("GET", "/console/devices", session_id)
        assert (status, location) == (303, "/console/login")
        ended = await district.audit("console.session_end")
        assert [(r.entry.actor, r.entry.outcome) for r in ended] == [("operator", "idle")]


async def test_the_session_table_is_bounded(tmp_path: Path) -> None:
    """Beyond ``max_sessions`` the least recently used sessions are deleted; a revoked token opens none.

    Broken on purpose: leaving out the ``OFFSET`` delete let the table grow to 5 rows, and this failed.
    """
    async with OperationsDb(tmp_path / "operations.db") as ops:
        token = await ops.create_token("viewer", Role.VIEWER, "36010400005000000001", (), "test")
        ids = [new_session_id() for _ in range(5)]
        for session_id in ids:
            opened = await ops.open_session(
                session_hash(session_id),
                token,
                seal_token(session_id, token),
                timedelta(hours=1),
                max_sessions=3,
            )
            assert opened
        assert await ops.session_count() == 3
        live = {
            session_id
            for session_id in ids
            if (await ops.touch_session(session_hash(session_id), timedelta(hours=1))).state == "live"
        }
        assert live == set(ids[2:])
        await ops.revoke_token("viewer")
        late = new_session_id()
        assert not await ops.open_session(
            session_hash(late), token, seal_token(late, token), timedelta(hours=1), max_sessions=3
        )


def test_the_login_limiter_counts_per_address_and_stays_bounded() -> None:
    """Failed logins block their own address only, and the table forgets the least recent address beyond its size.

    Broken on purpose: without the ``popitem`` the table held 4 addresses, and this failed.
    """
    limiter = LoginLimiter(attempts=2, clients=3)
    limiter.failed("10.0.0.1")
    assert not limiter.blocked("10.0.0.1")
    limiter.failed("10.0.0.1")
    assert limiter.blocked("10.0.0.1")
    assert not limiter.blocked("10.0.0.2")
    for client in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):
        limiter.failed(client)
    assert limiter.tracked() == 3
    assert not limiter.blocked("10.0.0.1")  # forgotten: the least recent of four
