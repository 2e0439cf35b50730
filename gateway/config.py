"""Gateway configuration: one TOML file, validated at start-up into frozen pydantic models.

Every error names the file, the field and the fix, and all errors are reported at once.
"""

from __future__ import annotations

import os
import re
import secrets
import ssl
from dataclasses import dataclass
from datetime import timedelta
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Literal, Protocol, TypeVar

from pydantic import (
    Field,
    HttpUrl,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from adapters import COMMAND_ENCODERS, DIALECTS
from adapters.base import MQTT_REF_PATTERN, Transport
from foundation.backoff import BackoffConfig
from foundation.config_types import ConfigModel, Port, ZoneName
from foundation.credentials import CredentialName, credential_path
from foundation.errors import ConfigError
from foundation.events import GbId, Location
from foundation.toml_config import load_toml_model
from gateway.command_policy import CommandsConfig
from gateway.local_rules.config import RuleConfig, RuleEngineConfig, check_rules
from uplink.config import BrokerConfig, TlsConfig
from uplink.protocol import DEFAULT_PREFIX
from uplink.stores import StoreConfig


class CompoundConfig(ConfigModel):
    """Who this gateway speaks for."""

    district_id: GbId
    compound_id: GbId
    name: str = Field(min_length=1, max_length=64)
    timezone: ZoneName = Field(
        default="Asia/Shanghai", description="device-local time zone for times without offset"
    )


class StateConfig(ConfigModel):
    """Where durable state lives and how much of it may pile up."""

    dir: Path = Path("/var/lib/compound-gateway")
    outbox_max_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    dead_letter_keep: int = Field(default=10_000, ge=10)
    dedup_window_days: int = Field(
        default=14, ge=1, le=365, description="how long delivered event ids are kept to recognise re-sends"
    )
    write_queue_size: int = Field(default=4096, ge=16)
    worker_process: bool = Field(
        default=True,
        description="parse and commit in a separate process (the second core); false: in a thread of the gateway",
    )


class PrivacyConfig(ConfigModel):
    """Pseudonymization of person identifiers."""

    key_file: Path | None = Field(
        default=None,
        description="credential file with the pseudonymization key; default: $CREDENTIALS_DIRECTORY/pseudonym-key, "
        "else <state dir>/pseudonym.key (created on first start)",
    )
    media_retention_days: int = Field(
        default=30, ge=1, le=3650, description="pictures (gate snapshots, hit crops) are deleted after this"
    )


class FacesConfig(ConfigModel):
    """Face matching of gate pictures against the district's watch lists, inside the compound."""

    enabled: bool = Field(default=True, description="analyse face-gate pictures while a face list is loaded")
    workers: int = Field(default=1, ge=1, le=32, description="processes of the face pool")
    model: Literal["hog", "cnn"] = Field(default="hog", description="dlib detector: hog (CPU) or cnn")
    upsample: int = Field(
        default=1, ge=0, le=3, description="detector upsampling (finds smaller faces, slower)"
    )
    threshold: float = Field(
        default=0.6, gt=0.0, le=1.5, description="match distance for lists that do not set their own"
    )
    max_backlog: int = Field(
        default=200,
        ge=1,
        description="pictures waiting for analysis; beyond it the oldest are shed (counted)",
    )
    send_hit_snapshot: bool = Field(
        default=True,
        description="a hit carries the matched face, cropped; false: no picture leaves the compound",
    )


class MqttConfig(ConfigModel):
    """The compound's device broker (where MQTT devices publish)."""

    host: str = "127.0.0.1"
    port: Port = 1883
    client_id: str | None = Field(default=None, description="default: cgw-<compound id>")
    username: str | None = Field(
        default=None,
        pattern=r"^[^:\s]{1,64}$",
        description="the gateway's account on the compound broker; default compound-gateway when the secrets name one",
    )
    password: SecretStr | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60)
    receive_maximum: int = Field(
        default=256, ge=1, le=65535, description="unacknowledged QoS 1 messages in flight"
    )
    max_payload_bytes: int = Field(default=1024 * 1024, ge=1024)
    device_rate_per_s: float = Field(
        default=50.0,
        gt=0,
        description="messages per second one MQTT device may keep up; beyond it they are dead-lettered",
    )
    device_burst: int = Field(default=500, ge=1, description="messages one MQTT device may send at once")


