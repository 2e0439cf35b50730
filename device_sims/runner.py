"""Sends scenario steps over the real transports: HTTP to the gateway, MQTT to the device broker.

Each MQTT device has its own connection, with a birth message and a last will, like the real thing;
each HTTP sender authenticates its pushes like the real thing (``device_sims/push_client.py``).
The runner records what each device saw acknowledged (an HTTP 2xx, a PUBACK), which is what the
fault tests compare the outbox against.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import aiohttp

from device_sims.devices import DeviceSim, HttpPost, MqttPublish, Outgoing
from device_sims.push_client import PushAuth
from device_sims.scenarios import Step
from foundation.errors import TransportError
from foundation.mqtt import MqttSession, SessionOptions, Will


@dataclass
class Report:
    """What happened to the messages a run sent."""

    sent: int = 0
    acked: list[Outgoing] = field(default_factory=list)
    # each MQTT device's connection publishes a birth message (not one of the steps): acknowledged
    # by the broker all the same, so the gateway holds an event for each
    births: list[Outgoing] = field(default_factory=list)
    rejected: int = 0
    failed: int = 0
    rate_limited: int = 0  # 429s answered, each followed by a retry after Retry-After
    unauthorized: int = 0  # 401s: the gateway did not take the sender's credentials (not retried)
    http_stored: set[str] = field(default_factory=set)
    http_duplicates: set[str] = field(default_factory=set)
    by_expectation: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        """A JSON-friendly summary."""
        return {
            "sent": self.sent,
            "acked": len(self.acked),
            "rejected": self.rejected,
            "failed": self.failed,
            "rate_limited": self.rate_limited,
            "unauthorized": self.unauthorized,
            "http_stored": len(self.http_stored),
            "http_duplicates": len(self.http_duplicates),
            "rejections": dict(self.rejections),
            "seconds": round(self.seconds, 3),
        }


class Runner:
    """Plays steps against a gateway at a given pace."""

    def __init__(
        self,
        http_base: str,
        mqtt_host: str,
        mqtt_port: int,
        *,
        workers: int = 8,
        retry_http: bool = False,
        on_progress: Callable[[Report], None] | None = None,
    ) -> None:
        self._http_base = http_base.rstrip("/")
        self._mqtt_host = mqtt_host
        self._mqtt_port = mqtt_port
        self._workers = workers
        self._retry_http = retry_http
        self._on_progress = on_progress
        self._clients: dict[str, tuple[MqttSession, AsyncExitStack]] = {}
        self._connect_lock = asyncio.Lock()
        self._push_auth = PushAuth()
        self.report = Report()

    async def run(self, steps: Iterable[Step], rate: float | None = None) -> Report:
        """Send every step; ``rate`` in messages per second (None: as fast as acknowledgements allow).

        ``steps`` is consumed lazily, one step at a time, so a generator can decide on more load
        from what it observes meanwhile.
        """
        started = time.monotonic()
        queue: asyncio.Queue[Step | None] = asyncio.Queue(maxsize=self._workers * 4)
        async with AsyncExitStack() as stack:
            session = await stack.enter_async_context(aiohttp.ClientSession())
            stack.push_async_callback(self._close_clients)
            async with asyncio.TaskGroup() as tg:
                for i in range(self._workers):
                    tg.create_task(self._worker(queue, session), name=f"sim-worker-{i}")
                for index, step in enumerate(steps):
                    if step.action == "drop_connection":
                        await queue.join()  # the device's earlier messages are out before the power cut
                    if rate:
                        delay = started + index / rate - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await queue.put(step)
                for _ in range(self._workers):
                    await queue.put(None)
        self.report.seconds = time.monotonic() - started
        return self.report

    async def _worker(self, queue: asyncio.Queue[Step | None], session: aiohttp.ClientSession) -> None:
        while (step := await queue.get()) is not None:
            try:
                await self._perform(step, session)
            finally:
                queue.task_done()
        queue.task_done()

    async def _perform(self, step: Step, session: aiohttp.ClientSession) -> None:
        if step.action == "drop_connection":
            await self._drop(step.sim)
            return
        if step.message is not None:
            self.report.sent += 1
            self.report.by_expectation[step.expect] += 1
            if isinstance(step.message, HttpPost):
                await self._post(session, step.message)
            else:
                await self._publish(step.sim, step.message)
            if self._on_progress is not None and self.report.sent % 100 == 0:
                self._on_progress(self.report)

    async def _post(self, session: aiohttp.ClientSession, message: HttpPost) -> None:
        attempts = 50 if self._retry_http else 1
        attempt = 0
        while attempt < attempts:
            attempt += 1
            request = self._push_auth.request(message)  # per attempt: a signature carries its time
            try:
                async with session.post(
                    self._http_base + message.path,
                    data=message.body,
                    headers=request.headers,
                    middlewares=request.middlewares,
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as response:
                    body = await response.json(content_type=None)
                    if response.status == 200:
                        self.report.acked.append(message)
                        self.report.http_stored.update(body.get("stored", []))
                        self.report.http_duplicates.update(body.get("duplicates", []))
                        return
                    if response.status == 429:  # as a device does: wait as told, then send again
                        self.report.rate_limited += 1
                        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                        attempt -= 1
                        continue
                    if response.status == 401:  # the digest middleware already took a new challenge
                        self.report.unauthorized += 1
                        return
                    if 400 <= response.status < 500:
                        self.report.rejected += 1
                        self.report.rejections[str(body.get("error"))] += 1
                        return
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
            if attempt < attempts:
                await asyncio.sleep(0.2)
        self.report.failed += 1

    async def _client(self, sim: DeviceSim) -> MqttSession:
        ref = sim.device.ref or sim.device.id
        async with self._connect_lock:
            known = self._clients.get(ref)
            if known is not None:
                return known[0]
            session = f"{time.time():.6f}"
            will_message = sim.status(online=False, session=session)  # type: ignore[attr-defined]
            client = MqttSession(
                SessionOptions(
                    host=self._mqtt_host,
                    port=self._mqtt_port,
                    client_id=f"sim-{ref}",
                    # its own account on the compound broker, like a configured device
                    username=sim.device.username,
                    password=sim.device.secret,
                    protocol="3.1.1",  # what the devices in the field speak
                    will=Will(will_message.topic, will_message.payload, qos=1),
                    keepalive_s=5,
                    max_concurrent_calls=64,
                )
            )
            client_stack = AsyncExitStack()
            await client_stack.enter_async_context(client)
            self._clients[ref] = (client, client_stack)
            birth = sim.status(online=True, session=session)  # type: ignore[attr-defined]
            await client.publish(birth.topic, birth.payload, qos=1, timeout_s=10)
            self.report.births.append(birth)
            return client

    async def _publish(self, sim: DeviceSim, message: MqttPublish) -> None:
        try:
            client = await self._client(sim)
            await client.publish(message.topic, message.payload, qos=message.qos, timeout_s=30)
        except TransportError:
            self.report.failed += 1
            return
        self.report.acked.append(message)

    async def _drop(self, sim: DeviceSim) -> None:
        """Cut the device's TCP connection without DISCONNECT, as a power cut would: the will fires."""
        ref = sim.device.ref or sim.device.id
        known = self._clients.pop(ref, None)
        if known is None:
            return
        client, client_stack = known
        client.cut()
        with contextlib.suppress(TransportError, OSError):
            await client_stack.aclose()

    async def _close_clients(self) -> None:
        for _, client_stack in self._clients.values():
            with contextlib.suppress(TransportError, OSError):
                await client_stack.aclose()
        self._clients.clear()
