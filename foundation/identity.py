"""Deterministic event ids and pseudonymous person references.

An event id is derived from the device's own identity of the event (its serial number for the event,
or, where a dialect has none, the device, the time and a digest of the content), so a device that
re-sends an event produces the same id and the outbox stores it once.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

_EVENT_NAMESPACE = uuid.UUID("6f1c1c52-3d0b-5b8e-9a57-0c0f5b6f7a21")
_NAMESPACE_BYTES = _EVENT_NAMESPACE.bytes


def event_id(device_id: str, dialect: str, vendor_key: str) -> str:
    """A stable id for one event: same device, dialect and vendor key -> same id.

    Args:
        device_id: the 20-digit inventory id of the device.
        dialect: the adapter dialect name (two dialects never collide).
        vendor_key: the device's own identity of the event (serial number, UUID, or time + digest).
    """
    # uuid.uuid5, without building a UUID object: the same bytes (SHA-1 of namespace + name, version
    # 5, RFC 4122 variant), formatted as str(UUID) does
    name = f"{device_id}\x1f{dialect}\x1f{vendor_key}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def content_digest(*parts: bytes | str) -> str:
    """A short digest over content parts, for dialects without an event serial number."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:32]


class Pseudonymizer:
    """Keyed hash of person identifiers, so ids that leave the compound cannot be reversed.

    The key comes from a credential file (never the config or the logs); the compound id is mixed in
    so the same employee number in two compounds gives two unrelated references.
    """

    def __init__(self, key: bytes, compound_id: str) -> None:
        if len(key) < 16:
            raise ValueError("pseudonymization key must be at least 16 bytes")
        self._key = key
        self._compound_id = compound_id

    def __repr__(self) -> str:
        return f"Pseudonymizer(compound_id={self._compound_id!r}, key=<redacted>)"

    def person_ref(self, device_person_id: str) -> str:
        """``p1:`` followed by 24 hex digits of HMAC-SHA256(key, compound id + device person id)."""
        mac = hmac.new(self._key, f"{self._compound_id}\x1f{device_person_id}".encode(), hashlib.sha256)
        return "p1:" + mac.hexdigest()[:24]