class HttpsConfig(ConfigModel):
    """The HTTPS listener of the receiver: the gateway's certificate and key (PEM)."""

    port: Port = 8443
    cert_file: Path
    key_file: Path | None = Field(
        default=None, description="the private key; none: it is in cert_file (or key_credential names it)"
    )
    key_credential: CredentialName | None = Field(
        default=None,
        description="systemd credential holding the key ($CREDENTIALS_DIRECTORY/<name>); instead of key_file",
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> HttpsConfig:
        if self.key_credential is not None and self.key_file is not None:
            raise ValueError("key_file and key_credential both name the key; keep one")
        return self

    def server_context(self, source: Path) -> ssl.SSLContext:
        """The listener's TLS context; ``ConfigError`` naming ``source`` (the config), the field and the fix."""
        if self.key_credential is None:
            key, field = self.key_file, "key_file" if self.key_file is not None else "cert_file"
        else:
            field = "key_credential"
            try:
                key = credential_path(
                    self.key_credential,
                    "the HTTPS listener's key",
                    f"/etc/compound-gateway/credentials/{self.key_credential}",
                )
            except ConfigError as exc:
                raise ConfigError(f"{source}: http.tls.key_credential: {exc}") from None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(self.cert_file), str(key) if key is not None else None)
        except OSError as exc:  # ssl.SSLError included: not PEM, a key of another certificate
            raise ConfigError(
                f"{source}: http.tls.{field}: the certificate {self.cert_file} does not load with its key"
                f" ({exc}) -> fix: point cert_file and key_file at the gateway's PEM certificate and key"
            ) from None
        return context


class HttpConfig(ConfigModel):
    """The receiver that push devices and IoT platforms POST to."""

    host: str = "0.0.0.0"  # noqa: S104 - devices on the compound network must reach it
    port: Port = 8480
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    commit_timeout_s: float = Field(default=10.0, gt=0)
    device_rate_per_s: float = Field(
        default=20.0, gt=0, description="pushes per second one device may keep up (429 beyond)"
    )
    device_burst: int = Field(
        default=100, ge=1, description="pushes one device may make at once after a lull"
    )
    platform_rate_per_s: float = Field(
        default=500.0, gt=0, description="pushes per second one vendor platform may keep up"
    )
    platform_burst: int = Field(default=2000, ge=1, description="pushes a platform may make at once")
    plain: bool = Field(
        default=True, description="listen for plain HTTP on port; false: HTTPS only ([http.tls])"
    )
    tls: HttpsConfig | None = Field(
        default=None, description="also listen for HTTPS, with the gateway's own certificate"
    )

    @model_validator(mode="after")
    def _some_listener(self) -> HttpConfig:
        if not self.plain and self.tls is None:
            raise ValueError("plain = false needs [http.tls]: the receiver would listen nowhere")
        if self.tls is not None and self.tls.port == self.port and self.plain:
            raise ValueError(f"[http.tls] port {self.port} is the plain HTTP port too; give HTTPS its own")
        return self


SourceNetwork = IPv4Network | IPv6Network
"""An address range in CIDR notation (``192.168.10.0/24``, ``10.0.0.7/32``, ``fd00::/8``)."""


