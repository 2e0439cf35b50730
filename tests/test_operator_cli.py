"""The operator commands as a person runs them: tokens, tables, CSV/JSON, exports, audit checks."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_sims.inventory import compound_id
from foundation.tables import display_width, render_csv, render_table
from tests.district_data import DistrictData, district_toml

C1 = compound_id(1)


def cli(*args: str, token: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CGW_TOKEN"}
    if token:
        env["CGW_TOKEN"] = token
    result = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def config_file(district_data: DistrictData, tmp_path: Path) -> Path:
    path = tmp_path / "district.toml"
    path.write_text(
        district_toml(tmp_path, store=f'type = "sqlite"\npath = "{district_data.sqlite_path}"'), "utf-8"
    )
    return path


def make_token(config: Path, name: str, role: str, *extra: str) -> str:
    created = cli("token", "create", "--config", str(config), "--name", name, "--role", role, *extra)
    assert "shown once" in created.stderr
    return created.stdout.strip()


def test_tables_align_chinese_names(config_file: Path, district_data: DistrictData) -> None:
    token = make_token(config_file, "zhang", "viewer")
    start, end = district_data.start.isoformat(), district_data.end.isoformat()
    out = cli(
        "query",
        "counts",
        "--config",
        str(config_file),
        "--start",
        start,
        "--end",
        end,
        "--interval",
        "day",
        token=token,
    ).stdout
    lines = out.splitlines()
    assert "青云谱示范小区" in out
    assert "洪都新村" in out
    widths = {display_width(line) for line in lines[:2]}
    assert len(widths) == 1  # header and rule are exactly as wide
    # the counts column ends in the same terminal column on every row
    assert len({display_width(line) for line in lines[2:]}) == 1

    devices = cli("query", "devices", "--config", str(config_file), token=token).stdout
    summary = devices.split("\n\n")[1].splitlines()
    assert summary[0].split() == ["compound", "devices", "online", "rate"]
    assert len({display_width(line) for line in summary}) == 1


def test_csv_json_and_export_progress(config_file: Path, district_data: DistrictData) -> None:
    token = make_token(config_file, "li", "operator")
    window = ["--start", district_data.start.isoformat(), "--end", district_data.end.isoformat()]
    as_csv = cli(
        "query",
        "events",
        "--config",
        str(config_file),
        *window,
        "--kind",
        "vehicle_pass",
        "--format",
        "csv",
        "--limit",
        "7",
        token=token,
    ).stdout
    rows = list(csv.reader(io.StringIO(as_csv)))
    assert rows[0] == ["occurred", "compound", "device", "kind", "what", "event id"]
    assert len(rows) == 8
    exported = cli(
        "query",
        "events",
        "--config",
        str(config_file),
        *window,
        "--compound",
        C1,
        "--format",
        "json",
        "--limit",
        "50",
        "--all",
        token=token,
    )
    events = json.loads(exported.stdout)["events"]
    expected = [e for e in district_data.events if e.compound_id == C1]
    assert sorted(e["event_id"] for e in events) == sorted(e.event_id for e in expected)
    assert "pages), done" in exported.stderr


def test_lookups_need_a_reason_and_refusals_exit_nonzero(
    config_file: Path, district_data: DistrictData
) -> None:
    token = make_token(config_file, "wang", "operator")
    plate = next(p for e in district_data.events if (p := getattr(e.payload, "plate", None)))
    refused = cli(
        "query",
        "compare",
        "--config",
        str(config_file),
        "--plate",
        plate,
        "--last",
        "3d",
        token=token,
        check=False,
    )
    assert refused.returncode == 1
    assert "reason" in refused.stderr
    answered = cli(
        "query",
        "compare",
        "--config",
        str(config_file),
        "--plate",
        plate,
        "--last",
        "3d",
        "--reason",
        "hit and run",
        "--format",
        "json",
        token=token,
    )
    assert {e["payload"]["plate"] for e in json.loads(answered.stdout)["events"]} == {plate}
    no_token = cli("query", "devices", "--config", str(config_file), check=False)
    assert (no_token.returncode, "401" in no_token.stderr) == (1, True)


def test_token_listing_revocation_and_audit_verification(config_file: Path) -> None:
    token = make_token(config_file, "zhao", "admin")
    listed = cli("token", "list", "--config", str(config_file)).stdout
    assert "zhao" in listed
    assert token not in listed
    cli("query", "audit", "--config", str(config_file), token=token)
    verified = cli("audit-verify", "--config", str(config_file)).stdout
    assert "intact" in verified
    cli("token", "revoke", "--config", str(config_file), "--name", "zhao")
    after = cli("query", "audit", "--config", str(config_file), token=token, check=False)
    assert after.returncode == 1


def test_csv_cells_cannot_start_formulas() -> None:
    text = render_csv(["a"], [['=HYPERLINK("x")'], ["-1"], ["ok"]])
    assert list(csv.reader(io.StringIO(text)))[1:] == [['\'=HYPERLINK("x")'], ["'-1"], ["ok"]]


def test_display_width_counts_wide_characters_twice() -> None:
    assert display_width("青云谱") == 6
    assert display_width("Block 7") == 7
    assert display_width("e\u0301") == 1  # a combining accent takes no column
    assert display_width("ＡＢ") == 4  # fullwidth Latin


@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=8))
def test_rendered_tables_are_rectangular(rows: list[tuple[str, str]]) -> None:
    printable = [[a, b] for a, b in rows if a.isprintable() and b.isprintable()]
    table = render_table(["名称", "value"], printable)
    lines = table.split("\n")
    assert len(lines) == len(printable) + 2
    first_column = len(lines[1].split("  ")[0])  # the rule under the first header
    for line, (name, value) in zip(lines[2:], printable, strict=True):
        # every second cell starts at the same terminal column, whatever the width of the first
        expected = name + " " * (first_column - display_width(name)) + "  " + value
        assert line == expected.rstrip()


def test_api_command_serves_until_sigterm(config_file: Path, tmp_path: Path) -> None:
    """`compound-gateway api` answers on its port and stops cleanly on SIGTERM (as systemd stops it)."""
    import signal  # noqa: PLC0415
    import time  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    from district.config import load_district_config  # noqa: PLC0415

    port = load_district_config(config_file).api.port
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "api", "--config", str(config_file)], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/v1/openapi.json", timeout=1
                ) as response:
                    assert json.load(response)["openapi"].startswith("3.")
                    break
            except OSError:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the API did not come up"
                time.sleep(0.1)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/devices", timeout=5)
        except urllib.error.HTTPError as refused:
            refused.close()
            assert refused.code == 401
        else:
            raise AssertionError("an unauthenticated request was answered")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
