"""Who may push: every HTTP push proves which device or platform sent it before its body is read.

Devices authenticate as Hikvision devices can be configured to (the "HTTP host" of an ISAPI
device): HTTP Digest (RFC 7616, ``qop=auth``; MD5, which the devices call "MD5digest", or SHA-256)
or HTTP Basic, with the device's own user name (``push_username``, default its id) and its secret
from the device secrets file. Vendor platforms sign each push (``hmac-sha256``: ``X-Cgw-Timestamp``
and ``X-Cgw-Signature``, the HMAC of the timestamp, a newline and the body) or use Basic.

The order of the checks: the source address (``allowed_sources``), then the credentials, then (for
signatures) the body once it has been read within its bound. The identity that authenticated must
be the path's: another device's valid credentials on ``/push/<id>`` are refused (``wrong_device``).
A made-up device id is refused like a wrong password, never 404 (the answer is a digest device's).

Digest nonces are stateless: the issue time and a random part, signed with a key made at start (a
restart makes every nonce stale, and clients simply take the new challenge). A nonce is good for
``[trust] nonce_lifetime_s``; after that the answer says ``stale=true`` and the client retries with
the new nonce without asking its user again. Replays are refused per (nonce, nc): a client may send
several requests at once with one nonce, so counts are accepted out of order within a window, each
once. The table of used nonces is bounded; when it is full the oldest are forgotten and nonces
issued before them are treated as stale, so forgetting never re-opens a replay.

Written here rather than taken from a library: aiohttp has a digest *client* only, and the server
side packages on PyPI are framework-bound (Flask, Django) or keep nonces in server state. The
header syntax is parsed with the stdlib (``urllib.request.parse_http_list``/``parse_keqv_list``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_address
from typing import Literal
from urllib.request import parse_http_list, parse_keqv_list

import structlog

from adapters import DIALECTS
from adapters.base import Transport
from foundation.health import MetricFamilies
from foundation.logging import worth_logging
from gateway.config import DeviceConfig, GatewayConfig, SourceNetwork
from gateway.device_secrets import DeviceSecrets

log = structlog.get_logger(__name__)

PushTransport = Literal["http_device", "http_platform"]

UNKNOWN_PEER = "unknown"
"""The metric label of every refused push that names no configured device or platform."""

TIMESTAMP_HEADER = "X-Cgw-Timestamp"
SIGNATURE_HEADER = "X-Cgw-Signature"

NC_WINDOW = 256
"""How far below the highest nonce count seen a count may still arrive (concurrent requests)."""

MAX_NONCES = 16384
"""Nonces whose counts are remembered; beyond it the oldest are forgotten (and become stale)."""

_NONCE_TIME = 8  # bytes: issue time in milliseconds
_NONCE_RANDOM = 8
_NONCE_MAC = 16
_NONCE_BYTES = _NONCE_TIME + _NONCE_RANDOM + _NONCE_MAC


def _md5(data: bytes) -> str:
    # the protocol's hash, which the devices implement (RFC 7616 keeps MD5 for compatibility);
    # the password's secrecy rests on its length and the nonce, not on MD5's collision resistance
    return hashlib.md5(data).hexdigest()  # noqa: S324


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


DIGEST_ALGORITHMS: dict[str, Callable[[bytes], str]] = {"MD5": _md5, "SHA-256": _sha256}
"""Offered in this order: MD5 first, since devices that only know "MD5digest" read the first challenge."""

REFUSAL_REASONS = frozenset(
    {
        "source_not_allowed",  # the address is outside the device's or platform's allowed_sources
        "no_credentials",  # no Authorization (or signature headers): every digest client's first request
        "wrong_scheme",  # basic to a digest device, or the other way round
        "malformed_credentials",  # unreadable header, unsupported algorithm or qop, wrong realm
        "bad_credentials",  # wrong password, unknown user name
        "wrong_device",  # valid credentials of another device than the path's
        "wrong_uri",  # a digest response computed for another request target
        "stale_nonce",  # the nonce expired (or is from before a restart): answered with stale=true
        "replayed",  # a (nonce, nc) pair used before
        "stale_signature",  # the platform's timestamp is further off than signature_max_skew_s
        "bad_signature",  # the platform's signature does not match the body
        "unverifiable_body",  # a signed push over the size limit: never read, so never verified (413)
        "unknown_device",  # no such device (answered as no_credentials / bad_credentials)
        "unknown_platform",  # no device of the inventory uses this platform (answered likewise)
    }
)
"""Every reason a push is refused for (the ``reason`` label of ``cgw_http_auth_refused_total``)."""

GUESS_REASONS = frozenset(
    {
        "bad_credentials",
        "wrong_device",
        "unknown_device",
        "unknown_platform",
        "bad_signature",
        "unverifiable_body",
        "malformed_credentials",
        "replayed",
        "wrong_uri",
        "wrong_scheme",
    }
)
"""Refusals that count as a failed attempt of the address (``no_credentials`` and stale ones do not:
every digest client starts with one)."""


@dataclass(frozen=True)
class Refusal:
    """A push refused with 401: who it counts against (``peer``), why, and the challenges to send.

    ``shown`` is the reason the sender is told when it differs from ``reason`` (which metrics and
    logs carry): a made-up device id is answered like a real device's missing or wrong password.
    """

    peer: str
    reason: str
    challenges: tuple[str, ...]
    shown: str | None = None

    @property
    def answer(self) -> str:
        """The reason the sender is told."""
        return self.shown or self.reason

    @property
    def is_guess(self) -> bool:
        """Whether it counts as a failed attempt of the address (slows password guessing)."""
        return self.reason in GUESS_REASONS


@dataclass(frozen=True)
class Admitted:
    """A push whose sender proved who it is (``peer``: the device id, or ``platform:<dialect>``).

    ``signature`` is set for signed platform pushes: the body still has to match it
    (``PushAuthenticator.check_body``) once it is read.
    """

    peer: str
    signature: _PendingSignature | None = None


@dataclass(frozen=True)
class _PendingSignature:
    key: bytes = field(repr=False)
    timestamp: str
    signature: str


@dataclass
class _NonceUse:
    issued_ms: int
    highest: int
    seen: int  # bit i: count ``highest - i`` was used


class NonceCounts:
    """Which (nonce, nc) pairs were used, bounded in memory (see the module docstring)."""

    def __init__(self, max_nonces: int = MAX_NONCES, window: int = NC_WINDOW) -> None:
        self._uses: dict[bytes, _NonceUse] = {}
        self._by_age: list[tuple[int, bytes]] = []
        self._max = max_nonces
        self._window = window
        self.floor_ms = -1
        """Nonces issued at or before this and not remembered are stale (their counts were forgotten)."""

    def __len__(self) -> int:
        return len(self._uses)

    def use(self, nonce: bytes, issued_ms: int, nc: int) -> Literal["ok", "replayed", "forgotten"]:
        """Record one use; a pair used before (or too far below the highest) is ``replayed``."""
        known = self._uses.get(nonce)
        if known is None:
            if issued_ms <= self.floor_ms:
                return "forgotten"
            self._uses[nonce] = _NonceUse(issued_ms, nc, 1)
            heapq.heappush(self._by_age, (issued_ms, nonce))
            while len(self._uses) > self._max:
                oldest_ms, oldest = heapq.heappop(self._by_age)
                del self._uses[oldest]
                self.floor_ms = max(self.floor_ms, oldest_ms)
            return "ok"
        if nc > known.highest:
            shift = nc - known.highest
            # a jump past the window forgets every earlier count: shifting by it would build an
            # integer of up to 2^32 bits (a count of ffffffff: half a gigabyte) for nothing
            known.seen = (
                1 if shift >= self._window else ((known.seen << shift) | 1) & ((1 << self._window) - 1)
            )
            known.highest = nc
            return "ok"
        offset = known.highest - nc
        if offset >= self._window or known.seen >> offset & 1:
            return "replayed"
        known.seen |= 1 << offset
        return "ok"

    def expire(self, before_ms: int) -> None:
        """Forget nonces issued before ``before_ms`` (they are refused as stale anyway)."""
        while self._by_age and self._by_age[0][0] < before_ms:
            issued_ms, nonce = heapq.heappop(self._by_age)
            del self._uses[nonce]
            # its counts are gone: should it ever look fresh again, it must count as stale
            self.floor_ms = max(self.floor_ms, issued_ms)


class PushAuthenticator:
    """Decides whether a push comes from the device or platform its path names.

    ``check`` runs on the request line and headers (before the body is read); ``check_body`` on the
    body of a signed platform push. Refusals are counted per (peer, reason) for ``/metrics`` and
    logged, sampled, as ``push_auth_refused``.
    """

    def __init__(
        self,
        config: GatewayConfig,
        secrets_: DeviceSecrets,
        *,
        clock: Callable[[], float] = time.time,
        nonce_clock: Callable[[], float] = time.monotonic,
        nonce_key: bytes | None = None,
    ) -> None:
        """Checks pushes against ``config`` and ``secrets_``.

        ``clock``: wall time, for platform signatures' timestamps; ``nonce_clock``: for nonces,
        which never outlive the process (their key is made at start), so a wall clock stepped back
        (NTP on a board without a real-time clock) cannot make expired nonces fresh again.
        """
        self._config = config
        self._secrets = secrets_
        self._clock = clock
        self._nonce_clock = nonce_clock
        self._nonce_key = nonce_key or secrets.token_bytes(32)
        # only the devices that push: an MQTT device's broker password is no push credential, and a
        # platform's devices push through their platform
        pushing = [d for d in config.devices if DIALECTS[d.dialect].transport is Transport.HTTP_DEVICE]
        self._devices = {d.id: d for d in pushing}
        self._by_username = {d.http_username: d for d in pushing}
        self._platforms = frozenset(config.platform_dialects())
        self._realm = config.trust.digest_realm
        self.nonces = NonceCounts()
        self.refused: Counter[tuple[str, str]] = Counter()

    # -- the checks ------------------------------------------------------------------------------

    def check(
        self,
        transport: PushTransport,
        target: str,
        remote: str | None,
        path: str,
        headers: Mapping[str, str],
    ) -> Admitted | Refusal:
        """Whether the push to ``target`` (device id or dialect) may be read.

        ``path`` is the request target as sent (path and query, still encoded): a digest response
        is only good for the ``uri`` it was computed for.
        """
        try:
            if transport == "http_platform":
                verdict = self._check_platform(target, remote, headers)
            else:
                verdict = self._check_device(target, remote, path, headers)
        except UnicodeEncodeError:  # lone surrogates in a header: no credentials of ours contain them
            verdict = Refusal(
                self._peer_label(transport, target),
                "malformed_credentials",
                self._challenges_of(transport, target),
            )
        if isinstance(verdict, Refusal):
            self._count(verdict, remote)
        return verdict

    def check_body(self, admitted: Admitted, body: bytes, remote: str | None) -> Refusal | None:
        """The signature of a signed platform push against its body (None: it matches, or none needed)."""
        pending = admitted.signature
        if pending is None:
            return None
        expected = platform_signature(pending.key, pending.timestamp, body)
        if hmac.compare_digest(expected.encode(), _utf8(pending.signature.lower())):
            return None
        refusal = Refusal(admitted.peer, "bad_signature", (self._signature_challenge(),))
        self._count(refusal, remote)
        return refusal

    def unverifiable(self, admitted: Admitted, remote: str | None) -> Refusal:
        """A signed push whose body exceeded the limit: it cannot be verified; counted as refused."""
        refusal = Refusal(admitted.peer, "unverifiable_body", (self._signature_challenge(),))
        self._count(refusal, remote)
        return refusal

    def _check_device(
        self, device_id: str, remote: str | None, path: str, headers: Mapping[str, str]
    ) -> Admitted | Refusal:
        device = self._devices.get(device_id)
        if device is None:
            # answered as a real device's push would be, so made-up ids do not map the inventory
            return Refusal(UNKNOWN_PEER, "unknown_device", self._device_challenges(None), _as_if(headers))
        reason = self._device_refusal(device, remote, path, headers)
        if reason is None:
            return Admitted(device.id)
        # the challenge (a new nonce) only for refusals: an admitted push costs no nonce
        return Refusal(device.id, reason, self._device_challenges(device, stale=reason == "stale_nonce"))

    def _device_refusal(
        self, device: DeviceConfig, remote: str | None, path: str, headers: Mapping[str, str]
    ) -> str | None:
        """Why the push of ``device`` is refused, or None."""
        if not _source_allowed(remote, device.allowed_sources):
            return "source_not_allowed"
        secret = self._secrets.device(device.id)
        if secret is None and self._config.trust.lan_trusted:
            return None
        authorization = headers.get("Authorization")
        if authorization is None:
            return "no_credentials"
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != device.push_auth:
            return "wrong_scheme"
        if device.push_auth == "basic":
            return self._basic(device.http_username, secret, credentials, self._device_secret)
        return self._digest(device, secret, path, credentials)

    def _check_platform(
        self, dialect: str, remote: str | None, headers: Mapping[str, str]
    ) -> Admitted | Refusal:
        if dialect not in self._platforms:
            return Refusal(UNKNOWN_PEER, "unknown_platform", (self._signature_challenge(),), _as_if(headers))
        peer = f"platform:{dialect}"
        platform = self._config.platform(dialect)
        basic = platform.auth == "basic"
        challenges = (self._basic_challenge() if basic else self._signature_challenge(),)
        if not _source_allowed(remote, platform.allowed_sources):
            return Refusal(peer, "source_not_allowed", challenges)
        secret = self._secrets.platform(dialect)
        if secret is None and self._config.trust.lan_trusted:
            return Admitted(peer)
        if basic:
            authorization = headers.get("Authorization")
            if authorization is None:
                return Refusal(peer, "no_credentials", challenges)
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() != "basic":
                return Refusal(peer, "wrong_scheme", challenges)
            username = platform.username or dialect
            reason = self._basic(
                username, secret, credentials, lambda name: secret if name == username else None
            )
            return Refusal(peer, reason, challenges) if reason is not None else Admitted(peer)
        timestamp = headers.get(TIMESTAMP_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if timestamp is None or signature is None:
            return Refusal(peer, "no_credentials", challenges)
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            return Refusal(peer, "malformed_credentials", challenges)
        if abs(self._clock() - int(timestamp)) > self._config.trust.signature_max_skew_s:
            return Refusal(peer, "stale_signature", challenges)
        if secret is None:  # no secret and not trusted: nothing could be signed (check_lan_trust refuses it)
            return Refusal(peer, "bad_signature", challenges)
        return Admitted(peer, _PendingSignature(secret, timestamp, signature))

    # -- Basic -------------------------------------------------------------------------------------

    def _device_secret(self, username: str) -> bytes | None:
        device = self._by_username.get(username)
        return self._secrets.device(device.id) if device is not None else None

    def _basic(
        self,
        username: str,
        secret: bytes | None,
        credentials: str,
        secret_of: Callable[[str], bytes | None],
    ) -> str | None:
        """None if ``credentials`` (base64 ``user:password``) are ``username``'s, else the reason."""
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII text given to b64decode
            return "malformed_credentials"
        name, colon, password = decoded.partition(":")
        if not colon:
            return "malformed_credentials"
        if name == username:
            if secret is not None and hmac.compare_digest(_utf8(password), secret):
                return None
            return "bad_credentials"
        other = secret_of(name)
        if other is not None and hmac.compare_digest(_utf8(password), other):
            return "wrong_device"
        return "bad_credentials"

    # -- Digest ------------------------------------------------------------------------------------

    def _digest(self, device: DeviceConfig, secret: bytes | None, path: str, credentials: str) -> str | None:
        """None if the digest ``credentials`` answer our challenge for ``device``, else the reason."""
        try:
            fields = parse_keqv_list(parse_http_list(credentials))
        except (ValueError, IndexError):  # an item without "=", or "name=" with nothing (found by fuzzing)
            return "malformed_credentials"
        required = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
        if any(not isinstance(fields.get(k), str) for k in required):
            return "malformed_credentials"
        algorithm = fields.get("algorithm", "MD5").upper()
        hash_ = DIGEST_ALGORITHMS.get(algorithm)
        nc_text = fields["nc"]
        if (
            hash_ is None
            or fields["qop"] != "auth"
            or fields["realm"] != self._realm
            or len(nc_text) != 8
            or not all(c in "0123456789abcdefABCDEF" for c in nc_text)
        ):
            return "malformed_credentials"
        username = fields["username"]
        if username == device.http_username:
            claimed: DeviceConfig | None = device
            key = secret
        else:
            claimed = self._by_username.get(username)
            key = self._secrets.device(claimed.id) if claimed is not None else None
        if key is None or not hmac.compare_digest(
            _utf8(fields["response"].lower()), _digest_response(hash_, username, self._realm, key, fields)
        ):
            return "bad_credentials"
        if claimed is not device:
            return "wrong_device"
        if fields["uri"] != path:
            return "wrong_uri"
        issued_ms = self._nonce_issued_ms(fields["nonce"])
        if issued_ms is None:
            # the right answer to a nonce that is not (or no longer: a restart) ours: a new challenge
            return "stale_nonce"
        now_ms = int(self._nonce_clock() * 1000)
        lifetime_ms = self._config.trust.nonce_lifetime_s * 1000
        if not 0 <= now_ms - issued_ms <= lifetime_ms:
            return "stale_nonce"
        self.nonces.expire(now_ms - lifetime_ms)
        match self.nonces.use(_utf8(fields["nonce"]), issued_ms, int(nc_text, 16)):
            case "replayed":
                return "replayed"
            case "forgotten":
                return "stale_nonce"
            case _:
                return None

    def new_nonce(self) -> str:
        """A fresh nonce: issue time, random part, and their MAC under this gateway's nonce key."""
        head = int(self._nonce_clock() * 1000).to_bytes(_NONCE_TIME, "big") + secrets.token_bytes(
            _NONCE_RANDOM
        )
        mac = hmac.new(self._nonce_key, head, hashlib.sha256).digest()[:_NONCE_MAC]
        return base64.urlsafe_b64encode(head + mac).decode()

    def _nonce_issued_ms(self, nonce: str) -> int | None:
        """When we issued ``nonce``, or None if it is not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(nonce.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return None
        if len(raw) != _NONCE_BYTES:
            return None
        head, mac = raw[: _NONCE_TIME + _NONCE_RANDOM], raw[_NONCE_TIME + _NONCE_RANDOM :]
        if not hmac.compare_digest(
            mac, hmac.new(self._nonce_key, head, hashlib.sha256).digest()[:_NONCE_MAC]
        ):
            return None
        return int.from_bytes(head[:_NONCE_TIME], "big")

    # -- challenges, counting ----------------------------------------------------------------------

    def _peer_label(self, transport: PushTransport, target: str) -> str:
        if transport == "http_platform":
            return f"platform:{target}" if target in self._platforms else UNKNOWN_PEER
        return target if target in self._devices else UNKNOWN_PEER

    def _challenges_of(self, transport: PushTransport, target: str) -> tuple[str, ...]:
        if transport == "http_device":
            return self._device_challenges(self._devices.get(target))
        if target in self._platforms and self._config.platform(target).auth == "basic":
            return (self._basic_challenge(),)
        return (self._signature_challenge(),)

    def _device_challenges(self, device: DeviceConfig | None, *, stale: bool = False) -> tuple[str, ...]:
        if device is not None and device.push_auth == "basic":
            return (self._basic_challenge(),)
        nonce = self.new_nonce()
        extra = ", stale=true" if stale else ""
        return tuple(
            f'Digest realm="{self._realm}", qop="auth", algorithm={name}, nonce="{nonce}"{extra}'
            for name in DIGEST_ALGORITHMS
        )

    def _basic_challenge(self) -> str:
        return f'Basic realm="{self._realm}", charset="UTF-8"'

    def _signature_challenge(self) -> str:
        return f'Cgw-HMAC-SHA256 realm="{self._realm}", headers="{TIMESTAMP_HEADER} {SIGNATURE_HEADER}"'

    def _count(self, refusal: Refusal, remote: str | None) -> None:
        key = (refusal.peer, refusal.reason)
        self.refused[key] += 1
        count = self.refused[key]
        if not worth_logging(count, first=3, every=1000):
            return
        # every digest client's first request is unauthenticated: an expected round trip
        level = log.debug if refusal.reason in {"no_credentials", "stale_nonce"} else log.warning
        level("push_auth_refused", peer=refusal.peer, reason=refusal.reason, remote=remote, count=count)

    def write_metrics(self, families: MetricFamilies) -> None:
        """Refused pushes per (peer, reason): configured devices by id, platforms, one ``unknown``."""
        families.counter(
            "cgw_http_auth_refused_total",
            "pushes refused with 401 (no, wrong or another device's credentials; source not allowed)",
            [({"peer": peer, "reason": reason}, n) for (peer, reason), n in sorted(self.refused.items())],
        )


def platform_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``X-Cgw-Signature`` of a platform push: hex HMAC-SHA256 of the timestamp, a newline and the body."""
    return hmac.new(secret, timestamp.encode() + b"\n" + body, hashlib.sha256).hexdigest()


