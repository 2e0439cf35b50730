"""The console's administration actions: tokens, watch lists and the audit chain (admin role).

These run through ``OperatorService.handle`` like every operator action (token, role, validation,
one audit entry each), but they are not in the registry: the HTTP API and the ``query`` command do
not offer them. Issuing tokens and changing watch lists stay local (``compound-gateway token`` and
``watchlist``, for whoever can read the district config) or in the console, behind a session, its
CSRF token and an admin token; a bearer token alone never mints another token. Their ``route`` is
nominal (the spec requires one); the console calls them with ``ctx.ask(..., spec=...)``.

The actions carry the names the CLI audits its token and watch list changes under
(``token.create``, ``watchlist.publish``, ...), so one filter finds a change whichever way it
was made. Every change needs a reason (at least 4 characters, the audit log's ``reason``): issuing or revoking
access and changing who is watched are security actions, like a plate lookup. The CLI's local admin
does not ask for one (whoever runs it is at the district's console already).

``WatchListDb`` is synchronous SQLite: each call opens it in a worker thread (``asyncio.to_thread``)
under one process-wide lock, so two publications cannot both take the same next version; face
embeddings are computed in a worker thread too, before the lock is taken.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import Field, StringConstraints

from district.config import DistrictConfig
from district.operations import AuditEntry, TokenInfo
from district.operator_output import Presenter, Table
from district.queries.context import QueryContext
from district.queries.spec import NeedsReason, QuerySpec, Route
from district.query_model import Model, Reason, Role
from district.watchlist_admin import (
    ListEntry,
    WatchListDb,
    describe,
    face_embedding,
    publish,
    published_documents,
)
from foundation.errors import NotFoundError, StoreUnavailableError, TransportError
from foundation.events import PLATE_PATTERN, GbId
from uplink.watchlist_document import ListId, SubjectRef

T = TypeVar("T")

MAX_PHOTO = 8 * 1024 * 1024
"""The largest photo an enrolment takes (bytes)."""
MAX_ENTRIES = 200
"""Entries of one list the overview shows."""
TokenName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Label = Annotated[str, StringConstraints(strip_whitespace=True, max_length=120)]
PlateText = Annotated[str, StringConstraints(strip_whitespace=True, pattern=PLATE_PATTERN.pattern)]
CHANGE: NeedsReason[Any] = NeedsReason("a token or watch list change", role=Role.ADMIN)
# one process-wide lock: WatchListDb is one connection per call, and ``next_version`` reads then writes
_LISTS = threading.Lock()


def _lists_call(config: DistrictConfig, work: Callable[[WatchListDb], T]) -> T:
    with _LISTS:
        db = WatchListDb(config.api.ops_db)
        try:
            return work(db)
        finally:
            db.close()


async def lists_call(config: DistrictConfig, work: Callable[[WatchListDb], T]) -> T:
    """Run ``work`` on the district's watch lists in a worker thread (never on the event loop)."""
    return await asyncio.to_thread(_lists_call, config, work)


# ---- results ----------------------------------------------------------------------------------


class TokenRow(Model):
    """A token as the console lists it (never its secret)."""

    name: str
    role: str
    compounds: tuple[str, ...] = Field(description="empty: the whole district")
    created_at: str
    created_by: str
    revoked_at: str | None


class ListEntryRow(Model):
    """A subject (with its number of faces) or a plate of a list."""

    ref: str
    label: str | None
    faces: int


class ListRow(Model):
    """A watch list: its size, version and when it was last published, and its first entries."""

    list_id: str
    kind: str
    version: int
    size: int
    threshold: float | None
    published_at: str | None
    entries: tuple[ListEntryRow, ...]


class AdminState(Model):
    """The tokens of the admin's district and every watch list."""

    tokens: tuple[TokenRow, ...]
    lists: tuple[ListRow, ...]


class ChainStatus(Model):
    """The audit log's hash chain: entries checked and the first broken one (None: intact)."""

    checked: int
    broken_at: int | None


class IssuedToken(Model):
    """A new token: its secret, shown this once (only its hash is stored; never audited)."""

    name: str
    role: Role
    compounds: tuple[str, ...]
    secret: str


class Published(Model):
    """A published list version."""

    list_id: str
    version: int
    entries: int


# ---- requests ---------------------------------------------------------------------------------


class AdminStateRequest(Model):
    """The tokens and the watch lists."""


class AuditVerifyRequest(Model):
    """Walk the audit log's hash chain."""


