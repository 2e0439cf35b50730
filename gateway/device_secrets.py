"""The compound's device secrets: what each device, vendor platform and the gateway itself proves itself with.

One TOML file, outside the gateway config (which is readable by more people and kept in version
control by installers), mode 0600, owned by root; under systemd the unit passes it as the credential
``device-secrets`` (``LoadCredential=``), so the daemon's own user never reads it on disk::

    # the gateway's password on the compound broker ([mqtt] username)
    gateway = "..."

    [devices]      # by device id: HTTP push password, or the MQTT device's broker password
    "36010400011240000001" = "..."

    [platforms]    # by dialect: the platform's signing key or basic password
    "ctwing-smoke" = "..."

``compound-gateway devices credentials --generate-missing`` fills in what is missing and writes the
compound broker's password file and ACL from it (``gateway/broker_accounts.py``).
"""

from __future__ import annotations

import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError

from adapters import DIALECTS
from adapters.base import Transport
from foundation.config_types import ConfigModel
from foundation.credentials import CREDENTIAL_PLACEHOLDER, credential_path, credentials_directory
from foundation.durable_files import write_atomically
from foundation.errors import ConfigError
from foundation.toml_config import format_validation_errors
from gateway.config import DeviceConfig, GatewayConfig

MIN_SECRET_LENGTH = 12
"""Shorter secrets are refused: a digest response is an offline-guessable hash of the password."""


class DeviceSecretsFile(ConfigModel):
    """The file's schema (unknown keys are errors, like the config's)."""

    gateway: SecretStr | None = Field(default=None, description="the gateway's compound broker password")
    devices: dict[str, SecretStr] = Field(default_factory=dict, description="by device id")
    platforms: dict[str, SecretStr] = Field(default_factory=dict, description="by platform dialect")


@dataclass(frozen=True)
class DeviceSecrets:
    """The secrets as loaded, and where from (``source`` None: there was no file)."""

    source: Path | None = None
    gateway: SecretStr | None = None
    devices: dict[str, SecretStr] = field(default_factory=dict)
    platforms: dict[str, SecretStr] = field(default_factory=dict)

    def device(self, device_id: str) -> bytes | None:
        """The secret of one device, as bytes, or None."""
        secret = self.devices.get(device_id)
        return secret.get_secret_value().encode() if secret is not None else None

    def platform(self, dialect: str) -> bytes | None:
        """The secret of one platform, as bytes, or None."""
        secret = self.platforms.get(dialect)
        return secret.get_secret_value().encode() if secret is not None else None

    def to_toml(self) -> str:
        """The file's text (secrets in clear: write it with mode 0600 only)."""
        lines = [
            "# compound-gateway device secrets: keep this file mode 0600, owned by root",
            "# (docs/security.md, 'The compound side'). Written by 'compound-gateway devices credentials'.",
        ]
        if self.gateway is not None:
            lines.append(f"gateway = {_toml_string(self.gateway.get_secret_value())}")
        for table, values in (("devices", self.devices), ("platforms", self.platforms)):
            lines += ["", f"[{table}]"]
            lines += [
                f"{_toml_string(k)} = {_toml_string(v.get_secret_value())}" for k, v in sorted(values.items())
            ]
        return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    # TOML basic strings: the JSON escapes are valid TOML escapes for everything we write
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(c) < 0x20 or c == "\x7f" for c in escaped):
        raise ValueError("a secret or key with control characters cannot be written")
    return f'"{escaped}"'


INSTALLED_CREDENTIALS = Path("/etc/compound-gateway/credentials")
"""Where the shipped unit (``systemd/compound-gateway.service``) reads its credentials from."""


def installed_secrets_file(config: GatewayConfig) -> Path:
    """The file the shipped unit passes as the credential ``[trust] secrets_credential``.

    ``LoadCredential=device-secrets:/etc/compound-gateway/credentials/device-secrets``: where
    ``devices credentials`` reads and writes the secrets when the config names no file.
    """
    return INSTALLED_CREDENTIALS / config.trust.secrets_credential


