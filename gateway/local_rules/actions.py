"""What a firing does: the action ports (command, MQTT publish, HTTP call) and the bounded runner.

Actions run after their firing's ``rule_fired`` event is committed, on a fixed number of worker
tasks fed by a bounded queue: when the queue is full a new action fails at once ("action queue
full", recorded like any failure) rather than waiting, so neither intake nor the rules wait for a
slow siren or office server. Each action has its own time limit; one that fails or hangs never
delays another beyond it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import structlog

from adapters.commands import Command
from foundation.errors import PublishRefusedError, TransportError
from foundation.events import Event
from foundation.mqtt import MqttSession, SessionOptions
from gateway.config import GatewayConfig
from gateway.local_rules.config import (
    ActionConfig,
    CommandActionConfig,
    HttpActionConfig,
    MqttActionConfig,
    template_environment,
)
from gateway.local_rules.store import ActionResult

log = structlog.get_logger(__name__)

RULES_USER_SUFFIX = "-rules"
NOT_WIRED = "not wired: no device of this gateway takes commands"


def rules_publisher_user(gateway_user: str) -> str:
    """The compound broker account of the rules' MQTT session: the gateway's user name plus ``-rules``.

    Its own account: the broker binds sessions to accounts (``use_username_as_clientid``), so a
    second login as the gateway would take over the intake's session.
    """
    return f"{gateway_user}{RULES_USER_SUFFIX}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an action went: ``ok``, and a short reason or result for the record."""

    ok: bool
    detail: str


class CommandPort(Protocol):
    """Sends a command to a local device; the gateway's command plumbing implements it."""

    async def send(self, device_id: str, command: Command, rule: str) -> Outcome:
        """Deliver ``command`` (asked by the local rule ``rule``) to the inventory device ``device_id``; how it went."""
        ...


class NotWiredCommandPort:
    """The command port until the plumbing exists: logs and fails every command with ``NOT_WIRED``."""

    async def send(self, device_id: str, command: Command, rule: str) -> Outcome:
        """Fail ``command`` (nothing is sent)."""
        log.warning(
            "rule_command_not_wired",
            device=device_id,
            action=command.action.value,
            command_id=command.command_id,
            rule=rule,
        )
        return Outcome(False, NOT_WIRED)


class MqttPublisher:
    """The rules' session on the compound broker, connected on first use and again after a failure."""

    def __init__(self, options: SessionOptions) -> None:
        self._options = options
        self._session: MqttSession | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def for_config(cls, config: GatewayConfig) -> MqttPublisher:
        """A publisher logging in as the rules' account (``rules_publisher_user``)."""
        cfg = config.mqtt
        return cls(
            SessionOptions(
                host=cfg.host,
                port=cfg.port,
                client_id=f"{config.mqtt_client_id}{RULES_USER_SUFFIX}",
                keepalive_s=cfg.keepalive_s,
                username=rules_publisher_user(cfg.username) if cfg.username else None,
                password=cfg.password.get_secret_value() if cfg.password else None,
                timeout_s=config.rule_engine.mqtt_timeout_s,
            )
        )

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool, timeout_s: float) -> None:
        """Publish within ``timeout_s``, connecting first if needed.

        Raises:
            TransportError: no connection, or no acknowledgement in time (the session is dropped:
                the next publish connects afresh instead of waiting on a dead one).
            PublishRefusedError: the broker refused the topic (the ACL).
        """
        session: MqttSession | None = None
        try:
            async with asyncio.timeout(timeout_s):
                async with self._lock:  # one connect at a time; publishes interleave on the session
                    if self._session is None:
                        connecting = MqttSession(self._options)
                        await connecting.__aenter__()
                        self._session = connecting
                    session = self._session
                await session.publish(topic, payload, qos=qos, retain=retain, timeout_s=timeout_s)
        except (TransportError, TimeoutError) as exc:
            if session is not None:
                await self._drop(session)
            if isinstance(exc, TimeoutError):
                raise TransportError(
                    f"publish to {topic}: no acknowledgement within {timeout_s:g} s"
                ) from None
            raise

    async def _drop(self, session: MqttSession) -> None:
        async with self._lock:
            if self._session is session:
                self._session = None
                with contextlib.suppress(TransportError):
                    await session.__aexit__(None, None, None)

    async def close(self) -> None:
        """Disconnect, if connected."""
        if self._session is not None:
            await self._drop(self._session)


def render(template: str, context: dict[str, Any]) -> str:
    """Render an action template (sandboxed; an unknown name raises ``jinja2.UndefinedError``)."""
    return template_environment().from_string(template).render(context)


