"""``evidence``, ``evidence_request``, ``evidence_barrier``: what the district holds of an event, and asking for more.

Events carry references to their pictures and clips; the bytes stay in the compound unless a rule
sends them (a critical alarm's snapshot) or an operator asks. Asking is a security action: the
operator role, a reason the audit log keeps, and the event's compound inside the token's scope.
The compound applies its own policy and answers; the evidence desk (``district.evidence_desk``)
carries requests and files. Fetching the bytes (``evidence_media``) is served as a binary route by
the API (``GET /api/v1/evidence/{event_id}/media/{sha256}``) and is audited like every action.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from district.evidence_store import EvidenceAccess, ManifestRecord, MediaRecord, RequestRecord, RequestState
from district.operator_output import Presenter, Table
from district.queries.context import QueryContext, to_ns
from district.queries.spec import NeedsReason, QuerySpec, Route
from district.query_model import Model, Reason, Role, Selection
from foundation.errors import InvalidQueryError, NotFoundError, StoreUnavailableError
from foundation.events import GbId
from uplink.evidence import MediaRole, Sha256

EVENT_LOOKBACK = timedelta(days=400)
MAX_BARRIER_WINDOW = timedelta(hours=24)
EventId = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z\-_]{8,64}$")]


@dataclass(frozen=True)
class EvidenceContext(QueryContext):
    """A query context that also reaches the evidence (None where no evidence store is open)."""

    evidence: EvidenceAccess | None = None

    def access(self) -> EvidenceAccess:
        """The evidence, or 503."""
        if self.evidence is None:
            raise StoreUnavailableError("the evidence store is not open in this process")
        return self.evidence


def _access(ctx: QueryContext) -> EvidenceAccess:
    if not isinstance(ctx, EvidenceContext):
        raise StoreUnavailableError("the evidence store is not open in this process")
    return ctx.access()


# ---- models ----------------------------------------------------------------------------------


class HeldFile(Model):
    """A file the district holds for the event."""

    sha256: str
    role: str
    size: int
    content_type: str
    verified: bool
    compound_id: str
    received_at: datetime
    request_id: str | None = Field(description="None: the compound sent it unasked (a critical alarm's)")


class ListedFile(Model):
    """A file a compound says it holds for the event."""

    sha256: str
    role: str
    size: int
    content_type: str
    source: str = Field(description='"manifest" or the request whose answer listed it')
    seen_at: datetime


class RequestView(Model):
    """One evidence request and where it stands."""

    request_id: str
    kind: str
    state: RequestState
    compound_id: str
    operator: str
    created_at: datetime
    expires_at: datetime
    published: bool = Field(description="the request reached the district broker")
    rule: str | None = Field(default=None, description="the compound's policy rule (refusals)")
    detail: str | None = None
    items_expected: int | None = None
    items_received: int = 0
    event_id: str | None = None
    device_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class EvidenceStatus(Model):
    """What the district holds and knows of one event's media, and the requests for it."""

    event_id: str
    compound_id: str
    compound_status: str | None = Field(
        default=None, description="the compound's last reported gateway state (online, offline, stopped)"
    )
    held: list[HeldFile]
    listed: list[ListedFile]
    requests: list[RequestView]


class MediaFile(Model):
    """One verified file to serve (``evidence_media``)."""

    sha256: str
    role: str
    size: int
    content_type: str
    path: str


def request_view(record: RequestRecord) -> RequestView:
    """The operator's view of a request (without the reason: the audit log keeps that)."""
    return RequestView(
        request_id=record.request_id,
        kind=record.kind,
        state=record.state,
        compound_id=record.compound_id,
        operator=record.operator,
        created_at=record.created_at,
        expires_at=record.expires_at,
        published=record.published_at is not None,
        rule=record.rule,
        detail=record.detail,
        items_expected=record.items_expected,
        items_received=record.items_received,
        event_id=record.event_id,
        device_id=record.device_id,
        since=record.since,
        until=record.until,
    )


