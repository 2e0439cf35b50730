"""The district's configuration: ingester, store, compound registry and operator API.

Frozen pydantic models with ``extra="forbid"``, like the gateway's; ``load_district_config`` reports
every error with its file, field and fix.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from district.city.config import CityConfig
from foundation.config_types import ConfigModel, Port, ZoneName
from foundation.credentials import CredentialName, credential_path
from foundation.events import GbId
from foundation.mqtt import SessionOptions
from foundation.toml_config import load_toml_model
from uplink.commands import MAX_LIFETIME
from uplink.config import BrokerConfig, TlsConfig
from uplink.protocol import DEFAULT_PREFIX
from uplink.stores import StoreConfig


class IngestConfig(ConfigModel):
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
    dead_letter_path: Path = Path("/var/lib/compound-district-ingester/dead-letters.db")
    dead_letter_keep: int = Field(default=100_000, ge=10)
    receipts: bool = Field(default=True, description="confirm stored events to the compounds")
    http_host: str = Field(default="127.0.0.1", description="address of /healthz, /readyz and /metrics")
    http_port: int = Field(
        default=8091,
        ge=0,
        le=65535,
        description="port of /healthz, /readyz and /metrics; one per ingester on a host; 0: no HTTP server",
    )


class CompoundEntry(ConfigModel):
    """A compound the district platform knows (its registry); queries name compounds from here."""

    id: GbId
    name: str = Field(min_length=1, max_length=64)
    district_id: GbId | None = Field(default=None, description="default: the config's district_id")


class ApiTlsConfig(ConfigModel):
    """HTTPS for the operator API and console (none: plain HTTP, e.g. behind a TLS-terminating proxy).

    The key is read from ``key_file``, inside ``cert_file``, or, under systemd, from the credential
    ``key_credential`` names (``LoadCredential=``), so the daemon's user need not read it on disk.
    """

    cert_file: Path = Field(description="the server certificate chain (PEM)")
    key_file: Path | None = Field(
        default=None, description="the server key; none: it is in cert_file (or key_credential names it)"
    )
    key_credential: CredentialName | None = Field(
        default=None,
        description="systemd credential holding the server key ($CREDENTIALS_DIRECTORY/<name>); instead of key_file",
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        if self.key_credential is not None and self.key_file is not None:
            raise ValueError("key_file and key_credential both name the server key; keep one")
        return self

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context (TLS 1.2 at least); raises ``ConfigError`` or ``OSError`` if it does not load."""
        key = self.key_file
        if self.key_credential is not None:
            key = credential_path(
                self.key_credential,
                "the API's TLS key",
                f"/etc/compound-district/credentials/{self.key_credential}",
            )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert_file), str(key) if key is not None else None)
        return context


