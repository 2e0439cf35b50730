"""The gateway daemon: wiring only. Behaviour lives in the intake, the transports and the outbox.

Shutdown is cancellation. Transports run in an inner task group and stop first; the intake batcher
runs in the outer one and keeps committing until they are gone, so a push in flight is still
answered truthfully. Resources sit on an ``AsyncExitStack`` in dependency order: the pipeline's
worker (parsers + outbox) closes last.
"""

from __future__ import annotations

import asyncio
import ssl
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from adapters import COMMAND_ENCODERS, DIALECTS
from adapters.base import Transport
from foundation.backoff import Backoff
from foundation.errors import OutboxError
from foundation.health import Health, MetricFamilies
from foundation.supervision import run_forever, supervise
from foundation.systemd import sd_notify, watchdog, watchdog_interval
from gateway.broker_drops import BrokerDrops
from gateway.command_executor import (
    CommandExecutor,
    Exchanges,
    HttpExchange,
    MqttExchange,
    command_session_options,
)
from gateway.command_ledger import CommandLedger
from gateway.command_service import CommandService, RuleCommands
from gateway.config import GatewayConfig, load_pseudonym_key
from gateway.device_secrets import DeviceSecrets, prepare_trust
from gateway.device_watch import DeviceWatch
from gateway.evidence_service import EvidenceAudit, EvidenceService
from gateway.forwarder import UplinkFactory
from gateway.http_receiver import build_app
from gateway.local_rules.actions import ActionRunner, CommandPort, MqttPublisher, NotWiredCommandPort
from gateway.local_rules.service import LocalRules
from gateway.local_rules.store import RuleStore
from gateway.media_fetch import MediaFetcher
from gateway.mqtt_intake import MqttIntake
from gateway.outbox import OutboxReader
from gateway.pipeline import IntakePipeline
from gateway.push_auth import PushAuthenticator
from gateway.retention import Retention
from gateway.watch_matcher import WatchMatcher
from gateway.watchlists import WatchListRegistry
from uplink.protocol import DEFAULT_PREFIX

log = structlog.get_logger(__name__)

HTTP_SHUTDOWN_TIMEOUT_S = 5.0


def pseudonym_key(config: GatewayConfig) -> bytes:
    """The key for person identifiers, from the credential file (created in the state dir if allowed)."""
    path = config.pseudonym_key_path()
    return load_pseudonym_key(path, create=path.is_relative_to(config.state.dir))


