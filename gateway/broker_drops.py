"""The device broker's own count of dropped messages, read from ``$SYS`` and exported.

Mosquitto drops a QoS 1 message it has already acknowledged to the device when the receiving
session's queue is full (``max_queued_messages``, default 1000, or ``max_queued_bytes``): the device
had its PUBACK, the gateway never sees the message, and the broker says so only in its log and in
``$SYS/broker/publish/messages/dropped`` (a broker-wide count since it started, republished every
``sys_interval`` seconds when it changed, retained). This module keeps a small second session on the
device broker that subscribes to that topic, exports the value, and logs what to change when it
rises.

The session is separate from the intake's: it is not persistent, not manually acknowledged, reads
QoS 0, and keeps reading while the intake is paused for back-pressure, which is exactly when the
broker's queue for us fills. It logs in with an account of its own, ``<gateway user>-sys``
(``drop_counter_user``), with the gateway's password: the compound broker binds each session to its
account (``use_username_as_clientid``), so a second login as the gateway would take over the
intake's session. That account may read only the drop counter.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import structlog

from foundation.errors import TransportError
from foundation.health import MetricFamilies
from foundation.mqtt import MqttSession, SessionOptions
from gateway.config import GatewayConfig

log = structlog.get_logger(__name__)

DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
# Mosquitto sends the retained value at once; its longest default interval is 10 s
FIRST_VALUE_WITHIN_S = 60.0
BROKER_CONFIG = "deploy/mosquitto/compound.conf"
SYS_USER_SUFFIX = "-sys"


def drop_counter_user(gateway_user: str) -> str:
    """The account the drop counter's session logs in with: the gateway's user name plus ``-sys``."""
    return f"{gateway_user}{SYS_USER_SUFFIX}"


DROP_HINT = (
    "the device broker discarded messages after acknowledging them to the devices: a client's queue "
    "was full, most likely the gateway's while it was down or behind. Raise max_queued_messages and "
    f"max_queued_bytes on the device broker (see {BROKER_CONFIG}); cgw_device_sequence_missing_total "
    "shows which numbering devices lost messages"
)


class BrokerDrops:
    """Follows the device broker's drop counter; ``run`` is one connection (supervised)."""

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        self.dropped: int | None = None  # the broker's count since it started; None until read
        self.reads = 0

    def session_options(self) -> SessionOptions:
        """A plain, non-persistent session next to the intake's: the ``-sys`` account, the gateway's password.

        Without a gateway user name (an anonymous broker on a trusted LAN) it logs in without one too.
        """
        cfg = self._config.mqtt
        return SessionOptions(
            host=cfg.host,
            port=cfg.port,
            client_id=f"{self._config.mqtt_client_id}-sys",
            clean_start=True,
            keepalive_s=cfg.keepalive_s,
            username=drop_counter_user(cfg.username) if cfg.username else None,
            password=cfg.password.get_secret_value() if cfg.password else None,
        )

    async def run(self, on_connected: Callable[[], None]) -> None:
        """Connect, subscribe and follow the counter until the connection fails (``TransportError``)."""
        cfg = self._config.mqtt
        try:
            async with MqttSession(self.session_options()) as session:
                await session.subscribe(DROPPED_TOPIC, qos=0)
                on_connected()
                messages = session.messages()
                try:
                    async with asyncio.timeout(FIRST_VALUE_WITHIN_S):
                        first = await anext(messages)
                except TimeoutError:
                    log.warning(
                        "device_broker_drop_counter_silent",
                        topic=DROPPED_TOPIC,
                        waited_s=FIRST_VALUE_WITHIN_S,
                        hint="the device broker publishes no $SYS (sys_interval 0) or its ACL does not let "
                        f"the gateway's -sys account read {DROPPED_TOPIC} (see {BROKER_CONFIG}; 'compound-gateway devices"
                        " credentials' writes an ACL that does); "
                        "cgw_device_broker_dropped_messages stays NaN",
                    )
                    first = await anext(messages)
                self.update(first.payload)
                async for message in messages:
                    self.update(message.payload)
        except TransportError as exc:
            raise TransportError(f"device broker {cfg.host}:{cfg.port} ($SYS): {exc}") from exc
        raise TransportError(f"device broker {cfg.host}:{cfg.port} closed the $SYS stream")

    def update(self, payload: bytes) -> None:
        """One value of the counter as the broker published it."""
        try:
            value = int(payload.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            log.warning("device_broker_drop_counter_unreadable", topic=DROPPED_TOPIC, payload=payload[:40])
            return
        previous, self.dropped = self.dropped, value
        self.reads += 1
        if previous is None:
            log.info("device_broker_drop_counter_read", dropped_total=value)
        elif value < previous:
            log.info("device_broker_drop_counter_reset", dropped_total=value, before=previous)
            return
        rise = value - (previous or 0)  # the first reading: whatever the broker dropped so far
        if rise > 0:
            log.warning("device_broker_dropped_messages", dropped=rise, dropped_total=value, hint=DROP_HINT)

    def write_metrics(self, families: MetricFamilies) -> None:
        """The broker's count; NaN until read (not a made-up 0: the broker may never have said)."""
        families.gauge(
            "cgw_device_broker_dropped_messages",
            f"messages the device broker dropped since it started ({DROPPED_TOPIC}); NaN until read",
            math.nan if self.dropped is None else self.dropped,
        )
