"""Pictures devices send: only JPEG and PNG, bounded in bytes and in pixels.

The pixel bound matters as much as the byte bound: a 2 MB JPEG may declare 60,000 x 60,000
pixels, and decoding it for face matching would take gigabytes. The dimensions are read from the
header (JPEG start-of-frame, PNG IHDR) without decoding anything.
"""

from __future__ import annotations

import struct

from foundation.errors import PayloadRejected

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_PICTURE_BYTES = 2 * 1024 * 1024
MAX_PICTURE_SIDE = 8192  # pixels, either side; 4K cameras send 3840 x 2160
MAX_PICTURE_PIXELS = 36_000_000

# JPEG start-of-frame markers (baseline, extended, progressive, lossless, ...): not DHT/JPG/DAC
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}


def check_picture(data: bytes, declared: str | None, field_name: str, *, max_bytes: int) -> str:
    """Verify picture bytes are a JPEG or PNG within the size limits; returns the real content type."""
    if len(data) > max_bytes:
        raise PayloadRejected("picture_too_large", f"{len(data)} bytes > {max_bytes}", field=field_name)
    if data.startswith(JPEG_MAGIC):
        content_type, size = "image/jpeg", _jpeg_size(data)
    elif data.startswith(PNG_MAGIC):
        content_type, size = "image/png", _png_size(data)
    else:
        raise PayloadRejected(
            "bad_picture",
            f"declared {declared or 'a picture'} but the bytes are neither JPEG nor PNG",
            field=field_name,
        )
    if size is None:
        raise PayloadRejected(
            "bad_picture", f"{content_type} without a readable size header (truncated?)", field=field_name
        )
    width, height = size
    if not (1 <= width <= MAX_PICTURE_SIDE and 1 <= height <= MAX_PICTURE_SIDE) or (
        width * height > MAX_PICTURE_PIXELS
    ):
        raise PayloadRejected(
            "picture_too_large",
            f"{width}x{height} pixels; at most {MAX_PICTURE_SIDE} a side and {MAX_PICTURE_PIXELS:,} in all",
            field=field_name,
        )
    return content_type


def picture_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a JPEG or PNG header, or None when there is none to read."""
    if data.startswith(JPEG_MAGIC):
        return _jpeg_size(data)
    if data.startswith(PNG_MAGIC):
        return _png_size(data)
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    # signature (8), chunk length (4), b"IHDR", width (4), height (4)
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in _STANDALONE_MARKERS:
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if at + 9 > len(data) or length < 7:
                return None
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            return None
        at += 2 + length
    return None
