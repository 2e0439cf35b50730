"""What every district event store is: the port, and how a failed write is classified."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

from foundation.errors import UplinkError
from foundation.events import Event


class StoreError(UplinkError):
    """A write was not confirmed."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class EventStore(Protocol):
    """Where the district keeps events."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def write(self, events: Sequence[Event]) -> None:
        """Store the events durably (idempotent); raise ``StoreError`` if not confirmed."""
        ...

    async def ping(self) -> None:
        """Check the store answers (readiness); raise ``StoreError`` if not."""
        ...


def classify_http(status: int, text: str, where: str) -> StoreError:
    """A store server's HTTP error answer, as retryable (5xx, 429) or not (other 4xx)."""
    # 5xx and 429: the server may recover. 4xx: retrying the same write cannot help.
    retryable = status >= 500 or status == 429
    return StoreError(f"{where} answered {status}: {text[:300]}", retryable=retryable, status=status)
