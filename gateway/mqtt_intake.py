"""The compound's MQTT device intake: one persistent session, acknowledged only after the commit.

Device messages are batched as they arrive, parsed and committed by the intake pipeline, and each
PUBACK is sent, in arrival order, only once its batch is durable (see ``foundation/mqtt.py``
for why and how acknowledgement is manual, and how the incoming queue is bounded).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from adapters.base import RawMessage
from foundation.cancellation import consume_result
from foundation.errors import OutboxError, TransportError
from foundation.mqtt import Message, MqttSession, SessionOptions, new_throttle
from gateway.config import GatewayConfig
from gateway.intake import IntakeItem
from gateway.pipeline import BATCH_MAX, IntakePipeline, ItemResult

log = structlog.get_logger(__name__)


PIPELINE_DEPTH = 3
# A batch waits this long for company after its first message: at 2,000 messages/s that makes
# commits of ~40 instead of a few (each commit costs an fsync, a transaction and a round trip to
# the worker), for at most 20 ms more latency; a backlog fills its batches without waiting.
# Measured (bench/intake_cpu_bench.py): 10 ms -> 30 per batch, 197 us/event; 25 ms -> 65, 187.
LINGER_S = 0.02


class MqttIntake:
    """Subscribes to the device dialects' topics and feeds the intake pipeline; ``run`` is one connection.

    Two stages per connection, each bounded (``MqttSession.consume``): receive (batches what the
    session has queued and hands each batch to the pipeline, which parses and commits it) and
    acknowledge (sends the batch's PUBACKs, in arrival order, once its commit is done).
    """

    def __init__(self, config: GatewayConfig, pipeline: IntakePipeline) -> None:
        self._config = config
        self._pipeline = pipeline
        self.messages = 0
        self.acked = 0
        self.throttle = new_throttle(config.mqtt.receive_maximum)  # the current connection's

    def session_options(self) -> SessionOptions:
        """The persistent, manually acknowledged session on the device broker."""
        cfg = self._config.mqtt
        return SessionOptions(
            host=cfg.host,
            port=cfg.port,
            client_id=self._config.mqtt_client_id,
            clean_start=False,
            session_expiry_s=cfg.session_expiry_s,
            keepalive_s=cfg.keepalive_s,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            receive_maximum=cfg.receive_maximum,
            max_payload_bytes=cfg.max_payload_bytes,
            manual_ack=True,
        )

    async def run(self, on_connected: Callable[[], None]) -> None:
        """Connect, subscribe and process until the connection fails (raises ``TransportError``)."""
        cfg = self._config.mqtt
        session = MqttSession(self.session_options())
        try:
            async with session:
                self.throttle = session.throttle  # a new connection starts reading
                for topic_filter in self._pipeline.intake.mqtt_topic_filters():
                    await session.subscribe(topic_filter, qos=1)
                log.info(
                    "mqtt_intake_connected",
                    host=cfg.host,
                    port=cfg.port,
                    client_id=self._config.mqtt_client_id,
                )
                on_connected()
                await session.consume(
                    self._begin,
                    self._commit,
                    batch_max=BATCH_MAX,
                    depth=PIPELINE_DEPTH,
                    linger_s=LINGER_S,
                    acknowledged=self._acknowledged,
                    # the broker redelivers those messages; their commits may still succeed or
                    # fail, and either outcome is consumed so a failure is not reported again
                    abandon=lambda future: future.add_done_callback(consume_result),
                )
        except* TransportError as group:
            raise TransportError(f"device broker {cfg.host}:{cfg.port}: {group.exceptions[0]}") from group

    def _begin(self, batch: list[Message]) -> asyncio.Future[list[ItemResult]]:
        max_bytes = self._config.mqtt.max_payload_bytes
        self.messages += len(batch)
        items = [IntakeItem("mqtt", RawMessage(m.payload, topic=m.topic), max_bytes) for m in batch]
        return self._pipeline.start(items)

    async def _commit(self, future: asyncio.Future[list[ItemResult]]) -> None:
        try:
            await self._pipeline.finish(future)
        except OutboxError as exc:
            # Not committed: do not acknowledge. Dropping the connection makes the broker
            # redeliver everything unacknowledged once we are back.
            raise TransportError(f"outbox refused device messages, reconnecting: {exc}") from exc

    def _acknowledged(self, batch: list[Message]) -> None:
        self.acked += sum(1 for m in batch if m.qos > 0)
