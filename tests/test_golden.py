"""Recorded vendor payloads through ``compound-gateway parse``: output must match the golden files.

Payloads are the reference samples of docs and field captures (``*.meta.json`` says where each comes
from) and simulator output. Regenerate with ``tests/golden/regenerate.sh`` and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters import DIALECTS
from cli.main import main

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(GOLDEN.glob("*/*.meta.json"))


def _payload(meta: Path) -> Path:
    stem = meta.name.removesuffix(".meta.json")
    (found,) = [
        p for p in meta.parent.glob(f"{stem}.*") if not p.name.endswith((".meta.json", ".expected.json"))
    ]
    return found


def test_every_dialect_has_golden_files() -> None:
    """Each registered dialect has at least two recorded payloads."""
    for name in DIALECTS:
        assert len(list((GOLDEN / name).glob("*.meta.json"))) >= 2, name


@pytest.mark.parametrize(
    "meta", CASES, ids=[f"{m.parent.name}/{m.name.removesuffix('.meta.json')}" for m in CASES]
)
def test_golden(meta: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The canonical events are exactly the recorded ones."""
    info = json.loads(meta.read_text(encoding="utf-8"))
    argv = ["parse", "--dialect", meta.parent.name, "--received-at", "2026-06-01T00:00:00+00:00"]
    argv += ["--device-id", "36010400011990000001"]
    if info.get("content_type"):
        argv += ["--content-type", info["content_type"]]
    if info.get("topic"):
        argv += ["--topic", info["topic"]]
    assert main([*argv, str(_payload(meta))]) == 0
    expected = json.loads(
        meta.with_name(meta.name.replace(".meta.json", ".expected.json")).read_text(encoding="utf-8")
    )
    assert json.loads(capsys.readouterr().out) == expected
