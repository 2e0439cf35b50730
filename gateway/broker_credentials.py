"""``compound-gateway devices credentials``: the compound broker's password file and ACL from the config.

Reads the gateway config and its device secrets (``--secrets-file``, else ``[trust] secrets_file``,
else the file the shipped unit passes as the systemd credential:
``/etc/compound-gateway/credentials/<[trust] secrets_credential>``), optionally adds a random secret for every device, platform and the gateway
that lacks one (``--generate-missing``, written back with mode 0600), and writes ``passwd`` and
``acl`` for Mosquitto's ``password_file`` and ``acl_file`` (``deploy/mosquitto/compound.conf``).
Secrets are never taken from the command line and never printed: only names and counts are.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundation.durable_files import write_atomically
from gateway.broker_accounts import BrokerAccounts, build_broker_accounts
from gateway.config import GatewayConfig, load_config
from gateway.device_secrets import (
    check_lan_trust,
    installed_secrets_file,
    load_device_secrets,
    with_missing_generated,
    write_device_secrets,
)

PASSWD_MODE = 0o640
"""Readable by the broker's group (``chgrp mosquitto``), never by everyone: the hashes are guessable offline."""
ACL_MODE = 0o644


def add_device_commands(sub: Any) -> None:
    """``devices credentials`` (``sub``: the top-level subparsers)."""
    devices = sub.add_parser("devices", help="compound: the devices' accounts on the compound broker")
    actions = devices.add_subparsers(dest="action", required=True)
    credentials = actions.add_parser(
        "credentials",
        help="write the compound broker's password file and ACL from the gateway config and its device secrets",
    )
    credentials.add_argument("--config", type=Path, required=True, help="the gateway TOML config")
    credentials.add_argument(
        "--out-dir",
        type=Path,
        required=True,
        help="where to write passwd and acl (e.g. /etc/mosquitto/compound)",
    )
    credentials.add_argument(
        "--generate-missing",
        action="store_true",
        help="add random secrets for devices, platforms and the gateway that have none (writes the secrets file)",
    )
    credentials.add_argument(
        "--secrets-file",
        type=Path,
        help="the device secrets file to read and write (default: [trust] secrets_file of the config,"
        " else /etc/compound-gateway/credentials/<[trust] secrets_credential>, which the unit passes)",
    )


@dataclass(frozen=True)
class WrittenCredentials:
    """What one run wrote: the files, the accounts, and the names of the secrets it generated."""

    passwd: Path
    acl: Path
    accounts: BrokerAccounts
    generated: list[str]
    secrets_file: Path | None
    secrets_file_defaulted: bool = False
    """The config named no secrets file: the unit's credential file was used."""


def write_broker_credentials(
    config: GatewayConfig,
    source: Path,
    out_dir: Path,
    *,
    generate_missing: bool = False,
    secrets_file: Path | None = None,
) -> WrittenCredentials:
    """Load (and with ``generate_missing`` complete) the secrets, then write ``out_dir``/passwd and acl.

    ``source`` is the config file, named in errors. The secrets file is ``secrets_file``, else
    ``[trust] secrets_file``, else the file the shipped unit loads as the credential
    (``installed_secrets_file``: an installer runs this command, not the unit). Both files are
    replaced atomically: Mosquitto re-reading them on SIGHUP sees the old set or the new one, never a
    torn file.
    """
    defaulted = secrets_file is None and config.trust.secrets_file is None
    secrets_file = secrets_file or config.trust.secrets_file or installed_secrets_file(config)
    config = config.model_copy(
        update={"trust": config.trust.model_copy(update={"secrets_file": secrets_file})}
    )
    secrets_ = load_device_secrets(config, missing_ok=generate_missing)
    generated: list[str] = []
    if generate_missing:
        secrets_, generated = with_missing_generated(config, secrets_)
        if generated or not secrets_file.exists():
            write_device_secrets(secrets_file, secrets_)
    check_lan_trust(config, secrets_, source)
    accounts = build_broker_accounts(config, secrets_)
    passwd, acl = out_dir / "passwd", out_dir / "acl"
    write_atomically(passwd, accounts.passwd_text().encode())
    passwd.chmod(PASSWD_MODE)
    write_atomically(acl, accounts.acl_text().encode())
    acl.chmod(ACL_MODE)
    return WrittenCredentials(passwd, acl, accounts, generated, secrets_file, defaulted)


def run_devices_command(args: argparse.Namespace) -> int:
    """``devices credentials``: write the files and print what was done (names and counts only)."""
    written = write_broker_credentials(
        load_config(args.config),
        args.config,
        args.out_dir,
        generate_missing=args.generate_missing,
        secrets_file=args.secrets_file,
    )
    accounts = written.accounts
    devices = len(accounts.passwords) - 2  # the gateway's two accounts
    print(
        f"compound broker accounts: {devices} MQTT devices and the gateway (and its -sys account for the"
        f" drop counter); {len(accounts.rules)} ACL rules"
    )
    if written.secrets_file_defaulted:
        print(
            f"device secrets: {written.secrets_file} ([trust] secrets_file is not set: the file the unit"
            " passes as its credential, LoadCredential=)"
        )
    else:
        print(f"device secrets: {written.secrets_file}")
    print(f"  {written.passwd} (password_file, mode {PASSWD_MODE:o})")
    print(f"  {written.acl} (acl_file, mode {ACL_MODE:o})")
    if written.generated:
        print(
            f"generated {len(written.generated)} new secret(s) in {written.secrets_file}: {', '.join(written.generated)}"
        )
        print(
            "  configure each device (and platform) with its new secret; the gateway reads its own from the file"
        )
    else:
        print("generated no secrets")
    print(
        f"next: chgrp mosquitto {written.passwd} {written.acl}, then reload the broker"
        " (systemctl reload mosquitto, or SIGHUP): it re-reads both files"
    )
    return 0