class TokenCreateRequest(Model):
    """Issue a token of the admin's district (its scope within the admin's own)."""

    name: TokenName
    role: Role
    compounds: tuple[GbId, ...] = Field(default=(), max_length=500, description="default: the admin's scope")
    reason: Reason


class TokenRevokeRequest(Model):
    """Revoke a live token of the admin's district (its console sessions end at their next request)."""

    name: TokenName
    reason: Reason


class EnrollRequest(Model):
    """Enrol the one face of a photo; only its embedding is kept, never the photo."""

    list_id: ListId
    subject_id: SubjectRef
    label: Label | None = None
    photo: bytes = Field(min_length=1, max_length=MAX_PHOTO)
    photo_name: Annotated[str, StringConstraints(max_length=200)] = "photo"
    reason: Reason


class PlateRequest(Model):
    """List a plate."""

    list_id: ListId
    plate: PlateText
    label: Label | None = None
    reason: Reason


class RemoveRequest(Model):
    """Take a subject or a plate off a list (effective at the next publication)."""

    list_id: ListId
    ref: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
    reason: Reason


class PublishRequest(Model):
    """Publish a new version of a list (retained on the district broker)."""

    list_id: ListId
    reason: Reason


# ---- runs -------------------------------------------------------------------------------------


def _token_row(t: TokenInfo) -> TokenRow:
    return TokenRow(
        name=t.name,
        role=t.role,
        compounds=t.compounds,
        created_at=t.created_at,
        created_by=t.created_by,
        revoked_at=t.revoked_at,
    )


def _list_rows(db: WatchListDb) -> tuple[ListRow, ...]:
    return tuple(
        ListRow(
            list_id=s.list_id,
            kind=s.kind,
            version=s.version,
            size=s.entries,
            threshold=s.threshold,
            published_at=s.published_at,
            entries=tuple(_entry(e) for e in db.entries(s.list_id, MAX_ENTRIES)),
        )
        for s in db.lists()
    )


def _entry(e: ListEntry) -> ListEntryRow:
    return ListEntryRow(ref=e.ref, label=e.label, faces=e.faces)


async def admin_state(ctx: QueryContext, request: AdminStateRequest) -> AdminState:
    """The district's tokens (newest first) and the watch lists."""
    tokens = [t for t in await ctx.operations.tokens() if t.district_id == ctx.principal.district_id]
    tokens.sort(key=lambda t: t.created_at, reverse=True)
    lists = await lists_call(ctx.config, _list_rows)
    return AdminState(tokens=tuple(_token_row(t) for t in tokens), lists=lists)


async def audit_verify(ctx: QueryContext, request: AuditVerifyRequest) -> ChainStatus:
    """The hash chain walked from the first entry (in the operations database's thread)."""
    checked, broken = await ctx.operations.verify_audit()
    return ChainStatus(checked=checked, broken_at=broken)


async def token_create(ctx: QueryContext, request: TokenCreateRequest) -> IssuedToken:
    """Create the token (its name must be new); the secret goes back to the caller only."""
    # registered compounds within the admin's scope; none named: the admin's own scope
    scope = ctx.scope(request.compounds) or ()
    secret = await ctx.operations.create_token(
        request.name, request.role, ctx.principal.district_id, scope, ctx.principal.name
    )
    return IssuedToken(name=request.name, role=request.role, compounds=tuple(scope), secret=secret)


async def token_revoke(ctx: QueryContext, request: TokenRevokeRequest) -> TokenRow:
    """Revoke a live token of the admin's district (404 when there is none by that name)."""
    found = [
        t
        for t in await ctx.operations.tokens()
        if t.name == request.name and t.district_id == ctx.principal.district_id and t.revoked_at is None
    ]
    if not found or not await ctx.operations.revoke_token(request.name):
        raise NotFoundError(f"no live token {request.name!r} in district {ctx.principal.district_id}")
    return _token_row(found[0])


async def watchlist_enroll(ctx: QueryContext, request: EnrollRequest) -> ListEntryRow:
    """Compute the embedding off the loop, then add it to the subject (400 unless exactly one face)."""
    embedding = await asyncio.to_thread(face_embedding, request.photo_name, request.photo)
    added = (embedding, request.photo_name)
    await lists_call(
        ctx.config,
        lambda db: db.enroll_embeddings(request.list_id, request.subject_id, [added], request.label, None),
    )
    return ListEntryRow(ref=request.subject_id, label=request.label, faces=1)


