"""Carrying one claimed command to its device: send, read the answer, read the state back until it settles.

The dialect's ``CommandEncoder`` (``adapters/commands.py``) says what to send and how to read what
comes back; this module moves the bytes (``DeviceExchange``: MQTT through the compound broker, or
HTTP to the device's ``control_url`` with digest and its secret) and decides what happened:

* the device refused, did not answer within ``reply_timeout_s``, or answered something unreadable:
  ``failed`` with the reason (the device's own words, or the field that could not be read);
* it answered OK: ``acknowledged``; then the state is read back every ``poll_s`` until it shows
  what the command asked for (``verified``) or the action's settle time has passed (``failed``:
  "answered OK but reports closed", the stuck barrier peers report as success).

A late answer to an earlier, timed-out request is not taken for this one's: MQTT answers are
matched by the id they echo.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import aiohttp
import structlog

from adapters import COMMAND_ENCODERS
from adapters.base import RawMessage
from adapters.commands import (
    ActuatorState,
    Command,
    CommandEncoder,
    CommandNotSupportedError,
    DeviceRequest,
    HttpRequest,
    MqttRequest,
    ReplyStatus,
)
from foundation.errors import PayloadRejected, TransportError
from foundation.events import utc_now
from foundation.mqtt import MqttSession, SessionOptions
from gateway.command_ledger import CommandLedger, LedgerEntry, Step
from gateway.command_policy import CommandsConfig
from gateway.config import DeviceConfig, GatewayConfig
from gateway.device_secrets import DeviceSecrets
from uplink.commands import CommandState

log = structlog.get_logger(__name__)

CMD_USER_SUFFIX = "-cmd"
MAX_ANSWER_BYTES = 64 * 1024
"""The most of a device's HTTP answer read (status documents are a few hundred bytes)."""

Matches = Callable[[RawMessage], bool]
"""Whether a message on the reply topic answers this request (MQTT: the echoed id)."""


def command_user(gateway_user: str) -> str:
    """The compound broker account of the gateway's command session: its user name plus ``-cmd``.

    Its own account, because the broker binds a session to its account: a second login as the
    gateway would take over the intake's persistent session.
    """
    return f"{gateway_user}{CMD_USER_SUFFIX}"


def command_session_options(config: GatewayConfig) -> SessionOptions:
    """The command session on the compound broker (clean: an answer is only worth waiting for now)."""
    cfg = config.mqtt
    return SessionOptions(
        host=cfg.host,
        port=cfg.port,
        client_id=f"{config.mqtt_client_id}{CMD_USER_SUFFIX}",
        clean_start=True,
        keepalive_s=cfg.keepalive_s,
        username=command_user(cfg.username) if cfg.username else None,
        password=cfg.password.get_secret_value() if cfg.password else None,
    )


class DeviceUnreachableError(TransportError):
    """The request could not be delivered or the device did not answer in time."""


class DeviceExchange(Protocol):
    """Sends one device request and returns the device's answer."""

    async def exchange(
        self, device: DeviceConfig, request: DeviceRequest, matches: Matches, timeout_s: float
    ) -> RawMessage:
        """The answer, or ``DeviceUnreachableError``."""
        ...


class MqttExchange:
    """Requests to MQTT devices through the compound broker, on a session of the gateway's own.

    One request per device is in flight at a time (the executor holds the device's lock), so the
    waiters of a reply topic are this request's only; answers that do not match are dropped.
    """

    def __init__(self, options: SessionOptions) -> None:
        self._options = options
        self._session: MqttSession | None = None
        self._subscribed: set[str] = set()
        self._waiting: dict[str, tuple[Matches, asyncio.Future[RawMessage]]] = {}

    async def run(self, on_connected: Callable[[], None]) -> None:
        """One connection: route answers to the waiting requests until it fails (``TransportError``).

        ``supervise`` calls it again after a jittered backoff; meanwhile requests fail at once
        ("not connected") rather than waiting for a session that is not there.
        """
        try:
            async with MqttSession(self._options) as session:
                self._session = session
                on_connected()
                await self._read(session)
        finally:
            self._session = None
            self._subscribed.clear()

    async def _read(self, session: MqttSession) -> None:
        async for message in session.messages():
            waiting = self._waiting.get(message.topic)
            raw = RawMessage(message.payload, topic=message.topic)
            if waiting is None or waiting[1].done():
                continue
            try:
                ours = waiting[0](raw)
            except Exception:  # a device's garbage must not end the session every command shares
                log.exception("command_answer_unreadable", topic=message.topic)
                continue
            if ours:
                waiting[1].set_result(raw)

    async def exchange(
        self, device: DeviceConfig, request: DeviceRequest, matches: Matches, timeout_s: float
    ) -> RawMessage:
        """Subscribe to the reply topic (once), publish, wait for the matching answer."""
        if not isinstance(request, MqttRequest):
            raise DeviceUnreachableError(
                f"device {device.id}: an MQTT device cannot take {type(request).__name__}"
            )
        session = self._session
        if session is None:
            raise DeviceUnreachableError("the command session to the compound broker is not connected")
        answer: asyncio.Future[RawMessage] = asyncio.get_running_loop().create_future()
        self._waiting[request.reply_topic] = (matches, answer)
        try:
            if request.reply_topic not in self._subscribed:
                await session.subscribe(request.reply_topic, qos=1)
                self._subscribed.add(request.reply_topic)
            await session.publish(request.topic, request.payload, qos=request.qos)
            async with asyncio.timeout(timeout_s):
                return await answer
        except TimeoutError:
            raise DeviceUnreachableError(
                f"device {device.id} did not answer within {timeout_s:g} s"
            ) from None
        except TransportError as exc:  # refused by the broker's ACL, or the session broke meanwhile
            raise DeviceUnreachableError(f"device {device.id}: the compound broker: {exc}") from None
        finally:
            self._waiting.pop(request.reply_topic, None)


