"""A thrown-object camera's own storage, served under our download API (docs/evidence.md).

``GET /<key>`` with HTTP digest (RFC 7616, MD5, qop=auth) as ``username`` with the simulated
device's secret; 200 with Content-Type and Content-Length, 404 for a key it does not have, 401
with a fresh challenge for anything else. The bytes of a key are deterministic (``media_bytes``),
so a test knows the SHA-256 the gateway must store without asking the gateway.

Fault knobs (attributes, changeable while it runs): ``fail_first`` (answer the next N requests
with 500), ``delay_s`` (wait before answering), ``missing`` (keys answered 404), ``truncate``
(keys whose body stops half-way, the connection closed), ``unsized`` (keys sent chunked,
without Content-Length), ``requests`` (every key asked, in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import random
from functools import lru_cache
from types import TracebackType
from typing import Self

from aiohttp import web
from PIL import Image

from device_sims.broker import free_port
from device_sims.devices import SimDevice
from device_sims.digest import DigestGuard

DEFAULT_CLIP_BYTES = 4 * 1024 * 1024
REALM = "hightoss-camera"
_WRITE_CHUNK = 256 * 1024


def media_role(key: str) -> str:
    """Which picture or clip a key of ``HighTossSim`` names (by its file name)."""
    if key.endswith(".mp4"):
        return "clip"
    if key.endswith("-trajectory.jpg"):
        return "trajectory"
    return "snapshot"


@lru_cache(maxsize=64)
def media_bytes(key: str, clip_bytes: int = DEFAULT_CLIP_BYTES) -> tuple[bytes, str]:
    """The file a camera keeps under ``key``: (bytes, content type), the same on every call.

    Snapshots and trajectory pictures are real JPEGs of noise over a gradient (about 100-300 KB);
    a clip is an MP4 ``ftyp`` box followed by pseudo-random payload in an ``mdat`` box.
    """
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    if media_role(key) == "clip":
        ftyp = (24).to_bytes(4, "big") + b"ftypisom" + (512).to_bytes(4, "big") + b"isomiso2"
        payload = rng.randbytes(max(0, clip_bytes - len(ftyp) - 8))
        mdat = (len(payload) + 8).to_bytes(4, "big") + b"mdat"
        return ftyp + mdat + payload, "video/mp4"
    width, height = (560, 360) if media_role(key) == "snapshot" else (480, 320)
    image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue(), "image/jpeg"


class MediaServer:
    """One camera's download API on a private port (``url`` is its ``media_url``)."""

    def __init__(
        self,
        device: SimDevice,
        *,
        username: str = "gateway",
        clip_bytes: int = DEFAULT_CLIP_BYTES,
        port: int | None = None,
    ) -> None:
        self.device = device
        self.username = username
        self.clip_bytes = clip_bytes
        self.port = port or free_port()
        self.fail_first = 0
        self.delay_s = 0.0
        self.missing: set[str] = set()
        self.truncate: set[str] = set()
        self.unsized: set[str] = set()
        self.requests: list[str] = []
        self.guard = DigestGuard(REALM, username, device.secret)
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()  # ends a delay early when the server stops

    @property
    def url(self) -> str:
        """The camera's ``media_url``."""
        return f"http://127.0.0.1:{self.port}/media"

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/media/{key:.+}", self._serve)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def unauthorized(self) -> int:
        """Requests that came with credentials and were refused."""
        return self.guard.rejected

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if not self.guard.authorized(request):
            return self.guard.challenge()
        key = request.match_info["key"]
        self.requests.append(key)
        if self.delay_s:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.delay_s):
                    await self._closing.wait()
        if self._closing.is_set():
            return web.Response(status=503, text="shutting down")
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=500, text="storage busy")
        if key in self.missing or not key.startswith("hat/"):
            return web.Response(status=404, text="no such file")
        data, content_type = media_bytes(key, self.clip_bytes)
        response = web.StreamResponse(headers={"Content-Type": content_type})
        if key in self.unsized:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(data)
        await response.prepare(request)
        if key in self.truncate:
            await response.write(data[: len(data) // 2])
            if request.transport is not None:
                request.transport.close()  # the camera's storage dropped out mid-file
            return response
        for offset in range(0, len(data), _WRITE_CHUNK):
            await response.write(data[offset : offset + _WRITE_CHUNK])
        await response.write_eof()
        return response