class OperatorApiConfig(ConfigModel):
    """The operators' query API and CLI (``compound-gateway api`` / ``compound-gateway query``)."""

    host: str = "127.0.0.1"
    port: Port = 8090
    ops_db: Path = Field(
        default=Path("/var/lib/compound-district-api/operations.db"),
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
    console_session_hours: float = Field(
        default=8.0, gt=0, le=24 * 7, description="a console login lasts at most this long (a working shift)"
    )
    console_idle_minutes: float = Field(
        default=60.0, gt=0, le=24 * 60, description="a console session unused this long ends"
    )
    console_login_attempts: int = Field(
        default=10, ge=1, le=1000, description="failed console logins per client address per 15 minutes"
    )
    alarm_poll_s: float = Field(
        default=0.5,
        gt=0,
        le=10,
        description="how often the console's live alarm queue looks for new alarms in the store"
        " (an alarm reaches the screen within about this, plus the store's own delay)",
    )
    tls: ApiTlsConfig | None = Field(
        default=None, description="serve HTTPS with this certificate; none: plain HTTP (or behind a proxy)"
    )


HIT_CROPS_DAYS = 30
"""Default days a watch-list hit keeps its face crop at the district (PIPL: sensitive personal data)."""


class RetentionConfig(ConfigModel):
    """How long the district keeps what it stores (privacy: nothing is kept forever)."""

    events_days: int = Field(
        default=180,
        ge=1,
        le=36_500,
        description="events older than this many days (by their time of occurrence) are deleted",
    )
    check_interval_s: float = Field(
        default=3600.0,
        ge=1.0,
        description="how often an ingester purges the embedded (SQLite) store",
    )
    purge_batch_rows: int = Field(
        default=5000,
        ge=1,
        le=100_000,
        description="most events deleted in one SQLite transaction (each holds the write lock)",
    )
    media_days: int = Field(
        default=30,
        ge=1,
        le=36_500,
        description="evidence files (and their index rows) older than this many days are deleted",
    )
    evidence_confirmed_days: int = Field(
        default=365,
        ge=1,
        le=36_500,
        description="evidence of alarms an operator confirmed is kept this many days instead",
    )
    influx_alter_policy: bool = Field(
        default=False,
        description="InfluxDB 1.x: change an existing retention policy's duration to events_days"
        " (default: leave an operator's policy as it is and log a warning naming the difference)",
    )
    hit_crops_days: int = Field(
        default=HIT_CROPS_DAYS,
        ge=1,
        le=36_500,
        description="watch-list hits older than this many days lose their face crop (the event stays);"
        f" at most events_days; default {HIT_CROPS_DAYS}, or events_days when that is shorter",
    )

    @model_validator(mode="before")
    @classmethod
    def _hit_crops_default(cls, data: Any) -> Any:
        # an unset hit_crops_days follows a shorter events_days: a config that only shortens the
        # events (valid before hit crops had a setting) stays valid, the crops go with the events
        if isinstance(data, dict) and "hit_crops_days" not in data:
            events_days = data.get("events_days")
            if type(events_days) is int and 1 <= events_days < HIT_CROPS_DAYS:
                return {**data, "hit_crops_days": events_days}
        return data

    @model_validator(mode="after")
    def _hit_crops_within_events(self) -> RetentionConfig:
        if self.hit_crops_days > self.events_days:
            raise ValueError(
                f"hit_crops_days ({self.hit_crops_days}) must be at most events_days"
                f" ({self.events_days}): a hit's crop is deleted with its event anyway; lower"
                " hit_crops_days or raise events_days"
            )
        return self

    commands_days: int = Field(
        default=365,
        ge=1,
        le=36_500,
        description="commands (who ordered which device to do what, why, and its reports) issued more"
        " than this many days ago are deleted from the command book; the audit log keeps the request",
    )
    rollup_days: int = Field(
        default=400,
        ge=1,
        le=36_500,
        description="hourly roll-ups (event counts per compound, kind, severity and hour: no personal"
        " data) older than this many days are deleted; kept longer than events for a year of statistics",
    )
    device_changes_days: int = Field(
        default=400,
        ge=1,
        le=36_500,
        description="the device registry's history (devices added, changed, removed) older than this"
        " many days is deleted; the current devices are kept as long as their compound lists them",
    )


class DeskConfig(ConfigModel):
    """What every desk of the operator API (evidence, commands) has: its own persistent session.

    The session uses ``[broker]`` (host, port, TLS, credentials) unless overridden in the desk's section.
    """

    enabled: bool = Field(default=True, description="run the desk inside `compound-gateway api`")
    client_id: str = Field(
        pattern=r"^[A-Za-z0-9_\-]{1,64}$",
        description="the desk's MQTT client id (stable: its session is persistent)",
    )
    username: str | None = Field(default=None, description="default: [broker] username")
    password: SecretStr | None = Field(default=None, description="default: [broker] password")
    tls: TlsConfig | None = Field(default=None, description="default: [broker] tls")
    topic_prefix: str = DEFAULT_PREFIX

    def session_options(self, broker: BrokerConfig, receive_maximum: int) -> SessionOptions:
        """The desk's persistent, manually acknowledged session (this section's overrides of ``[broker]``)."""
        tls = self.tls or broker.tls
        password = self.password or broker.password
        return SessionOptions(
            host=broker.host,
            port=broker.port,
            client_id=self.client_id,
            clean_start=False,
            session_expiry_s=broker.session_expiry_s,
            keepalive_s=broker.keepalive_s,
            tls_context=tls.context() if tls else None,
            username=self.username or broker.username,
            password=password.get_secret_value() if password else None,
            receive_maximum=receive_maximum,
            manual_ack=True,
        )


class EvidenceConfig(DeskConfig):
    """The evidence desk: the operator API's own session to the district broker, its files and index.

    The session uses ``[broker]`` (host, port, TLS, credentials) unless overridden here; its user is
    ``district-evidence`` in the shipped ACL (asks compounds, reads their evidence topics).
    """

    client_id: str = Field(
        default="district-evidence",
        pattern=r"^[A-Za-z0-9_\-]{1,64}$",
        description="the desk's MQTT client id (stable: its session is persistent)",
    )
    media_dir: Path | None = Field(
        default=None, description="content-addressed evidence files (default: evidence/ beside [api] ops_db)"
    )
    index_path: Path | None = Field(
        default=None, description="the evidence index (SQLite; default: evidence.db beside [api] ops_db)"
    )
    request_ttl_s: int = Field(
        default=900, ge=1, le=7 * 24 * 3600, description="a request not answered by then is expired"
    )
    max_transfers: int = Field(
        default=128,
        ge=1,
        le=10_000,
        description="files received at once (partial files on disk, not memory); chunks of more are"
        " refused and that file is lost until asked for again: size it for an alarm storm across compounds",
    )
    transfer_stale_s: int = Field(
        default=600, ge=10, description="a partial file without a chunk for this long is discarded"
    )


MAX_LIFETIME_S = int(MAX_LIFETIME.total_seconds())


class CommandsConfig(DeskConfig):
    """The command desk: the operator API's session that orders compounds' devices (``docs/commands.md``).

    The session uses ``[broker]`` unless overridden here; its user is ``district-commands`` in the
    shipped ACL (writes every compound's orders, reads their reports). Rate limits count the
    commands in the command book over the last minute, so they hold across API restarts.
    """

    client_id: str = Field(
        default="district-commands",
        pattern=r"^[A-Za-z0-9_\-]{1,64}$",
        description="the desk's MQTT client id (stable: its session is persistent)",
    )
    book_path: Path | None = Field(
        default=None, description="the command book (SQLite; default: commands.db beside [api] ops_db)"
    )
    lifetime_s: int = Field(
        default=60,
        ge=1,
        le=MAX_LIFETIME_S,
        description="a command not executed within this long after its issue is never executed",
    )
    max_lifetime_s: int = Field(
        default=600,
        ge=1,
        le=MAX_LIFETIME_S,
        description=f"the longest lifetime an issuer may ask for (at most {MAX_LIFETIME_S} s, the uplink's bound)",
    )
    per_token_per_minute: int = Field(
        default=10, ge=1, le=10_000, description="commands one token may issue in any minute"
    )
    per_compound_per_minute: int = Field(
        default=30,
        ge=1,
        le=10_000,
        description="commands all tokens together may issue to one compound in any minute",
    )
    no_answer_grace_s: int = Field(
        default=60,
        ge=0,
        le=24 * 3600,
        description="a command with no final report this long after its expiry is shown as no_answer",
    )

    @model_validator(mode="after")
    def _default_within_max(self) -> Self:
        if self.lifetime_s > self.max_lifetime_s:
            raise ValueError(
                f"lifetime_s ({self.lifetime_s}) must be at most max_lifetime_s ({self.max_lifetime_s})"
            )
        return self


class RegistryConfig(DeskConfig):
    """The registry desk: keeps every compound's configured devices (``district/device_registry.py``).

    The session uses ``[broker]`` unless overridden here; its user is ``district-registry`` in the
    shipped ACL (reads every compound's retained ``registry/inventory``). Its subscription is not
    shared: a shared subscription never receives the retained inventories.
    """

    client_id: str = Field(
        default="district-registry",
        pattern=r"^[A-Za-z0-9_\-]{1,64}$",
        description="the desk's MQTT client id (stable: its session is persistent)",
    )
    db_path: Path | None = Field(
        default=None, description="the device registry (SQLite; default: registry.db beside [api] ops_db)"
    )


class DistrictConfig(ConfigModel):
    """The district's configuration: ingester, store, compound registry and operator API."""

    district_id: GbId
    broker: BrokerConfig = BrokerConfig()
    ingest: IngestConfig = IngestConfig()
    store: StoreConfig
    api: OperatorApiConfig = OperatorApiConfig()
    retention: RetentionConfig = RetentionConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    commands: CommandsConfig = CommandsConfig()
    registry: RegistryConfig = RegistryConfig()
    compounds: tuple[CompoundEntry, ...] = ()
    city: CityConfig | None = Field(default=None, description="the GA/T 1400 link to the city platform")
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

    def evidence_media_dir(self) -> Path:
        """Where evidence files are kept."""
        return self.evidence.media_dir or self.api.ops_db.parent / "evidence"

    def evidence_index_path(self) -> Path:
        """The evidence index file."""
        return self.evidence.index_path or self.api.ops_db.parent / "evidence.db"

    def command_book_path(self) -> Path:
        """The command book file."""
        return self.commands.book_path or self.api.ops_db.parent / "commands.db"

    def device_registry_path(self) -> Path:
        """The device registry file."""
        return self.registry.db_path or self.api.ops_db.parent / "registry.db"

    def compound_district(self, entry: CompoundEntry) -> str:
        """The district a registered compound belongs to."""
        return entry.district_id or self.district_id


def load_district_config(path: Path) -> DistrictConfig:
    """Read and validate a district config; ``ConfigError`` names the file, the fields and the fixes."""
    return load_toml_model(path, DistrictConfig, "the district TOML config")