def _held(record: MediaRecord) -> HeldFile:
    return HeldFile(
        sha256=record.sha256,
        role=record.role,
        size=record.size,
        content_type=record.content_type,
        verified=record.verified,
        compound_id=record.compound_id,
        received_at=record.received_at,
        request_id=record.request_id,
    )


def _listed(record: ManifestRecord) -> ListedFile:
    return ListedFile(
        sha256=record.sha256,
        role=record.role,
        size=record.size,
        content_type=record.content_type,
        source=record.source,
        seen_at=record.seen_at,
    )


# ---- where an event belongs ----------------------------------------------------------------


async def event_compound(ctx: QueryContext, event_id: str, given: str | None) -> str:
    """The compound of an event (the store's word, else the evidence index's, else ``given``), in scope.

    403 when it is outside the token's scope, 404 when nobody knows the event.
    """
    now = ctx.clock()
    selection = Selection(
        district_id=ctx.principal.district_id,
        compounds=None,  # the whole district: an event of another compound is 403, not 404
        start_ns=to_ns(now - EVENT_LOOKBACK),
        end_ns=to_ns(now + timedelta(minutes=5)),
        event_id=event_id,
    )
    found = await ctx.backend.find(selection, newest_first=True, limit=1, cursor_ns=None)
    compound = found[0].compound_id if found else await _access(ctx).index.event_compound(event_id)
    if compound is not None and given is not None and given != compound:
        raise InvalidQueryError(
            f"event {event_id} belongs to compound {compound}, not {given}", field="compound"
        )
    compound = compound or given
    if compound is None:
        raise NotFoundError(
            f"the district knows no event {event_id}; give its compound to ask for it anyway",
            field="event_id",
        )
    ctx.scope((compound,))  # 403 outside the token's scope, 400 for an unregistered compound
    return compound


async def device_compound(ctx: QueryContext, device: str, since: datetime, given: str | None) -> str:
    """The compound of a device (from its events in the month before ``since``, else ``given``), in scope."""
    selection = Selection(
        district_id=ctx.principal.district_id,
        compounds=None,
        start_ns=to_ns(since - timedelta(days=31)),
        end_ns=to_ns(ctx.clock() + timedelta(minutes=5)),
        devices=(device,),
    )
    found = await ctx.backend.find(selection, newest_first=True, limit=1, cursor_ns=None)
    compound = found[0].compound_id if found else given
    if found and given is not None and given != compound:
        raise InvalidQueryError(
            f"device {device} belongs to compound {compound}, not {given}", field="compound"
        )
    if compound is None:
        raise NotFoundError(f"the district knows no device {device}; give its compound", field="device")
    ctx.scope((compound,))
    return compound


def _read_status(path: Path, compound_id: str) -> str | None:
    if not path.is_file():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as db:
        row = db.execute("SELECT state FROM compound_status WHERE compound_id = ?", (compound_id,)).fetchone()
    return str(row[0]) if row else None


async def compound_status(ctx: QueryContext, compound_id: str) -> str | None:
    """The compound's last gateway state as this host's ingester recorded it (None if unknown here)."""
    try:
        return await asyncio.to_thread(_read_status, ctx.config.ingest.dead_letter_path, compound_id)
    except (sqlite3.Error, OSError):
        return None  # no ingester state on this host, or not readable: the status is a convenience


# ---- evidence (status) -----------------------------------------------------------------------


class EvidenceStatusRequest(Model):
    """What the district holds of one event's media, and the requests for it."""

    event_id: EventId
    compound: GbId | None = Field(
        default=None, description="the event's compound, if the district does not know it"
    )
    reason: Reason | None = Field(default=None, description="optional for viewing the status")


async def evidence_status(ctx: QueryContext, request: EvidenceStatusRequest) -> EvidenceStatus:
    """The event's held files, listed files and requests."""
    access = _access(ctx)
    compound = await event_compound(ctx, request.event_id, request.compound)
    return EvidenceStatus(
        event_id=request.event_id,
        compound_id=compound,
        compound_status=await compound_status(ctx, compound),
        held=[_held(m) for m in await access.index.media_for_event(request.event_id)],
        listed=[_listed(m) for m in await access.index.manifest_for_event(request.event_id)],
        requests=[request_view(r) for r in await access.index.requests_for_event(request.event_id)],
    )


