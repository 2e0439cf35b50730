"""Console sessions: random ids in an HttpOnly cookie, stored hashed; the token sealed by the id; CSRF.

The browser holds a 256-bit random session id. The operations database keeps its SHA-256 and the
operator's token sealed (AES-GCM) with a key derived from the id, so the pages can act with the
token through ``OperatorService`` (scope, role, audit) while a copy of the database alone opens
nothing. The CSRF token is derived from the id too (keyed BLAKE2), so it needs no storage and is
worthless without the session. Failed logins are counted per client address in a bounded table.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

COOKIE = "cgw_console"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_NONCE = 12


def new_session_id() -> str:
    """A fresh random session id (the cookie's value)."""
    return secrets.token_urlsafe(32)


def session_hash(session_id: str) -> str:
    """The stored form of a session id."""
    return hashlib.sha256(f"console-session\n{session_id}".encode()).hexdigest()


def _key(session_id: str, purpose: str) -> bytes:
    return hashlib.blake2b(session_id.encode(), key=purpose.encode(), digest_size=32).digest()


def seal_token(session_id: str, token: str) -> bytes:
    """The token, encrypted and authenticated under a key only the session id yields."""
    nonce = secrets.token_bytes(_NONCE)
    return nonce + AESGCM(_key(session_id, "seal")).encrypt(nonce, token.encode(), None)


def open_token(session_id: str, sealed: bytes) -> str | None:
    """The sealed token, or None if the id does not open it (a forged or damaged row)."""
    try:
        return AESGCM(_key(session_id, "seal")).decrypt(sealed[:_NONCE], sealed[_NONCE:], None).decode()
    except (InvalidTag, ValueError, UnicodeDecodeError):
        return None


def csrf_token(session_id: str) -> str:
    """The session's CSRF token (a hidden form field and the htmx request header)."""
    return _key(session_id, "csrf").hex()


def csrf_matches(session_id: str, given: str | None) -> bool:
    """Whether a request carries this session's CSRF token (constant-time)."""
    return given is not None and hmac.compare_digest(csrf_token(session_id), given)


@dataclass
class LoginLimiter:
    """At most ``attempts`` failed logins per client address in ``window_s``; at most ``clients`` tracked.

    The table is bounded: beyond ``clients`` addresses the least recently failing is forgotten
    (an attacker cycling addresses gains nothing the per-address limit would have stopped anyway).
    """

    attempts: int
    window_s: float = 900.0
    clients: int = 10_000

    def __post_init__(self) -> None:
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.get(client)
        if failures is None:
            return deque()
        while failures and now - failures[0] > self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[client]
        return failures

    def blocked(self, client: str) -> bool:
        """Whether this address has used up its failed attempts."""
        return len(self._recent(client, time.monotonic())) >= self.attempts

    def failed(self, client: str) -> None:
        """Count one failed login of this address."""
        now = time.monotonic()
        failures = self._recent(client, now)
        if client not in self._failures:
            self._failures[client] = failures
        self._failures.move_to_end(client)
        failures.append(now)
        while len(failures) > self.attempts:
            failures.popleft()
        while len(self._failures) > self.clients:
            self._failures.popitem(last=False)

    def tracked(self) -> int:
        """How many addresses are in the table."""
        return len(self._failures)
