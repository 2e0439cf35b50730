"""The README's demo command, end to end (simulators -> real Mosquitto -> gateway -> outbox)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device_sims.demo import run_demo


def test_demo_loses_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every acknowledged event is stored once; every event kind shows up; bad input is dead-lettered."""
    assert run_demo(count=60, seed=3, as_json=True, keep=tmp_path) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"generated", "stored", "lost", "duplicates", "by_kind"} <= set(summary)
    assert summary["lost"] == 0
    assert summary["generated"] > 60
    assert summary["duplicates"] >= 15
    assert set(summary["by_kind"]) == {
        "face_access",
        "vehicle_pass",
        "thrown_object",
        "ebike_shed",
        "device_status",
    }
    assert summary["dead_letters"] >= 30
    assert (tmp_path / "state" / "outbox.db").exists()
