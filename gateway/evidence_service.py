"""The compound's evidence desk: answers the district's requests, sends alarm pictures unasked.

``MqttUplink`` owns the one session to the district broker. It hands every message on this
compound's ``request/evidence`` topic to ``EvidenceService.receive`` and runs
``EvidenceService.run`` as a task of each connection, beside the event forwarder. The service
never holds events back: it publishes one message at a time (one PUBACK in flight, so at most one
of the session's in-flight slots), reads the files in a thread, one chunk at a time, and its work
queue is the table of open requests, bounded by ``max_open_requests``.

A request's life:

1. ``receive``: decoded (a bad one is logged and counted, nothing else), judged by
   ``gateway.evidence_policy`` (with the event's kind from the catalog), recorded with its decision
   in the audit (``EvidenceAudit``, its own SQLite file) and logged (``evidence_request_decided``).
   A request id already recorded is a QoS 1 redelivery (or a district that asked twice): ignored.
2. ``run``: every open request is answered in order of arrival -- EXPIRED once ``expires_at`` has
   passed, REFUSED with the rule, NOT_FOUND, WAITING while the catalog is still fetching (looked at
   again every ``recheck_s``), FAILED when the fetch gave up, or SENDING with the items followed by
   each file's chunks. A request is closed (and its answer recorded in the audit) only after the
   broker acknowledged its last message; one open when the connection or the gateway goes down is
   served again from the start on the next connection.

Unasked: the critical alarms' snapshots and trajectory pictures (``catalog.proactive_pending``)
go first, before any request's file, and are marked sent only after every chunk's PUBACK; then the
manifests of media fetched after their events went up.

Requests arrive acknowledged (the session acknowledges on arrival, as it does receipts): a
gateway killed between a request's arrival and its audit commit (milliseconds) loses that request,
and the district, hearing nothing before ``expires_at``, asks again.

Only the MQTT uplink carries requests: with ``DirectUplink`` (no broker) the district cannot ask
a compound for anything, and alarm pictures stay in the compound.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import NoReturn

import structlog

from foundation.cancellation import raise_if_cancelling
from foundation.errors import OutboxError, PayloadRejected, PublishRefusedError
from foundation.events import EventKind, utc_now
from foundation.health import Health, MetricFamilies
from foundation.logging import worth_logging
from foundation.sqlite_thread import SqliteBacked, transaction
from gateway.config import EvidenceServiceConfig, GatewayConfig
from gateway.evidence_catalog import EventMedia, EvidenceCatalog, FetchState, StoredMedia
from gateway.evidence_policy import ALARM_MEDIA, NOT_FOUND, RULES, Decision, EventFacts, decide
from uplink.evidence import (
    ANSWER,
    CHUNK,
    MANIFEST,
    MAX_ITEMS_PER_ANSWER,
    MAX_MANIFEST_ITEMS,
    AnswerStatus,
    ChunkHeader,
    EventEvidence,
    EvidenceAnswer,
    EvidenceRequest,
    MediaManifest,
    chunk_spans,
    compound_evidence_topic,
    decode_request,
    encode_chunk,
    encode_json,
    is_expired,
    request_topic,
)

log = structlog.get_logger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
"""Publish at QoS 1 on the uplink session; returns after the PUBACK."""

DECISIONS = ("allowed", "refused", "not_found", "expired", "busy")
"""The ``decision`` label values of ``cgw_evidence_requests_total`` (its ``rule``: a policy rule or "none")."""
RULE_LABELS = (*RULES, "none")
PURGE_EVERY_S = 6 * 3600.0
PROACTIVE_BATCH = 8
REFUSED_PAUSE_S = 60.0  # the broker's ACL refused an evidence topic: it will not change within seconds

AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    request_id TEXT NOT NULL,
    what TEXT NOT NULL CHECK (what IN ('decided', 'answered')),
    operator TEXT NOT NULL,
    role TEXT NOT NULL,
    reason TEXT NOT NULL,
    subject TEXT NOT NULL,
    decision TEXT NOT NULL,
    rule TEXT,
    detail TEXT,
    files INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS evidence_audit_request ON evidence_audit (request_id);
CREATE INDEX IF NOT EXISTS evidence_audit_at ON evidence_audit (at);
CREATE TRIGGER IF NOT EXISTS evidence_audit_append_only BEFORE UPDATE ON evidence_audit
BEGIN
    SELECT RAISE(ABORT, 'the evidence audit is append-only');
END;
CREATE TABLE IF NOT EXISTS evidence_open (
    request_id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    request TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    status TEXT NOT NULL,
    rule TEXT,
    detail TEXT,
    answered TEXT
);
"""


