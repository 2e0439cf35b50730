"""Configuration of the uplink (gateway side) and of the district ingester.

Frozen pydantic models with ``extra="forbid"``, like the gateway's; ``load_district_config`` reports
every error with its file, field and fix.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, field_validator

from gateway.config_types import ZoneName
from gateway.events import GbId
from gateway.toml_config import load_toml_model
from uplink.protocol import DEFAULT_PREFIX

Port = Annotated[int, Field(ge=1, le=65535)]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsConfig(_Config):
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


class BrokerConfig(_Config):
    """An MQTT broker (the district's)."""

    host: str = "127.0.0.1"
    port: Port = 1883
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60)


class SqliteStoreConfig(_Config):
    """The embedded store: a SQLite file."""

    type: Literal["sqlite"] = "sqlite"
    path: Path


class InfluxV1StoreConfig(_Config):
    """InfluxDB through the 1.x API (``/write``, InfluxQL ``/query``)."""

    type: Literal["influx_v1"] = "influx_v1"
    url: AnyHttpUrl
    database: str = Field(default="compound_events", pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    retention_policy: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    username: str | None = None
    password: SecretStr | None = None
    create_database: bool = True
    timeout_s: float = Field(default=10.0, gt=0)


class InfluxV2StoreConfig(_Config):
    """InfluxDB 2.x/3.x (or 1.8+) through the v2 API with influxdb-client."""

    type: Literal["influx_v2"] = "influx_v2"
    url: AnyHttpUrl
    org: str
    bucket: str
    token: SecretStr
    timeout_s: float = Field(default=10.0, gt=0)


StoreConfig = Annotated[
    SqliteStoreConfig | InfluxV1StoreConfig | InfluxV2StoreConfig, Field(discriminator="type")
]


class MqttUplinkConfig(_Config):
    """Gateway -> district broker."""

    mode: Literal["mqtt"] = "mqtt"
    broker: BrokerConfig = BrokerConfig()
    client_id: str | None = Field(default=None, description="default: cgw-up-<compound id>")
    topic_prefix: str = DEFAULT_PREFIX
    batch_max_events: int = Field(default=200, ge=1, le=5000)
    batch_max_bytes: int = Field(default=256 * 1024, ge=1024, le=4 * 1024 * 1024)
    batch_max_delay_ms: int = Field(
        default=500, ge=0, le=60_000, description="how long routine events wait to fill a batch"
    )
    inflight_batches: int = Field(default=8, ge=1, le=256)
    replay_rate: float = Field(
        default=5000.0, gt=0, description="routine events per second at most (alarms are not paced)"
    )
    poll_ms: int = Field(
        default=50, ge=5, le=5000, description="how often an idle uplink looks for new events"
    )
    receipts: bool = Field(
        default=True,
        description="events count as delivered when the district confirms them stored, not at the broker's PUBACK",
    )
    receipt_timeout_s: float = Field(
        default=60.0, gt=0, description="sent events without a receipt are sent again"
    )
    alarm_receipt_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="alarms without a receipt are sent again sooner (a district broker that lost them)",
    )


class DirectUplinkConfig(_Config):
    """Gateway -> district store directly (small districts without a broker)."""

    mode: Literal["direct"] = "direct"
    store: StoreConfig
    batch_max_events: int = Field(default=500, ge=1, le=5000)
    batch_max_delay_ms: int = Field(default=500, ge=0, le=60_000)
    replay_rate: float = Field(default=5000.0, gt=0)
    poll_ms: int = Field(default=50, ge=5, le=5000)


UplinkConfig = Annotated[MqttUplinkConfig | DirectUplinkConfig, Field(discriminator="mode")]


class IngestConfig(_Config):
    """How the district ingester consumes the uplink."""

    name: str = Field(
        default="ingester-1", pattern=r"^[A-Za-z0-9_\-]{1,64}$", description="unique per ingester"
    )
    group: str = Field(
        default="district-ingesters",
        pattern=r"^[A-Za-z0-9_\-]{1,64}$",
        description="shared subscription group",
    )
    topic_prefix: str = DEFAULT_PREFIX
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    batch_max_events: int = Field(default=5000, ge=1, le=100_000)
    max_message_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=64 * 1024,
        description="larger uplink messages are dead-lettered unread (gateways send at most 4 MiB)",
    )
    dead_letter_path: Path = Path("/var/lib/compound-district/ingest-dead-letters.db")
    dead_letter_keep: int = Field(default=100_000, ge=10)
    receipts: bool = Field(default=True, description="confirm stored events to the compounds")


class CompoundEntry(_Config):
    """A compound the district platform knows (its registry); queries name compounds from here."""

    id: GbId
    name: str = Field(min_length=1, max_length=64)
    district_id: GbId | None = Field(default=None, description="default: the config's district_id")


class OperatorApiConfig(_Config):
    """The operators' query API and CLI (``compound-gateway api`` / ``compound-gateway query``)."""

    host: str = "127.0.0.1"
    port: Port = 8090
    ops_db: Path = Field(
        default=Path("/var/lib/compound-district/operations.db"),
        description="tokens (hashed), the append-only audit log and alarm lifecycles",
    )
    timezone: ZoneName = Field(
        default="Asia/Shanghai", description="zone of day buckets and of times shown to people"
    )
    max_range_days: int = Field(default=31, ge=1, le=366, description="longest time range of one query")
    max_page: int = Field(default=1000, ge=10, le=10_000, description="most rows of one page")
    device_silent_after_s: int = Field(
        default=3600, ge=60, description="a device with no event for this long counts as offline"
    )
    inventory_lookback_days: int = Field(
        default=30, ge=1, le=366, description="devices that reported within this period are listed"
    )
    timeout_s: float = Field(default=30.0, gt=0, description="longest a query may take")


class DistrictConfig(_Config):
    """The district's configuration: ingester, store, compound registry and operator API."""

    district_id: GbId
    broker: BrokerConfig = BrokerConfig()
    ingest: IngestConfig = IngestConfig()
    store: StoreConfig
    api: OperatorApiConfig = OperatorApiConfig()
    compounds: tuple[CompoundEntry, ...] = ()
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("compounds")
    @classmethod
    def _unique_compounds(cls, compounds: tuple[CompoundEntry, ...]) -> tuple[CompoundEntry, ...]:
        seen: set[str] = set()
        for entry in compounds:
            if entry.id in seen:
                raise ValueError(f"compound {entry.id} is listed twice; keep one [[compounds]] entry")
            seen.add(entry.id)
        return compounds

    def compound_district(self, entry: CompoundEntry) -> str:
        """The district a registered compound belongs to."""
        return entry.district_id or self.district_id


def load_district_config(path: Path) -> DistrictConfig:
    """Read and validate a district config; ``ConfigError`` names the file, the fields and the fixes."""
    return load_toml_model(path, DistrictConfig, "the district TOML config")