async def watchlist_plate(ctx: QueryContext, request: PlateRequest) -> ListEntryRow:
    """List the plate (a face list of that id refuses it: 400)."""
    await lists_call(ctx.config, lambda db: db.add_plate(request.list_id, request.plate, request.label))
    return ListEntryRow(ref=request.plate, label=request.label, faces=1)


async def watchlist_remove(ctx: QueryContext, request: RemoveRequest) -> int:
    """Remove the subject or plate (404 when the list has no such entry); how many rows went."""

    def remove(db: WatchListDb) -> int:
        kinds = {s.list_id: s.kind for s in db.lists()}
        if request.list_id not in kinds:
            raise NotFoundError(f"no list {request.list_id!r}", field="list_id")
        if kinds[request.list_id] == "face":
            return db.remove(request.list_id, subject_id=request.ref)
        return db.remove(request.list_id, plate=request.ref)

    removed = await lists_call(ctx.config, remove)
    if removed == 0:
        raise NotFoundError(f"list {request.list_id} has no entry {request.ref!r}", field="ref")
    return removed


async def watchlist_publish(ctx: QueryContext, request: PublishRequest) -> Published:
    """Take the next version and retain it on the district broker (as ``watchlist publish`` does).

    The version is taken before the broker is asked: when the broker does not answer (503), the
    next publication sends a newer version, never a different list under the same number.
    """
    documents = await lists_call(
        ctx.config, lambda db: published_documents(db, ctx.config, [request.list_id])
    )
    try:
        await publish(ctx.config, [(list_id, body) for list_id, body, _ in documents])
    except TransportError as exc:
        raise StoreUnavailableError(f"the district broker did not take the list: {exc}") from None
    _, _, watch_list = documents[0]
    # what was retained (list, version, entries), in the form the CLI's ``watchlist.publish`` entry
    # records it; the request's own entry (reason, outcome) is the service's
    await ctx.operations.audit(
        AuditEntry(
            actor=ctx.principal.name,
            role=ctx.principal.role.value,
            channel="console",
            client=None,
            action="watchlist.published",
            filters=describe(watch_list),
            outcome="ok",
            status=200,
            reason=request.reason,
        )
    )
    entries = len(watch_list.subjects) if watch_list.kind == "face" else len(watch_list.plates)
    return Published(list_id=watch_list.list_id, version=watch_list.version, entries=entries)


# ---- specs ------------------------------------------------------------------------------------


def _one(_: object) -> int:
    return 1


def _no_tables(view: Presenter, result: object) -> list[Table]:
    return []  # the console renders these itself; no ``query`` subcommand prints them


def _spec(
    name: str,
    request: type[Model],
    result: object,
    run: Callable[..., object],
    summary: str,
    *,
    change: bool = True,
    rows: Callable[..., int] = _one,
) -> QuerySpec[Model, object]:
    return QuerySpec(
        name=name,
        request=request,
        result=result,
        role=Role.ADMIN,
        route=Route("POST" if change else "GET", f"/console-only/{name}", summary + " (console only)"),
        run=run,  # type: ignore[arg-type]
        rows=rows,
        tables=_no_tables,
        needs_reason=CHANGE if change else None,
        responses={404: "No such token, list or entry"} if change else {},
        cli=None,
    )


STATE = _spec(
    "admin_state",
    AdminStateRequest,
    AdminState,
    admin_state,
    "Tokens and watch lists",
    change=False,
    rows=lambda s: len(s.tokens) + len(s.lists),
)
VERIFY = _spec(
    "audit_verify", AuditVerifyRequest, ChainStatus, audit_verify, "Walk the audit chain", change=False
)
TOKEN_CREATE = _spec("token.create", TokenCreateRequest, IssuedToken, token_create, "Issue a token")
TOKEN_REVOKE = _spec("token.revoke", TokenRevokeRequest, TokenRow, token_revoke, "Revoke a token")
ENROLL = _spec("watchlist.enroll", EnrollRequest, ListEntryRow, watchlist_enroll, "Enrol a face")
PLATE = _spec("watchlist.add_plate", PlateRequest, ListEntryRow, watchlist_plate, "List a plate")
REMOVE = _spec("watchlist.remove", RemoveRequest, int, watchlist_remove, "Take an entry off", rows=int)
PUBLISH = _spec("watchlist.publish", PublishRequest, Published, watchlist_publish, "Publish a list")
