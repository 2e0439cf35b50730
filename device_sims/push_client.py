"""HTTP pushes authenticated the way real senders authenticate them (gateway/push_auth.py checks them).

Devices use HTTP Digest through aiohttp's ``DigestAuthMiddleware``, one per device and kept across
pushes, so a nonce is reused with a rising count as a camera does (and a stale one is answered by
retrying with the new challenge), or HTTP Basic. Platforms sign each push: ``X-Cgw-Timestamp`` and
``X-Cgw-Signature``, the hex HMAC-SHA256 of the timestamp, a newline and the body.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import ClientMiddlewareType, DigestAuthMiddleware

from device_sims.devices import HttpPost, PushCredentials
from gateway.push_auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, platform_signature


def signature_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers of a signed platform push (``timestamp``: unix seconds, default now)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: platform_signature(secret.encode(), stamp, body)}


@dataclass(frozen=True)
class PushRequest:
    """What ``session.post`` needs besides the URL and body to authenticate one push (basic: a header)."""

    headers: dict[str, str]
    middlewares: Sequence[ClientMiddlewareType]


class PushAuth:
    """The senders' authentication state: one digest middleware per sender, kept like a device keeps it."""

    def __init__(self) -> None:
        self._digest: dict[tuple[str, str], DigestAuthMiddleware] = {}

    def request(self, message: HttpPost) -> PushRequest:
        """Headers, basic credentials and middlewares for ``message`` (its sender's own credentials)."""
        headers = {"Content-Type": message.content_type}
        credentials = message.credentials
        if credentials is None:
            return PushRequest(headers, ())
        match credentials.scheme:
            case "hmac-sha256":
                return PushRequest(headers | signature_headers(credentials.secret, message.body), ())
            case "basic":
                basic = aiohttp.encode_basic_auth(credentials.username, credentials.secret)
                return PushRequest(headers | {"Authorization": basic}, ())
            case _:
                return PushRequest(headers, (self.digest(credentials),))

    def digest(self, credentials: PushCredentials) -> DigestAuthMiddleware:
        """The sender's digest middleware (made on its first push)."""
        key = (credentials.username, credentials.secret)
        middleware = self._digest.get(key)
        if middleware is None:
            middleware = self._digest[key] = DigestAuthMiddleware(credentials.username, credentials.secret)
        return middleware


async def post(
    session: aiohttp.ClientSession, base: str, message: HttpPost, auth: PushAuth | None = None
) -> tuple[int, dict[str, object]]:
    """Push ``message`` to the gateway at ``base``, authenticated as its sender: status and JSON answer."""
    request = (auth or PushAuth()).request(message)
    async with session.post(
        base.rstrip("/") + message.path,
        data=io.BytesIO(
            message.body
        ),  # aiohttp warns of large bytes bodies; a stream is re-sent on a challenge
        headers=request.headers,
        middlewares=request.middlewares,
        timeout=aiohttp.ClientTimeout(total=30),
    ) as response:
        return response.status, await response.json(content_type=None)
