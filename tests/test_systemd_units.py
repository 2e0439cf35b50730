"""Every systemd unit we ship is sandboxed: ``systemd-analyze security`` exposure at most 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).resolve().parents[1] / "systemd").glob("*.service"))
MAX_EXPOSURE = 2.0


def test_there_are_units() -> None:
    assert {u.name for u in UNITS} >= {
        "compound-gateway.service",
        "compound-district-ingester@.service",
        "compound-district-api.service",
        "compound-district-city.service",
    }


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_exposure_is_at_most_two(unit: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing: apt-get install systemd (scripts/dev does)"
    assert_exposure_at_most_two(analyze, unit)


def assert_exposure_at_most_two(analyze: str, unit: Path) -> None:
    """``systemd-analyze security --offline`` rates the unit file at most ``MAX_EXPOSURE``."""
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


SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
EMBEDDED_STORE_DROP_IN = SYSTEMD / "optional" / "compound-district-api-embedded-store.conf"


def settings(*texts: str) -> dict[str, list[str]]:
    """``Key=value`` assignments of unit files and drop-ins read in order, each key's values as listed.

    An empty assignment resets the list, as systemd does; a later ``User=`` wins.
    """
    found: dict[str, list[str]] = {}
    for text in texts:
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";", "[")) or "=" not in line:
                continue
            key, value = line.split("=", 1)
            found[key] = [] if value == "" else [*found.get(key, []), value]
    return found


def user_and_state(unit_name: str, *texts: str) -> tuple[str, set[str]]:
    """The user a unit runs as and the state directories it lists.

    Without ``User=``, a dynamic user is named after the unit's prefix (systemd's
    ``user_from_unit_name``: ``a@1.service`` runs as ``a``), so every unit spells its user out.
    """
    found = settings(*texts)
    user = found.get("User", [unit_name.split("@", maxsplit=1)[0].removesuffix(".service")])[-1]
    return user, {d.split(":")[0] for v in found.get("StateDirectory", []) for d in v.split()}


def deployments() -> dict[str, list[tuple[str, str, set[str]]]]:
    """The shipped units, and with the embedded-store drop-in applied to the API: (unit, user, dirs)."""
    plain = [(u.name, *user_and_state(u.name, u.read_text(encoding="utf-8"))) for u in UNITS]
    api = SYSTEMD / "compound-district-api.service"
    embedded = [
        (
            name,
            *user_and_state(name, api.read_text(encoding="utf-8"), EMBEDDED_STORE_DROP_IN.read_text("utf-8")),
        )
        if name == api.name
        else (name, user, dirs)
        for name, user, dirs in plain
    ]
    return {"shipped": plain, "embedded-store drop-in": embedded}


@pytest.mark.parametrize("deployment", ["shipped", "embedded-store drop-in"])
def test_units_with_different_users_share_no_state_directory(deployment: str) -> None:
    """A StateDirectory= is chowned to the starting unit's user (systemd.exec(5)): two users would fight.

    Checked to fail: with the API's ``StateDirectory=compound-district`` and the ingesters' as they
    were before (both ``compound-district``), this reports the directory and both users.
    """
    units = deployments()[deployment]
    owners: dict[str, set[str]] = {}
    for _, user, dirs in units:
        for directory in dirs:
            owners.setdefault(directory, set()).add(user)
        assert dirs, "every unit keeps its state in a StateDirectory="
    assert {d: users for d, users in owners.items() if len(users) > 1} == {}
    users = {name: user for name, user, _ in units}
    if deployment == "shipped":  # the API and the ingesters are separate users
        assert users["compound-district-api.service"] != users["compound-district-ingester@.service"]
    else:  # the API reads the ingesters' SQLite file: it is their user, with their directory
        assert users["compound-district-api.service"] == users["compound-district-ingester@.service"]
        assert "compound-district-ingester" in {n: d for n, _, d in units}["compound-district-api.service"]


def test_the_config_defaults_live_in_the_units_state_directories() -> None:
    """The district's default files (and the example's) are in the directory of the unit that writes them."""
    from district.config import IngestConfig, OperatorApiConfig  # noqa: PLC0415

    state = {name: dirs for name, _, dirs in deployments()["shipped"]}
    example = tomllib.loads(
        (Path(__file__).resolve().parents[1] / "docs" / "district.example.toml").read_text("utf-8")
    )

    def directory(path: Path | str) -> str:
        return Path(path).parent.relative_to("/var/lib").as_posix()

    ingester, api = state["compound-district-ingester@.service"], state["compound-district-api.service"]
    assert directory(IngestConfig(name="x").dead_letter_path) in ingester
    assert directory(example["ingest"]["dead_letter_path"]) in ingester
    assert directory(OperatorApiConfig().ops_db) in api
    assert directory(example["api"]["ops_db"]) in api
    gateway = state["compound-gateway.service"]
    from gateway.config import StateConfig  # noqa: PLC0415

    assert StateConfig().dir.relative_to("/var/lib").as_posix() in gateway


def test_the_uplink_tls_key_reaches_the_gateway_as_a_credential() -> None:
    """The unit loads the key as credential ``uplink-tls-key`` and the example config reads exactly that one.

    Checked to fail: renaming the credential in the example config (or the unit) breaks the pairing;
    a ``SetCredential=`` placeholder other than ``uplink.config.CREDENTIAL_PLACEHOLDER`` fails too.
    """
    from foundation.credentials import CREDENTIAL_PLACEHOLDER  # noqa: PLC0415

    found = settings((SYSTEMD / "compound-gateway.service").read_text(encoding="utf-8"))
    loaded = dict(v.split(":", 1) for v in found["LoadCredential"])
    assert loaded == {
        "pseudonym-key": "/etc/compound-gateway/credentials/pseudonym-key",
        "uplink-tls-key": "/etc/compound-gateway/credentials/uplink-tls-key",
        "device-secrets": "/etc/compound-gateway/credentials/device-secrets",
    }
    assert dict(v.split(":", 1) for v in found["SetCredential"]) == {
        "uplink-tls-key": CREDENTIAL_PLACEHOLDER.decode(),
        "device-secrets": CREDENTIAL_PLACEHOLDER.decode(),
    }
    example = tomllib.loads(
        (Path(__file__).resolve().parents[1] / "docs" / "gateway.example.toml").read_text("utf-8")
    )
    tls = example["uplink"]["broker"]["tls"]
    assert tls["key_credential"] == "uplink-tls-key"
    assert "key_file" not in tls  # the key is not on the disk the daemon can read


def test_systemd_parses_every_setting() -> None:
    """``systemd-analyze verify``: no setting ignored for bad syntax (e.g. an empty ``SetCredential=`` value).

    The only complaint allowed is the missing /opt installation of this machine.
    """
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    result = subprocess.run(
        [analyze, "verify", *map(str, UNITS)], capture_output=True, text=True, timeout=60, check=False
    )
    complaints = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "/opt/compound-gateway/bin/compound-gateway is not executable" not in line
    ]
    assert complaints == []


def test_the_embedded_store_drop_in_keeps_the_sandbox(tmp_path: Path) -> None:
    """The API with the embedded-store drop-in applied still rates at most 2.0."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    combined = tmp_path / "compound-district-api.service"
    combined.write_text(
        (SYSTEMD / "compound-district-api.service").read_text(encoding="utf-8")
        + "\n"
        + EMBEDDED_STORE_DROP_IN.read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    assert_exposure_at_most_two(analyze, combined)


def test_the_city_password_reaches_the_city_service_as_a_credential() -> None:
    """The city unit loads ``city-password`` (placeholder when missing) and the example config reads it.

    Checked to fail: the example config's ``password_credential = "city-pass"`` breaks the pairing.
    """
    from foundation.credentials import CREDENTIAL_PLACEHOLDER  # noqa: PLC0415

    found = settings((SYSTEMD / "compound-district-city.service").read_text(encoding="utf-8"))
    names = ("city-password", "city-subscriptions-password", "city-notify-password")
    assert dict(v.split(":", 1) for v in found["LoadCredential"]) == {
        name: f"/etc/compound-district/credentials/{name}" for name in names
    }
    assert dict(v.split(":", 1) for v in found["SetCredential"]) == dict.fromkeys(
        names, CREDENTIAL_PLACEHOLDER.decode()
    )
    example = tomllib.loads(
        (Path(__file__).resolve().parents[1] / "docs" / "district.example.toml").read_text("utf-8")
    )
    assert example["city"]["password_credential"] == "city-password"
    assert "password" not in example["city"]
    # it writes the shared queue directory (the group, as the ingesters do), never as its own
    # StateDirectory=; it runs as the ingesters' user so that it can read the embedded store's devices
    ingester = settings((SYSTEMD / "compound-district-ingester@.service").read_text(encoding="utf-8"))
    assert found["User"] == ingester["User"]
    assert found["SupplementaryGroups"] == ["compound-district"]
    assert found["ReadWritePaths"] == ingester["ReadWritePaths"] == ["-/var/lib/compound-district-city"]
    assert found["UMask"] == ["0007"]
    assert example["city"]["queue_path"].startswith("/var/lib/compound-district-city/")


def test_the_city_queue_directory_is_shared_through_a_group_never_a_state_directory() -> None:
    """The ingesters write the city queue, the API reads it: one fixed setgid directory, one group.

    The directory of ``[city] queue_path``'s default is made by the shipped tmpfiles.d entry
    (2770 root:compound-district, the group from sysusers.d); no unit lists it as its
    ``StateDirectory=`` (systemd would move it under /var/lib/private for one dynamic user); the
    ingesters may write it (``ReadWritePaths=``, group, ``UMask=0007`` so the other writers can
    write their files), and so may the API, whose registry desk keeps the device registry there
    when the city link reads it (``[registry] db_path``, docs/city.md). Checked to fail: with
    the ingester's ``UMask=0077`` as before, and with ``StateDirectory=compound-district-city``
    added to the ingester.
    """
    from district.city.config import CityConfig  # noqa: PLC0415

    default = CityConfig.model_fields["queue_path"].default
    shared = default.parent
    tmpfiles = (SYSTEMD / "tmpfiles.d" / "compound-district-city.conf").read_text(encoding="utf-8")
    entries = [line.split() for line in tmpfiles.splitlines() if line and not line.startswith("#")]
    assert entries == [["d", str(shared), "2770", "root", "compound-district", "-"]]
    sysusers = (SYSTEMD / "sysusers.d" / "compound-district.conf").read_text(encoding="utf-8")
    assert [line.split() for line in sysusers.splitlines() if line and not line.startswith("#")] == [
        ["g", "compound-district", "-"]
    ]
    for _, _, dirs in deployments()["shipped"]:
        assert shared.relative_to("/var/lib").as_posix() not in dirs
    ingester = settings((SYSTEMD / "compound-district-ingester@.service").read_text(encoding="utf-8"))
    assert ingester["SupplementaryGroups"] == ["compound-district"]
    assert ingester["ReadWritePaths"] == [f"-{shared}"]
    assert ingester["UMask"] == ["0007"]
    api = settings((SYSTEMD / "compound-district-api.service").read_text(encoding="utf-8"))
    assert api["SupplementaryGroups"] == ["compound-district"]
    assert api["ReadWritePaths"] == [f"-{shared}"]
    assert api["UMask"] == ["0007"]
    assert api["ProtectSystem"] == ["strict"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_a_config_error_does_not_restart_loop(unit: Path) -> None:
    """Every unit that restarts on failure leaves exit 2 alone: ``cli.main`` exits 2 on a config error.

    Checked to fail: the city unit without ``RestartPreventExitStatus=2`` (the review's finding).
    """
    settings = [line.strip() for line in unit.read_text(encoding="utf-8").splitlines()]
    assert "Restart=on-failure" in settings
    assert "RestartPreventExitStatus=2" in settings
