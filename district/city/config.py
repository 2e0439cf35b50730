"""The ``[city]`` section of the district config: the GA/T 1400 link to the city platform.

Everything the link may send is decided here: which collections, which face data (PIPL: see
``docs/privacy.md``), which ids the city knows each device by, and where subscription notifications
may go. Times on the wire are in ``[api] timezone`` (the district's zone).
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator

from foundation.config_types import ConfigModel, Port
from foundation.credentials import CredentialName
from foundation.events import GbId

HTTP_URL = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
APE_TYPE = "119"  # GB/T 28181 type code (digits 11-13) of a 采集设备 in GA/T 1400 (device-protocols §6)
TOLLGATE_TYPE = "121"  # and of a 卡口


def checked_http_url(address: str) -> str:
    """``address`` if it is a plain http(s) URL without user info, else ``ValueError`` saying why.

    A password in a URL ends up in logs, the console and process listings, and would be sent to
    whoever the URL names: credentials go in the config's password fields, never in a URL.
    """
    if not re.match(HTTP_URL, address):
        raise ValueError(f"{address!r} is not an http(s) URL (scheme://host[:port][/path], no query)")
    authority = address.split("://", 1)[1].split("/", 1)[0]
    if "@" in authority:
        raise ValueError(
            f"{address.split('://', 1)[0]}://...@{authority.rsplit('@', 1)[1]}: user info (user:password@)"
            " is not allowed in a URL; put the credentials in the password settings"
        )
    return address


class FacePolicy(StrEnum):
    """What of a face event may go to the city."""

    OFF = "off"  # nothing
    RECORDS = "records"  # the FaceObject without any image
    CROP = "crop"  # the FaceObject with its face crop (SubImage Type 11); never the scene, never an embedding


class CityPrivacyConfig(ConfigModel):
    """What leaves the district per object type (defaults: ``docs/privacy.md`` says why)."""

    motor_vehicles: bool = Field(default=True, description="push every vehicle passage (MotorVehicles)")
    devices: bool = Field(default=True, description="push the device registry with online status (APEs)")
    face_passes: FacePolicy = Field(
        default=FacePolicy.RECORDS,
        description="face passes at gates (face_access): records without images by default",
    )
    watchlist_hits: FacePolicy = Field(
        default=FacePolicy.CROP,
        description="watch-list hits (watchlist_hit): with their face crop by default",
    )

    max_crop_px: int = Field(
        default=320,
        ge=16,
        le=4096,
        description="a face crop wider or taller than this goes without its picture (a crop, never the"
        " frame); the gateway's crops are at most 160 px",
    )

    @field_validator("face_passes")
    @classmethod
    def _passes_carry_no_image(cls, value: FacePolicy) -> FacePolicy:
        if value is FacePolicy.CROP:
            raise ValueError(
                "face passes have no crop at the district (their pictures stay in the compound);"
                " use 'records' or 'off'"
            )
        return value


class CityDeviceEntry(ConfigModel):
    """How the city knows one device (default: by its own 20-digit id, no tollgate)."""

    device_id: GbId = Field(description="the device's id in the district (its GB/T 28181 id)")
    ape_id: GbId | None = Field(
        default=None, description="the id the city's registry gives it (ApeID, DeviceID)"
    )
    tollgate_id: GbId | None = Field(
        default=None, description="the tollgate (卡口) a barrier camera belongs to"
    )
    lane: int | None = Field(default=None, ge=0, le=99, description="its lane number (LaneNo)")

    @field_validator("ape_id")
    @classmethod
    def _ape_type(cls, value: str | None) -> str | None:
        if value is not None and value[10:13] != APE_TYPE:
            raise ValueError(
                f"ape_id {value} has type {value[10:13]}; a GA/T 1400 APE id has type {APE_TYPE}"
                " (digits 11-13, GB/T 28181 type code)"
            )
        return value

    @field_validator("tollgate_id")
    @classmethod
    def _tollgate_type(cls, value: str | None) -> str | None:
        if value is not None and value[10:13] != TOLLGATE_TYPE:
            raise ValueError(
                f"tollgate_id {value} has type {value[10:13]}; a GA/T 1400 tollgate id has type"
                f" {TOLLGATE_TYPE} (digits 11-13, GB/T 28181 type code)"
            )
        return value


class CitySubscriptionsConfig(ConfigModel):
    """The upper platform's subscriptions (``/VIID/Subscribes``) and where their notifications may go."""

    enabled: bool = False
    listen_host: str = Field(default="127.0.0.1", description="address the upper platform calls")
    listen_port: Port = 8094
    upper_platform_id: GbId = Field(description="the upper platform's id (its User-Identify)")
    username: str = Field(min_length=1, max_length=64, description="its digest user name")
    password: SecretStr | None = Field(default=None, description="its digest password")
    password_credential: CredentialName | None = Field(
        default=None, description="systemd credential holding that password, instead of password"
    )
    receive_addresses: tuple[str, ...] = Field(
        default=(),
        description="the only URLs notifications are sent to (a subscription naming another is refused)",
    )
    notify_username: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="user name for a receiver's digest challenge (never the upper platform's own login)",
    )
    notify_password: SecretStr | None = Field(default=None, description="password for that challenge")
    notify_password_credential: CredentialName | None = Field(
        default=None, description="systemd credential holding notify_password, instead of it"
    )
    max_subscriptions: int = Field(
        default=16, ge=1, le=1000, description="active subscriptions at most (a further one is refused)"
    )
    ended_keep_days: int = Field(
        default=30, ge=1, le=366, description="cancelled and expired subscriptions are kept this long"
    )
    batches_per_round: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="notifications one subscription may send per round (a catch-up holds up no other)",
    )

    @field_validator("receive_addresses")
    @classmethod
    def _urls(cls, addresses: tuple[str, ...]) -> tuple[str, ...]:
        for address in addresses:
            checked_http_url(address)
        return addresses

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        if (self.password is None) == (self.password_credential is None):
            raise ValueError("set exactly one of password and password_credential")
        if self.notify_password is not None and self.notify_password_credential is not None:
            raise ValueError("notify_password and notify_password_credential both set; keep one")
        has_password = self.notify_password is not None or self.notify_password_credential is not None
        if has_password != (self.notify_username is not None):
            raise ValueError("notify_username and notify_password (or its credential) go together")
        return self


