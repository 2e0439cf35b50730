"""Every systemd unit we ship is sandboxed: ``systemd-analyze security`` exposure at most 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).resolve().parents[1] / "systemd").glob("*.service"))
MAX_EXPOSURE = 2.0


def test_there_are_units() -> None:
    assert {u.name for u in UNITS} >= {
        "compound-gateway.service",
        "compound-district-ingester@.service",
        "compound-district-api.service",
    }


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_exposure_is_at_most_two(unit: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing: apt-get install systemd (scripts/dev does)"
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_no_root_and_credentials_not_in_the_environment(unit: Path) -> None:
    text = unit.read_text(encoding="utf-8")
    assert "DynamicUser=yes" in text
    assert "User=root" not in text
    assert "Environment=" not in text  # secrets come through LoadCredential=, never the environment
