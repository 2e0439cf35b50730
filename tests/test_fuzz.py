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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


CORPUS_INPUTS = {name: sorted(p.read_bytes() for p in (CORPUS / name).iterdir()) for name in TARGETS}


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hypothesis_drives_every_target(name: str, data: st.DataObject) -> None:
    """Hypothesis on the same targets: random bytes, and kept inputs spliced, cut and bit-flipped."""
    if data.draw(st.booleans()):
        sample = data.draw(st.binary(max_size=2048))
    else:
        edited = bytearray(data.draw(st.sampled_from(CORPUS_INPUTS[name])))
        for _ in range(data.draw(st.integers(1, 6))):
            at = data.draw(st.integers(0, len(edited)))
            match data.draw(st.sampled_from(["cut", "flip", "insert", "delete"])):
                case "cut":
                    del edited[at:]
                case "flip" if at < len(edited):
                    edited[at] ^= data.draw(st.integers(1, 255))
                case "insert":
                    edited[at:at] = data.draw(
                        st.sampled_from(
                            [b"\\ud800", b"[" * 3000, b'"', b"\n", b"\xed\xa0\x80", b"{}", b"\x00"]
                        )
                    )
                case _:
                    del edited[at : at + data.draw(st.integers(1, 64))]
        sample = bytes(edited)
    TARGETS[name].run(sample)


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