async def run_gateway(
    config: GatewayConfig,
    *,
    ready: asyncio.Event | None = None,
    secrets: DeviceSecrets | None = None,
    source: Path | None = None,
    commands: CommandPort | None = None,
) -> None:
    """Run until cancelled.

    ``secrets`` as ``prepare_trust`` returned them (with the config it returned); None: loaded and
    checked here, errors naming ``source`` (the config file). ``commands``: where the local rules'
    command actions go (None: the command service's, or ``NotWiredCommandPort`` when no device takes
    commands; tests pass a double).
    """
    if secrets is None:
        config, secrets = prepare_trust(config, source or Path("the gateway config"))
    tls_context = (
        config.http.tls.server_context(source or Path("the gateway config")) if config.http.tls else None
    )
    health = Health()
    async with AsyncExitStack() as stack:
        pipeline = await stack.enter_async_context(IntakePipeline(config, pseudonym_key(config)))
        reader = await stack.enter_async_context(
            OutboxReader(config.state.dir / "outbox.db", max_bytes=config.state.outbox_max_bytes)
        )
        intake = pipeline.intake
        registry = WatchListRegistry(
            config.state.dir / "watchlists", config.compound.district_id, config.faces.threshold
        )
        await asyncio.to_thread(registry.load_persisted)
        matcher = WatchMatcher(config, registry, pipeline, reader)
        health.writers.append(matcher.write_metrics)
        plumbing = await _command_plumbing(stack, config, secrets, health)
        port = commands or (plumbing.rule_port(config) if plumbing is not None else None)
        rules = await _follow_commits(stack, config, pipeline, reader, health, port)
        app = build_app(config, pipeline, health, reader.stats, PushAuthenticator(config, secrets))
        runner = web.AppRunner(app, shutdown_timeout=HTTP_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        _expose_pipeline(health, pipeline)
        async with asyncio.TaskGroup() as core:
            batcher = core.create_task(pipeline.run_batcher(), name="intake-batcher")
            try:
                listeners = await _listen(config, runner, tls_context)
                async with asyncio.TaskGroup() as transports:
                    mqtt_up = asyncio.Event()
                    if intake.uses_mqtt():
                        _start_mqtt(config, pipeline, health, transports, mqtt_up)
                    else:
                        mqtt_up.set()
                    evidence = await _evidence_service(stack, config, reader, health)
                    service = plumbing.start(transports, config, health) if plumbing is not None else None
                    _start_uplink(
                        transports, config, UplinkFactory(config, reader, registry, evidence, service), health
                    )
                    transports.create_task(
                        supervise(
                            "watch-matcher", run_forever(matcher.run), Backoff(config.backoff), health=health
                        ),
                        name="watch-matcher",
                    )
                    _start_upkeep(transports, config, reader=reader, health=health, rules=rules)
                    _start_fetcher(transports, config, reader, secrets, health, pipeline, evidence)
                    if (interval := watchdog_interval()) is not None:
                        transports.create_task(
                            watchdog(pipeline.ping, interval, failures=(OutboxError,), what="intake worker"),
                            name="watchdog",
                        )
                    log.info(
                        "gateway_started",
                        compound=config.compound.compound_id,
                        devices=len(config.devices),
                        http_listeners=listeners,
                        mqtt_topics=intake.mqtt_topic_filters(),
                    )
                    # systemd: ready once we accept pushes; a broker outage must not fail the start.
                    sd_notify("READY=1")
                    if ready is not None:
                        # callers that wait (demo, tests) need the subscriptions in place
                        await mqtt_up.wait()
                        ready.set()
                    await asyncio.Future()  # until cancelled
            finally:
                sd_notify("STOPPING=1")
                await runner.cleanup()  # answer pushes in flight while the batcher still runs
                batcher.cancel()
    log.info("gateway_stopped")


async def _listen(config: GatewayConfig, runner: web.AppRunner, tls: ssl.SSLContext | None) -> list[str]:
    """Start the plain and HTTPS listeners the config asks for; their URLs (for the start-up log)."""
    http = config.http
    listeners = []
    if http.plain:
        await web.TCPSite(runner, http.host, http.port, reuse_address=True).start()
        listeners.append(f"http://{http.host}:{http.port}")
    if http.tls is not None and tls is not None:
        await web.TCPSite(runner, http.host, http.tls.port, ssl_context=tls, reuse_address=True).start()
        listeners.append(f"https://{http.host}:{http.tls.port}")
    if http.plain:  # with HTTPS beside it too: nothing stops a device from using the plain port
        basic = [
            d.id
            for d in config.devices
            if d.push_auth == "basic" and DIALECTS[d.dialect].transport is Transport.HTTP_DEVICE
        ]
        basic += [f"platform:{p}" for p in config.platform_dialects() if config.platform(p).auth == "basic"]
        if basic:
            # basic sends the password itself: anyone on the LAN who sees one push can replay it
            log.warning(
                "push_basic_over_plain_http",
                peers=basic,
                fix="point these devices at https ([http.tls]) and set [http] plain = false, or switch them to digest",
            )
    return listeners


async def _evidence_service(
    stack: AsyncExitStack, config: GatewayConfig, reader: OutboxReader, health: Health
) -> EvidenceService | None:
    """The evidence service of an uplink the district can ask over (MQTT); None otherwise."""
    prefix = config.uplink.evidence_prefix() if config.uplink is not None else None
    if prefix is None:
        return None
    audit = await stack.enter_async_context(EvidenceAudit(config.state.dir / "evidence.db"))
    service = EvidenceService(config, prefix, reader.catalog, audit)
    service.expose(health)
    return service


def _start_uplink(
    tasks: asyncio.TaskGroup, config: GatewayConfig, factory: UplinkFactory, health: Health
) -> None:
    """The configured uplink, if any, kept connected."""
    if config.uplink is None:
        return
    uplink = config.uplink.build(factory)
    uplink.expose(health)
    tasks.create_task(supervise("uplink", uplink.run, Backoff(config.backoff), health=health), name="uplink")


@dataclass(frozen=True)
class _CommandPlumbing:
    """The command service and its session to the compound broker, built before the rules that use it."""

    service: CommandService
    session: MqttExchange

    def rule_port(self, config: GatewayConfig) -> RuleCommands:
        """The local rules' command port (a rule's command lives as long as a settled barrier takes, and more)."""
        settle = max(config.commands.settle_s.values(), default=5.0)
        return RuleCommands(self.service, timedelta(seconds=settle + 4 * config.commands.reply_timeout_s))

    def start(self, tasks: asyncio.TaskGroup, config: GatewayConfig, health: Health) -> CommandService:
        """The session (kept connected) and the service's workers; the service, for the uplink."""
        tasks.create_task(
            supervise("command-session", self.session.run, Backoff(config.backoff), health=health),
            name="command-session",
        )
        tasks.create_task(
            supervise("commands", run_forever(self.service.run), Backoff(config.backoff), health=health),
            name="commands",
        )
        return self.service


async def _command_plumbing(
    stack: AsyncExitStack, config: GatewayConfig, secrets: DeviceSecrets, health: Health
) -> _CommandPlumbing | None:
    """The command service, its ledger and transports, when a device takes commands; else None.

    It runs whether or not an uplink is configured or reachable: orders come over the district
    broker (the evidence prefix's uplink), and the compound's own rules command devices without it.
    """
    if not any(d.dialect in COMMAND_ENCODERS for d in config.devices):
        return None
    ledger = await stack.enter_async_context(CommandLedger(config.state.dir / "commands.db"))
    http = await stack.enter_async_context(HttpExchange(secrets).running())
    session = MqttExchange(command_session_options(config))
    prefix = (config.uplink.evidence_prefix() if config.uplink is not None else None) or DEFAULT_PREFIX
    service = CommandService(
        config, prefix, ledger, CommandExecutor(config, ledger, Exchanges(session, http))
    )
    service.expose(health)
    return _CommandPlumbing(service, session)


async def _follow_commits(  # noqa: PLR0917 - the run's parts it connects, from its one call site
    stack: AsyncExitStack,
    config: GatewayConfig,
    pipeline: IntakePipeline,
    reader: OutboxReader,
    health: Health,
    commands: CommandPort | None,
) -> tuple[LocalRules, ActionRunner] | None:
    """What follows committed batches: the device watch, and the local rules (if enabled).

    The rules come with their action runner (docs/local-rules.md); None without enabled rules.
    """
    _watch_devices(config, pipeline, health)
    if not any(rule.enabled for rule in config.rules):
        return None
    store = await stack.enter_async_context(RuleStore(config.state.dir / "rules.db"))
    http = await stack.enter_async_context(aiohttp.ClientSession())
    publisher = MqttPublisher.for_config(config)
    stack.push_async_callback(publisher.close)
    runner = ActionRunner(config, commands or NotWiredCommandPort(), publisher, http, store.record)
    rules = LocalRules(config, pipeline, reader, store, runner)
    pipeline.observers.append(rules.observe)
    health.writers.append(rules.write_metrics)
    return rules, runner


def _start_rules(
    tasks: asyncio.TaskGroup, config: GatewayConfig, rules: tuple[LocalRules, ActionRunner], health: Health
) -> None:
    """The rules task and the action workers, each restarted on its own if it fails."""
    engine, runner = rules
    tasks.create_task(
        supervise("local-rules", run_forever(engine.run), Backoff(config.backoff), health=health),
        name="local-rules",
    )
    tasks.create_task(
        supervise("rule-actions", run_forever(runner.run), Backoff(config.backoff), health=health),
        name="rule-actions",
    )


def _start_upkeep(
    tasks: asyncio.TaskGroup,
    config: GatewayConfig,
    *,
    reader: OutboxReader,
    health: Health,
    rules: tuple[LocalRules, ActionRunner] | None = None,
) -> None:
    """Retention, the media byte budget and the local rules (if any)."""
    if rules is not None:
        _start_rules(tasks, config, rules, health)
    retention = Retention(config, reader)
    health.writers.append(retention.write_metrics)
    tasks.create_task(
        supervise("retention", run_forever(retention.run), Backoff(config.backoff), health=health),
        name="retention",
    )
    tasks.create_task(
        supervise("media-budget", run_forever(retention.run_budget), Backoff(config.backoff), health=health),
        name="media-budget",
    )


def _start_fetcher(  # noqa: PLR0917 - the run's parts it connects, from its one call site
    tasks: asyncio.TaskGroup,
    config: GatewayConfig,
    reader: OutboxReader,
    secrets: DeviceSecrets,
    health: Health,
    pipeline: IntakePipeline,
    evidence: EvidenceService | None,
) -> None:
    """The fetcher of device-kept media, when a device has a ``media_url``.

    Woken by each committed batch with events of such a device, and waking the evidence service
    when a file is fetched, so that an alarm's pictures go up at once instead of at the next poll.
    """
    if not any(d.media_url is not None for d in config.devices):
        return
    fetcher = MediaFetcher(config, reader, secrets)
    fetcher.expose(health)
    pipeline.observers.append(fetcher.observe)
    if evidence is not None:
        fetcher.on_fetched.append(evidence.wake)
    tasks.create_task(
        supervise("media-fetch", run_forever(fetcher.run), Backoff(config.backoff), health=health),
        name="media-fetch",
    )


def _watch_devices(config: GatewayConfig, pipeline: IntakePipeline, health: Health) -> None:
    """Last-heard times and sequence gaps of the devices, from every committed batch."""
    devices = DeviceWatch(config)
    pipeline.observers.append(devices.observe)
    health.writers.append(devices.write_metrics)


def _start_mqtt(
    config: GatewayConfig,
    pipeline: IntakePipeline,
    health: Health,
    transports: asyncio.TaskGroup,
    mqtt_up: asyncio.Event,
) -> None:
    """The MQTT intake, and the device broker's own drop counter ($SYS) on a session of its own."""
    mqtt = MqttIntake(config, pipeline)
    _expose_mqtt(health, mqtt)
    transports.create_task(
        supervise("mqtt-intake", mqtt.run, Backoff(config.backoff), mqtt_up, health),
        name="mqtt-intake",
    )
    drops = BrokerDrops(config)
    health.writers.append(drops.write_metrics)
    transports.create_task(
        supervise("device-broker-sys", drops.run, Backoff(config.backoff), health=health),
        name="device-broker-sys",
    )


def _expose_pipeline(health: Health, pipeline: IntakePipeline) -> None:
    health.expose("cgw_intake_batches_total", "batches handed to the intake worker", lambda: pipeline.batches)
    health.expose(
        "cgw_intake_batches_lost_total",
        "batches not committed because the intake worker died (their senders were not acknowledged)",
        lambda: pipeline.batches_lost,
    )
    health.expose(
        "cgw_intake_worker_replaced_total",
        "intake worker processes replaced after one died",
        lambda: pipeline.workers_replaced,
    )

    def in_flight(families: MetricFamilies) -> None:
        families.gauge(
            "cgw_intake_batches_in_flight",
            "batches handed to the intake worker and not yet committed",
            pipeline.batches_in_flight,
        )

    health.writers.append(in_flight)


def _expose_mqtt(health: Health, mqtt: MqttIntake) -> None:
    health.expose("cgw_mqtt_intake_messages_total", "device messages received", lambda: mqtt.messages)
    health.expose(
        "cgw_mqtt_intake_acked_total", "device messages acknowledged after commit", lambda: mqtt.acked
    )
    health.expose(
        "cgw_mqtt_intake_read_pauses_total",
        "times reading paused for back-pressure",
        lambda: mqtt.throttle.pauses,
    )
