"""The district's registry desk: keeps every compound's retained inventory in the device registry.

It runs inside the operator API process (``compound-gateway api``) beside the evidence and command
desks, with its own MQTT session (``[registry]`` client id, user ``district-registry`` in the
shipped ACL). Its subscription is its own, never shared: MQTT shared subscriptions do not receive
retained messages, and the inventories are retained. On every (re)connection the broker sends the
current inventory of every compound; applying one the registry already holds changes nothing.

Trust: the ACL lets a compound write only its own inventory topic, and the desk checks the
document's district and compound against the topic. Anything else is refused, counted
(``cgw_district_inventories_total{outcome}``) and logged; nothing a compound sends crashes it.

Tasks: ``registry-session`` and ``registry-retention`` (``[retention] device_changes_days``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from district.config import DistrictConfig
from district.device_registry import Applied, DeviceRegistry
from foundation.backoff import Backoff, BackoffConfig
from foundation.cancellation import raise_if_cancelling
from foundation.errors import PayloadRejected, TransportError
from foundation.events import utc_now
from foundation.health import Health, MetricFamilies
from foundation.logging import worth_logging
from foundation.mqtt import MqttSession, SessionOptions
from foundation.supervision import supervise
from uplink.inventory import Inventory, decode_inventory, inventory_address, inventory_filter

log = structlog.get_logger(__name__)

REGISTRY_TRANSPORT = "registry_desk"
"""The transport name of the desk's session (``cgw_transport_up{transport="registry_desk"}``)."""
RECONNECT = BackoffConfig(initial_s=0.5, max_s=30.0)
RETRY = BackoffConfig(initial_s=1.0, max_s=60.0)
RECEIVE_MAXIMUM = 32
MAX_INVENTORY_BYTES = 4 * 1024 * 1024
"""Larger inventories are refused unread (5,000 devices with every field take about 3 MB)."""
OUTCOMES = ("updated", "unchanged", "rejected")