class TrustConfig(ConfigModel):
    """Who on the compound LAN may make events (docs/security.md, "The compound side").

    Every device and vendor platform proves who it is with its own secret: HTTP pushes with digest
    or basic authentication (platforms: a signature or basic), MQTT devices with their account on
    the compound broker. The secrets live in one file outside the config (``secrets_file``, or the
    systemd credential ``secrets_credential``), never on a command line.
    """

    lan_trusted: bool = Field(
        default=False,
        description="on purpose: accept devices and platforms that have no secret (an isolated, trusted LAN)",
    )
    secrets_file: Path | None = Field(
        default=None,
        description="the device secrets (TOML, mode 0600); default: the systemd credential secrets_credential",
    )
    secrets_credential: CredentialName = Field(
        default="device-secrets",
        description="systemd credential holding the device secrets when secrets_file is not set",
    )
    digest_realm: str = Field(
        default="compound-gateway",
        min_length=1,
        max_length=64,
        pattern=r'^[^"\\]+$',
        description="the realm of digest and basic challenges (part of every device's digest: change it with them)",
    )
    nonce_lifetime_s: int = Field(
        default=300, ge=10, le=86400, description="a digest challenge is good for this long (then stale)"
    )
    signature_max_skew_s: int = Field(
        default=300, ge=5, le=3600, description="platform signatures: how far the timestamp may be off"
    )


class PlatformConfig(ConfigModel):
    """A vendor IoT platform that pushes for many devices (``/platform/<dialect>``)."""

    auth: Literal["hmac-sha256", "basic"] = Field(
        default="hmac-sha256",
        description="hmac-sha256: X-Cgw-Timestamp and X-Cgw-Signature headers (ours); basic: HTTP basic",
    )
    username: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[^:]+$",  # basic credentials are "user:password": a colon would end the name
        description="basic: the user name; default: the dialect",
    )
    allowed_sources: tuple[SourceNetwork, ...] = Field(
        default=(), description="addresses the platform pushes from (CIDR); empty: any"
    )


HttpUserName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r'^[^":\\]+$')]
"""A user name in HTTP basic or digest (no quote, colon or backslash: they would break the header)."""


class DeviceConfig(ConfigModel):
    """One device in the compound's inventory."""

    id: GbId
    name: str = Field(min_length=1, max_length=64)
    dialect: str
    ref: str | None = Field(
        default=None, max_length=64, description="the vendor's identity of the device: serial, MAC or IMEI"
    )
    forward_is_in: bool = Field(
        default=True, description="cameras: movement towards the camera enters the compound"
    )
    location: Location | None = None
    push_auth: Literal["digest", "basic"] = Field(
        default="digest",
        description="HTTP push devices: how they authenticate (Hikvision: MD5digest or basic in the HTTP host)",
    )
    push_username: HttpUserName | None = Field(
        default=None,
        description="HTTP push devices: the user name they send; default: the device id",
    )
    allowed_sources: tuple[SourceNetwork, ...] = Field(
        default=(), description="HTTP push devices: the addresses it may push from (CIDR); empty: any"
    )
    media_url: HttpUrl | None = Field(
        default=None,
        description="cameras keeping pictures and clips on the device: the base URL of our download API"
        " (GET <media_url>/<key>, digest with the device's secret; docs/evidence.md); none: not fetched",
    )
    media_username: HttpUserName = Field(
        default="gateway",
        description="the user name the gateway presents to the device's download API",
    )
    control_url: HttpUrl | None = Field(
        default=None,
        description="HTTP devices that take commands (Hikvision ISAPI): the device's base URL, e.g."
        " http://192.168.1.64; requests carry HTTP digest with control_username and the device's secret",
    )
    control_username: HttpUserName = Field(
        default="gateway",
        description="the user name the gateway presents when it sends the device commands",
    )

    @property
    def http_username(self) -> str:
        """The user name this device authenticates its pushes with."""
        return self.push_username or self.id

    @field_validator("dialect")
    @classmethod
    def _known_dialect(cls, value: str) -> str:
        if value not in DIALECTS:
            raise ValueError(f"unknown dialect {value!r}; use one of: {', '.join(sorted(DIALECTS))}")
        return value

    @model_validator(mode="after")
    def _shared_transports_need_ref(self) -> DeviceConfig:
        if DIALECTS[self.dialect].transport is not Transport.HTTP_DEVICE and not self.ref:
            raise ValueError(
                f"dialect {self.dialect} identifies devices by their own id: set ref to the device's serial/IMEI"
            )
        if DIALECTS[self.dialect].transport is Transport.MQTT and not re.fullmatch(
            MQTT_REF_PATTERN, self.ref or ""
        ):
            # the ref is the device's topic level and its user name on the compound broker
            raise ValueError(
                f"device {self.id}: ref {self.ref!r} cannot be an MQTT topic level and broker user name;"
                " use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
                " (a MAC address without its colons)"
            )
        return self


