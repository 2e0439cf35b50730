"""An ISAPI device's own HTTP interface: a simulator's ``answer`` served on a private port with digest.

Hikvision devices take commands on their own web server (``PUT /ISAPI/...``), authenticated with
HTTP digest (RFC 7616, MD5, qop=auth). ``IsapiServer`` serves one simulated device
(``HikAcsSim``, ``HikAnprSim``): a request without a valid answer to a challenge gets 401 and a
fresh challenge; the rest go to the simulator's ``answer(method, path, body)``. ``requests``
records what was asked, in order.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from aiohttp import web

from device_sims.broker import free_port
from device_sims.devices import HttpAnswer, SimDevice
from device_sims.digest import DigestGuard

REALM = "DS-ISAPI"
MAX_BODY = 64 * 1024


class IsapiDevice(Protocol):
    """A simulated device that answers ISAPI requests."""

    device: SimDevice

    def answer(self, method: str, path: str, body: bytes) -> HttpAnswer:
        """The device's answer to one authenticated request."""
        ...


class IsapiServer:
    """One simulated ISAPI device on ``127.0.0.1:<port>`` (``url`` is its base address)."""

    def __init__(self, sim: IsapiDevice, *, username: str = "admin", port: int | None = None) -> None:
        self.sim = sim
        self.port = port or free_port()
        self.guard = DigestGuard(REALM, username, sim.device.secret)
        self.requests: list[tuple[str, str]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where the device answers."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/ISAPI/{rest:.*}", self._serve)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        if not self.guard.authorized(request):
            return self.guard.challenge()
        body = await request.read()
        self.requests.append((request.method, request.raw_path))
        answer = self.sim.answer(request.method, request.raw_path, body)
        return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)
