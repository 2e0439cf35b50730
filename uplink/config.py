"""Configuration both ends of the uplink share: the district broker and TLS to it.

The stores' configs live with their stores (``uplink.stores``).
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path

from pydantic import Field, SecretStr

from foundation.config_types import ConfigModel, Port


class TlsConfig(ConfigModel):
    """TLS to a broker, optionally with a client certificate."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

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
        return None

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
            context.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return context


class BrokerConfig(ConfigModel):
    """An MQTT broker (the district's)."""

    host: str = "127.0.0.1"
    port: Port = 1883
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60)