def _digest_response(
    hash_: Callable[[bytes], str], username: str, realm: str, secret: bytes, fields: Mapping[str, str]
) -> bytes:
    """RFC 7616 section 3.4.1 with qop=auth: H(H(A1):nonce:nc:cnonce:qop:H(A2)), A2 = POST:uri."""
    ha1 = hash_(_utf8(username) + b":" + _utf8(realm) + b":" + secret)
    ha2 = hash_(b"POST:" + _utf8(fields["uri"]))
    return _utf8(hash_(_utf8(":".join((ha1, fields["nonce"], fields["nc"], fields["cnonce"], "auth", ha2)))))


def _utf8(text: str) -> bytes:
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: this gives the bytes as sent
    return text.encode("utf-8", "surrogateescape")


def _as_if(headers: Mapping[str, str]) -> str:
    """What a configured sender would be told for these headers without the right secret."""
    present = any(h in headers for h in ("Authorization", TIMESTAMP_HEADER, SIGNATURE_HEADER))
    return "bad_credentials" if present else "no_credentials"


def _source_allowed(remote: str | None, allowed: tuple[SourceNetwork, ...]) -> bool:
    if not allowed:
        return True
    if remote is None:
        return False
    try:
        address = ip_address(remote.split("%", 1)[0])  # a scoped IPv6 address: the zone does not matter
    except ValueError:
        return False
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in allowed)
