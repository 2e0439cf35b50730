"""The compound's MQTT device intake: one persistent session, acknowledged only after the commit.

Device messages are batched as they arrive, parsed and committed by the intake pipeline, and each
PUBACK is sent, in arrival order, only once its batch is durable (see ``foundation/mqtt.py``
for why and how acknowledgement is manual, and how the incoming queue is bounded).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiomqtt
import structlog

from adapters.base import RawMessage
from foundation.errors import OutboxError, TransportError
from foundation.mqtt import (
    ManualAck,
    consume_result,
    message_body,
    new_throttle,
    persistent_client,
    take_batch,
)
from gateway.config import GatewayConfig
from gateway.intake import IntakeItem
from gateway.pipeline import BATCH_MAX, IntakePipeline, ItemResult

log = structlog.get_logger(__name__)


InFlight = tuple["asyncio.Future[list[ItemResult]]", list[tuple[int, int]]]
PIPELINE_DEPTH = 3


class MqttIntake:
    """Subscribes to the device dialects' topics and feeds the intake pipeline; ``run`` is one connection.

    Two stages per connection, each bounded: receive (batches what aiomqtt has queued and hands
    each batch to the pipeline, which parses and commits it) and acknowledge (sends the batch's
    PUBACKs, in arrival order, once its commit is done).
    """

    def __init__(self, config: GatewayConfig, pipeline: IntakePipeline) -> None:
        self._config = config
        self._pipeline = pipeline
        self.messages = 0
        self.acked = 0
        self.throttle = new_throttle(config.mqtt.receive_maximum)

    async def run(self, on_connected: Callable[[], None]) -> None:
        """Connect, subscribe and process until the connection fails (raises ``TransportError``)."""
        cfg = self._config.mqtt
        self.throttle = new_throttle(cfg.receive_maximum)  # a new connection starts reading
        client, paho = persistent_client(
            host=cfg.host,
            port=cfg.port,
            client_id=self._config.mqtt_client_id,
            receive_maximum=cfg.receive_maximum,
            session_expiry_s=cfg.session_expiry_s,
            keepalive_s=cfg.keepalive_s,
            throttle=self.throttle,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            max_payload_bytes=cfg.max_payload_bytes,
        )
        in_flight: asyncio.Queue[InFlight] = asyncio.Queue(maxsize=PIPELINE_DEPTH)
        try:
            async with client:
                for topic_filter in self._pipeline.intake.mqtt_topic_filters():
                    await client.subscribe(topic_filter, qos=1)
                log.info(
                    "mqtt_intake_connected",
                    host=cfg.host,
                    port=cfg.port,
                    client_id=self._config.mqtt_client_id,
                )
                on_connected()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._acknowledge(paho, in_flight), name="mqtt-intake-acker")
                    await self._receive(client, in_flight)
        except* (aiomqtt.MqttError, TransportError) as group:
            raise TransportError(f"device broker {cfg.host}:{cfg.port}: {group.exceptions[0]}") from group
        finally:
            _abandon(in_flight)

    async def _receive(self, client: aiomqtt.Client, in_flight: asyncio.Queue[InFlight]) -> None:
        max_bytes = self._config.mqtt.max_payload_bytes
        async for message in client.messages:
            batch = take_batch(message, self.throttle, BATCH_MAX)
            self.messages += len(batch)
            items = [
                IntakeItem("mqtt", RawMessage(message_body(m.payload), topic=str(m.topic)), max_bytes)
                for m in batch
            ]
            await in_flight.put((self._pipeline.start(items), [(m.mid, m.qos) for m in batch]))
        raise TransportError("device broker closed the message stream")

    async def _acknowledge(self, paho: ManualAck, in_flight: asyncio.Queue[InFlight]) -> None:
        while True:
            future, acks = await in_flight.get()
            try:
                await self._pipeline.finish(future)
            except OutboxError as exc:
                # Not committed: do not acknowledge. Dropping the connection makes the broker
                # redeliver everything unacknowledged once we are back.
                raise TransportError(f"outbox refused device messages, reconnecting: {exc}") from exc
            for mid, qos in acks:
                if qos > 0:
                    paho.ack(mid, qos)
                    self.acked += 1


def _abandon(in_flight: asyncio.Queue[InFlight]) -> None:
    """Forget batches nobody will acknowledge any more (the broker redelivers those messages).

    Their commits may still succeed or fail; either way the result is consumed here so that a
    failure is not reported again as an unretrieved exception.
    """
    while not in_flight.empty():
        in_flight.get_nowait()[0].add_done_callback(consume_result)
