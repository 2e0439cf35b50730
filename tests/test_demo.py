"""The README's demo command, end to end: simulators -> real Mosquitto -> gateway -> ingester -> store."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from device_sims.demo import EVIDENCE_CLIP_BYTES, EVIDENCE_REASON
from device_sims.media_server import media_bytes, media_role


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_demo_loses_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], broker: str) -> None:
    """Every acknowledged event reaches the district store once; every kind shows up; --store keeps it.

    Through the command line, on the embedded broker and on a real Mosquitto (``--broker mosquitto``).
    The demo ends with the thrown-object alarm's evidence, checked in ``_assert_evidence``.
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
    # 20 messages are re-sent; the thrown-object camera's and the siren's heartbeats among them carry
    # no event, so fewer than 20 are duplicates to suppress
    assert summary["resends_suppressed"] >= 10
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
    assert view["devices"] == 9
    # the last phase cuts the MQTT devices' power (their wills say offline); the HTTP devices' last
    # events are from the simulated day before yesterday, silent for longer than the hour that counts as offline
    assert view["devices_online"] == 0
    # the thrown-object and shed-fire phases raise four critical alarms, the random everyday traffic
    # perhaps more; the query returns the newest five at most
    assert 4 <= view["alarms"] <= 5
    _assert_evidence(summary["evidence"], tmp_path / "work")


def _camera_sha(key: str) -> str:
    return hashlib.sha256(media_bytes(key, EVIDENCE_CLIP_BYTES)[0]).hexdigest()


def _assert_evidence(evidence: dict[str, Any], workdir: Path) -> None:
    """The alarm's three files at the district are the camera's bytes; the pictures came unasked.

    The reference SHA-256 is computed here from the simulator's bytes of each file's key, not taken
    from the demo's own comparison; each downloaded file is read back from ``<workdir>/evidence/``.

    Broken on purpose: with ``proactive = false`` in the demo's ``[evidence.serve]`` the demo exited
    1 ("after 30 s the district holds [], not ['snapshot', 'trajectory']"), failing the exit-code
    assertion; with the demo comparing against a clip of another size (``media_bytes(key, 1 MiB)``)
    the clip's match was false and the exit code 1.
    """
    assert evidence["ok"] is True, evidence
    assert "error" not in evidence
    files = evidence["files"]
    assert {f["role"] for f in files} == {"snapshot", "trajectory", "clip"}
    assert len(files) == 3
    for f in files:
        assert media_role(f["key"]) == f["role"]
        expected = _camera_sha(f["key"])
        assert f["sha256_district"] == f["sha256_downloaded"] == f["sha256_camera"] == expected
        assert f["match"] is True
        kept = Path(f["path"])
        assert kept.parent == workdir / "evidence"
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == expected
        assert kept.stat().st_size == f["size"]
    by_role = {f["role"]: f for f in files}
    assert by_role["clip"]["size"] == EVIDENCE_CLIP_BYTES
    # the two pictures came unasked; the clip on the operator's request, which the compound allowed
    assert by_role["snapshot"]["request_id"] is None
    assert by_role["trajectory"]["request_id"] is None
    assert by_role["clip"]["request_id"] == evidence["request"]["request_id"]
    assert (evidence["request"]["state"], evidence["request"]["rule"]) == ("complete", "alarm_evidence")
    assert 0 <= evidence["snapshot_after_alarm_s"] < 30
    assert 0 <= evidence["clip_after_request_s"] < 30
    # the district's audit: the operator asked for the clip, then downloaded each file, always saying why
    operator = evidence["operator"]
    assert operator.startswith("demo-operator-")
    assert [(a["actor"], a["action"], a["reason"], a["outcome"]) for a in evidence["audit"]] == [
        (operator, "evidence_request", EVIDENCE_REASON, "ok")
    ] + [(operator, "evidence_media", EVIDENCE_REASON, "ok")] * 3
