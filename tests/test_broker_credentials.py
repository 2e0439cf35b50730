"""``compound-gateway devices credentials``: the compound broker's password file and ACL from the config.

The files' acceptance by a real Mosquitto (every generated hash logs in, the ACL keeps devices to
their own topics) is tested in tests/test_compound_broker.py; here: the command's round trip, its
errors, and that no secret ever reaches its output.
"""

from __future__ import annotations

import base64
import json
import stat
import tomllib
from pathlib import Path

import pytest

from cli.main import main
from device_sims.broker import Mosquitto
from device_sims.devices import sample_secret
from device_sims.inventory import sample_broker_accounts, write_sample_config
from gateway import device_secrets
from gateway.broker_accounts import PBKDF2_ITERATIONS, build_broker_accounts, mosquitto_hash
from gateway.config import load_config
from gateway.device_secrets import installed_secrets_file, load_device_secrets

ROOT = Path(__file__).resolve().parents[1]
REFS = {"UF20231107A01", "e2e0c7a4-5f0d4a1b", "6J0C5A2PAZ0001", "860812045678901", "SR2026A0101"}
GATEWAY_USERS = {
    "compound-gateway",
    "compound-gateway-sys",
    "compound-gateway-cmd",
}  # intake, drop counter, commands


def config_without_secrets(tmp_path: Path) -> tuple[Path, Path]:
    """The sample compound's config whose secrets file does not exist yet: (config, secrets file)."""
    path = write_sample_config(
        tmp_path / "gateway.toml", state_dir=tmp_path / "state", http_port=1, mqtt_port=1
    )
    secrets_file = tmp_path / "gateway-secrets.toml"
    secrets_file.unlink()
    return path, secrets_file


def users_of(passwd: Path) -> list[str]:
    return [line.split(":", 1)[0] for line in passwd.read_text(encoding="utf-8").splitlines()]


def test_generate_missing_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """First run: every secret generated, the secrets file 0600, passwd 0640, acl 0644; second run: nothing new.

    The second run writes the same users and the same ACL (new salts only), and no secret of the
    file appears in either run's stdout or stderr.
    """
    config, secrets_file = config_without_secrets(tmp_path)
    out = tmp_path / "broker"
    args = ["devices", "credentials", "--config", str(config), "--out-dir", str(out), "--generate-missing"]
    assert main(args) == 0
    first = capsys.readouterr()
    secrets = tomllib.loads(secrets_file.read_text(encoding="utf-8"))
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "passwd").stat().st_mode) == 0o640
    assert stat.S_IMODE((out / "acl").stat().st_mode) == 0o644
    assert set(secrets["devices"]) == {
        "36010400011240000001",
        "36010400011240000002",
        "36010400011240000003",
        "36010400011210000001",
        "36010400011210000002",
        "36010400011320000001",
        "36010400011340000001",
        "36010400011350000001",
    }  # not the NB-IoT sensor (36010400011340000002): its platform authenticates for it
    assert set(secrets["platforms"]) == {"ctwing-smoke"}
    assert "generated 10 new secret(s)" in first.out
    assert set(users_of(out / "passwd")) == {*GATEWAY_USERS, *REFS}
    acl, passwd = (out / "acl").read_text(encoding="utf-8"), (out / "passwd").read_text(encoding="utf-8")

    assert main(args) == 0
    second = capsys.readouterr()
    assert "generated no secrets" in second.out
    assert tomllib.loads(secrets_file.read_text(encoding="utf-8")) == secrets
    assert users_of(out / "passwd") == users_of(tmp_path / "broker" / "passwd")
    assert (out / "acl").read_text(encoding="utf-8") == acl
    assert (out / "passwd").read_text(encoding="utf-8") != passwd  # fresh salts, same accounts

    every_secret = [secrets["gateway"], *secrets["devices"].values(), *secrets["platforms"].values()]
    for run in (first, second):
        leaked = [s for s in every_secret if s in run.out or s in run.err]
        assert leaked == []