class RegistryDesk:
    """The desk: one MQTT session, inventories in; retention of the history."""

    def __init__(
        self, config: DistrictConfig, registry: DeviceRegistry, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._config = config
        self._registry = registry
        self._clock = clock
        self._districts = {config.district_id} | {config.compound_district(c) for c in config.compounds}
        # the district each configured compound belongs to (empty: no [[compounds]], any compound)
        self._compound_districts = {c.id: config.compound_district(c) for c in config.compounds}
        self.inventories: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))
        """Inventories received, by outcome."""
        self.rejected: Counter[str] = Counter()
        """Inventories refused, by reason."""
        self.purged = 0

    def session_options(self) -> SessionOptions:
        """The desk's persistent session (``[registry]`` overrides of ``[broker]``)."""
        return self._config.registry.session_options(self._config.broker, RECEIVE_MAXIMUM)

    def expose(self, health: Health) -> None:
        """The desk's figures on the API's ``/metrics``."""

        def write(families: MetricFamilies) -> None:
            families.counter(
                "cgw_district_inventories_total",
                "compound inventories received, by outcome (updated, unchanged, rejected)",
                [({"outcome": o}, n) for o, n in sorted(self.inventories.items())],
            )
            families.counter(
                "cgw_district_inventories_rejected_total",
                "compound inventories refused, by reason",
                [({"reason": r}, n) for r, n in sorted(self.rejected.items())],
            )

        health.writers.append(write)

    async def run(self, health: Health | None = None, connected: asyncio.Event | None = None) -> None:
        """Run the session and the retention until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                supervise(REGISTRY_TRANSPORT, self._connect_once, Backoff(RECONNECT), connected, health),
                name="registry-session",
            )
            tg.create_task(self._retention(), name="registry-retention")

    async def _connect_once(self, connected: Callable[[], None]) -> None:
        broker = self._config.broker
        session = MqttSession(self.session_options())
        try:
            async with session:
                # not shared: a shared subscription would never get the retained inventories
                await session.subscribe(inventory_filter(self._config.registry.topic_prefix), qos=1)
                log.info("registry_desk_connected", host=broker.host, port=broker.port)
                connected()
                await self._receive(session)
        except TransportError as exc:
            raise TransportError(f"registry desk, {broker.host}:{broker.port}: {exc}") from exc
        except sqlite3.Error as exc:
            # the registry failed: reconnect later; the retained inventories come again
            raise TransportError(f"device registry: {exc}") from exc

    async def _receive(self, session: MqttSession) -> None:
        async for message in session.messages():
            await self.handle(message.topic, message.payload)
            session.ack(message)  # after the registry committed it
        raise TransportError("the broker closed the message stream")

    async def handle(self, topic: str, payload: bytes) -> Applied | None:
        """One inventory; a bad one is refused, counted and logged (None), never raised.

        Registry failures (``sqlite3.Error``) do raise: the inventory stays unacknowledged.
        """
        if not payload:
            return None  # a cleared retained message (an operator retiring a compound): nothing to apply
        compound: str | None = None
        try:
            # decoding up to 4 MiB of JSON takes milliseconds to tens of them: off the API's loop
            compound, inventory = await asyncio.to_thread(self._read, topic, payload)
            outcome = await self._registry.apply(inventory, self._clock())
        except PayloadRejected as exc:
            self._refused(topic, compound, exc)
            return None
        except sqlite3.Error:
            raise
        except Exception:
            # a bug must cost one inventory, not a crash loop on its redelivery
            log.exception("registry_inventory_error", topic=topic[:200])
            self.inventories["rejected"] += 1
            self.rejected["desk_error"] += 1
            return None
        self.inventories[outcome.applied.value] += 1
        if outcome.applied is Applied.UPDATED:
            log.info(
                "registry_inventory_applied",
                compound=compound,
                version=inventory.version,
                devices=len(inventory.devices),
                added=outcome.added,
                changed=outcome.changed,
                removed=outcome.removed,
            )
        return outcome.applied

    def _read(self, topic: str, payload: bytes) -> tuple[str, Inventory]:
        """The compound and its inventory, checked against the topic, or ``PayloadRejected``."""
        address = inventory_address(self._config.registry.topic_prefix, topic)
        if address is None:
            raise PayloadRejected("bad_topic", f"not an inventory topic: {topic[:200]}")
        district, compound = address
        if district not in self._districts:
            raise PayloadRejected("foreign_district", f"district {district} is not ours")
        listed = self._compound_districts.get(compound)
        if self._compound_districts and listed != district:
            # the ACL lets a compound write under any district segment: only its own counts
            why = "is not in [[compounds]]" if listed is None else f"belongs to district {listed}"
            raise PayloadRejected("foreign_district", f"compound {compound} {why}, not {district}")
        if len(payload) > MAX_INVENTORY_BYTES:
            raise PayloadRejected(
                "payload_too_large", f"{len(payload)} bytes > {MAX_INVENTORY_BYTES} (read no further)"
            )
        inventory = decode_inventory(payload)
        for key, value in (("district_id", district), ("compound_id", compound)):
            if getattr(inventory, key) != value:
                raise PayloadRejected(
                    "identity_mismatch",
                    f"{key} {getattr(inventory, key)} does not match the topic",
                    field=key,
                )
        return compound, inventory

    def _refused(self, topic: str, compound: str | None, exc: PayloadRejected) -> None:
        reason = exc.rejection.reason
        self.inventories["rejected"] += 1
        self.rejected[reason] += 1
        if worth_logging(self.rejected[reason], first=1):
            log.warning(
                "registry_inventory_rejected",
                topic=topic[:200],
                compound=compound,
                reason=reason,
                field=exc.rejection.field,
                detail=exc.rejection.detail,
                count=self.rejected[reason],
            )

    async def purge_once(self) -> int:
        """Delete history rows past ``[retention] device_changes_days``; returns how many."""
        cutoff = self._clock() - timedelta(days=self._config.retention.device_changes_days)
        purged = await self._registry.purge(cutoff)
        self.purged += purged
        if purged:
            log.info("device_changes_purged", count=purged, cutoff=cutoff.isoformat())
        return purged

    async def _retention(self) -> None:
        backoff = Backoff(RETRY)
        failures = 0
        while True:
            try:
                await self.purge_once()
            except sqlite3.Error as exc:
                raise_if_cancelling()
                failures += 1
                delay = backoff.next_delay()
                if worth_logging(failures, first=1, every=10):
                    log.error("device_changes_purge_failed", error=str(exc), retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            failures = 0
            await asyncio.sleep(self._config.retention.check_interval_s)
