"""The device side of HTTP digest authentication (RFC 7616, MD5, qop=auth), as cameras implement it.

Simulated devices that serve HTTP (the thrown-object camera's storage, the ISAPI devices' command
interface) challenge with a fresh nonce and check the client's answer. Written here, independent
of the gateway's own digest code (``gateway/push_auth.py``, the receiving side of device pushes),
so a test of one is not checked by the other.
"""

from __future__ import annotations

import hashlib
import secrets

from aiohttp import web


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - RFC 7616 MD5 digest, as cameras do


def split_params(text: str) -> list[str]:
    """``a="x, y", b=z`` -> ``['a="x, y"', 'b=z']`` (commas inside quotes stay)."""
    parts: list[str] = []
    current = ""
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [p.strip() for p in parts]


class DigestGuard:
    """Challenges and checks one user's digest answers for one realm.

    A nonce is good until the guard forgets it (never, in a simulator's short life); the nonce count
    is not tracked, as the cameras this imitates do not either.
    """

    def __init__(self, realm: str, username: str, secret: str) -> None:
        self.realm = realm
        self.username = username
        self.secret = secret
        self.rejected = 0  # answers that came with credentials and were wrong
        self._nonces: set[str] = set()

    def challenge(self) -> web.Response:
        """401 with a fresh nonce."""
        nonce = secrets.token_hex(16)
        self._nonces.add(nonce)
        header = f'Digest realm="{self.realm}", qop="auth", nonce="{nonce}", algorithm=MD5'
        return web.Response(status=401, headers={"WWW-Authenticate": header})

    def authorized(self, request: web.Request) -> bool:
        """Whether the request's Authorization answers one of our challenges for its own method and URI."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Digest "):
            return False
        ok = self._check(request, header)
        if not ok:
            self.rejected += 1
        return ok

    def _check(self, request: web.Request, header: str) -> bool:
        fields: dict[str, str] = {}
        for part in split_params(header[len("Digest ") :]):
            name, _, value = part.partition("=")
            fields[name.strip().lower()] = value.strip().strip('"')
        if fields.get("nonce") not in self._nonces or fields.get("username") != self.username:
            return False
        if fields.get("realm") != self.realm or fields.get("qop") != "auth":
            return False
        uri = fields.get("uri", "")
        if uri != request.raw_path:  # an answer computed for another resource
            return False
        ha1 = _md5(f"{self.username}:{self.realm}:{self.secret}")
        ha2 = _md5(f"{request.method}:{uri}")
        expected = _md5(
            f"{ha1}:{fields['nonce']}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:auth:{ha2}"
        )
        return secrets.compare_digest(expected, fields.get("response", ""))