T_co = TypeVar("T_co", covariant=True)
T = TypeVar("T")


@dataclass(frozen=True)
class Pacing:
    """Batch and pace limits of the forwarder, as each uplink mode sets them."""

    batch_max_events: int
    batch_max_bytes: int
    batch_max_delay: timedelta
    inflight_batches: int
    replay_rate: float
    poll_s: float
    receipt_timeout: timedelta | None  # None: the sender's confirmation is final
    alarm_receipt_timeout: timedelta | None = None


class UplinkBuilder(Protocol[T_co]):
    """Makes the uplink of each mode. ``config.uplink.build(builder)`` calls the mode's own method.

    Selection is the config's method, not an isinstance chain: a new mode is a config class whose
    ``build`` calls a new method here, and mypy names every builder that lacks it.
    """

    def mqtt(self, uplink: MqttUplinkConfig) -> T_co:
        """The uplink through the district broker."""
        ...

    def direct(self, uplink: DirectUplinkConfig) -> T_co:
        """The uplink straight into a district store."""
        ...


DIRECT_BATCH_MAX_BYTES = 4 * 1024 * 1024  # a store write, not an MQTT message: bound by count mostly


class MqttUplinkConfig(ConfigModel):
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

    def evidence_prefix(self) -> str | None:
        """The topic prefix evidence requests arrive under (the district asks over this broker)."""
        return self.topic_prefix

    def build(self, builder: UplinkBuilder[T]) -> T:
        """The uplink this mode names."""
        return builder.mqtt(self)

    def pacing(self) -> Pacing:
        """Batches bounded in bytes for the broker; with receipts, sent events wait for the district's."""
        return Pacing(
            batch_max_events=self.batch_max_events,
            batch_max_bytes=self.batch_max_bytes,
            batch_max_delay=timedelta(milliseconds=self.batch_max_delay_ms),
            inflight_batches=self.inflight_batches,
            replay_rate=self.replay_rate,
            poll_s=self.poll_ms / 1000,
            receipt_timeout=timedelta(seconds=self.receipt_timeout_s) if self.receipts else None,
            alarm_receipt_timeout=timedelta(seconds=self.alarm_receipt_timeout_s) if self.receipts else None,
        )


class DirectUplinkConfig(ConfigModel):
    """Gateway -> district store directly (small districts without a broker)."""

    mode: Literal["direct"] = "direct"
    store: StoreConfig
    batch_max_events: int = Field(default=500, ge=1, le=5000)
    batch_max_delay_ms: int = Field(default=500, ge=0, le=60_000)
    replay_rate: float = Field(default=5000.0, gt=0)
    poll_ms: int = Field(default=50, ge=5, le=5000)

    def evidence_prefix(self) -> str | None:
        """None: the gateway writes straight into a store, nobody can ask it for evidence."""
        return None

    def build(self, builder: UplinkBuilder[T]) -> T:
        """The uplink this mode names."""
        return builder.direct(self)

    def pacing(self) -> Pacing:
        """One write at a time, final once the store confirms it (no receipts)."""
        return Pacing(
            batch_max_events=self.batch_max_events,
            batch_max_bytes=DIRECT_BATCH_MAX_BYTES,
            batch_max_delay=timedelta(milliseconds=self.batch_max_delay_ms),
            inflight_batches=1,
            replay_rate=self.replay_rate,
            poll_s=self.poll_ms / 1000,
            receipt_timeout=None,
        )


UplinkConfig = Annotated[MqttUplinkConfig | DirectUplinkConfig, Field(discriminator="mode")]


