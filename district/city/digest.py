"""HTTP digest (RFC 7616, ``qop=auth``, MD5) as GA/T 1400 uses it: our server side, and one answer.

The server side guards the subscriptions endpoint: one configured peer (the upper platform), its
user name and password; nonces are ours, good for ``lifetime_s`` and for ONE request (a replayed
request is answered with a new challenge, ``stale=true``).

A challenge costs no memory: a nonce is its issue time, random bytes and an HMAC of both under a
key of this process, so anyone may ask for as many as they like (the upper platform's
``User-Identify`` is public) without pushing out the nonce the real platform holds. What is kept
is the set of nonces *used* (one per request that presented a genuine, unexpired nonce), each only
until it would have expired anyway; it never forgets an unexpired one to make room. If it holds
``max_used`` nonces, further requests are refused as ``busy`` (503) until some expire: a flood
can delay the upper platform, never let a replay through.

Written here rather than shared with ``gateway.push_auth`` (which the district may not import):
that one checks many devices' secrets against stateless signed nonces with a replay window, for
devices pushing several requests on one nonce; the upper platform makes a handful of calls a day,
and one-time nonces held in memory are the simpler, stricter rule for it. The client side
(``authorization``) answers a receiver's challenge when a notification is sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.request import parse_http_list, parse_keqv_list

REFUSAL_REASONS = frozenset(
    {
        "no_credentials",  # no Authorization: every digest client's first request
        "malformed_credentials",  # not Digest, missing fields, another realm, qop or algorithm
        "stale_nonce",  # not a nonce we hold (expired, used, forgotten, or made up): a new challenge
        "bad_credentials",  # another user name, or a wrong password
        "wrong_uri",  # the answer was computed for another request target
        "busy",  # the table of used nonces is full (a flood): 503, try again later
    }
)


def _md5(text: str) -> str:
    # the protocol's hash (GA/T 1400 peers implement MD5 digest): the password's secrecy rests on
    # the nonce and the password's length, not on MD5's collision resistance
    return hashlib.md5(text.encode("utf-8")).hexdigest()  # noqa: S324


def _response(username: str, realm: str, password: str, method: str, fields: dict[str, str]) -> str:
    """RFC 7616 3.4.1 with qop=auth: H(H(A1):nonce:nc:cnonce:auth:H(method:uri))."""
    ha1 = _md5(f"{username}:{realm}:{password}")
    ha2 = _md5(f"{method}:{fields['uri']}")
    return _md5(f"{ha1}:{fields['nonce']}:{fields['nc']}:{fields['cnonce']}:auth:{ha2}")


def parse_digest(header: str) -> dict[str, str] | None:
    """The fields of a ``Digest ...`` header (challenge or credentials), or None if it is not one."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    try:
        return parse_keqv_list(parse_http_list(rest))
    except (ValueError, IndexError):  # an item without "=", or "name=" with nothing
        return None


class DigestGuard:
    """Admits requests of one user name and password; issues signed, expiring, one-time nonces."""

    def __init__(
        self,
        realm: str,
        username: str,
        password: str,
        *,
        lifetime_s: float = 300.0,
        max_used: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.realm = realm
        self._username = username
        self._password = password
        self._lifetime_s = lifetime_s
        self._max_used = max_used
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._used: OrderedDict[str, float] = OrderedDict()  # nonce -> its issue time, oldest first

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:16]

    def challenge(self, *, stale: bool = False) -> str:
        """A ``WWW-Authenticate`` value with a fresh nonce (nothing is stored)."""
        body = struct.pack(">d", self._clock()) + secrets.token_bytes(12)
        nonce = base64.urlsafe_b64encode(body + self._sign(body)).decode()
        extra = ", stale=true" if stale else ""
        return f'Digest realm="{self.realm}", qop="auth", algorithm=MD5, nonce="{nonce}"{extra}'

    def _issued(self, nonce: str) -> float | None:
        """When one of our nonces was issued; None for anything we did not sign."""
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return None
        if len(raw) != 36 or not hmac.compare_digest(raw[20:], self._sign(raw[:20])):
            return None
        issued: float = struct.unpack(">d", raw[:8])[0]
        return issued

    def _use(self, nonce: str, issued: float) -> str | None:
        """Mark a genuine, unexpired nonce used: None, or the reason it may not be."""
        now = self._clock()
        while self._used and now - next(iter(self._used.values())) > self._lifetime_s:
            self._used.popitem(last=False)  # expired: its nonce is refused by its time anyway
        if nonce in self._used:
            return "stale_nonce"
        if len(self._used) >= self._max_used:
            return "busy"
        self._used[nonce] = issued
        return None

    def check(self, method: str, target: str, authorization: str | None) -> str | None:
        """None if ``authorization`` answers one of our nonces for ``method target``, else the reason.

        ``target`` is the request target as sent (path and query, still encoded). The nonce is used
        up whatever the outcome, so each guess of a password costs a new challenge.
        """
        if authorization is None:
            return "no_credentials"
        fields = parse_digest(authorization)
        required = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
        if fields is None or any(not fields.get(k) for k in required):
            return "malformed_credentials"
        if (
            fields["realm"] != self.realm
            or fields["qop"] != "auth"
            or fields.get("algorithm", "MD5").upper() != "MD5"
        ):
            return "malformed_credentials"
        issued = self._issued(fields["nonce"])
        if issued is None or not 0 <= self._clock() - issued <= self._lifetime_s:
            return "stale_nonce"
        refused = self._use(fields["nonce"], issued)
        if refused is not None:
            return refused
        expected = _response(self._username, self.realm, self._password, method, fields)
        name_ok = hmac.compare_digest(fields["username"].encode(), self._username.encode())
        if not (name_ok and hmac.compare_digest(fields["response"].lower().encode(), expected.encode())):
            return "bad_credentials"
        if fields["uri"] != target:
            return "wrong_uri"
        return None


def authorization(challenge: str, method: str, target: str, username: str, password: str) -> str | None:
    """The ``Authorization`` answering a ``WWW-Authenticate: Digest`` challenge, or None if unanswerable.

    Only ``qop=auth`` with MD5 is answered: what GA/T 1400 peers ask for.
    """
    fields = parse_digest(challenge)
    if fields is None or "nonce" not in fields or "realm" not in fields:
        return None
    if fields.get("algorithm", "MD5").upper() != "MD5":
        return None
    if "auth" not in [q.strip() for q in fields.get("qop", "auth").split(",")]:
        return None
    answer = {
        "uri": target,
        "nonce": fields["nonce"],
        "nc": "00000001",
        "cnonce": secrets.token_hex(8),
    }
    response = _response(username, fields["realm"], password, method, answer)
    opaque = f', opaque="{fields["opaque"]}"' if "opaque" in fields else ""
    return (
        f'Digest username="{username}", realm="{fields["realm"]}", nonce="{answer["nonce"]}",'
        f' uri="{target}", qop=auth, nc={answer["nc"]}, cnonce="{answer["cnonce"]}",'
        f' response="{response}", algorithm=MD5{opaque}'
    )
