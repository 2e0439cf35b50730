"""``compound-gateway devices credentials``: the compound broker's password file and ACL from the config.

Reads the gateway config and its device secrets (``[trust] secrets_file``, the systemd credential,
or ``--secrets-file``), optionally adds a random secret for every device, platform and the gateway
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
from foundation.errors import ConfigError
from gateway.broker_accounts import BrokerAccounts, build_broker_accounts
from gateway.config import GatewayConfig, load_config
from gateway.device_secrets import (
    check_lan_trust,
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
        help="the device secrets file to read and write (default: [trust] secrets_file of the config)",
    )


@dataclass(frozen=True)
class WrittenCredentials:
    """What one run wrote: the files, the accounts, and the names of the secrets it generated."""

    passwd: Path
    acl: Path
    accounts: BrokerAccounts
    generated: list[str]
    secrets_file: Path | None


def write_broker_credentials(
    config: GatewayConfig,
    source: Path,
    out_dir: Path,
    *,
    generate_missing: bool = False,
    secrets_file: Path | None = None,
) -> WrittenCredentials:
    """Load (and with ``generate_missing`` complete) the secrets, then write ``out_dir``/passwd and acl.

    ``source`` is the config file, named in errors. Both files are replaced atomically: Mosquitto
    re-reading them on SIGHUP sees the old set or the new one, never a torn file.
    """
    if secrets_file is not None:
        config = config.model_copy(
            update={"trust": config.trust.model_copy(update={"secrets_file": secrets_file})}
        )
    if generate_missing and config.trust.secrets_file is None:
        raise ConfigError(
            f"{source}: --generate-missing needs a file to write the secrets to: set [trust] secrets_file"
            " or pass --secrets-file PATH (a systemd credential cannot be written)"
        )
    secrets_ = load_device_secrets(config, missing_ok=generate_missing)
    generated: list[str] = []
    if generate_missing:
        secrets_, generated = with_missing_generated(config, secrets_)
        if generated or not (config.trust.secrets_file and config.trust.secrets_file.exists()):
            assert config.trust.secrets_file is not None  # noqa: S101 - checked above
            write_device_secrets(config.trust.secrets_file, secrets_)
    check_lan_trust(config, secrets_, source)
    accounts = build_broker_accounts(config, secrets_)
    passwd, acl = out_dir / "passwd", out_dir / "acl"
    write_atomically(passwd, accounts.passwd_text().encode())
    passwd.chmod(PASSWD_MODE)
    write_atomically(acl, accounts.acl_text().encode())
    acl.chmod(ACL_MODE)
    return WrittenCredentials(passwd, acl, accounts, generated, secrets_.source)


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
    devices = len(accounts.passwords) - 1
    print(
        f"compound broker accounts: {devices} MQTT devices and the gateway; {len(accounts.rules)} ACL rules"
    )
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