class HttpExchange:
    """Requests to HTTP devices at their ``control_url``, with HTTP digest and the device's secret."""

    def __init__(self, secrets: DeviceSecrets) -> None:
        self._secrets = secrets
        self._session: aiohttp.ClientSession | None = None
        self._auth: dict[str, aiohttp.DigestAuthMiddleware] = {}

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HttpExchange]:
        """One HTTP client session for the block."""
        async with aiohttp.ClientSession() as session:
            self._session = session
            try:
                yield self
            finally:
                self._session = None

    async def exchange(
        self, device: DeviceConfig, request: DeviceRequest, matches: Matches, timeout_s: float
    ) -> RawMessage:
        """The device's answer body (any HTTP status: the encoder reads the vendor's status document)."""
        if not isinstance(request, HttpRequest):
            raise DeviceUnreachableError(
                f"device {device.id}: an HTTP device cannot take {type(request).__name__}"
            )
        if device.control_url is None or self._session is None:
            raise DeviceUnreachableError(
                f"device {device.id} has no control_url: the gateway cannot reach it"
            )
        auth = self._auth.get(device.id)
        if auth is None:
            secret = self._secrets.device(device.id)
            if secret is None:
                raise DeviceUnreachableError(f"device {device.id} has no secret in the device secrets file")
            auth = self._auth[device.id] = aiohttp.DigestAuthMiddleware(
                device.control_username, secret.decode()
            )
        url = str(device.control_url).rstrip("/") + request.path
        headers = {"Content-Type": request.content_type} if request.content_type else {}
        try:
            async with self._session.request(
                request.method,
                url,
                data=request.body or None,
                headers=headers,
                middlewares=(auth,),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,  # digest answers go to the device we asked, nowhere else
            ) as response:
                body = await response.content.read(MAX_ANSWER_BYTES + 1)
                if len(body) > MAX_ANSWER_BYTES:
                    raise DeviceUnreachableError(
                        f"device {device.id}: an answer over {MAX_ANSWER_BYTES} bytes"
                    )
                return RawMessage(body, content_type=response.content_type)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeviceUnreachableError(
                f"device {device.id} at {url}: {exc or type(exc).__name__}"
            ) from None


@dataclass(frozen=True)
class Exchanges:
    """The transports, chosen by the request the dialect's encoder makes (``MqttRequest``, ``HttpRequest``)."""

    mqtt: DeviceExchange
    http: DeviceExchange

    async def exchange(
        self, device: DeviceConfig, request: DeviceRequest, matches: Matches, timeout_s: float
    ) -> RawMessage:
        """Through the transport the request is for."""
        transport = self.mqtt if isinstance(request, MqttRequest) else self.http
        return await transport.exchange(device, request, matches, timeout_s)


