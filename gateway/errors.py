"""The one exception hierarchy of the project.

Vendor and library errors are translated into these at the boundary (adapters, transports, stores),
so callers only ever catch our families.
"""

from __future__ import annotations

from dataclasses import dataclass


class GatewayError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; the message names the file, the field and the fix."""


class TransportError(GatewayError):
    """A device-side transport (MQTT broker, HTTP listener) failed; the supervisor retries."""


class OutboxError(GatewayError):
    """The durable outbox could not commit; nothing may be acknowledged to a device."""


class UplinkError(GatewayError):
    """The district transport or store failed."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one raw payload was refused: machine-readable, and specific enough for an installer.

    Attributes:
        reason: stable snake_case code used for counting (``malformed_json``, ``unknown_device``...).
        field: dotted path of the offending field inside the vendor payload, if one is to blame.
        detail: a human sentence saying what was wrong and what was expected.
    """

    reason: str
    field: str | None
    detail: str

    def __str__(self) -> str:
        where = f" at {self.field}" if self.field else ""
        return f"{self.reason}{where}: {self.detail}"


class PayloadRejected(GatewayError):  # noqa: N818 - it names the outcome, like HTTP's "Rejected"
    """A raw device payload cannot be turned into canonical events."""

    def __init__(self, reason: str, detail: str, *, field: str | None = None) -> None:
        self.rejection = Rejection(reason=reason, field=field, detail=detail)
        super().__init__(str(self.rejection))
