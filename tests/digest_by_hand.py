"""HTTP digest answers computed by hand from RFC 7616, for tests that check the gateway against the RFC.

Independent of ``gateway/push_auth.py`` on purpose: a test whose expected answer came from the code
under test could not fail.
"""

from __future__ import annotations

import hashlib


def digest_authorization(
    username: str,
    secret: str,
    nonce: str,
    uri: str,
    nc: int,
    *,
    algorithm: str = "MD5",
    cnonce: str = "0a4f113b",
    realm: str = "compound-gateway",
    method: str = "POST",
    opaque: str | None = None,
) -> str:
    """An Authorization header as a device computes it (RFC 7616, qop=auth; realm compound-gateway unless given)."""

    def h(text: str) -> str:
        return hashlib.new(algorithm.replace("-", "").lower(), text.encode()).hexdigest()

    ha1 = h(f"{username}:{realm}:{secret}")
    response = h(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{h(f'{method}:{uri}')}")
    header = (
        f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}",'
        f' algorithm={algorithm}, qop=auth, nc={nc:08x}, cnonce="{cnonce}", response="{response}"'
    )
    return header if opaque is None else f'{header}, opaque="{opaque}"'
