r"""JSON from peers, decoded strictly: lone UTF-16 surrogates are refused like any other syntax error.

``json.loads`` accepts ``"\ud800"`` and returns a str that cannot be encoded as UTF-8; such a
string would pass validation and fail later, far from the input (hashing an id, writing SQLite or
line protocol). Refusing it here keeps the failure where the bad input is. Surrogate *pairs*
(escaped emoji) are fine; only the rare payloads holding a surrogate escape are checked.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from foundation.errors import PayloadRejected

ModelT = TypeVar("ModelT", bound=BaseModel)

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@functools.cache
def _decoder(parse_constant: Callable[[str], object]) -> json.JSONDecoder:
    # json.loads builds a new decoder (and its C scanner) for every call with a non-default option
    return json.JSONDecoder(parse_constant=parse_constant)


def loads(document: bytes | str, *, parse_constant: Callable[[str], object] | None = None) -> object:
    """``json.loads``, raising ``json.JSONDecodeError`` for a lone surrogate as for bad syntax.

    Bytes must be UTF-8 (RFC 8259), decoded strictly: ``json.loads`` itself would also accept
    UTF-16/32 and let encoded surrogates through (``UnicodeDecodeError`` here instead).
    """
    text = document.decode("utf-8") if isinstance(document, bytes) else document
    value = json.loads(text) if parse_constant is None else _decoder(parse_constant).decode(text)
    match = _SURROGATE_ESCAPE.search(text)
    if match is not None:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise json.JSONDecodeError("lone UTF-16 surrogate escape", text, match.start()) from None
    return value


def decode_model(model: type[ModelT], body: bytes) -> ModelT:
    """A peer's JSON message as ``model``, or ``PayloadRejected`` naming the first bad field.

    The uplink's own protocols (evidence, commands) read every message through this.
    """
    try:
        document = loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise PayloadRejected("malformed_json", f"{model.__name__} is not JSON") from None
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PayloadRejected("bad_field", f"{model.__name__}: {first['msg']}", field=where or None) from None
