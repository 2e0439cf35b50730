"""The district's command desk: sends operators' commands to compounds and records how they went.

It runs inside the operator API process (``compound-gateway api``) beside the evidence desk, with
its own persistent MQTT session to the district broker (``[commands]`` client id, user
``district-commands`` in the shipped ACL, QoS 1, clean start off): reports compounds send while
the desk is down wait at the broker, and commands issued while the broker is down are published
once it is back, unless they expired meanwhile (those end ``expired`` at the district, never sent).

Trust: the ACL lets a compound write only its own ``command/status``, and the desk checks each
report against the topic's compound: it is kept only for a command the book holds, that was
ordered of that compound, and of the device the command named. Anything else is
refused, counted (``cgw_district_command_reports_total{outcome}``) and logged; nothing a compound
sends can crash the desk. Reports of the compound's own local rules (``origin = rule``) are
counted and left: the rule's firing reaches the district as an event.

Tasks: ``command-session`` (publish pending orders, receive reports), ``command-expiry`` (ends
orders that expired unsent) and ``command-retention`` (``[retention] commands_days``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import structlog

from district.command_book import BookState, CommandAccess, CommandRecord, Reported
from district.config import DistrictConfig
from foundation.backoff import Backoff, BackoffConfig
from foundation.cancellation import raise_if_cancelling
from foundation.errors import PayloadRejected, PublishRefusedError, TransportError
from foundation.events import utc_now
from foundation.health import Health, MetricFamilies
from foundation.logging import worth_logging
from foundation.mqtt import MqttSession, SessionOptions
from foundation.supervision import supervise, until_first_ends
from uplink.commands import (
    REPORT,
    CommandOrder,
    CommandOrigin,
    decode_report,
    encode_json,
    order_topic,
    report_filter,
)

log = structlog.get_logger(__name__)

COMMAND_TRANSPORT = "command_desk"
"""The transport name of the desk's session (``cgw_transport_up{transport="command_desk"}``)."""
RECONNECT = BackoffConfig(initial_s=0.5, max_s=30.0)
RETRY = BackoffConfig(initial_s=1.0, max_s=60.0)
POLL_S = 1.0  # how often the desk looks for commands it was not nudged about
EXPIRY_S = 5.0
RECEIVE_MAXIMUM = 64
REPORT_OUTCOMES = ("applied", "recorded", "duplicate", "local_rule", "rejected")


def command_order(record: CommandRecord) -> CommandOrder:
    """What the compound receives for a command the book holds."""
    return CommandOrder(
        command_id=record.command_id,
        device_id=record.device_id,
        action=record.action,
        channel=record.channel,
        issued_by=record.issued_by[:64],
        role=record.role,
        reason=record.reason[:256],
        issued_at=record.issued_at,
        expires_at=record.expires_at,
    )


def _report_address(prefix: str, topic: str) -> tuple[str, str]:
    """(district, compound) of a report topic, or ``PayloadRejected``."""
    parts = topic.split("/")
    head = prefix.split("/")
    tail = REPORT.split("/")
    if len(parts) != len(head) + 2 + len(tail) or parts[: len(head)] != head or parts[-len(tail) :] != tail:
        raise PayloadRejected("bad_topic", f"not a command report topic: {topic[:200]}")
    return parts[len(head)], parts[len(head) + 1]


