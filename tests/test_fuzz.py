"""The fuzz corpus (tests/fuzz/corpus) replays clean, and a time-bounded atheris run finds nothing new.

The replay runs every kept input through its target, so inputs that once broke something stay
fixed. The atheris run explores from the corpus for ``CGW_FUZZ_SECONDS`` per target (default 5);
the canary shows the harness does find and report a planted bug.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fuzz" / "corpus"
FUZZ_SECONDS = int(os.environ.get("CGW_FUZZ_SECONDS", "5"))


@pytest.fixture(autouse=True)
def _quiet() -> None:
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_corpus_replays_clean(name: str) -> None:
    inputs = sorted((CORPUS / name).iterdir())
    assert len(inputs) >= 2, f"the corpus of {name} is empty: python -m tests.fuzz seed"
    for path in inputs:
        TARGETS[name].run(path.read_bytes())


def test_every_target_has_a_corpus_and_nothing_else_does() -> None:
    assert {p.name for p in CORPUS.iterdir()} == set(TARGETS)


def _fuzz(*args: str, artifacts: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.fuzz", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        errors="replace",
        env={**os.environ, "CGW_FUZZ_ARTIFACTS": str(artifacts)},
        timeout=timeout,
        check=False,
    )


def test_the_harness_finds_a_planted_bug(tmp_path: Path) -> None:
    result = _fuzz("run", "canary", "--seconds", "120", artifacts=tmp_path, timeout=300)
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    (crash,) = tmp_path.glob("canary-crash-*")
    assert crash.read_bytes().startswith(b"FUZZ")
    assert base64.b64encode(crash.read_bytes()).decode() in result.stderr


def test_bounded_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    result = _fuzz(
        "all",
        "--seconds",
        str(FUZZ_SECONDS),
        artifacts=tmp_path,
        timeout=len(TARGETS) * (FUZZ_SECONDS * 4 + 120),
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-8000:]
    lines = [line for line in result.stdout.splitlines() if " inputs in " in line]
    assert {line.split()[0] for line in lines} == set(TARGETS)
    for line in lines:
        assert int(line.split()[1].replace(",", "")) > 100, line  # each target really ran
    assert not list(tmp_path.glob("*crash-*"))
