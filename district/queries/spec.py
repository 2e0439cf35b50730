"""What one operator action is: the single description the service, CLI, API and OpenAPI read.

A ``QuerySpec`` names the request model, the typed result, the least role, which requests must
give a reason (the operator role and a reason the audit keeps), the HTTP route, the
cursor rule and how a table shows the result. Nothing else is keyed by action name.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from district.query_model import CliFlag, EventPage, Ranged, Role

if TYPE_CHECKING:
    from district.operator_output import Presenter, Table
    from district.queries.context import QueryContext

Q = TypeVar("Q", bound=BaseModel)
R = TypeVar("R")

_PATH_FIELD = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


@dataclass(frozen=True)
class Route:
    """Where the action answers over HTTP: ``path`` under ``/api/v1``; ``{name}`` is a request field.

    GET takes the other fields as query parameters, POST as a JSON body.
    """

    method: Literal["GET", "POST"]
    path: str
    summary: str

    @property
    def path_fields(self) -> tuple[str, ...]:
        """The request fields the path carries."""
        return tuple(_PATH_FIELD.findall(self.path))


@dataclass(frozen=True)
class Paging(Generic[R]):
    """How a result continues: the request field its next cursor goes in, and how pages join.

    ``before`` pages go newest first, ``after`` pages oldest first.
    """

    cursor: Literal["before", "after"]
    next_cursor: Callable[[R], str | None]
    join: Callable[[R, R], R]  # a page followed by the next (``--all`` exports)


@dataclass(frozen=True)
class NeedsReason(Generic[Q]):
    """Requests that must say why: they need ``role`` and a non-empty reason, which the audit keeps.

    Security actions (where a plate or person went, a barrier window) and alarm steps are such.

    ``when`` picks the requests of the action this applies to (``None``: every request); ``what``
    names them in refusals ("a plate or person lookup needs the operator role").
    """

    what: str
    when: Callable[[Q], bool] | None = None
    role: Role = Role.OPERATOR

    def applies(self, request: Q) -> bool:
        """Whether this request is one of them."""
        return self.when is None or self.when(request)


@dataclass(frozen=True, kw_only=True)
class QuerySpec(Generic[Q, R]):
    """One operator action.

    Attributes:
        name: the action (service dispatch, audit log, OpenAPI ``operationId``).
        request: the request model; its fields are the CLI options and HTTP parameters.
        result: the result type (a pydantic model or ``list[Model]``): JSON and the OpenAPI schema.
        role: the least role that may make any request of the action.
        route: the HTTP route.
        run: answers a validated, authorised request.
        rows: how many rows a result holds (what the audit log records).
        tables: the CLI's tables of a result (the first is the one CSV prints).
        needs_reason: which requests must give a reason (and the role that goes with it), if any.
        reason_field: the request field holding the reason (audited, never kept among the filters).
        paging: the cursor rule, for results that come a page at a time.
        responses: error statuses beyond 400, 401, 403 and 503 the action answers, and why.
        cli: the ``query`` subcommand (default: the name with ``-``), or ``None`` for none.
    """

    name: str
    request: type[Q]
    result: Any  # type[R], or a generic alias like list[CountRow] (which type[R] cannot spell)
    role: Role
    route: Route
    run: Callable[[QueryContext, Q], Awaitable[R]]
    rows: Callable[[R], int]
    tables: Callable[[Presenter, R], Sequence[Table]]
    needs_reason: NeedsReason[Q] | None = None
    reason_field: str = "reason"
    paging: Paging[R] | None = None
    responses: Mapping[int, str] = field(default_factory=dict)
    cli: str | None = ""

    def __post_init__(self) -> None:
        fields = self.request.model_fields
        if self.needs_reason is not None and self.reason_field not in fields:
            raise TypeError(
                f"{self.name}: the request needs a {self.reason_field!r} field to give a reason in"
            )
        if self.paging is not None and self.paging.cursor not in fields:
            raise TypeError(f"{self.name}: the request has no cursor field {self.paging.cursor!r}")
        missing = set(self.route.path_fields) - set(fields)
        if missing:
            raise TypeError(f"{self.name}: the route names fields the request lacks: {sorted(missing)}")
        if self.cli == "":
            object.__setattr__(self, "cli", self.name.replace("_", "-"))

    @cached_property
    def adapter(self) -> TypeAdapter[R]:
        """Validates and serialises results (JSON answers, schemas)."""
        return TypeAdapter(self.result)

    def dump(self, result: R) -> Any:
        """The result as JSON-ready data (the API's answer, ``--format json``)."""
        return self.adapter.dump_python(result, mode="json")

    @property
    def ranged(self) -> bool:
        """Whether requests take a time range (``start``/``end``)."""
        return issubclass(self.request, Ranged)

    def list_fields(self) -> frozenset[str]:
        """Request fields that take several values (repeated or comma-separated in a URL)."""
        return frozenset(
            name for name, info in self.request.model_fields.items() if _is_sequence(info.annotation)
        )

    def describe_access(self) -> str:
        """The role and reason rule in words (the OpenAPI description)."""
        text = f"Least role: {self.role.value}."
        rule = self.needs_reason
        if rule is not None:
            which = "" if rule.when is None else f" for {rule.what}"
            text += f" {rule.role.value.capitalize()} role and `{self.reason_field}` required{which}."
        return text + " Every call is audited."


def event_pages(cursor: Literal["before", "after"]) -> Paging[EventPage]:
    """Paging of event pages: ``before`` newest first, ``after`` oldest first."""
    return Paging(cursor=cursor, next_cursor=lambda page: page.next_cursor, join=EventPage.joined)


def _is_sequence(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in {tuple, list}:
        return True
    return any(_is_sequence(arg) for arg in get_args(annotation) if arg is not type(None))


def _markers(annotation: Any) -> list[Any]:
    # metadata of Annotated types nested in the annotation (``PersonRef | None`` carries PersonRef's)
    found = list(getattr(annotation, "__metadata__", ()))
    for arg in get_args(annotation):
        found += _markers(arg)
    return found


def cli_flag(name: str, info: FieldInfo) -> str:
    """The command-line option of a request field (``CliFlag`` metadata, or derived from the name)."""
    for marker in [*info.metadata, *_markers(info.annotation)]:
        if isinstance(marker, CliFlag):
            return marker.flag
    if _is_sequence(info.annotation):
        name = name.removesuffix("s")
    return "--" + name.replace("_", "-")