def test_the_acl_grants_exactly_the_dialects_topics(tmp_path: Path) -> None:
    """The shed sensor's block and the gateway's rules for it, exactly; no pattern lines, no wildcard users."""
    acl = sample_broker_accounts().acl_text()
    shed = acl.split("user 860812045678901\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert set(shed) == {
        "topic write shed/860812045678901/+",
        "topic write shed/860812045678901/cmd/resp",
        "topic write shed/860812045678901/state/resp",
        "topic read shed/860812045678901/cmd/req",
        "topic read shed/860812045678901/state/req",
    }
    gateway = acl.split("user compound-gateway\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert {line for line in gateway if "860812045678901" in line or "$SYS" in line} == {
        "topic read shed/860812045678901/+",
        "topic read shed/860812045678901/cmd/resp",
        "topic read shed/860812045678901/state/resp",
        "topic write shed/860812045678901/cmd/req",
        "topic write shed/860812045678901/state/req",
    }
    # the drop counter's session has an account of its own (sessions are bound to accounts): that
    # counter, nothing else
    drop_counter = acl.split("user compound-gateway-sys\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert drop_counter == ["topic read $SYS/broker/publish/messages/dropped"]
    # the command session's account: only the devices that take commands (the LPR camera, not the
    # shed sensor), their command requests and their topics where answers come, no $SYS
    commands = acl.split("user compound-gateway-cmd\n", 1)[1].split("\n\n", 1)[0].splitlines()
    camera = "e2e0c7a4-5f0d4a1b"
    assert [line for line in commands if "860812045678901" in line] == []
    assert {line for line in commands if camera in line} == {line for line in gateway if camera in line}
    assert not [line for line in commands if "$SYS" in line]
    assert "pattern" not in acl
    assert {line.split()[1] for line in acl.splitlines() if line.startswith("user ")} == {
        *GATEWAY_USERS,
        *REFS,
    }


def test_the_hash_is_mosquitto_passwd_s() -> None:
    """A hash ``mosquitto_passwd`` 2.0.11 wrote on this machine (password ``secretpass``), recomputed."""
    written = "$7$101$2IwV37SUpmu25Tcn$gHdgxT6mRcmHMSZJav/OjaImfzDvghUDG+AHOFGvwYuuvBDZkVHdTsfobbN0cg2j9TQvekHDQS1HvW0EtD4pFA=="
    _, _, iterations, salt, _ = written.split("$")
    assert int(iterations) == PBKDF2_ITERATIONS
    assert mosquitto_hash("secretpass", salt=base64.b64decode(salt)) == written


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(
            '[[devices]]\nid = "36010400011340000009"\nname = "x"\ndialect = "hightoss-mqtt"\nref = "860812045678901"\n',
            "devices.36010400011340000009: its ref '860812045678901' is the broker user name of 36010400011340000001",
            id="one-ref-two-dialects",
        ),
        pytest.param(
            '[[devices]]\nid = "36010400011340000009"\nname = "x"\ndialect = "shed-mqtt"\nref = "compound-gateway"\n',
            "devices.36010400011340000009: its ref 'compound-gateway' is the broker user name of the gateway",
            id="ref-is-the-gateway-user",
        ),
        pytest.param(
            '[[devices]]\nid = "36010400011340000009"\nname = "x"\ndialect = "shed-mqtt"\nref = "aa:bb:cc"\n',
            "ref 'aa:bb:cc' cannot be an MQTT topic level and broker user name",
            id="colon-in-ref",
        ),
    ],
)
def test_user_name_collisions_and_bad_refs_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, message: str
) -> None:
    """Exit 2, the devices named, and no file written.

    Teeth: checked once with the collision check of ``build_broker_accounts`` disabled: the two
    collision cases fail (the command writes files where one account would answer for two).
    """
    config, _ = config_without_secrets(tmp_path)
    with config.open("a", encoding="utf-8") as handle:
        handle.write("\n" + extra)
    out = tmp_path / "broker"
    argv = ["devices", "credentials", "--config", str(config), "--out-dir", str(out), "--generate-missing"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_without_a_secrets_file_the_unit_s_credential_file_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped example config names no secrets file: the command uses the one the unit loads, and says so.

    The default is ``/etc/compound-gateway/credentials/<[trust] secrets_credential>``, what
    ``systemd/compound-gateway.service`` passes with ``LoadCredential=``; here that directory is
    moved to a temporary one (the test does not write to /etc). ``--secrets-file`` still wins.
    Checked to fail: before the default existed, the command exited 2 ("needs a file").
    """
    unit = (ROOT / "systemd" / "compound-gateway.service").read_text(encoding="utf-8")
    config, _ = config_without_secrets(tmp_path)
    text = config.read_text(encoding="utf-8")
    config.write_text("\n".join(line for line in text.splitlines() if not line.startswith("secrets_file")))
    loaded = load_config(config)
    assert loaded.trust.secrets_file is None
    default = installed_secrets_file(loaded)
    assert default == Path("/etc/compound-gateway/credentials/device-secrets")
    assert f"LoadCredential={loaded.trust.secrets_credential}:{default}\n" in unit

    monkeypatch.setattr(device_secrets, "INSTALLED_CREDENTIALS", tmp_path / "credentials")
    out = tmp_path / "broker"
    argv = ["devices", "credentials", "--config", str(config), "--out-dir", str(out), "--generate-missing"]
    assert main(argv) == 0
    written = tmp_path / "credentials" / "device-secrets"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    summary = capsys.readouterr().out
    assert f"device secrets: {written} ([trust] secrets_file is not set" in summary
    assert "generated 10 new secret(s)" in summary
    assert set(users_of(out / "passwd")) == {*GATEWAY_USERS, *REFS}

    elsewhere = tmp_path / "elsewhere" / "secrets.toml"
    assert main([*argv, "--secrets-file", str(elsewhere)]) == 0
    assert f"device secrets: {elsewhere}\n" in capsys.readouterr().out
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o600


def test_sim_devices_log_in_with_the_secrets_file_s_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``compound-gateway sim`` presents each device's secret from the config's secrets file, not the sample's.

    The secrets are generated at random here, the broker runs the accounts written from them, and
    every publish of the shed sensor is acknowledged. Teeth: checked once with the secrets file's
    password left out in ``cli.main._sim``: the sensor's login is refused and the report counts failures.
    """
    config, _ = config_without_secrets(tmp_path)
    argv = ["devices", "credentials", "--config", str(config), "--out-dir", str(tmp_path / "broker")]
    assert main([*argv, "--generate-missing"]) == 0
    loaded = load_config(config)
    secrets = load_device_secrets(loaded)
    shed = next(d for d in loaded.devices if d.dialect == "shed-mqtt")
    assert secrets.devices[shed.id].get_secret_value() != sample_secret(shed.id)
    mqtt_section = f'[mqtt]\nhost = "127.0.0.1"\nport = {loaded.mqtt.port}\n'
    with Mosquitto(tmp_path / "mosquitto", accounts=build_broker_accounts(loaded, secrets)) as broker:
        config.write_text(
            config.read_text(encoding="utf-8").replace(
                mqtt_section, f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n', 1
            ),
            encoding="utf-8",
        )
        capsys.readouterr()
        assert main(["sim", "--config", str(config), "--device", shed.id, "--count", "10"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["sent"], report["acked"], report["failed"]) == (10, 10, 0)