def template_context(rule: str, phase: str, trigger: Event) -> dict[str, Any]:
    """What templates see: ``event`` (the trigger, JSON values), ``payload``, ``rule``, ``phase``, ``device``."""
    event = trigger.model_dump(mode="json")
    return {
        "event": event,
        "payload": event["payload"],
        "rule": rule,
        "phase": phase,
        "compound_id": trigger.compound_id,
        "device": trigger.device_id,
    }


@dataclass(frozen=True, slots=True)
class ActionJob:
    """One action of one firing, waiting to run."""

    firing_id: str
    rule: str
    phase: str
    index: int
    action: ActionConfig
    trigger: Event


class ActionRunner:
    """The bounded queue of actions and its workers (``run``); outcomes are logged, counted and recorded."""

    def __init__(
        self,
        config: GatewayConfig,
        commands: CommandPort,
        mqtt: MqttPublisher,
        http: aiohttp.ClientSession | None,
        record: Callable[[ActionResult], Awaitable[None]],
    ) -> None:
        self._engine = config.rule_engine
        self._commands = commands
        self._mqtt = mqtt
        self._http = http
        self._record = record
        self._queue: asyncio.Queue[ActionJob] = asyncio.Queue(maxsize=config.rule_engine.action_queue)
        self.outcomes: Counter[tuple[str, str, bool]] = Counter()  # (rule, type, ok)
        self.dropped = 0

    def submit(self, job: ActionJob) -> None:
        """Queue an action; a full queue fails it at once (never waits)."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            # counted and logged here, not recorded in rules.db: that would need a task per dropped action
            self.dropped += 1
            self.outcomes[(job.rule, job.action.type, False)] += 1
            log.error(
                "rule_action_failed",
                rule=job.rule,
                phase=job.phase,
                action=job.index,
                type=job.action.type,
                target=job.action.target,
                detail="action queue full",
                firing=job.firing_id,
            )
            return

    async def run(self) -> None:
        """The workers, until cancelled."""
        async with asyncio.TaskGroup() as workers:
            for number in range(self._engine.action_workers):
                workers.create_task(self._work(), name=f"rule-action-{number}")

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            await self._finish(job, await self._perform(job))

    async def _perform(self, job: ActionJob) -> Outcome:
        action = job.action
        try:
            if isinstance(action, CommandActionConfig):
                return await self._command(job, action)
            context = template_context(job.rule, job.phase, job.trigger)
            if isinstance(action, MqttActionConfig):
                body = render(action.payload, context).encode()
                await self._mqtt.publish(
                    action.topic,
                    body,
                    qos=action.qos,
                    retain=action.retain,
                    timeout_s=self._engine.mqtt_timeout_s,
                )
                return Outcome(True, f"published {len(body)} bytes")
            return await self._call(action, context)
        except TimeoutError:
            return Outcome(False, "timed out")
        except (TransportError, PublishRefusedError, aiohttp.ClientError) as exc:
            return Outcome(False, f"{type(exc).__name__}: {exc}"[:256])
        except Exception as exc:  # a template error, a port bug: this action fails, the others go on
            log.exception("rule_action_crashed", rule=job.rule, action=job.index)
            return Outcome(False, f"{type(exc).__name__}: {exc}"[:256])

    async def _command(self, job: ActionJob, action: CommandActionConfig) -> Outcome:
        # deterministic: the same firing (replayed after a crash) asks for the same command id,
        # which the plumbing executes at most once
        command = Command(
            command_id=f"rule-{job.firing_id[:36]}-{job.index}",
            action=action.action,
            channel=action.channel,
            clip=action.clip,
        )
        return await self._commands.send(action.device, command, job.rule)

    async def _call(self, action: HttpActionConfig, context: dict[str, Any]) -> Outcome:
        if self._http is None:
            return Outcome(False, "no HTTP client")
        body = render(action.body, context).encode() if action.body is not None else None
        headers = {"Content-Type": action.content_type} if body is not None else {}
        async with self._http.request(
            action.method,
            str(action.url),
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=action.timeout_s),
        ) as response:
            await response.read()
            if response.status >= 400:
                return Outcome(False, f"HTTP {response.status}")
            return Outcome(True, f"HTTP {response.status}")

    async def _finish(self, job: ActionJob, outcome: Outcome) -> None:
        kind = job.action.type
        self.outcomes[(job.rule, kind, outcome.ok)] += 1
        (log.info if outcome.ok else log.warning)(
            "rule_action_done" if outcome.ok else "rule_action_failed",
            rule=job.rule,
            phase=job.phase,
            action=job.index,
            type=kind,
            target=job.action.target,
            detail=outcome.detail,
            firing=job.firing_id,
        )
        try:
            await self._record(
                ActionResult(
                    job.firing_id, job.rule, job.index, kind, job.action.target, outcome.ok, outcome.detail
                )
            )
        except Exception:  # the record is bookkeeping: its failure must not stop the workers
            log.exception("rule_action_record_failed", rule=job.rule)
