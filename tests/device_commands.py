"""Helpers for command tests: a hand-moved device clock, and acting MQTT simulators wired to a broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import aiomqtt

from adapters.base import RawMessage
from adapters.commands import CommandEncoder, MqttRequest, StateReading
from device_sims.broker import Mosquitto
from device_sims.devices import MqttPublish, SimDevice
from tests.conftest import device_client, gateway_client

REPLY_TIMEOUT_S = 10


class ManualClock:
    """A device's clock that moves only when told (a hold or travel time passes without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ActingMqttSim(Protocol):
    """A simulated MQTT device that answers requests on its own topics."""

    device: SimDevice

    @property
    def request_topics(self) -> tuple[str, str]: ...

    def topic(self, channel: str) -> str: ...

    def handle(self, message: MqttPublish) -> MqttPublish | None: ...


@dataclass
class Controller:
    """Sends an encoder's requests as the gateway's account and returns the device's raw answers."""

    client: aiomqtt.Client
    answers: asyncio.Queue[RawMessage]
    encoder: CommandEncoder
    ref: str
    others: list[RawMessage]  # what else the device published (its reports)

    async def reports(self, count: int) -> list[RawMessage]:
        """The device's first ``count`` other messages, once they have arrived."""
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            while len(self.others) < count:
                await asyncio.sleep(0.01)
        return self.others[:count]

    async def exchange(self, request: MqttRequest) -> RawMessage:
        """Publish the request; the next message on its reply topic."""
        await self.client.publish(request.topic, request.payload, qos=request.qos)
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            answer = await self.answers.get()
        assert answer.topic == request.reply_topic
        return answer

    async def read_back(self, query_id: str, channel: int = 1) -> StateReading:
        """The decoded state of one channel, checked to answer this query."""
        query = self.encoder.state_request(query_id, channel, self.ref)
        assert isinstance(query, MqttRequest)
        reading = self.encoder.decode_state(await self.exchange(query))
        assert (reading.query_id, reading.channel) == (query_id, channel)
        return reading


@contextlib.asynccontextmanager
async def wired(
    broker: Mosquitto,
    sim: ActingMqttSim,
    encoder: CommandEncoder,
    reports: Callable[[], list[MqttPublish]] | None = None,
) -> AsyncIterator[Controller]:
    """The device on its own account answering its request topics; a controller on the gateway's.

    ``reports``: what the device publishes of its own after each request it handled (its reports).
    """
    async with (
        device_client(broker.port, sim.device) as device,
        gateway_client(broker.port, identifier="commander") as gateway,
    ):
        for topic in sim.request_topics:
            await device.subscribe(topic, qos=1)
        await gateway.subscribe(sim.topic("+/resp"), qos=1)
        await gateway.subscribe(sim.topic("+"), qos=1)
        answers: asyncio.Queue[RawMessage] = asyncio.Queue()
        others: list[RawMessage] = []

        async def serve() -> None:
            async for message in device.messages:
                answer = sim.handle(MqttPublish(message.topic.value, bytes(message.payload)))
                if answer is not None:
                    await device.publish(answer.topic, answer.payload, qos=answer.qos)
                for report in reports() if reports is not None else ():
                    await device.publish(report.topic, report.payload, qos=report.qos)

        async def take() -> None:
            async for message in gateway.messages:
                raw = RawMessage(bytes(message.payload), topic=message.topic.value)
                (answers.put_nowait(raw) if raw.topic and raw.topic.endswith("/resp") else others.append(raw))

        tasks = [asyncio.create_task(serve()), asyncio.create_task(take())]
        try:
            yield Controller(gateway, answers, encoder, sim.device.username, others)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