@dataclass(frozen=True)
class OpenRequest:
    """A request not answered for good yet, as the audit file keeps it."""

    request: EvidenceRequest
    allowed: bool
    status: AnswerStatus  # the answer of a request that is not allowed (REFUSED, NOT_FOUND, EXPIRED, FAILED)
    rule: str | None
    detail: str | None
    roles: frozenset[str]
    answered: AnswerStatus | None  # the last answer sent (WAITING), None: nothing yet


class EvidenceAudit(SqliteBacked):
    """The compound's record of every request and answer (append-only), and the open requests."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, AUDIT_SCHEMA, "evidence-audit")

    async def record(self, request: EvidenceRequest, decision: str, row: OpenRequest, at: datetime) -> bool:
        """Record a decision and open the request; False (nothing written) if its id is known."""

        def write(db: sqlite3.Connection) -> bool:
            with transaction(db):
                # open, or decided within the audit's retention (an open request outlives its rows)
                known = db.execute(
                    "SELECT 1 FROM evidence_open WHERE request_id = ?1 UNION ALL"
                    " SELECT 1 FROM evidence_audit WHERE request_id = ?1 AND what = 'decided' LIMIT 1",
                    (request.request_id,),
                ).fetchone()
                if known is not None:
                    return False
                _audit_row(db, request, at, "decided", decision, row.rule, row.detail)
                db.execute(
                    "INSERT INTO evidence_open (request_id, received_at, request, allowed, status, rule, detail,"
                    " answered) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                    (
                        request.request_id,
                        at.isoformat(),
                        request.model_dump_json(),
                        int(row.allowed),
                        row.status.value,
                        row.rule,
                        "|".join(sorted(row.roles)) if row.allowed else row.detail,
                    ),
                )
                return True

        return await self._file.call(write)

    async def open_requests(self) -> list[OpenRequest]:
        """The open requests, oldest first."""

        def read(db: sqlite3.Connection) -> list[OpenRequest]:
            rows = db.execute(
                "SELECT request, allowed, status, rule, detail, answered FROM evidence_open"
                " ORDER BY received_at, request_id"
            ).fetchall()
            return [
                OpenRequest(
                    request=EvidenceRequest.model_validate_json(body),
                    allowed=bool(allowed),
                    status=AnswerStatus(status),
                    rule=rule,
                    detail=None if allowed else detail,
                    roles=frozenset(detail.split("|")) if allowed and detail else frozenset(),
                    answered=AnswerStatus(answered) if answered else None,
                )
                for body, allowed, status, rule, detail, answered in rows
            ]

        return await self._file.call(read)

    async def count_open(self) -> int:
        """How many requests are open."""
        return await self._file.call(
            lambda db: int(db.execute("SELECT count(*) FROM evidence_open").fetchone()[0])
        )

    async def answered(
        self,
        request: EvidenceRequest,
        answer: EvidenceAnswer,
        *,
        close: bool,
        files: int = 0,
        size: int = 0,
    ) -> None:
        """An answer went up (acknowledged): record it; ``close``: the request is done."""

        def write(db: sqlite3.Connection) -> None:
            with transaction(db):
                _audit_row(
                    db,
                    request,
                    answer.answered_at,
                    "answered",
                    answer.status.value,
                    answer.rule,
                    answer.detail,
                    files=files,
                    size=size,
                )
                if close:
                    db.execute("DELETE FROM evidence_open WHERE request_id = ?", (request.request_id,))
                else:
                    db.execute(
                        "UPDATE evidence_open SET answered = ? WHERE request_id = ?",
                        (answer.status.value, request.request_id),
                    )

        await self._file.call(write)

    async def purge(self, before: datetime) -> int:
        """Forget audit rows older than ``before`` (open requests stay); how many went."""

        def delete(db: sqlite3.Connection) -> int:
            with transaction(db):
                return db.execute("DELETE FROM evidence_audit WHERE at < ?", (before.isoformat(),)).rowcount

        return await self._file.call(delete)


def _audit_row(  # noqa: PLR0917 - one row's columns
    db: sqlite3.Connection,
    request: EvidenceRequest,
    at: datetime,
    what: str,
    decision: str,
    rule: str | None,
    detail: str | None,
    *,
    files: int = 0,
    size: int = 0,
) -> None:
    db.execute(
        "INSERT INTO evidence_audit (at, request_id, what, operator, role, reason, subject, decision, rule, detail,"
        " files, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            at.isoformat(),
            request.request_id,
            what,
            request.operator,
            request.role,
            request.reason,
            request.subject.model_dump_json(),
            decision,
            rule,
            detail,
            files,
            size,
        ),
    )


class _Unreadable(Exception):  # noqa: N818 - internal: a file that is not what the catalog said
    pass


@dataclass(frozen=True)
class _Plan:
    status: AnswerStatus
    files: tuple[StoredMedia, ...] = ()
    detail: str | None = None


class EvidenceService:
    """Requests in, answers and files out, over the uplink's session (see the module docstring)."""

    def __init__(
        self,
        config: GatewayConfig,
        topic_prefix: str,
        catalog: EvidenceCatalog,
        audit: EvidenceAudit,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        compound = config.compound
        self._serve: EvidenceServiceConfig = config.evidence.serve
        self._catalog = catalog
        self._audit = audit
        self._clock = clock
        self._devices = {d.id: d.dialect for d in config.devices}
        self.request_topic = request_topic(topic_prefix, compound.district_id, compound.compound_id)
        self._topics = {
            what: compound_evidence_topic(topic_prefix, compound.district_id, compound.compound_id, what)
            for what in (ANSWER, MANIFEST, CHUNK)
        }
        self._wake = asyncio.Event()
        self._next_check: dict[str, float] = {}
        self.requests: Counter[tuple[str, str]] = Counter()
        self.files_sent: Counter[str] = Counter()
        self.bytes_sent = 0
        self.bad_requests = 0
        self.duplicates = 0
        self.failures = 0
        self.open = 0

    # --- metrics -------------------------------------------------------------------------------------

    def wake(self) -> None:
        """A fetch finished: look for files to send, and at requests waiting for media, now."""
        self._next_check.clear()
        self._wake.set()

    def expose(self, health: Health) -> None:
        """Its metrics, written at each scrape."""
        health.writers.append(self.write_metrics)
        health.expose(
            "cgw_evidence_bad_requests_total",
            "evidence requests that could not be read",
            lambda: self.bad_requests,
        )
        health.expose(
            "cgw_evidence_duplicate_requests_total",
            "evidence requests seen before (ignored)",
            lambda: self.duplicates,
        )

    def write_metrics(self, families: MetricFamilies) -> None:
        """Requests by decision and rule, files by why, bytes, open requests."""
        families.counter(
            "cgw_evidence_requests_total",
            "evidence requests from the district, by decision and policy rule",
            [({"decision": d, "rule": r}, n) for (d, r), n in sorted(self.requests.items())],
        )
        families.counter(
            "cgw_evidence_files_sent_total",
            "evidence files sent to the district (request: asked for; proactive: a critical alarm's)",
            [({"why": why}, self.files_sent[why]) for why in ("request", "proactive")],
        )
        families.counter("cgw_evidence_bytes_sent_total", "bytes of evidence files sent", self.bytes_sent)
        families.gauge("cgw_evidence_requests_open", "evidence requests not answered for good yet", self.open)

    # --- requests in ---------------------------------------------------------------------------------

    async def receive(self, payload: bytes) -> None:
        """One message of the request topic: judge, record, log; never raises for bad input."""
        try:
            request = decode_request(payload)
        except PayloadRejected as exc:
            self.bad_requests += 1
            if worth_logging(self.bad_requests, first=1):
                log.warning(
                    "evidence_request_rejected",
                    reason=exc.rejection.reason,
                    field=exc.rejection.field,
                    detail=exc.rejection.detail,
                    count=self.bad_requests,
                )
            return
        now = self._clock()
        try:
            label, row = await self._judge(request, now)
            new = await self._audit.record(request, label, row, now)
        except (OSError, sqlite3.Error, ValueError, OutboxError) as exc:
            # the link that carries the alarms must not go down for one request; the district,
            # hearing nothing before it expires, asks again
            self.failures += 1
            log.exception("evidence_request_unrecorded", request_id=request.request_id, error=str(exc))
            return
        if not new:
            self.duplicates += 1
            log.info("evidence_request_duplicate", request_id=request.request_id)
            return
        self.requests[label, row.rule or "none"] += 1
        self.open = await self._audit.count_open()
        log.info(
            "evidence_request_decided",
            request_id=request.request_id,
            operator=request.operator,
            role=request.role,
            reason=request.reason,
            subject=request.subject.model_dump(mode="json"),
            rule=row.rule,
            decision=label,
            detail=row.detail,
        )
        self._wake.set()

    async def _judge(self, request: EvidenceRequest, now: datetime) -> tuple[str, OpenRequest]:
        def closed(status: AnswerStatus, rule: str | None, detail: str) -> OpenRequest:
            return OpenRequest(request, False, status, rule, detail, frozenset(), None)

        if is_expired(request, now):
            return "expired", closed(AnswerStatus.EXPIRED, None, "reached the compound after it expired")
        if await self._audit.count_open() >= self._serve.max_open_requests:
            return "busy", closed(AnswerStatus.FAILED, None, "the compound has too many open requests")
        facts = None
        if isinstance(request.subject, EventEvidence):
            media = await self._catalog.event_media(request.subject.event_id)
            facts = None if media is None else EventFacts(media.kind, media.severity)
        decision: Decision = decide(
            request, event=facts, devices=self._devices, barrier_window_max_s=self._serve.barrier_window_max_s
        )
        if decision.allowed:
            row = OpenRequest(request, True, AnswerStatus.SENDING, decision.rule, None, decision.roles, None)
            return "allowed", row
        if decision.rule == NOT_FOUND:
            return "not_found", closed(AnswerStatus.NOT_FOUND, None, decision.detail)
        return "refused", closed(AnswerStatus.REFUSED, decision.rule, decision.detail)

    # --- out -----------------------------------------------------------------------------------------

    async def run(self, publish: Publish) -> NoReturn:
        """Serve over one connection; returns only by raising (``TransportError``) or cancellation.

        A refusal by the broker (``PublishRefusedError``: its ACL has no evidence lines for us)
        pauses the evidence, not the events; a catalog or file failure is logged and tried again.
        """
        next_purge = time.monotonic()
        self._next_check.clear()  # a new connection looks at every open request at once
        while True:
            raise_if_cancelling()
            self._wake.clear()
            pause = self._serve.poll_s
            try:
                if time.monotonic() >= next_purge:
                    await self._purge()
                    next_purge = time.monotonic() + PURGE_EVERY_S
                await self._send_proactive(publish)
                await self._send_manifests(publish)
                for row in await self._audit.open_requests():
                    await self._serve_request(row, publish)
                self.open = await self._audit.count_open()
                if self._next_check:
                    soonest = min(self._next_check.values()) - time.monotonic()
                    pause = max(0.0, min(pause, soonest))
            except PublishRefusedError as exc:
                log.error("evidence_publish_refused", topic=exc.topic, reason=exc.reason)
                pause = REFUSED_PAUSE_S
            except (OSError, sqlite3.Error, ValueError, OutboxError) as exc:
                # the catalog or the audit file failed: try again later, the events go on
                self.failures += 1
                if worth_logging(self.failures, first=1):
                    log.exception("evidence_service_failed", error=str(exc), count=self.failures)
            try:
                async with asyncio.timeout(pause):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _purge(self) -> None:
        before = self._clock() - timedelta(days=self._serve.audit_keep_days)
        purged = await self._audit.purge(before)
        if purged:
            log.info("evidence_audit_purged", rows=purged, before=before.isoformat())

    async def _send_proactive(self, publish: Publish) -> None:
        if not self._serve.proactive:
            return
        while pending := await self._catalog.proactive_pending(PROACTIVE_BATCH):
            for outgoing in pending:
                if outgoing.media.item.role not in ALARM_MEDIA:
                    # the catalog's choice, checked anyway: only alarm pictures go unasked, never a face
                    log.error(
                        "evidence_proactive_not_alarm_media",
                        event_id=outgoing.media.item.event_id,
                        role=outgoing.media.item.role,
                    )
                    await self._catalog.proactive_sent([outgoing.key])
                    continue
                try:
                    await self._send_file(publish, outgoing.media, None)
                except _Unreadable as exc:
                    # never sendable: marking it keeps it from blocking every other alarm's picture
                    log.error(
                        "evidence_proactive_unreadable", event_id=outgoing.media.item.event_id, error=str(exc)
                    )
                else:
                    self.files_sent["proactive"] += 1
                await self._catalog.proactive_sent([outgoing.key])

    async def _send_manifests(self, publish: Publish) -> None:
        while pending := await self._catalog.manifest_pending(MAX_MANIFEST_ITEMS):
            manifest = MediaManifest(items=tuple(o.media.item for o in pending))
            await publish(self._topics[MANIFEST], encode_json(manifest))
            await self._catalog.manifest_sent([o.key for o in pending])

    async def _serve_request(self, row: OpenRequest, publish: Publish) -> None:
        request = row.request
        now = self._clock()
        if not row.allowed:
            await self._answer(publish, row, _Plan(row.status, detail=row.detail), close=True)
            return
        if is_expired(request, now):
            await self._answer(
                publish, row, _Plan(AnswerStatus.EXPIRED, detail="expired before it was served")
            )
            return
        due = self._next_check.get(request.request_id)
        if due is not None and time.monotonic() < due:
            return
        plan = await self._plan(row)
        if plan.status is AnswerStatus.WAITING:
            self._next_check[request.request_id] = time.monotonic() + self._serve.recheck_s
            if row.answered is not AnswerStatus.WAITING:
                await self._answer(publish, row, plan, close=False)
            return
        self._next_check.pop(request.request_id, None)
        if plan.status is not AnswerStatus.SENDING:
            await self._answer(publish, row, plan)
            return
        answer = self._answer_of(row, plan)
        await publish(self._topics[ANSWER], encode_json(answer))
        size = 0
        for media in plan.files:
            await self._send_proactive(publish)  # a critical alarm's pictures overtake request files
            try:
                await self._send_file(publish, media, request.request_id)
            except _Unreadable as exc:
                failed = _Plan(
                    AnswerStatus.FAILED, detail=f"{media.item.role} of {media.item.event_id}: {exc}"
                )
                await self._answer(publish, row, failed)
                return
            self.files_sent["request"] += 1
            size += media.item.size
        await self._audit.answered(request, answer, close=True, files=len(plan.files), size=size)
        log.info("evidence_request_served", request_id=request.request_id, files=len(plan.files), bytes=size)

    async def _answer(self, publish: Publish, row: OpenRequest, plan: _Plan, *, close: bool = True) -> None:
        answer = self._answer_of(row, plan)
        await publish(self._topics[ANSWER], encode_json(answer))
        await self._audit.answered(row.request, answer, close=close)
        if close:
            self._next_check.pop(row.request.request_id, None)
        log.info(
            "evidence_request_answered",
            request_id=row.request.request_id,
            status=answer.status.value,
            rule=answer.rule,
            detail=answer.detail,
        )

    def _answer_of(self, row: OpenRequest, plan: _Plan) -> EvidenceAnswer:
        return EvidenceAnswer(
            request_id=row.request.request_id,
            status=plan.status,
            rule=row.rule,
            detail=None if plan.detail is None else plan.detail[:256],
            items=tuple(m.item for m in plan.files),
            answered_at=self._clock(),
        )

    async def _plan(self, row: OpenRequest) -> _Plan:
        subject = row.request.subject
        if isinstance(subject, EventEvidence):
            media = await self._catalog.event_media(subject.event_id)
            found = [] if media is None else [media]
        else:
            # the pictures of vehicle passes only, whatever else the camera's events carry
            found = [
                m
                for m in await self._catalog.window_media(
                    subject.device_id, subject.since, subject.until, MAX_ITEMS_PER_ANSWER
                )
                if m.kind is EventKind.VEHICLE_PASS
            ]
        return _plan_of(found, row.roles)

    async def _send_file(self, publish: Publish, media: StoredMedia, request_id: str | None) -> None:
        item = media.item
        spans = chunk_spans(item.size, self._serve.chunk_bytes)
        for index, (offset, length) in enumerate(spans):
            data = await asyncio.to_thread(_read_span, media.path, offset, length)
            header = ChunkHeader(
                request_id=request_id, item=item, offset=offset, index=index, count=len(spans)
            )
            await publish(self._topics[CHUNK], encode_chunk(header, data))
            self.bytes_sent += length


def _plan_of(found: Sequence[EventMedia], roles: frozenset[str]) -> _Plan:
    """What to answer for the media of the events a request names, limited to the allowed roles."""
    files: list[StoredMedia] = []
    failed: list[str] = []
    for media in found:
        if any(f.state is FetchState.PENDING and f.role in roles for f in media.fetches):
            return _Plan(AnswerStatus.WAITING, detail="fetching the media from the device")
        files += [s for s in media.stored if s.item.role in roles]
        failed += [
            f"{f.role}: {f.detail or 'failed'}"
            for f in media.fetches
            if f.state is FetchState.FAILED and f.role in roles
        ]
    if files:
        items = files[:MAX_ITEMS_PER_ANSWER]
        more = len(files) - len(items)
        return _Plan(
            AnswerStatus.SENDING, tuple(items), f"{more} more: ask for a shorter window" if more else None
        )
    if failed:
        return _Plan(AnswerStatus.FAILED, detail="; ".join(failed))
    return _Plan(AnswerStatus.NOT_FOUND, detail="no media of the roles allowed")


def _read_span(path: Path, offset: int, length: int) -> bytes:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read(length)
    except OSError as exc:
        raise _Unreadable(f"cannot read {path.name}: {exc.strerror}") from exc
    if len(data) != length:
        raise _Unreadable(f"{path.name} is shorter than the catalog says")
    return data
