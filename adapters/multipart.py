"""A strict ``multipart/form-data`` reader for device pushes (ISAPI-style event posts).

Devices get multipart subtly wrong (LF instead of CRLF, parts without a content type); this reader
accepts those quirks but rejects anything it cannot split unambiguously or that may be truncated
(no closing delimiter), naming what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from foundation.errors import PayloadRejected

_BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?', re.IGNORECASE)
_DISPOSITION_PARAM = re.compile(r'(name|filename)="([^"]*)"', re.IGNORECASE)
MAX_PARTS = 16


@dataclass(frozen=True)
class Part:
    """One part of a multipart body."""

    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes

    @property
    def is_picture(self) -> bool:
        """Picture parts are named differently by each firmware: go by type or by filename."""
        ctype = (self.content_type or "").lower()
        return ctype.startswith("image/") or (
            self.filename is not None and ctype in {"", "application/octet-stream"}
        )


def boundary_of(content_type: str | None) -> str:
    """The boundary parameter of a multipart content type, or reject."""
    if not content_type or not content_type.lower().startswith("multipart/"):
        raise PayloadRejected("wrong_content_type", f"expected multipart/form-data, got {content_type!r}")
    match = _BOUNDARY.search(content_type)
    if not match:
        raise PayloadRejected("malformed_multipart", "multipart content type has no boundary")
    return match.group(1)


def split_multipart(body: bytes, content_type: str | None) -> list[Part]:
    """Split a multipart body into parts."""
    delimiter = b"--" + boundary_of(content_type).encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3 and not (len(chunks) == 2 and chunks[1].strip()):
        raise PayloadRejected("malformed_multipart", "boundary not found in the body")
    parts: list[Part] = []
    closed = False
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            closed = True
            break
        if len(parts) >= MAX_PARTS:
            raise PayloadRejected("malformed_multipart", f"more than {MAX_PARTS} parts")
        parts.append(_parse_part(chunk, len(parts)))
    if not parts:
        raise PayloadRejected("malformed_multipart", "no parts between the boundaries")
    if not closed:
        # Without the closing delimiter the last part may be cut short (a truncated upload).
        raise PayloadRejected("malformed_multipart", "body ends without the closing boundary (truncated?)")
    return parts


def _parse_part(chunk: bytes, index: int) -> Part:
    chunk = chunk.removeprefix(b"\r\n").removeprefix(b"\n")
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, sep, data = chunk.partition(separator)
        if sep:
            break
    else:
        raise PayloadRejected(
            "malformed_multipart", "part has no header/body separator", field=f"part[{index}]"
        )
    data = data.removesuffix(b"\r\n").removesuffix(b"\n")
    name = filename = ctype = None
    for raw_line in head.splitlines():
        line = raw_line.decode("utf-8", errors="replace")
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "content-disposition":
            for param, param_value in _DISPOSITION_PARAM.findall(value):
                if param.lower() == "name":
                    name = param_value
                else:
                    filename = param_value
        elif key == "content-type":
            ctype = value.strip().split(";")[0].strip().lower() or None
    return Part(name=name, filename=filename, content_type=ctype, data=data)