class MediaFetchConfig(ConfigModel):
    """Fetching the pictures and clips that cameras keep on the device (``device:`` references)."""

    timeout_s: float = Field(default=30.0, gt=0, le=600, description="longest one download may take")
    max_file_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="larger files are refused unread"
    )
    attempts: int = Field(default=8, ge=1, le=100, description="tries per file before it is given up")
    concurrency: int = Field(
        default=2,
        ge=1,
        le=16,
        description="downloads at once (all devices; one device has at most one, so a dead one blocks no other)",
    )
    retry_initial_s: float = Field(
        default=2.0, gt=0, le=3600, description="first wait before a failed download is tried again"
    )
    retry_max_s: float = Field(
        default=600.0, gt=0, le=86400, description="longest wait between tries (jittered, doubling up to it)"
    )
    poll_s: float = Field(
        default=1.0, gt=0, le=60, description="how often the fetcher looks for newly queued files"
    )
    budget_every_s: float = Field(
        default=60.0, gt=0, le=86400, description="how often the media byte budget is checked"
    )


class EvidenceServiceConfig(ConfigModel):
    """Answering the district's evidence requests and sending critical alarms' pictures unasked."""

    chunk_bytes: int = Field(
        default=256 * 1024, ge=16 * 1024, le=1024 * 1024, description="bytes per MQTT message of a file"
    )
    proactive: bool = Field(
        default=True,
        description="send the snapshot and trajectory picture of thrown-object and fire alarms without a request",
    )
    barrier_window_max_s: int = Field(
        default=3600, ge=60, le=7 * 24 * 3600, description="longest barrier window one request may ask for"
    )
    recheck_s: float = Field(
        default=30.0,
        ge=0.05,
        le=3600,
        description="how often a request waiting for media still being fetched looks again",
    )
    poll_s: float = Field(
        default=2.0,
        ge=0.01,
        le=600,
        description="how often the sender looks for alarm pictures and manifests to send when idle",
    )
    max_open_requests: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description="open requests at most; one more is answered FAILED (busy) instead of queued",
    )
    audit_keep_days: int = Field(
        default=365, ge=1, le=3650, description="how long the compound keeps its record of each request"
    )


class EvidenceConfig(ConfigModel):
    """Evidence: media fetched from devices, their byte budget, and what may leave on request."""

    media_max_bytes: int = Field(
        default=20 * 1024**3,
        ge=1024 * 1024,
        description="byte budget of the media store (beside the outbox's); over it, the oldest pictures"
        " that are no alarm evidence go first",
    )
    fetch: MediaFetchConfig = MediaFetchConfig()
    serve: EvidenceServiceConfig = EvidenceServiceConfig()


