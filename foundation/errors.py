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
    """A transport (an MQTT session to the device or district broker, an HTTP listener) failed.

    The supervisor retries. The MQTT port (``foundation.mqtt``) raises only this family.
    """


class OutboxError(GatewayError):
    """The durable outbox could not commit; nothing may be acknowledged to a device."""


class UplinkError(GatewayError):
    """The district transport or store failed."""


class PublishRefusedError(TransportError):
    """A broker answered a publish with a failure reason code (MQTT v5), e.g. not authorised.

    Attributes:
        topic: the topic of the refused publish.
        reason: the reason code's name as the broker's protocol spells it (``Not authorized``).
        reason_code: its numeric value (``0x87`` for not authorised), if known.
    """

    def __init__(self, topic: str, reason: str, reason_code: int | None = None) -> None:
        super().__init__(f"the broker refused the publish to {topic}: {reason}")
        self.topic = topic
        self.reason = reason
        self.reason_code = reason_code


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


class OperatorError(GatewayError):
    """A district operator's request was refused or failed; carries the HTTP status it maps to.

    Attributes:
        status: 400 invalid, 401 unauthenticated, 403 forbidden, 404 not found, 409 conflict,
            429 rate limited, 503 store unavailable.
        code: stable snake_case code for clients and the audit log.
        field: the request field to blame, if one is.
    """

    status = 500
    code = "operator_error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code


class InvalidQueryError(OperatorError):
    """The request is malformed, out of range or names something unknown."""

    status = 400
    code = "invalid_query"


class UnauthenticatedError(OperatorError):
    """No token, or a token that is unknown or revoked."""

    status = 401
    code = "unauthenticated"


class ForbiddenError(OperatorError):
    """The token's role or scope does not allow this request."""

    status = 403
    code = "forbidden"


class NotFoundError(OperatorError):
    """The named alarm (or other object) does not exist in the caller's scope."""

    status = 404
    code = "not_found"


class ConflictError(OperatorError):
    """The request contradicts the object's state (an alarm transition that is not allowed)."""

    status = 409
    code = "conflict"


class RateLimitedError(OperatorError):
    """The caller (or the target) has had its share of this action for now; try again later."""

    status = 429
    code = "rate_limited"


class StoreUnavailableError(OperatorError):
    """The store could not answer (down, timing out)."""

    status = 503
    code = "store_unavailable"
