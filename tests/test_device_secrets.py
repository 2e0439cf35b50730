"""The device secrets: a config whose devices have none is refused, unless the LAN is trusted on purpose.

``check-config`` (the unit's ``ExecStartPre=``) and ``run`` refuse it with every device named and
the fix; the secrets file is validated like a config; the gateway's broker login comes from it; and
no secret is ever printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from device_sims.inventory import (
    PLATFORM_DIALECTS,
    sample_device_secrets,
    sample_devices,
    write_sample_config,
)
from foundation.credentials import CREDENTIAL_PLACEHOLDER
from foundation.errors import ConfigError
from gateway.config import load_config
from gateway.device_secrets import (
    DeviceSecrets,
    load_device_secrets,
    prepare_trust,
    with_missing_generated,
    write_device_secrets,
)

ROOT = Path(__file__).resolve().parents[1]


def sample(tmp_path: Path, *, trust: str = "") -> Path:
    """The sample compound's config; ``trust`` replaces its [trust] lines."""
    path = write_sample_config(tmp_path / "g.toml", state_dir=tmp_path / "s", http_port=8480, mqtt_port=1883)
    if trust:
        text = path.read_text(encoding="utf-8")
        start = text.index("[trust]\n")
        end = text.index("\n\n", start)
        path.write_text(text[:start] + "[trust]\n" + trust + text[end:], encoding="utf-8")
    return path


def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``compound-gateway`` in a process of its own (the exit code and output are what is asserted)."""
    return subprocess.run(  # noqa: PLW1510 - the exit code is what is asserted
        [sys.executable, "-m", "cli", *argv], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def every_secret() -> list[str]:
    secrets = sample_device_secrets()
    values = [s.get_secret_value() for s in (*secrets.devices.values(), *secrets.platforms.values())]
    return [*values, secrets.gateway.get_secret_value()] if secrets.gateway else values


def test_devices_without_secrets_are_refused_by_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No secrets file: every device and the platform are named, with the command that fixes it.

    Checked to fail: with ``check_lan_trust`` reduced to a no-op, check-config says ok (exit 0).
    """
    path = sample(tmp_path, trust=f'secrets_file = "{tmp_path / "absent.toml"}"')
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    named = set(re.findall(r"devices\.(\d{20})", err))
    # the platform's devices have no secret of their own: the platform authenticates for them
    assert named == {d.id for d in sample_devices() if d.dialect not in PLATFORM_DIALECTS}
    assert "platforms.ctwing-smoke: no secret" in err
    assert "--generate-missing" in err
    assert "lan_trusted" in err


def test_a_trusted_lan_accepts_devices_without_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lan_trusted = true`` is the one way to run without secrets, and check-config says so."""
    path = sample(tmp_path, trust=f'lan_trusted = true\nsecrets_file = "{tmp_path / "absent.toml"}"')
    assert main(["check-config", str(path)]) == 0
    assert "(LAN trusted)" in capsys.readouterr().out


def test_one_device_missing_is_named_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A secrets file that lacks one device names that device only; the others' secrets are fine."""
    path = sample(tmp_path)
    config = load_config(path)
    secrets = load_device_secrets(config)
    missing = sample_devices()[3].id
    devices = {k: v for k, v in secrets.devices.items() if k != missing}
    write_device_secrets(
        config.trust.secrets_file or tmp_path,
        DeviceSecrets(None, secrets.gateway, devices, secrets.platforms),
    )
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    named = set(re.findall(r"devices\.(\d{20})", err))
    assert named == {missing}


def test_the_sample_config_passes_and_no_secret_is_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config counts the secrets and prints none of them."""
    path = sample(tmp_path)
    assert main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert "device secrets: 8 devices, 1 platforms" in captured.out
    for secret in every_secret():
        assert secret not in captured.out + captured.err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[devices]\n"36010400011240000001" = "short"\n', "shorter than 12 characters"),
        ('[devices]\n"36010400011249999999" = "a-long-enough-secret"\n', "not a device of"),
        ('[platforms]\n"shed-mqtt" = "a-long-enough-secret"\n', "no device of"),
        ('[devices]\n"36010400011340000002" = "a-long-enough-secret"\n', "its platform authenticates for it"),
        ('gateways = "a-long-enough-secret"\n', "gateways: Extra inputs are not permitted"),
        ("[devices\n", "not valid UTF-8 TOML"),
    ],
    ids=["weak", "stale device", "not a platform", "platform device", "unknown key", "not toml"],
)
def test_bad_secrets_files_are_refused_naming_the_entry(tmp_path: Path, content: str, expected: str) -> None:
    """Weak secrets, stale or mistyped entries and broken files stop the start, naming the entry."""
    path = sample(tmp_path, trust=f'lan_trusted = true\nsecrets_file = "{tmp_path / "s.toml"}"')
    (tmp_path / "s.toml").write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        prepare_trust(load_config(path), path)
    assert expected in str(raised.value)
    assert "a-long-enough-secret" not in str(raised.value)


def test_the_gateway_logs_in_to_the_broker_with_its_secret(tmp_path: Path) -> None:
    """The secrets file's ``gateway`` entry becomes the broker login of ``compound-gateway``."""
    config, secrets = prepare_trust(load_config(sample(tmp_path)), tmp_path / "g.toml")
    assert config.mqtt.username == "compound-gateway"
    assert secrets.gateway is not None
    assert config.mqtt.password == secrets.gateway