class GatewayConfig(ConfigModel):
    """The whole gateway configuration."""

    compound: CompoundConfig
    state: StateConfig = StateConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    faces: FacesConfig = FacesConfig()
    mqtt: MqttConfig = MqttConfig()
    http: HttpConfig = HttpConfig()
    backoff: BackoffConfig = BackoffConfig()
    trust: TrustConfig = TrustConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    commands: CommandsConfig = CommandsConfig()
    platforms: dict[str, PlatformConfig] = Field(
        default_factory=dict, description="per vendor platform dialect: how it authenticates its pushes"
    )
    uplink: UplinkConfig | None = Field(
        default=None, description="where events go: the district broker or store"
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    devices: tuple[DeviceConfig, ...] = Field(min_length=1)
    rule_engine: RuleEngineConfig = RuleEngineConfig()
    rules: tuple[RuleConfig, ...] = Field(
        default=(), description="local rules: reactions inside the compound (docs/local-rules.md)"
    )

    @field_validator("rules")
    @classmethod
    def _rules_fit_inventory(
        cls, rules: tuple[RuleConfig, ...], info: ValidationInfo
    ) -> tuple[RuleConfig, ...]:
        devices: tuple[DeviceConfig, ...] | None = info.data.get("devices")
        if devices is None:
            return rules  # the inventory itself is wrong: that error is reported instead
        problems = check_rules(rules, {d.id: d.dialect for d in devices})
        if problems:
            raise ValueError("; ".join(problems))
        return rules

    @model_validator(mode="after")
    def _unique_devices(self) -> GatewayConfig:
        seen_ids: set[str] = set()
        seen_refs: set[tuple[str, str]] = set()
        for device in self.devices:
            if device.id in seen_ids:
                raise ValueError(f"device id {device.id} appears twice; every device needs its own id")
            seen_ids.add(device.id)
            if device.ref is not None:
                key = (device.dialect, device.ref)
                if key in seen_refs:
                    raise ValueError(f"two {device.dialect} devices share ref {device.ref!r}")
                seen_refs.add(key)
        return self

    @model_validator(mode="after")
    def _command_policy_devices(self) -> GatewayConfig:
        known = {d.id: d for d in self.devices}
        for rule in self.commands.policy:
            for device_id in rule.devices:
                device = known.get(device_id)
                if device is None:
                    raise ValueError(
                        f"[[commands.policy]] {rule.name}: device {device_id} is not in [[devices]];"
                        " remove it or add the device"
                    )
                encoder = COMMAND_ENCODERS.get(device.dialect)
                if encoder is None:
                    raise ValueError(
                        f"[[commands.policy]] {rule.name}: device {device_id} ({device.dialect}) takes no commands"
                    )
        return self

    @model_validator(mode="after")
    def _known_platforms(self) -> GatewayConfig:
        for dialect in self.platforms:
            if dialect not in DIALECTS or DIALECTS[dialect].transport is not Transport.HTTP_PLATFORM:
                platforms = sorted(n for n, d in DIALECTS.items() if d.transport is Transport.HTTP_PLATFORM)
                raise ValueError(
                    f"[platforms.{dialect}]: not a platform dialect; use one of: {', '.join(platforms)}"
                )
        usernames: dict[str, str] = {}
        for device in self.devices:
            if DIALECTS[device.dialect].transport is not Transport.HTTP_DEVICE:
                continue
            other = usernames.setdefault(device.http_username, device.id)
            if other != device.id:
                raise ValueError(
                    f"devices {other} and {device.id} push with the same user name {device.http_username!r};"
                    " each device needs its own (push_username)"
                )
        return self

    def platform(self, dialect: str) -> PlatformConfig:
        """How the platform of ``dialect`` authenticates (the defaults when it has no section)."""
        return self.platforms.get(dialect) or PlatformConfig()

    def platform_dialects(self) -> list[str]:
        """The platform dialects some inventory device uses (the platforms that may push)."""
        return sorted(
            {d.dialect for d in self.devices if DIALECTS[d.dialect].transport is Transport.HTTP_PLATFORM}
        )

    @property
    def mqtt_client_id(self) -> str:
        """Stable client id: the broker keeps our session (and unacknowledged messages) under it."""
        return self.mqtt.client_id or f"cgw-{self.compound.compound_id}"

    @property
    def uplink_tls(self) -> TlsConfig | None:
        """TLS to the district broker, if the uplink goes through one with TLS."""
        return self.uplink.broker.tls if isinstance(self.uplink, MqttUplinkConfig) else None

    def pseudonym_key_path(self) -> Path:
        """Where the pseudonymization key is read from."""
        if self.privacy.key_file is not None:
            return self.privacy.key_file
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials:
            return Path(credentials) / "pseudonym-key"
        return self.state.dir / "pseudonym.key"


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a config file; raise ``ConfigError`` listing every problem with its fix."""
    config = load_toml_model(path, GatewayConfig, "the gateway's TOML config")
    if not config.state.dir.is_absolute():
        state = config.state.model_copy(update={"dir": (path.parent / config.state.dir).resolve()})
        config = config.model_copy(update={"state": state})
    return config


def load_pseudonym_key(path: Path, *, create: bool) -> bytes:
    """Read the key (at least 16 bytes); create a random one (mode 0600) when allowed and missing."""
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        if not create:
            raise ConfigError(
                f"{path}: pseudonymization key file is missing; provide it via LoadCredential="
            ) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        return key
    if len(key) < 16:
        raise ConfigError(f"{path}: pseudonymization key is shorter than 16 bytes; generate a longer one")
    return key