def _status_tables(view: Presenter, status: EvidenceStatus) -> list[Table]:
    held = (
        ["role", "sha256", "size", "verified", "received", "request"],
        [
            [
                f.role,
                f.sha256[:16],
                str(f.size),
                "yes" if f.verified else "no",
                view.time(f.received_at),
                f.request_id or "(unasked)",
            ]
            for f in status.held
        ],
    )
    listed = (
        ["listed role", "sha256", "size", "source"],
        [[f.role, f.sha256[:16], str(f.size), f.source] for f in status.listed],
    )
    return [held, listed, _request_table(view, status.requests)]


def _request_table(view: Presenter, requests: list[RequestView]) -> Table:
    return (
        ["request", "state", "by", "created", "expires", "files", "rule", "detail"],
        [
            [
                r.request_id,
                r.state.value,
                r.operator,
                view.time(r.created_at),
                view.time(r.expires_at),
                f"{r.items_received}/{r.items_expected if r.items_expected is not None else '?'}",
                r.rule or "",
                r.detail or "",
            ]
            for r in requests
        ],
    )


def _status_rows(status: EvidenceStatus) -> int:
    return len(status.held)


STATUS_SPEC = QuerySpec(
    name="evidence",
    request=EvidenceStatusRequest,
    result=EvidenceStatus,
    role=Role.VIEWER,
    route=Route(
        "GET", "/evidence/{event_id}", "What the district holds of an event's media, and its requests"
    ),
    run=evidence_status,
    rows=_status_rows,
    tables=_status_tables,
    responses={404: "The district knows no such event (give its compound)"},
    cli=None,  # `compound-gateway query evidence <event id>` (it also fetches and saves, over the API)
)


# ---- evidence_request ------------------------------------------------------------------------


class EvidenceRequestRequest(Model):
    """Ask the event's compound for its media (all roles, or the ones named)."""

    event_id: EventId
    reason: Reason
    roles: tuple[MediaRole, ...] = Field(default=(), max_length=6, description="default: every role")
    compound: GbId | None = Field(
        default=None, description="the event's compound, if the district does not know it"
    )


def _new_request_id() -> str:
    return "er_" + secrets.token_urlsafe(12)


async def _write_request(
    ctx: QueryContext, compound: str, kind: str, reason: str, **subject: Any
) -> RequestView:
    """Write the operator's pending request to ``compound`` (the desk publishes it); ``subject``: its fields."""
    access = _access(ctx)
    now = ctx.clock()
    record = RequestRecord(
        request_id=_new_request_id(),
        kind=kind,
        district_id=_district_of(ctx, compound),
        compound_id=compound,
        operator=ctx.principal.name,
        role=ctx.principal.role.value,
        reason=reason,
        created_at=now,
        expires_at=now + timedelta(seconds=access.request_ttl_s),
        **subject,
    )
    await access.index.create_request(record)
    access.new_request.set()
    return request_view(record)


def _district_of(ctx: QueryContext, compound: str) -> str:
    entry = ctx.registry.get(compound)
    return ctx.config.compound_district(entry) if entry else ctx.config.district_id


async def evidence_request(ctx: QueryContext, request: EvidenceRequestRequest) -> RequestView:
    """Write a pending request; the desk sends it to the compound (now, or when the broker answers)."""
    compound = await event_compound(ctx, request.event_id, request.compound)
    return await _write_request(
        ctx, compound, "event", request.reason, event_id=request.event_id, roles=tuple(request.roles)
    )


def _one(_: RequestView) -> int:
    return 1


def _request_tables(view: Presenter, result: RequestView) -> list[Table]:
    return [_request_table(view, [result])]


REQUEST_SPEC = QuerySpec(
    name="evidence_request",
    request=EvidenceRequestRequest,
    result=RequestView,
    role=Role.OPERATOR,
    route=Route("POST", "/evidence/{event_id}/requests", "Ask an event's compound for its media"),
    run=evidence_request,
    rows=_one,
    tables=_request_tables,
    needs_reason=NeedsReason("an evidence request"),
    responses={404: "The district knows no such event (give its compound)"},
)