def test_missing_secrets_are_generated_and_kept(tmp_path: Path) -> None:
    """Generation adds what is missing (random, 24 characters), keeps what is there, names what it added."""
    config = load_config(sample(tmp_path))
    secrets = load_device_secrets(config)
    kept = sample_devices()[0].id
    partial = DeviceSecrets(None, None, {kept: secrets.devices[kept]}, {})
    generated, added = with_missing_generated(config, partial)
    holders = [d for d in sample_devices()[1:] if d.dialect not in PLATFORM_DIALECTS]
    assert set(added) == {f"devices.{d.id}" for d in holders} | {"platforms.ctwing-smoke", "gateway"}
    assert generated.devices[kept] == secrets.devices[kept]
    fresh = [v.get_secret_value() for k, v in generated.devices.items() if k != kept]
    assert len(set(fresh)) == len(fresh)
    assert all(len(v) == 24 for v in fresh)
    target = tmp_path / "written.toml"
    write_device_secrets(target, generated)
    assert target.stat().st_mode & 0o777 == 0o600
    again = load_device_secrets(
        config.model_copy(update={"trust": config.trust.model_copy(update={"secrets_file": target})})
    )
    assert again.devices == generated.devices
    assert again.gateway == generated.gateway


def test_under_the_unit_the_placeholder_credential_stops_the_start(tmp_path: Path) -> None:
    """The unit passes ``not-provided`` when the secrets file is absent: refused with where it belongs.

    A trusted LAN starts with the placeholder (no secrets at all).
    """
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "device-secrets").write_bytes(CREDENTIAL_PLACEHOLDER)
    path = sample(tmp_path, trust='secrets_credential = "device-secrets"')
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
    refused = cli("check-config", str(path), env=env)
    assert refused.returncode == 2, refused.stdout
    assert "/etc/compound-gateway/credentials/device-secrets" in refused.stderr
    trusted = sample(tmp_path, trust="lan_trusted = true")
    accepted = cli("check-config", str(trusted), env=env)
    assert accepted.returncode == 0, accepted.stderr
    assert "0 devices, 0 platforms (LAN trusted)" in accepted.stdout


def test_run_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    """``compound-gateway run`` stops with exit 2 and the fix before it opens anything."""
    path = sample(tmp_path, trust=f'secrets_file = "{tmp_path / "absent.toml"}"')
    result = cli("run", "--config", str(path))
    assert result.returncode == 2
    assert "no secret" in result.stderr
    assert not (tmp_path / "s" / "outbox.db").exists()


def test_mqtt_devices_need_the_gateway_s_own_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every device has its secret but the file has no ``gateway`` entry: refused, naming the gateway's account.

    Without it the gateway could not log in to a broker that refuses anonymous clients and would
    read no MQTT device at all. A trusted LAN accepts it. Checked to fail: with the new check of
    ``check_lan_trust`` removed, check-config says ok (exit 0).
    """
    path = sample(tmp_path)
    config = load_config(path)
    secrets = load_device_secrets(config)
    assert config.trust.secrets_file is not None
    write_device_secrets(
        config.trust.secrets_file, DeviceSecrets(None, None, secrets.devices, secrets.platforms)
    )
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "gateway: no secret for the gateway's own compound broker account (compound-gateway)" in err
    assert re.findall(r"devices\.(\d{20})", err) == []
    trusted = sample(
        tmp_path / "trusted", trust=f'lan_trusted = true\nsecrets_file = "{config.trust.secrets_file}"'
    )
    assert main(["check-config", str(trusted)]) == 0