class CommandExecutor:
    """Executes claimed commands, one at a time per device; every step recorded in the ledger."""

    def __init__(
        self,
        config: GatewayConfig,
        ledger: CommandLedger,
        exchanges: Exchanges,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._devices = {d.id: d for d in config.devices}
        self._settings: CommandsConfig = config.commands
        self._ledger = ledger
        self._exchanges = exchanges
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {d.id: asyncio.Lock() for d in config.devices}
        self._queries = 0

    def takes(self, device_id: str) -> bool:
        """Whether the device is in this gateway's inventory with a dialect that takes commands."""
        device = self._devices.get(device_id)
        return device is not None and device.dialect in COMMAND_ENCODERS

    def device_lock(self, device_id: str) -> asyncio.Lock:
        """The lock that keeps one command at a time on a device (hold it from the claim to the end)."""
        return self._locks[device_id]

    async def execute(self, entry: LedgerEntry) -> Step:
        """Carry a claimed (``sent``) command through to its final state (the caller holds the device's lock).

        Never raises for what a device or the broker does: anything unexpected ends the command
        ``failed`` ("internal error"), logged with its traceback, and the worker goes on.
        """
        order = entry.order
        try:
            outcome = await self._run(entry)
        except Exception as exc:  # a bug or a library error: this command fails, the others go on
            log.exception("command_crashed", command_id=order.command_id, device=order.device_id)
            outcome = Step(CommandState.FAILED, f"internal error: {type(exc).__name__}: {exc}"[:200])
        await self._ledger.advance(order.command_id, outcome, self._clock())
        log.info(
            "command_done",
            command_id=order.command_id,
            device=order.device_id,
            action=order.action.value,
            state=outcome.state.value,
            detail=outcome.detail,
        )
        return outcome

    async def _run(self, entry: LedgerEntry) -> Step:
        order = entry.order
        device = self._devices[order.device_id]
        encoder = COMMAND_ENCODERS[device.dialect]
        command = Command(
            command_id=order.command_id, action=order.action, channel=order.channel, clip=order.clip
        )
        timeout = self._settings.reply_timeout_s
        exchange = self._exchanges
        try:
            request = encoder.request(command, device.ref or device.id)
            raw = await exchange.exchange(
                device, request, _echoes(encoder, order.command_id, request), timeout
            )
            reply = encoder.decode_reply(raw, request)
        except CommandNotSupportedError as exc:
            return Step(CommandState.FAILED, exc.reason)
        except DeviceUnreachableError as exc:
            return Step(CommandState.FAILED, str(exc))
        except PayloadRejected as exc:
            return Step(CommandState.FAILED, f"the device's answer is unreadable: {exc}")
        if reply.status is ReplyStatus.REFUSED:
            code = f" ({reply.device_code})" if reply.device_code else ""
            return Step(CommandState.FAILED, f"the device refused{code}: {reply.reason or 'no reason given'}")
        await self._ledger.advance(
            order.command_id, Step(CommandState.ACKNOWLEDGED, device_code=reply.device_code), self._clock()
        )
        return await self._read_back(device, encoder, command, exchange)

    async def _read_back(
        self, device: DeviceConfig, encoder: CommandEncoder, command: Command, exchange: DeviceExchange
    ) -> Step:
        expected = command.expected_state
        deadline = time.monotonic() + self._settings.settle(command.action)
        seen: ActuatorState | None = None
        problem = "no state reading"
        while True:
            self._queries += 1
            query_id = f"{command.command_id[:40]}.q{self._queries}"
            try:
                request = encoder.state_request(query_id, command.channel, device.ref or device.id)
                raw = await exchange.exchange(
                    device, request, _echoes_query(encoder, query_id, request), self._settings.reply_timeout_s
                )
                reading = encoder.decode_state(raw, request)
                seen = reading.state
                if seen is expected:
                    return Step(CommandState.VERIFIED, observed=seen)
                problem = f"reports {seen.value}" + (f" ({reading.detail})" if reading.detail else "")
            except (DeviceUnreachableError, PayloadRejected, CommandNotSupportedError) as exc:
                problem = f"the state read-back failed: {exc}"
            if time.monotonic() >= deadline:
                settle = self._settings.settle(command.action)
                return Step(
                    CommandState.FAILED,
                    f"the device answered OK but {problem} {settle:g} s later, not {expected.value}",
                    observed=seen,
                )
            await asyncio.sleep(self._settings.poll_s)


def _echoes(encoder: CommandEncoder, command_id: str, sent: DeviceRequest) -> Matches:
    def matches(raw: RawMessage) -> bool:
        try:
            return encoder.decode_reply(raw, sent).command_id == command_id
        except PayloadRejected:
            return True  # unreadable: it is this request's answer as far as anyone can tell

    return matches


def _echoes_query(encoder: CommandEncoder, query_id: str, sent: DeviceRequest) -> Matches:
    def matches(raw: RawMessage) -> bool:
        try:
            return encoder.decode_state(raw, sent).query_id == query_id
        except PayloadRejected:
            return True

    return matches