# ---- evidence_barrier ------------------------------------------------------------------------


class EvidenceBarrierRequest(Model):
    """Ask a barrier camera's compound for the vehicle pictures it took in a window (at most a day)."""

    device: GbId
    since: AwareDatetime
    until: AwareDatetime
    reason: Reason
    compound: GbId | None = Field(
        default=None, description="the device's compound, if the district does not know it"
    )

    @model_validator(mode="after")
    def _window(self) -> EvidenceBarrierRequest:
        if self.until <= self.since:
            raise ValueError("until must be after since")
        if self.until - self.since > MAX_BARRIER_WINDOW:
            raise ValueError("a window of at most 24 hours; ask for longer ones in parts")
        return self


async def evidence_barrier(ctx: QueryContext, request: EvidenceBarrierRequest) -> RequestView:
    """Write a pending barrier-window request for the device's compound."""
    compound = await device_compound(ctx, request.device, request.since, request.compound)
    return await _write_request(
        ctx,
        compound,
        "barrier_window",
        request.reason,
        device_id=request.device,
        since=request.since,
        until=request.until,
    )


BARRIER_SPEC = QuerySpec(
    name="evidence_barrier",
    request=EvidenceBarrierRequest,
    result=RequestView,
    role=Role.OPERATOR,
    route=Route("POST", "/evidence/barrier", "Ask a barrier camera's compound for its pictures of a window"),
    run=evidence_barrier,
    rows=_one,
    tables=_request_tables,
    needs_reason=NeedsReason("a barrier window's pictures"),
    responses={404: "The district knows no such device (give its compound)"},
)


# ---- evidence_media (binary; served by the API, not in the registry) ------------------------


class EvidenceMediaRequest(Model):
    """One verified file of an event, by its SHA-256."""

    event_id: EventId
    sha256: Sha256
    reason: Reason


async def evidence_media(ctx: QueryContext, request: EvidenceMediaRequest) -> MediaFile:
    """The file, if the district holds it verified for this event and the event is in scope."""
    access = _access(ctx)
    # the scope first (403 for another compound's event whatever the SHA-256), so that a 404 never
    # tells a token outside the scope which files the district holds of that compound's events
    await event_compound(ctx, request.event_id, None)
    held = [
        m
        for m in await access.index.media_for_event(request.event_id)
        if m.sha256 == request.sha256 and m.verified
    ]
    if not held:
        raise NotFoundError(
            f"no verified file {request.sha256[:16]}... of event {request.event_id}", field="sha256"
        )
    ctx.scope((held[0].compound_id,))
    path = access.files.path(request.sha256)
    if not await asyncio.to_thread(path.is_file):
        raise NotFoundError(f"file {request.sha256[:16]}... is indexed but gone from disk", field="sha256")
    return MediaFile(
        sha256=request.sha256,
        role=held[0].role,
        size=held[0].size,
        content_type=held[0].content_type,
        path=str(path),
    )


def _media_tables(_: Presenter, result: MediaFile) -> list[Table]:
    return [(["role", "sha256", "size"], [[result.role, result.sha256, str(result.size)]])]


def _one_file(_: MediaFile) -> int:
    return 1


MEDIA_SPEC = QuerySpec(
    name="evidence_media",
    request=EvidenceMediaRequest,
    result=MediaFile,
    role=Role.OPERATOR,
    route=Route("GET", "/evidence/{event_id}/media/{sha256}", "One verified evidence file (binary)"),
    run=evidence_media,
    rows=_one_file,
    tables=_media_tables,
    needs_reason=NeedsReason("fetching evidence"),
    responses={404: "No such verified file of this event"},
    cli=None,
)

SPECS = (STATUS_SPEC, REQUEST_SPEC, BARRIER_SPEC)
"""The evidence actions the registry lists (``MEDIA_SPEC`` is the API's binary route)."""
