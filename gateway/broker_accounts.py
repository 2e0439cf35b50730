"""The compound broker's accounts and ACL, written from the gateway config and the device secrets.

Every MQTT device logs in to the compound (device) broker with its ref as user name and its own
secret as password, and may write only its own topics and read only its own command requests, as
its dialect names them (``adapters.base.DeviceTopics``). The gateway's account reads every
inventory device's topics and writes every device's command requests; its second session, the
``<gateway user>-sys`` account with the same password, reads only the broker's drop counter
(``gateway/broker_drops.py``); its third, ``<gateway user>-cmd``, sends devices their commands
(``gateway/command_executor.py``): it writes command requests and reads the devices' topics, where
their answers arrive; the ``<gateway user>-rules`` account, same password, writes only the topics
of the local rules' MQTT actions (``gateway/local_rules/``). Nobody else has an account, the shipped configuration refuses
anonymous clients, and it binds every session to its account (``use_username_as_clientid``): no
login can take over the gateway's persistent session, or another device's, by its client id.

One structured model (``AclRule``) gives both the Mosquitto files (``passwd_text``, ``acl_text``,
installed by ``compound-gateway devices credentials``) and the in-process checks the demo's
embedded broker enforces (``verify``, ``allows``), so the two brokers apply the same rules.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import SecretStr

from adapters import COMMAND_ENCODERS, DIALECTS
from adapters.base import Transport
from foundation.errors import ConfigError
from foundation.mqtt import topic_matches
from gateway.broker_drops import DROPPED_TOPIC, drop_counter_user
from gateway.command_executor import command_user
from gateway.config import GatewayConfig
from gateway.device_secrets import GATEWAY_BROKER_USER, DeviceSecrets
from gateway.local_rules.actions import rules_publisher_user
from gateway.local_rules.config import MqttActionConfig

Access = Literal["read", "write"]

PBKDF2_ITERATIONS = 101
"""What ``mosquitto_passwd`` (2.0) uses. Stretching protects guessable passwords; ours are random
(``new_secret``: 24 characters, about 140 bits) or at least 12 characters, and a higher count would
cost the broker's one thread that much more on every device's (re)connect."""
SALT_BYTES = 12
"""The salt length ``mosquitto_passwd`` writes."""


@dataclass(frozen=True, order=True)
class AclRule:
    """``user`` may ``access`` the topics matching ``topic`` (an MQTT filter: ``+`` and ``#``)."""

    user: str
    access: Access
    topic: str


@dataclass(frozen=True)
class BrokerAccounts:
    """The accounts of one compound broker: passwords by user name, and what each user may do.

    ``owners`` names what each account belongs to (``gateway``, or ``<device id> (<name>)``), for
    summaries and errors; never a secret.
    """

    passwords: dict[str, SecretStr]
    rules: tuple[AclRule, ...]
    owners: dict[str, str] = field(default_factory=dict)
    _by_user: dict[str, tuple[tuple[Access, str], ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[str, list[tuple[Access, str]]] = {}
        for rule in self.rules:
            grouped.setdefault(rule.user, []).append((rule.access, rule.topic))
        object.__setattr__(self, "_by_user", {u: tuple(r) for u, r in grouped.items()})

    def verify(self, user: str | None, password: bytes | None) -> bool:
        """Whether this login is one of the accounts (anonymous clients and unknown users: no)."""
        if user is None or password is None:
            return False
        known = self.passwords.get(user)
        if known is None:
            return False
        return hmac.compare_digest(known.get_secret_value().encode(), password)

    def allows(self, user: str | None, access: Access, topic: str) -> bool:
        """Whether ``user`` may publish to (``write``) or receive from (``read``) the concrete ``topic``.

        Matched as Mosquitto matches ``acl_file`` lines, with MQTT filter matching (which
        also keeps wildcards from matching ``$SYS`` topics); no rule for it: refused.
        """
        if user is None:
            return False
        return any(a == access and topic_matches(f, topic) for a, f in self._by_user.get(user, ()))

    def acl_text(self) -> str:
        """The Mosquitto ``acl_file``: a ``user`` block per account, exact topics, no patterns."""
        lines = [
            "# Compound broker ACL, written by 'compound-gateway devices credentials' from the gateway",
            "# config: do not edit, run the command again after changing the inventory.",
        ]
        for user, rules in self._by_user.items():
            lines += ["", f"# {self.owners.get(user, user)}", f"user {user}"]
            lines += [f"topic {access} {topic}" for access, topic in rules]
        return "\n".join(lines) + "\n"

    def passwd_text(self) -> str:
        """The Mosquitto ``password_file``: ``user:$7$<iterations>$<salt>$<hash>``, new salts each time."""
        return "".join(
            f"{user}:{mosquitto_hash(password.get_secret_value())}\n"
            for user, password in self.passwords.items()
        )


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto 2.0's password hash (type 7): PBKDF2-HMAC-SHA512, salt and hash in base64.

    hashlib's PBKDF2 is the standard one Mosquitto uses (OpenSSL's PKCS5_PBKDF2_HMAC); calling
    ``mosquitto_passwd`` instead would put every password on its command line (``-b``) or need a
    terminal, and needs the package installed where the config is kept.
    """
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def build_broker_accounts(config: GatewayConfig, secrets_: DeviceSecrets) -> BrokerAccounts:
    """The accounts and ACL for ``config``'s MQTT devices and the gateway.

    ``ConfigError`` names the devices when a user name would be shared (one ref in two dialects, a
    ref equal to one of the gateway's user names) or when an MQTT device or the gateway has no secret.
    """
    gateway_user = config.mqtt.username or GATEWAY_BROKER_USER
    sys_user = drop_counter_user(gateway_user)
    cmd_user = command_user(gateway_user)
    commanded = any(d.dialect in COMMAND_ENCODERS for d in config.devices)
    gateway_password = config.mqtt.password or secrets_.gateway
    owners: dict[str, str] = {
        gateway_user: "the gateway ([mqtt] username)",
        sys_user: "the gateway's drop counter reader ([mqtt] username + -sys)",
        cmd_user: "the gateway's command sender ([mqtt] username + -cmd)",
    }
    passwords: dict[str, SecretStr] = {}
    device_rules: list[AclRule] = []
    gateway_rules: list[AclRule] = []
    problems: list[str] = []
    if gateway_password is None:
        problems.append("  gateway: no secret for the gateway's broker account -> fix: add one")
    else:
        passwords[gateway_user] = passwords[sys_user] = gateway_password
        if commanded:  # the command session's account exists only where a device takes commands
            passwords[cmd_user] = gateway_password
    for device in config.devices:
        dialect = DIALECTS[device.dialect]
        if dialect.transport is not Transport.MQTT or dialect.device_topics is None or device.ref is None:
            continue
        owner = f"{device.id} ({device.name}, {device.dialect})"
        other = owners.setdefault(device.ref, owner)
        if other != owner:
            problems.append(
                f"  devices.{device.id}: its ref {device.ref!r} is the broker user name of {other} too"
                " -> fix: each MQTT device and the gateway need their own user name"
                " (correct the ref, or set [mqtt] username for the gateway)"
            )
            continue
        secret = secrets_.devices.get(device.id)
        if secret is None:
            problems.append(
                f"  devices.{device.id} ({device.name}): no secret for its broker account -> fix: add one"
            )
            continue
        passwords[device.ref] = secret
        topics = dialect.device_topics.of(device.ref)
        device_rules += [AclRule(device.ref, "write", t) for t in topics.publishes]
        device_rules += [AclRule(device.ref, "read", t) for t in topics.subscribes]
        # the gateway's commands (and whatever local rules will publish) go to command requests only
        gateway_rules += [AclRule(gateway_user, "read", t) for t in topics.publishes]
        gateway_rules += [AclRule(gateway_user, "write", t) for t in topics.subscribes]
        if device.dialect in COMMAND_ENCODERS:
            gateway_rules += [AclRule(cmd_user, "read", t) for t in topics.publishes]
            gateway_rules += [AclRule(cmd_user, "write", t) for t in topics.subscribes]
    if problems:
        raise ConfigError(
            "\n".join(
                [
                    f"{secrets_.source or 'the device secrets'}: {len(problems)} problem(s) with the broker accounts"
                    " ('compound-gateway devices credentials --generate-missing' adds missing secrets)",
                    *problems,
                ]
            )
        )
    sys_rules = [AclRule(sys_user, "read", DROPPED_TOPIC)]
    rules_rules = _local_rules_account(config, gateway_user, gateway_password, passwords, owners)
    return BrokerAccounts(
        passwords, tuple(_unique([*gateway_rules, *sys_rules, *rules_rules, *device_rules])), owners
    )


def _local_rules_account(
    config: GatewayConfig,
    gateway_user: str,
    password: SecretStr | None,
    passwords: dict[str, SecretStr],
    owners: dict[str, str],
) -> list[AclRule]:
    """The local rules' publishing account (docs/local-rules.md): writes exactly its rules' topics."""
    topics = [
        action.topic
        for rule in config.rules
        if rule.enabled
        for action in rule.actions
        if isinstance(action, MqttActionConfig)
    ]
    if not topics or password is None:
        return []
    user = rules_publisher_user(gateway_user)
    passwords[user] = password
    owners[user] = "the gateway's local rules ([mqtt] username + -rules)"
    return [AclRule(user, "write", topic) for topic in topics]


def _unique(rules: Iterable[AclRule]) -> list[AclRule]:
    return list(dict.fromkeys(rules))
