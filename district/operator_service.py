"""The one door to district data: authenticate, validate, authorise, run, audit.

The CLI and the HTTP API both call ``OperatorService.handle``; nothing else reads the store for an
operator. What an action takes, returns and requires is its spec (``district.queries.registry``);
this module applies the rules every action shares. Every call is audited exactly once, whatever
its outcome (refused tokens, bad filters, missing reasons, scope violations and store failures
included), before the answer is returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo

import structlog
from pydantic import ValidationError

from district.command_book import CommandAccess, CommandBook
from district.config import CompoundEntry, DistrictConfig
from district.device_registry import DeviceRegistry
from district.evidence_store import EvidenceAccess, EvidenceIndex, MediaFiles
from district.operations import AuditEntry, OperationsDb, Principal
from district.queries.commands import CommandContext
from district.queries.context import authorise_role
from district.queries.registry import QUERIES
from district.queries.spec import QuerySpec
from district.query_backends import QueryBackend, open_query_backend
from foundation.errors import (
    InvalidQueryError,
    OperatorError,
    StoreUnavailableError,
    UnauthenticatedError,
)
from foundation.events import utc_now
from uplink.stores import StoreError

log = structlog.get_logger(__name__)

R = TypeVar("R")


@dataclass(frozen=True)
class Caller:
    """Where a request comes from: ``channel`` is "api" or "cli"; ``client`` an address or local user."""

    channel: str
    client: str | None


@dataclass(frozen=True)
class Answer(Generic[R]):
    """A handled request: the result, how many rows it holds (what the audit log records), its spec."""

    result: R
    rows: int
    spec: QuerySpec[Any, R]

    def dump(self) -> Any:
        """The result as JSON-ready data."""
        return self.spec.dump(self.result)


def _invalid(exc: ValidationError) -> InvalidQueryError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return InvalidQueryError(f"{where or 'request'}: {message}{more}", field=where)


def _loggable(params: Mapping[str, Any], reason_field: str | None) -> dict[str, Any]:
    # what the audit log keeps of a request: the filters, bounded, without the free-text reason
    kept: dict[str, Any] = {}
    for key, value in list(params.items())[:40]:
        if key in {"reason", "note", reason_field}:
            continue
        if isinstance(value, bytes | bytearray):  # an uploaded photo: its size, never its content
            kept[str(key)[:64]] = f"<{len(value)} bytes>"
            continue
        text = value if isinstance(value, str | int | float | bool | None) else str(value)
        kept[str(key)[:64]] = text[:200] if isinstance(text, str) else text
    return kept


class OperatorService:
    """Queries and alarm actions for district operators, on one store backend."""

    def __init__(
        self,
        config: DistrictConfig,
        backend: QueryBackend,
        operations: OperationsDb,
        clock: Callable[[], datetime] = utc_now,
        evidence: EvidenceAccess | None = None,
        *,
        commands: CommandAccess | None = None,
        device_registry: DeviceRegistry | None = None,
    ) -> None:
        self._config = config
        self._api = config.api
        self._backend = backend
        self._ops = operations
        self.evidence = evidence
        """The evidence index and files (None: evidence actions answer 503)."""
        self.commands = commands
        """The command book (None: command actions answer 503)."""
        self.device_registry = device_registry
        """The device registry (None: ``devices`` lists what reported; ``device_changes`` answers 503)."""
        self._clock = clock
        self.zone = ZoneInfo(config.api.timezone)
        self.registry: dict[str, CompoundEntry] = {c.id: c for c in config.compounds}
        self.requests: Counter[tuple[str, str]] = Counter()
        """Audited requests by (action, outcome): ``ok`` or the error code (the API's metrics)."""

    def compound_name(self, compound_id: str) -> str:
        """The registered name of a compound (its id when unregistered)."""
        entry = self.registry.get(compound_id)
        return entry.name if entry else compound_id

    @property
    def backend(self) -> QueryBackend:
        """The store backend the queries read."""
        return self._backend

    @property
    def operations(self) -> OperationsDb:
        """The operations database (tokens, audit log, alarm lifecycles)."""
        return self._ops

    async def handle(
        self,
        token: str | None,
        action: str,
        params: Mapping[str, Any],
        caller: Caller,
        *,
        spec: QuerySpec[Any, Any] | None = None,
    ) -> Answer[Any]:
        """Run one request end to end; raises an ``OperatorError`` (already audited) when refused.

        ``spec`` is for actions outside the registry (the API's binary evidence route).
        """
        principal: Principal | None = None
        spec = spec or QUERIES.get(action)
        error: OperatorError
        try:
            if spec is None:
                raise InvalidQueryError(
                    f"unknown request {action!r}; one of {', '.join(QUERIES)}", field="action"
                )
            principal = await self._authenticate(token)
            try:
                request = spec.request.model_validate(dict(params))
            except ValidationError as exc:
                raise _invalid(exc) from None
            authorise_role(principal, spec.role, action)
            rule = spec.needs_reason
            if rule is not None and rule.applies(request):
                authorise_role(principal, rule.role, rule.what)
                if not getattr(request, spec.reason_field):
                    raise InvalidQueryError(
                        f"a {spec.reason_field} is required for {rule.what}", field=spec.reason_field
                    )
            context = CommandContext(
                principal,
                self._backend,
                self._ops,
                self._config,
                self.registry,
                self.zone,
                self._clock,
                device_registry=self.device_registry,
                evidence=self.evidence,
                commands=self.commands,
            )
            async with asyncio.timeout(self._api.timeout_s):
                result = await spec.run(context, request)
            answer = Answer(result, spec.rows(result), spec)
        except OperatorError as exc:
            error = exc
        except TimeoutError:
            error = StoreUnavailableError(f"the query took longer than {self._api.timeout_s:g} s; narrow it")
        except StoreError as exc:
            error = StoreUnavailableError(f"the district store did not answer: {exc}")
        except sqlite3.Error as exc:
            error = StoreUnavailableError(
                f"the evidence index, command book or device registry did not answer: {exc}"
            )
        else:
            await self._audit(principal, action, spec, params, caller, rows=answer.rows)
            return answer
        await self._audit(principal, action, spec, params, caller, error=error)
        raise error

    async def refuse(
        self, token: str | None, action: str, params: Mapping[str, Any], caller: Caller, error: OperatorError
    ) -> None:
        """Audit a request refused before it reached ``handle`` (an unparsable query string)."""
        principal = await self._ops.principal(token) if token else None
        await self._audit(principal, action, QUERIES.get(action), params, caller, error=error)

    async def ping_operations(self) -> None:
        """The operations database answers (readiness); raises ``sqlite3.Error`` if not."""
        await self._ops.ping()

    async def ping_store(self) -> None:
        """The store answers (readiness); raises ``StoreError`` if not."""
        await self._backend.ping()

    async def _audit(
        self,
        principal: Principal | None,
        action: str,
        spec: QuerySpec[Any, Any] | None,
        params: Mapping[str, Any],
        caller: Caller,
        *,
        rows: int | None = None,
        error: OperatorError | None = None,
    ) -> None:
        reason_field = spec.reason_field if spec else None
        reason = (
            (params.get(reason_field) if reason_field else None) or params.get("reason") or params.get("note")
        )
        entry = AuditEntry(
            actor=principal.name if principal else None,
            role=principal.role.value if principal else None,
            channel=caller.channel,
            client=caller.client,
            action=action[:64],
            filters=_loggable(params, reason_field),
            outcome=error.code if error else "ok",
            status=error.status if error else 200,
            rows=rows,
            reason=str(reason)[:500] if reason else None,
            detail=error.message if error else None,
        )
        await self._ops.audit(entry)
        self.requests[(entry.action, entry.outcome)] += 1
        log.info("operator_request", action=entry.action, actor=entry.actor, outcome=entry.outcome, rows=rows)

    async def _authenticate(self, token: str | None) -> Principal:
        if not token:
            raise UnauthenticatedError("no token: send 'Authorization: Bearer <token>' (CLI: CGW_TOKEN)")
        principal = await self._ops.principal(token)
        if principal is None:
            raise UnauthenticatedError("unknown or revoked token")
        return principal


@contextlib.asynccontextmanager
async def open_operator_service(config: DistrictConfig) -> AsyncIterator[OperatorService]:
    """The service on the configured store and operations database, open for the block."""
    async with (
        OperationsDb(config.api.ops_db) as operations,
        open_query_backend(config.store) as backend,
        EvidenceIndex(config.evidence_index_path()) as index,
        CommandBook(config.command_book_path()) as book,
        DeviceRegistry(config.device_registry_path()) as registry,
    ):
        access = EvidenceAccess(index, MediaFiles(config.evidence_media_dir()), config.evidence.request_ttl_s)
        yield OperatorService(
            config,
            backend,
            operations,
            evidence=access,
            commands=CommandAccess(book),
            device_registry=registry,
        )
