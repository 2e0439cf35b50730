"""The README's demo command, end to end: simulators -> real Mosquitto -> gateway -> ingester -> store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cli.main import main


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_demo_loses_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], broker: str) -> None:
    """Every acknowledged event reaches the district store once; every kind shows up; --store keeps it.

    Through the command line, on the embedded broker and on a real Mosquitto (``--broker mosquitto``).
    """
    store = tmp_path / "kept" / "district.db"
    argv = ["demo", "--count", "60", "--seed", "3", "--json", "--keep", str(tmp_path / "work")]
    assert main([*argv, "--store", str(store), "--broker", broker]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["broker"] == broker
    assert {"generated", "stored", "lost", "duplicates", "by_kind"} <= set(summary)
    assert summary["lost"] == 0
    assert summary["duplicates"] == 0
    assert summary["stored"] == summary["generated"] > 60
    assert summary["resends_suppressed"] >= 15
    assert set(summary["by_kind"]) == {
        "face_access",
        "vehicle_pass",
        "thrown_object",
        "ebike_shed",
        "device_status",
    }
    assert summary["dead_letters"] >= 30
    with sqlite3.connect(store) as db:
        (rows,) = db.execute("SELECT COUNT(*) FROM events").fetchone()
    assert rows == sum(summary["by_kind"].values())
    assert summary["sample_query"]["rows"]
    # the operator's view of the same store, through the query service
    view = summary["operator_view"]
    assert view["devices"] == 8
    # the last phase cuts the MQTT devices' power (their wills say offline); the HTTP devices' last
    # events are from the simulated day before yesterday, silent for longer than the hour that counts as offline
    assert view["devices_online"] == 0
    assert view["alarms"] == 5  # the newest five of the thrown-object and shed-fire alarms
