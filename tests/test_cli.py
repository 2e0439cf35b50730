"""The command line: dialect listing, parse exit codes, config errors that name the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters import DIALECTS
from cli.main import main
from device_sims.inventory import write_sample_config


def test_list_dialects(capsys: pytest.CaptureFixture[str]) -> None:
    """Every dialect is listed with its transport and a description."""
    assert main(["parse", "--list-dialects"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(DIALECTS)
    for name, dialect in DIALECTS.items():
        (line,) = [line for line in out if line.startswith(name + " ")]
        assert dialect.description in line


def test_parse_rejection_exits_non_zero_with_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad payload prints the specific reason and exits 1."""
    payload = tmp_path / "bad.json"
    payload.write_text(
        '{"notifyType": "deviceDataChanged", "deviceId": "x", "service": {"eventTime": "soon"}}'
    )
    assert main(["parse", "--dialect", "ctwing-smoke", str(payload)]) == 1
    err = json.loads(capsys.readouterr().err)
    assert err == {
        "rejected": "bad_timestamp",
        "field": "service.eventTime",
        "detail": "'soon' is not a compact time",
    }


def test_parse_mqtt_dialect_needs_topic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """MQTT dialects identify the device by topic, so parse asks for one."""
    payload = tmp_path / "p.json"
    payload.write_text("{}")
    assert main(["parse", "--dialect", "shed-mqtt", str(payload)]) == 2
    assert "--topic" in capsys.readouterr().err


def test_parse_unknown_dialect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown dialect lists the known ones."""
    payload = tmp_path / "p.json"
    payload.write_text("{}")
    assert main(["parse", "--dialect", "nope", str(payload)]) == 2
    assert "hik-isapi-acs" in capsys.readouterr().err


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The sample config is valid."""
    path = write_sample_config(tmp_path / "g.toml", state_dir=tmp_path / "s", http_port=8480, mqtt_port=1883)
    assert main(["check-config", str(path)]) == 0
    assert "9 devices" in capsys.readouterr().out


def test_check_config_names_file_field_and_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every error is reported at once, each with its field path and a fix."""
    path = write_sample_config(tmp_path / "g.toml", state_dir=tmp_path / "s", http_port=8480, mqtt_port=1883)
    text = path.read_text(encoding="utf-8")
    text = text.replace('dialect = "vz-lpr-mqtt"', 'dialect = "vz-lpr"', 1)
    text = text.replace('id = "36010400011240000002"', 'id = "3601040001124"', 1)
    text = text.replace("[http]\n", "[http]\nportt = 1\n", 1)
    path.write_text(text, encoding="utf-8")
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert "3 configuration error(s)" in err
    assert "devices.1.id" in err
    assert "20-digit" in err
    assert "devices.4.dialect" in err
    assert "use one of:" in err
    assert "http.portt" in err
    assert "remove it" in err


def test_check_config_missing_ref_and_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """MQTT devices need their vendor ref; two devices may not share an id."""
    path = write_sample_config(tmp_path / "g.toml", state_dir=tmp_path / "s", http_port=8480, mqtt_port=1883)
    text = path.read_text(encoding="utf-8").replace('ref = "UF20231107A01"\n', "", 1)
    path.write_text(text, encoding="utf-8")
    assert main(["check-config", str(path)]) == 2
    assert "set ref to the device's serial" in capsys.readouterr().err
    text = text.replace('id = "36010400011240000002"', 'id = "36010400011240000001"', 1)
    text = text.replace(
        'name = "北门人脸门禁"\ndialect = "uface-mqtt"',
        'name = "北门人脸门禁"\ndialect = "uface-mqtt"\nref = "X"',
    )
    path.write_text(text, encoding="utf-8")
    assert main(["check-config", str(path)]) == 2
    assert "appears twice" in capsys.readouterr().err


def test_check_config_bad_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A TOML syntax error names the file and the line."""
    path = tmp_path / "g.toml"
    path.write_text("[compound\n")
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert "line 1" in err


def test_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/gateway.example.toml, which installers copy, passes check-config."""
    example = Path(__file__).resolve().parents[1] / "docs" / "gateway.example.toml"
    assert main(["check-config", str(example)]) == 0
    assert "8 devices" in capsys.readouterr().out


def test_example_district_config_is_valid() -> None:
    """docs/district.example.toml loads as a district config."""
    from district.config import load_district_config  # noqa: PLC0415
    from uplink.stores import InfluxV1StoreConfig  # noqa: PLC0415

    example = Path(__file__).resolve().parents[1] / "docs" / "district.example.toml"
    config = load_district_config(example)
    assert isinstance(config.store, InfluxV1StoreConfig)
    assert config.ingest.name == "ingester-1"
