"""Hypothesis feeds every parser hostile input: it must return events or a specific rejection, never crash.

A parser may refuse a payload (``PayloadRejected``) or, for values that pass its reading but break an
invariant of the event model, let pydantic refuse the event (the intake turns that into an
``invalid_event`` dead letter). Anything else is a bug.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters import DIALECTS
from adapters.base import RawMessage
from adapters.multipart import split_multipart
from foundation.errors import PayloadRejected
from tests.conftest import PARSE_CONTEXT

GOLDEN = Path(__file__).parent / "golden"
CTX = PARSE_CONTEXT
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.text(alphabet="\x00\n\r,= \"'<>&;\u202e", max_size=10),
    st.sampled_from(
        ["", "NaN", "1e309", "-1", "0", "2100-01-01T00:00:00", "1970-01-01T00:00:00Z", "浙A12345", "x" * 5000]
    ),
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def golden_cases(dialect: str) -> list[tuple[bytes, str | None, str | None]]:
    cases = []
    for meta in sorted((GOLDEN / dialect).glob("*.meta.json")):
        info = json.loads(meta.read_text(encoding="utf-8"))
        stem = meta.name.removesuffix(".meta.json")
        (payload,) = [
            p for p in meta.parent.glob(f"{stem}.*") if not p.name.endswith((".meta.json", ".expected.json"))
        ]
        cases.append((payload.read_bytes(), info.get("content_type"), info.get("topic")))
    return cases


def run(dialect: str, raw: RawMessage) -> None:
    try:
        result = DIALECTS[dialect].parse(raw, CTX)
    except PayloadRejected as exc:
        assert exc.rejection.reason
        assert exc.rejection.detail
        return
    except ValidationError:
        return
    for event in result.events:
        assert event.device_id == CTX.device_id


def _leaf_paths(value: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    if isinstance(value, dict):
        return [prefix] + [p for k, v in value.items() for p in _leaf_paths(v, (*prefix, k))]
    if isinstance(value, list):
        return [prefix] + [p for i, v in enumerate(value) for p in _leaf_paths(v, (*prefix, i))]
    return [prefix]


def _set(doc: object, path: tuple[object, ...], new: object) -> object:
    if not path:
        return new
    target = doc
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = new  # type: ignore[index]
    return doc


@given(
    data=st.data(),
    body=st.binary(max_size=2048),
    ctype=st.sampled_from(
        [
            None,
            "application/json",
            "text/xml",
            "multipart/form-data; boundary=MIME_boundary",
            "multipart/form-data",
        ]
    ),
)
@SETTINGS
def test_arbitrary_bytes(data: st.DataObject, body: bytes, ctype: str | None) -> None:
    """Random bytes on any dialect, with or without a plausible topic."""
    dialect = data.draw(st.sampled_from(sorted(DIALECTS)))
    filt = DIALECTS[dialect].topic_filter
    topic = data.draw(
        st.one_of(
            st.none(),
            st.text(max_size=30),
            st.just((filt or "x/+/+").replace("+", "SN1", 1).replace("+", "up")),
        )
    )
    run(dialect, RawMessage(body, content_type=ctype, topic=topic))


JSON_CASES = [(d, c) for d in sorted(DIALECTS) for c in golden_cases(d) if c[0].lstrip()[:1] == b"{"]


@given(data=st.data())
@SETTINGS
def test_mutated_json_payloads(data: st.DataObject) -> None:
    """Real payloads with up to three fields replaced by hostile values."""
    dialect, (body, ctype, topic) = data.draw(st.sampled_from(JSON_CASES))
    doc = json.loads(body)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _leaf_paths(doc)
        path = data.draw(st.sampled_from(paths))
        doc = _set(copy.deepcopy(doc), path, data.draw(hostile_values))
    mutated = json.dumps(doc, ensure_ascii=data.draw(st.booleans())).encode()
    run(dialect, RawMessage(mutated, content_type=ctype, topic=topic))


BINARY_CASES = [(d, c) for d in ("hik-isapi-acs", "hik-isapi-anpr") for c in golden_cases(d)]


@given(data=st.data())
@SETTINGS
def test_mutated_http_bodies(data: st.DataObject) -> None:
    """Multipart and XML pushes truncated, spliced and bit-flipped."""
    dialect, (body, ctype, topic) = data.draw(st.sampled_from(BINARY_CASES))
    edited = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(0, len(edited) - 1)))
        if op == "truncate":
            del edited[pos:]
        elif op == "flip" and edited:
            edited[pos] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            edited[pos:pos] = data.draw(
                st.sampled_from(
                    [b"--MIME_boundary\r\n", b"--boundary--", b"<ANPR>", b"\r\n\r\n", b"&lol;", b"\x00" * 8]
                )
            )
        else:
            del edited[pos : pos + data.draw(st.integers(1, 64))]
    run(dialect, RawMessage(bytes(edited), content_type=ctype, topic=topic))


@given(st.binary(max_size=512), st.text(max_size=80))
@SETTINGS
def test_multipart_reader(body: bytes, ctype: str) -> None:
    """The multipart reader refuses or splits; it never fails otherwise."""
    try:
        parts = split_multipart(body, ctype)
    except PayloadRejected as exc:
        assert exc.rejection.reason in {"wrong_content_type", "malformed_multipart"}
        return
    assert parts