class CommandDesk:
    """The desk: one MQTT session, orders out, reports in; expiry of unsent orders and retention."""

    def __init__(
        self, config: DistrictConfig, access: CommandAccess, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._config = config
        self._commands = config.commands
        self._access = access
        self._book = access.book
        self._clock = clock
        self._districts = {config.district_id} | {config.compound_district(c) for c in config.compounds}
        self.reports: Counter[str] = Counter(dict.fromkeys(REPORT_OUTCOMES, 0))
        """Reports received, by outcome."""
        self.rejected: Counter[str] = Counter()
        """Reports refused, by reason."""
        self.orders_published = 0
        self.expired_unsent = 0
        self.purged = 0

    # ---- wiring --------------------------------------------------------------------------

    def session_options(self) -> SessionOptions:
        """The desk's persistent session (``[commands]`` overrides of ``[broker]``)."""
        return self._commands.session_options(self._config.broker, RECEIVE_MAXIMUM)

    def expose(self, health: Health) -> None:
        """The desk's figures on the API's ``/metrics``."""
        health.expose(
            "cgw_district_command_orders_published_total",
            "command orders the district broker took",
            lambda: self.orders_published,
        )
        health.expose(
            "cgw_district_command_expired_unsent_total",
            "commands that expired at the district before the broker took them (never sent)",
            lambda: self.expired_unsent,
        )

        def write(families: MetricFamilies) -> None:
            families.counter(
                "cgw_district_command_reports_total",
                "command reports received, by outcome (applied, recorded out of order, duplicate,"
                " a compound's local rule, rejected)",
                [({"outcome": o}, n) for o, n in sorted(self.reports.items())],
            )
            families.counter(
                "cgw_district_command_rejected_total",
                "command reports refused, by reason",
                [({"reason": r}, n) for r, n in sorted(self.rejected.items())],
            )

        async def gather(families: MetricFamilies) -> None:
            try:
                counts = await self._book.state_counts()
            except sqlite3.Error:
                return  # the scrape still answers; the gauge is missing while the book does not
            families.gauge(
                "cgw_district_commands",
                "commands in the command book, by stored state",
                [
                    ({"state": s.value}, float(counts.get(s.value, 0)))
                    for s in BookState
                    if s is not BookState.NO_ANSWER
                ],
            )

        health.writers.append(write)
        health.gatherers.append(gather)

    async def run(self, health: Health | None = None, connected: asyncio.Event | None = None) -> None:
        """Run the session, expiry and retention until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                supervise(COMMAND_TRANSPORT, self._connect_once, Backoff(RECONNECT), connected, health),
                name="command-session",
            )
            tg.create_task(
                self._periodically(self.expire_once, EXPIRY_S, "command_expiry_failed"), name="command-expiry"
            )
            tg.create_task(
                self._periodically(
                    self.purge_once, self._config.retention.check_interval_s, "command_purge_failed"
                ),
                name="command-retention",
            )

    # ---- the session ---------------------------------------------------------------------

    async def _connect_once(self, connected: Callable[[], None]) -> None:
        broker = self._config.broker
        session = MqttSession(self.session_options())
        try:
            async with session:
                await session.subscribe(report_filter(self._commands.topic_prefix), qos=1)
                log.info("command_desk_connected", host=broker.host, port=broker.port)
                connected()
                await until_first_ends(self._publish_orders(session), self._receive(session))
        except TransportError as exc:
            raise TransportError(f"command desk, {broker.host}:{broker.port}: {exc}") from exc
        except sqlite3.Error as exc:
            # the book failed: reconnect later; unacknowledged reports come again
            raise TransportError(f"command book: {exc}") from exc

    async def _publish_orders(self, session: MqttSession) -> None:
        while True:
            self._access.new_command.clear()
            for record in await self._book.unpublished(self._clock()):
                await self._publish(session, record)
            try:
                async with asyncio.timeout(POLL_S):
                    await self._access.new_command.wait()
            except TimeoutError:
                raise_if_cancelling()

    async def _publish(self, session: MqttSession, record: CommandRecord) -> None:
        topic = order_topic(self._commands.topic_prefix, record.district_id, record.compound_id)
        try:
            await session.publish(topic, encode_json(command_order(record)), qos=1)
        except PublishRefusedError as exc:
            await self._book.end_at_district(
                record.command_id,
                BookState.FAILED,
                f"the district broker refused it: {exc.reason}",
                self._clock(),
            )
            log.error("command_order_refused_by_broker", command_id=record.command_id, reason=exc.reason)
            return
        # a crash before this line publishes it again on restart: the compound runs each id once
        await self._book.mark_published(record.command_id, self._clock())
        self.orders_published += 1
        log.info(
            "command_order_sent",
            command_id=record.command_id,
            compound=record.compound_id,
            device=record.device_id,
            action=record.action.value,
        )

    async def _receive(self, session: MqttSession) -> None:
        async for message in session.messages():
            await self.handle(message.topic, message.payload)
            session.ack(message)  # after the report is committed to the book
        raise TransportError("the broker closed the message stream")

    # ---- what compounds report -----------------------------------------------------------

    async def handle(self, topic: str, payload: bytes) -> None:
        """One report; a bad one is refused, counted and logged, never raised.

        Book failures (``sqlite3.Error``) do raise: the report stays unacknowledged and comes
        again once the session is back.
        """
        compound: str | None = None
        try:
            district, compound = _report_address(self._commands.topic_prefix, topic)
            self._admit(district)
            await self._on_report(district, compound, payload)
        except PayloadRejected as exc:
            self._refused(topic, compound, exc)
        except sqlite3.Error:
            raise
        except Exception:
            # a bug must cost one report, not a crash loop on its redelivery
            log.exception("command_report_error", topic=topic[:200])
            self.reports["rejected"] += 1
            self.rejected["desk_error"] += 1

    def _admit(self, district_id: str) -> None:
        if district_id not in self._districts:
            raise PayloadRejected("foreign_district", f"district {district_id} is not ours")

    async def _on_report(self, district: str, compound: str, payload: bytes) -> None:
        report = decode_report(payload)
        if report.origin is CommandOrigin.RULE:
            self.reports["local_rule"] += 1
            return
        record = await self._book.command(report.command_id)
        if record is None:
            raise PayloadRejected("unknown_command", f"no command {report.command_id}", field="command_id")
        if (record.district_id, record.compound_id) != (district, compound):
            # another compound's command: not this sender's to report. (Not also "published": the
            # compound may answer before the desk has recorded the broker's PUBACK.)
            raise PayloadRejected(
                "foreign_command",
                f"command {report.command_id} was not sent to compound {compound}",
                field="command_id",
            )
        if report.device_id != record.device_id:
            raise PayloadRejected(
                "foreign_device",
                f"command {report.command_id} is for device {record.device_id}, not {report.device_id}",
                field="device_id",
            )
        outcome = await self._book.apply_report(report, self._clock())
        self.reports[outcome.value] += 1
        if outcome is not Reported.DUPLICATE:
            log.info(
                "command_report",
                command_id=report.command_id,
                compound=compound,
                state=report.state.value,
                outcome=outcome.value,
                rule=report.rule,
                reason=report.reason,
            )

    def _refused(self, topic: str, compound: str | None, exc: PayloadRejected) -> None:
        reason = exc.rejection.reason
        self.reports["rejected"] += 1
        self.rejected[reason] += 1
        if worth_logging(self.rejected[reason]):
            log.warning(
                "command_report_rejected",
                topic=topic[:200],
                compound=compound,
                reason=reason,
                field=exc.rejection.field,
                detail=exc.rejection.detail,
                count=self.rejected[reason],
            )

    # ---- expiry and retention ------------------------------------------------------------

    async def expire_once(self) -> int:
        """End commands that expired before the broker took them; returns how many."""
        expired = await self._book.expire_unpublished(self._clock())
        if expired:
            self.expired_unsent += expired
            log.warning("command_orders_expired_unsent", count=expired)
        return expired

    async def purge_once(self) -> int:
        """Delete commands past ``[retention] commands_days``; returns how many."""
        cutoff = self._clock() - timedelta(days=self._config.retention.commands_days)
        purged = await self._book.purge(cutoff)
        self.purged += purged
        if purged:
            log.info("commands_purged", count=purged, cutoff=cutoff.isoformat())
        return purged

    async def _periodically(self, work: Callable[[], Awaitable[object]], interval: float, event: str) -> None:
        backoff = Backoff(RETRY)
        failures = 0
        while True:
            try:
                await work()
            except sqlite3.Error as exc:
                raise_if_cancelling()
                failures += 1
                delay = backoff.next_delay()
                if worth_logging(failures, first=1, every=10):
                    log.error(event, error=str(exc), retry_in_s=round(delay, 2), count=failures)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            failures = 0
            await asyncio.sleep(interval)
