"""Configuration both ends of the uplink share: the district broker and TLS to it.

The stores' configs live with their stores (``uplink.stores``).
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator

from foundation.config_types import ConfigModel, Port
from foundation.credentials import CredentialName, credential_path
from foundation.errors import ConfigError


class TlsConfig(ConfigModel):
    """TLS to a broker, optionally with a client certificate.

    The client key is read from ``key_file``, or, under systemd, from the credential
    ``key_credential`` names (``$CREDENTIALS_DIRECTORY/<name>``, passed by the unit's
    ``LoadCredential=``), so the key never has to be readable by the daemon's own user on disk.
    """

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = Field(
        default=None, description="the client key; none: it is in cert_file (or key_credential names it)"
    )
    key_credential: CredentialName | None = Field(
        default=None,
        description="systemd credential holding the client key ($CREDENTIALS_DIRECTORY/<name>, passed with "
        "LoadCredential=<name>:<path>); instead of key_file",
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        if self.key_credential is not None and self.key_file is not None:
            raise ValueError("key_file and key_credential both name the client key; keep one")
        if self.key_credential is not None and self.cert_file is None:
            raise ValueError("key_credential needs cert_file: a key without its certificate is of no use")
        return self

    def key_path(self) -> Path | None:
        """Where the client key is read from: ``key_file``, the credential, or None (inside ``cert_file``).

        Raises ``ConfigError`` (what is wrong and the fix, without the config file and field, which
        the caller adds) when the credential cannot be reached.
        """
        if self.key_credential is None:
            return self.key_file
        return credential_path(
            self.key_credential,
            "the client key",
            f"/etc/compound-gateway/credentials/{self.key_credential}",
        )

    def key_problem(self) -> str | None:
        """Why the client certificate does not load with its key (and what to do), or None."""
        if self.cert_file is None:
            return None
        try:
            self._load_client_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        except ConfigError as exc:
            return str(exc)
        except OSError as exc:  # ssl.SSLError included: no key, a key of another certificate
            source = (
                f"credential {self.key_credential!r}"
                if self.key_credential
                else str(self.key_file or self.cert_file)
            )
            return f"the client certificate {self.cert_file} does not load with the key in {source}: {exc}"
        return None

    def certificate_problem(self, now: datetime | None = None) -> str | None:
        """Why our own client certificate cannot work (expired, not yet valid, unreadable), or None."""
        if self.cert_file is None:
            return None
        from cryptography import x509  # noqa: PLC0415 - only gateways with client certificates need it

        try:
            certificate = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            return f"client certificate {self.cert_file} is unreadable: {exc}"
        now = now or datetime.now(UTC)
        if now > certificate.not_valid_after_utc:
            return (
                f"client certificate {self.cert_file} expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC;"
                " the broker refuses it: install a renewed certificate"
            )
        if now < certificate.not_valid_before_utc:
            return f"client certificate {self.cert_file} is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        return self.key_problem()

    def certificate_name(self) -> str | None:
        """The common name of our client certificate (what the district broker takes as our user name)."""
        if self.cert_file is None:
            return None
        from cryptography import x509  # noqa: PLC0415 - only gateways with client certificates need it
        from cryptography.x509.oid import NameOID  # noqa: PLC0415

        try:
            certificate = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        except (OSError, ValueError):
            return None
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else None

    def context(self) -> ssl.SSLContext:
        """A verifying client context (never falls back to insecure)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self.cert_file is not None:
            self._load_client_certificate(context)
        return context

    def _load_client_certificate(self, context: ssl.SSLContext) -> None:
        # the one place that pairs the certificate with its key (file, credential or inside the cert)
        key = self.key_path()
        context.load_cert_chain(str(self.cert_file), str(key) if key is not None else None)


def check_client_key(tls: TlsConfig | None, source: Path, field: str) -> None:
    """Raise ``ConfigError`` naming the config file, the field and the fix if the client key does not load.

    ``field`` is where ``tls`` sits in the config (``uplink.broker.tls``). Daemons call this at
    start, so a missing credential stops the start with the fix rather than failing every connect.
    """
    if tls is None or (problem := tls.key_problem()) is None:
        return
    key = "key_credential" if tls.key_credential else "key_file" if tls.key_file else "cert_file"
    raise ConfigError(f"{source}: {field}.{key}: {problem}")


class BrokerConfig(ConfigModel):
    """An MQTT broker (the district's)."""

    host: str = "127.0.0.1"
    port: Port = 1883
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60)
