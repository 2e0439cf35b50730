"""Deterministic event ids and pseudonymous person references."""

from __future__ import annotations

import pytest

from foundation.identity import Pseudonymizer, content_digest, event_id


def test_same_vendor_identity_same_id() -> None:
    """A re-sent event gets the same id; any change of device, dialect or key changes it."""
    base = event_id("36010400011240000001", "hik-isapi-acs", "mac|139|2025-06-12T08:30:15+08:00")
    assert base == event_id("36010400011240000001", "hik-isapi-acs", "mac|139|2025-06-12T08:30:15+08:00")
    assert base != event_id("36010400011240000002", "hik-isapi-acs", "mac|139|2025-06-12T08:30:15+08:00")
    assert base != event_id("36010400011240000001", "uface-mqtt", "mac|139|2025-06-12T08:30:15+08:00")
    assert base != event_id("36010400011240000001", "hik-isapi-acs", "mac|140|2025-06-12T08:30:15+08:00")


def test_content_digest_is_unambiguous() -> None:
    """Length-prefixing keeps ("ab", "c") and ("a", "bc") apart."""
    assert content_digest("ab", "c") != content_digest("a", "bc")
    assert content_digest(b"x") == content_digest("x")


def test_pseudonyms_are_keyed_and_per_compound() -> None:
    """The same person id gives unrelated references under another key or in another compound."""
    key = b"k" * 32
    ref = Pseudonymizer(key, "36010400012160000101").person_ref("100123")
    assert ref.startswith("p1:")
    assert "100123" not in ref
    assert ref == Pseudonymizer(key, "36010400012160000101").person_ref("100123")
    assert ref != Pseudonymizer(b"j" * 32, "36010400012160000101").person_ref("100123")
    assert ref != Pseudonymizer(key, "36010400012160000102").person_ref("100123")


def test_short_keys_are_refused_and_keys_never_printed() -> None:
    """A weak key is refused; repr never shows the key."""
    with pytest.raises(ValueError, match="16 bytes"):
        Pseudonymizer(b"short", "36010400012160000101")
    assert "secret-key" not in repr(Pseudonymizer(b"secret-key-0123456789", "36010400012160000101"))