def secrets_path(config: GatewayConfig) -> Path | None:
    """Where the device secrets are read from: ``[trust] secrets_file``, else the systemd credential.

    None when neither exists (not run by a unit, no file named): the gateway then has no secrets,
    which ``check_lan_trust`` refuses unless the LAN is trusted on purpose.
    """
    if config.trust.secrets_file is not None:
        return config.trust.secrets_file
    directory = credentials_directory()
    if directory is None or not (candidate := directory / config.trust.secrets_credential).exists():
        return None
    if config.trust.lan_trusted and candidate.read_bytes().strip() == CREDENTIAL_PLACEHOLDER:
        return None  # the unit found no file, and this LAN is trusted on purpose: no secrets is fine
    return credential_path(
        config.trust.secrets_credential,
        "the device secrets",
        str(installed_secrets_file(config)),
    )


def load_device_secrets(config: GatewayConfig, *, missing_ok: bool = True) -> DeviceSecrets:
    """Read and validate the secrets file; ``ConfigError`` names the file, the field and the fix.

    A missing file gives no secrets (``missing_ok``), or an error naming where it was looked for.
    """
    path = secrets_path(config)
    if path is None:
        if missing_ok:
            return DeviceSecrets()
        raise ConfigError(
            "no device secrets: set [trust] secrets_file, or pass the systemd credential"
            f" {config.trust.secrets_credential!r} (LoadCredential=)"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return DeviceSecrets(source=path)
        raise ConfigError(
            f"{path}: no such file; create it with 'compound-gateway devices credentials --generate-missing'"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"{path}: not readable by this user; run as root or pass it as a credential"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid UTF-8 TOML: {exc}") from None
    try:
        parsed = DeviceSecretsFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(path, exc)) from None
    problems = [
        f"  {where}: shorter than {MIN_SECRET_LENGTH} characters -> fix: use a longer random secret"
        for where, secret in _all_secrets(parsed)
        if len(secret.get_secret_value()) < MIN_SECRET_LENGTH
    ]
    if problems:
        raise ConfigError("\n".join([f"{path}: {len(problems)} weak secret(s)", *problems]))
    return DeviceSecrets(path, parsed.gateway, dict(parsed.devices), dict(parsed.platforms))


def _all_secrets(parsed: DeviceSecretsFile) -> list[tuple[str, SecretStr]]:
    found = [("gateway", parsed.gateway)] if parsed.gateway is not None else []
    found += [(f"devices.{k}", v) for k, v in parsed.devices.items()]
    found += [(f"platforms.{k}", v) for k, v in parsed.platforms.items()]
    return found


def secret_holders(config: GatewayConfig) -> list[DeviceConfig]:
    """The devices that authenticate themselves (HTTP push and MQTT); a platform's speak through it."""
    return [d for d in config.devices if DIALECTS[d.dialect].transport is not Transport.HTTP_PLATFORM]


def check_lan_trust(config: GatewayConfig, secrets_: DeviceSecrets, source: Path) -> None:
    """Refuse a config whose devices or platforms have no secret, unless ``[trust] lan_trusted``.

    ``source`` is the config file (named in the error). Secrets of devices the config does not
    list are refused too: a stale entry is usually a device id typed wrong. With MQTT devices, the
    gateway's own broker password (the file's ``gateway``, or ``[mqtt] password``) is required too.
    """
    known = {d.id for d in secret_holders(config)}
    stale = sorted(set(secrets_.devices) - known)
    stale_platforms = sorted(set(secrets_.platforms) - set(config.platform_dialects()))
    where = secrets_.source or "the device secrets"
    platform_devices = {d.id for d in config.devices} - known
    problems = [
        f"  devices.{d}: "
        + (
            "its platform authenticates for it (the secret belongs in [platforms])"
            if d in platform_devices
            else f"not a device of {source}"
        )
        + " -> fix: remove it or correct the id"
        for d in stale
    ]
    problems += [
        f"  platforms.{p}: no device of {source} uses this platform -> fix: remove it"
        for p in stale_platforms
    ]
    if not config.trust.lan_trusted:
        problems += [
            f"  devices.{d.id} ({d.name}, {d.dialect}): no secret -> fix: add one"
            for d in secret_holders(config)
            if d.id not in secrets_.devices
        ]
        problems += [
            f"  platforms.{p}: no secret -> fix: add one"
            for p in config.platform_dialects()
            if p not in secrets_.platforms
        ]
        mqtt_devices = any(DIALECTS[d.dialect].transport is Transport.MQTT for d in config.devices)
        if mqtt_devices and secrets_.gateway is None and config.mqtt.password is None:
            # the broker refuses anonymous clients: the gateway could not read a single MQTT device
            problems.append(
                f"  gateway: no secret for the gateway's own compound broker account"
                f" ({config.mqtt.username or GATEWAY_BROKER_USER}), and the config has MQTT devices -> fix: add one"
            )
    if problems:
        raise ConfigError(
            "\n".join(
                [
                    f"{source}: {where}: {len(problems)} problem(s) with the device secrets"
                    " ('compound-gateway devices credentials --config <file> --generate-missing' adds"
                    " the missing ones; [trust] lan_trusted = true accepts devices without, on purpose)",
                    *problems,
                ]
            )
        )


def with_missing_generated(config: GatewayConfig, secrets_: DeviceSecrets) -> tuple[DeviceSecrets, list[str]]:
    """The secrets plus a new random one for each device, platform and the gateway that has none.

    Returns the new secrets and what was added (names, never values).
    """
    added: list[str] = []
    devices = dict(secrets_.devices)
    for device in secret_holders(config):
        if device.id not in devices:
            devices[device.id] = SecretStr(new_secret())
            added.append(f"devices.{device.id}")
    platforms = dict(secrets_.platforms)
    for dialect in config.platform_dialects():
        if dialect not in platforms:
            platforms[dialect] = SecretStr(new_secret())
            added.append(f"platforms.{dialect}")
    gateway = secrets_.gateway
    if gateway is None:
        gateway = SecretStr(new_secret())
        added.append("gateway")
    return DeviceSecrets(secrets_.source, gateway, devices, platforms), added


def new_secret() -> str:
    """A random secret that devices' configuration pages accept (letters and digits, 24 characters)."""
    alphabet = (
        "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"  # no look-alikes: typed by installers
    )
    return "".join(secrets.choice(alphabet) for _ in range(24))


def write_device_secrets(path: Path, secrets_: DeviceSecrets) -> None:
    """Write the secrets file atomically, mode 0600 (the temporary file is created 0600)."""
    write_atomically(path, secrets_.to_toml().encode())
    path.chmod(0o600)


GATEWAY_BROKER_USER = "compound-gateway"
"""The gateway's account on the compound broker unless ``[mqtt] username`` names another."""


def with_broker_login(config: GatewayConfig, secrets_: DeviceSecrets) -> GatewayConfig:
    """The config with the gateway's compound broker login filled in from the secrets.

    ``[mqtt] password`` in the config wins (older installations); otherwise the secrets file's
    ``gateway`` entry is the password of ``[mqtt] username`` (default ``compound-gateway``).
    """
    if config.mqtt.password is not None or secrets_.gateway is None:
        return config
    mqtt = config.mqtt.model_copy(
        update={"username": config.mqtt.username or GATEWAY_BROKER_USER, "password": secrets_.gateway}
    )
    return config.model_copy(update={"mqtt": mqtt})


def prepare_trust(config: GatewayConfig, source: Path) -> tuple[GatewayConfig, DeviceSecrets]:
    """Load the secrets, refuse devices without one (unless trusted), and fill in the broker login."""
    secrets_ = load_device_secrets(config)
    check_lan_trust(config, secrets_, source)
    return with_broker_login(config, secrets_), secrets_