class CityConfig(ConfigModel):
    """The link to the city's VIID (视图库) server: who we are, where it is, what we send and how."""

    enabled: bool = Field(
        default=True, description="feed the queue (ingester) and run `compound-gateway city`"
    )
    server_url: str = Field(description="the city VIID's base URL, e.g. http://10.0.0.5:8080")
    platform_id: GbId = Field(
        description="the district VIID's own id (RegisterObject DeviceID, User-Identify)"
    )
    org_code: str = Field(
        pattern=r"^[0-9]{12}$",
        description="the public-security organ code (GA/T 543.1) in notification and subscription ids",
    )
    username: str | None = Field(default=None, description="digest user name; default: platform_id")
    password: SecretStr | None = Field(default=None, description="digest password")
    password_credential: CredentialName | None = Field(
        default=None, description="systemd credential holding the digest password, instead of password"
    )
    queue_path: Path = Field(
        default=Path("/var/lib/compound-district-city/city-queue.db"),
        description="the durable queue: ingesters on this host feed it, the city service drains it",
    )
    batch_max: int = Field(default=100, ge=1, le=1000, description="most objects in one POST")
    linger_s: float = Field(default=0.2, ge=0, le=10, description="wait this long for a batch to fill")
    request_timeout_s: float = Field(default=15.0, gt=0, le=300)
    keepalive_s: float = Field(default=30.0, gt=0, le=3600, description="keepalive interval")
    keepalive_failures: int = Field(
        default=3, ge=1, le=100, description="failed keepalives before re-registering"
    )
    time_check_s: float = Field(default=3600.0, gt=0, description="how often the city's clock is read")
    max_clock_skew_s: float = Field(default=5.0, gt=0, description="a larger difference is logged and shown")
    retry_initial_s: float = Field(default=1.0, gt=0, description="first backoff after a failed request")
    retry_max_s: float = Field(default=60.0, gt=0, description="longest backoff")
    refused_retry_s: float = Field(
        default=300.0, gt=0, description="a refused object is sent again after this"
    )
    refused_max_attempts: int = Field(
        default=10, ge=1, description="after this many refusals an object is parked (kept, shown, not sent)"
    )
    ape_refresh_s: float = Field(
        default=300.0, gt=0, description="how often the APE list (online status) is sent"
    )
    http_host: str = Field(default="127.0.0.1", description="address of /healthz, /readyz and /metrics")
    http_port: int = Field(default=8093, ge=0, le=65535, description="0: no health/metrics server")
    keep_days: int = Field(
        default=30, ge=1, le=366, description="accepted objects are kept this long in the queue"
    )
    devices: tuple[CityDeviceEntry, ...] = Field(default=(), description="ids the city knows devices by")
    privacy: CityPrivacyConfig = CityPrivacyConfig()
    subscriptions: CitySubscriptionsConfig | None = None

    @field_validator("server_url")
    @classmethod
    def _server_url(cls, url: str) -> str:
        return checked_http_url(url)

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        if self.password is not None and self.password_credential is not None:
            raise ValueError("password and password_credential both set; keep one")
        if self.password is None and self.password_credential is None:
            raise ValueError("set password (or password_credential under systemd) for the city's digest")
        seen: set[str] = set()
        for entry in self.devices:
            if entry.device_id in seen:
                raise ValueError(f"device {entry.device_id} is listed twice in [[city.devices]]")
            seen.add(entry.device_id)
        # two devices under one ApeID would be one APE to the city: their states would overwrite
        # each other and their objects would claim each other's image ids
        ape_ids: dict[str, str] = {}
        for entry in self.devices:
            ape_id = entry.ape_id or entry.device_id
            if ape_id in ape_ids:
                raise ValueError(
                    f"devices {ape_ids[ape_id]} and {entry.device_id} in [[city.devices]] both go up as"
                    f" APE {ape_id}; give each its own ape_id"
                )
            ape_ids[ape_id] = entry.device_id
        return self

    def device_entry(self, device_id: str) -> CityDeviceEntry:
        """How the city knows ``device_id`` (its own id when not listed)."""
        for entry in self.devices:
            if entry.device_id == device_id:
                return entry
        return CityDeviceEntry(device_id=device_id)
