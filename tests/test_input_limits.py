"""Limits on what peers send: picture headers, per-peer rate buckets (pure functions, no servers)."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from adapters.base import load_json_object
from adapters.pictures import (
    JPEG_MAGIC,
    MAX_PICTURE_BYTES,
    MAX_PICTURE_SIDE,
    PNG_MAGIC,
    check_picture,
    picture_size,
)
from foundation import strict_json
from foundation.errors import PayloadRejected
from gateway.rate_limits import PeerRateLimiter
from tests.face_fixtures import face_fixtures
from uplink.protocol import decode_receipt

ASSETS = Path(__file__).resolve().parents[1] / "device_sims" / "assets"


def _encoded(width: int, height: int, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize(
    ("width", "height", "fmt", "options"),
    [
        (427, 240, "JPEG", {}),
        (1920, 1080, "JPEG", {"progressive": True}),
        (64, 4000, "JPEG", {"quality": 30}),
        (300, 200, "PNG", {}),
        (1, 1, "PNG", {}),
    ],
)
def test_header_sizes_match_the_decoder(
    width: int, height: int, fmt: str, options: dict[str, object]
) -> None:
    data = _encoded(width, height, fmt, **options)
    assert picture_size(data) == (width, height)
    assert check_picture(data, None, "pic", max_bytes=MAX_PICTURE_BYTES) == f"image/{fmt.lower()}"


def test_real_photos_and_assets_read_like_pillow_reads_them() -> None:
    photos = sorted(ASSETS.glob("*.jpg"))
    photos += sorted(face_fixtures().glob("*.jp*g")) + sorted(face_fixtures().glob("*.png"))
    assert len(photos) > 5
    for path in photos:
        data = path.read_bytes()
        with Image.open(path) as image:
            assert picture_size(data) == image.size, path.name


def _jpeg_declaring(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xda" + b"\x00" * 64


def _png_declaring(width: int, height: int) -> bytes:
    return (
        PNG_MAGIC
        + struct.pack(">I", 13)
        + b"IHDR"
        + struct.pack(">II", width, height)
        + b"\x08\x02\x00\x00\x00"
    )


@pytest.mark.parametrize(
    "data",
    [
        _jpeg_declaring(60_000, 60_000),
        _jpeg_declaring(MAX_PICTURE_SIDE + 1, 100),
        _jpeg_declaring(7000, 7000),  # each side allowed, 49 MP in all is not
        _png_declaring(100_000, 10),
        _jpeg_declaring(0, 480),
    ],
)
def test_decompression_bombs_are_refused_before_decoding(data: bytes) -> None:
    with pytest.raises(PayloadRejected) as info:
        check_picture(data, "image/jpeg", "part[Picture]", max_bytes=MAX_PICTURE_BYTES)
    assert info.value.rejection.reason == "picture_too_large"
    assert info.value.rejection.field == "part[Picture]"
    assert "pixels" in info.value.rejection.detail


@pytest.mark.parametrize(
    "data",
    [
        JPEG_MAGIC + b"\xe0\x00",
        PNG_MAGIC + b"\x00\x00",
        _jpeg_declaring(640, 480)[:25],
        b"GIF89a" + b"\x00" * 20,
    ],
)
def test_truncated_or_foreign_pictures_are_bad(data: bytes) -> None:
    with pytest.raises(PayloadRejected) as info:
        check_picture(data, "image/jpeg", "data.image", max_bytes=MAX_PICTURE_BYTES)
    assert info.value.rejection.reason == "bad_picture"


def test_byte_limit_comes_first() -> None:
    with pytest.raises(PayloadRejected) as info:
        check_picture(_encoded(10, 10, "PNG"), None, "pic", max_bytes=10)
    assert info.value.rejection.reason == "picture_too_large"


@given(st.binary(max_size=200), st.sampled_from([JPEG_MAGIC, PNG_MAGIC, b""]))
def test_header_reader_takes_any_bytes(tail: bytes, magic: bytes) -> None:
    size = picture_size(magic + tail)
    if size is not None:
        assert all(0 <= side < 1 << 32 for side in size)
    try:
        check_picture(magic + tail, None, "pic", max_bytes=MAX_PICTURE_BYTES)
    except PayloadRejected as exc:
        assert exc.rejection.reason in {"bad_picture", "picture_too_large"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_peer_buckets_burst_refill_and_stay_apart() -> None:
    clock = FakeClock()
    limiter = PeerRateLimiter(2.0, 3, clock=clock)
    assert [limiter.admit("a") for _ in range(3)] == [None, None, None]
    wait = limiter.admit("a")
    assert wait == pytest.approx(0.5)
    assert limiter.admit("b") is None  # another peer's bucket is full
    clock.now += 0.5
    assert limiter.admit("a") is None
    assert limiter.admit("a") is not None
    clock.now += 100
    assert [limiter.admit("a") for _ in range(4)].count(None) == 3  # refills to the burst, not beyond
    assert limiter.refused == {"a": 3}


def test_peer_table_is_bounded() -> None:
    clock = FakeClock()
    limiter = PeerRateLimiter(1.0, 1, max_peers=10, clock=clock)
    for n in range(1000):
        limiter.admit(f"made-up-{n}")
    assert limiter.peers() == 10
    assert limiter.admit("made-up-999") is not None  # the most recent survive


def test_strict_json_refuses_lone_surrogates_only() -> None:
    assert strict_json.loads(b'{"name": "\\ud83d\\ude00 \\u5f20"}') == {"name": "\U0001f600 张"}
    assert strict_json.loads('["\\u00e9"]') == ["é"]
    for document in (b'{"name": "a\\ud800b"}', '["\\udc80"]', b'{"k": {"deep": ["x\\uDFFF"]}}'):
        with pytest.raises(json.JSONDecodeError) as info:
            strict_json.loads(document)
        assert "surrogate" in info.value.msg


def test_parsers_refuse_lone_surrogates_with_a_reason() -> None:
    with pytest.raises(PayloadRejected) as info:
        load_json_object(b'{"personId": "\\udc80"}')
    assert info.value.rejection.reason == "malformed_json"
    with pytest.raises(PayloadRejected) as info:
        decode_receipt(b'{"v": 1, "event_ids": ["abcdefgh\\udc00"]}')
    assert info.value.rejection.reason == "malformed_json"


def test_strict_json_bytes_must_be_utf8() -> None:
    with pytest.raises(UnicodeDecodeError):
        strict_json.loads(b'["\xed\xba\xba"]')  # an encoded surrogate, which json.loads passes through
    with pytest.raises(UnicodeDecodeError):
        strict_json.loads('["x"]'.encode("utf-16"))
