"""The ``[[rules]]`` of the gateway config: what a local rule matches, when it fires, what it does.

Validated with the rest of the config (``gateway/config.py``): a condition names a field of the
kind's payload and a value that field can take; a command action names an inventory device whose
dialect takes that action (``adapters.COMMAND_ENCODERS``); templates must compile. docs/local-rules.md
is the reference.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal, get_args

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, Field, HttpUrl, TypeAdapter, ValidationError, field_validator, model_validator

from adapters.commands import CommandAction
from foundation.config_types import ConfigModel
from foundation.events import EventKind, GbId, Name, Payload, Severity

RULE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
RuleName = Annotated[str, Field(pattern=RULE_NAME_PATTERN)]
"""A rule's name: it goes up in every ``rule_fired`` event and into command ids."""

SEVERITY_ORDER = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
MAX_TEMPLATE_CHARS = 4096


@cache
def payload_models() -> dict[EventKind, type[BaseModel]]:
    """The payload model of every event kind (from the discriminated union of ``foundation.events``)."""
    union = get_args(Payload)[0]
    models: dict[EventKind, type[BaseModel]] = {}
    for model in get_args(union):
        models[EventKind(model.model_fields["kind"].default)] = model
    return models


@cache
def template_environment() -> ImmutableSandboxedEnvironment:
    """The one jinja2 environment that renders action templates.

    Sandboxed and immutable: a template may read the event's fields but not reach Python
    internals (``__class__``, ``__globals__``) or change anything, which ``str.format`` on an
    operator's string would allow through attribute access. No autoescaping: the output is an
    MQTT payload or an HTTP body, not HTML; ``tojson`` quotes a value for JSON bodies.
    """
    # StrictUndefined: a misspelt field fails the action (logged) instead of rendering as nothing
    return ImmutableSandboxedEnvironment(autoescape=False, undefined=StrictUndefined)


TEMPLATE_NAMES = frozenset({"event", "payload", "rule", "phase", "compound_id", "device"})
"""What a template may refer to (docs/local-rules.md, "Templates")."""


def _compiles(value: str) -> str:
    env = template_environment()
    try:
        tree = env.parse(value)
    except TemplateSyntaxError as exc:
        raise ValueError(f"template does not compile: {exc.message} (line {exc.lineno})") from None
    names = list(tree.find_all(nodes.Name))
    own = {n.name for n in names if n.ctx in {"store", "param"}}  # {% set %}, loop variables
    unknown = {n.name for n in names if n.ctx == "load"} - TEMPLATE_NAMES - own
    if unknown:
        raise ValueError(
            f"template refers to {', '.join(sorted(unknown))}; use only {', '.join(sorted(TEMPLATE_NAMES))}"
        )
    return value


Template = Annotated[str, Field(max_length=MAX_TEMPLATE_CHARS)]


class PayloadCondition(ConfigModel):
    """One test on a field of the event's payload; a rule's conditions must all hold.

    Exactly one of ``equals`` and ``in``, or one or both of ``at_least`` / ``at_most`` (numbers).
    """

    field: str = Field(min_length=1, max_length=64, description="a field of the kind's payload")
    equals: str | float | bool | None = None
    in_: tuple[str | float | bool, ...] | None = Field(default=None, alias="in", min_length=1, max_length=64)
    at_least: float | None = None
    at_most: float | None = None

    @model_validator(mode="after")
    def _one_test(self) -> PayloadCondition:
        chosen = [name for name, value in (("equals", self.equals), ("in", self.in_)) if value is not None]
        ranged = self.at_least is not None or self.at_most is not None
        if len(chosen) + (1 if ranged else 0) != 1:
            raise ValueError(
                f"condition on {self.field!r}: give exactly one of equals, in, or at_least/at_most"
            )
        return self

    def check_against(self, kind: EventKind) -> None:
        """``ValueError`` unless the field exists in ``kind``'s payload and can take the values."""
        model = payload_models()[kind]
        fields = sorted(n for n in model.model_fields if n != "kind")
        if self.field not in model.model_fields or self.field == "kind":
            raise ValueError(
                f"{kind.value} payloads have no field {self.field!r}; use one of: {', '.join(fields)}"
            )
        annotation: Any = model.model_fields[self.field].annotation
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        values: list[object] = []
        if self.in_ is not None:
            values += self.in_
        elif self.equals is not None:
            values.append(self.equals)
        values += [v for v in (self.at_least, self.at_most) if v is not None]
        for value in values:
            try:
                adapter.validate_python(value)
            except ValidationError:
                raise ValueError(
                    f"{self.field} of {kind.value} payloads cannot be {value!r}"
                    + _choices(model.model_fields[self.field].annotation)
                ) from None

    def holds(self, payload: dict[str, Any]) -> bool:
        """Whether the (JSON-mode dumped) payload passes this test."""
        value = payload.get(self.field)
        if self.in_ is not None:
            return value in self.in_
        if self.at_least is not None or self.at_most is not None:
            if not isinstance(value, int | float) or isinstance(value, bool):
                return False
            return (self.at_least is None or value >= self.at_least) and (
                self.at_most is None or value <= self.at_most
            )
        return bool(value == self.equals)


def _choices(annotation: object) -> str:
    for arg in (annotation, *get_args(annotation)):
        members = getattr(arg, "__members__", None)
        if members:
            return f"; use one of: {', '.join(m.value for m in members.values())}"
    return ""


class LocationMatch(ConfigModel):
    """The device's inventory location must have these values (the ones given)."""

    building: Name | None = None
    unit: Name | None = None
    gate: Name | None = None


class EventMatch(ConfigModel):
    """Which events a rule (or its clear condition) looks at."""

    kind: EventKind
    conditions: tuple[PayloadCondition, ...] = Field(default=(), max_length=16)
    severity_at_least: Severity | None = None
    devices: tuple[GbId, ...] = Field(default=(), description="only these devices; empty: any device")
    location: LocationMatch | None = None

    @model_validator(mode="after")
    def _valid(self) -> EventMatch:
        if self.kind is EventKind.RULE_FIRED:
            raise ValueError("kind rule_fired: a rule may not match firings (rules would feed each other)")
        for condition in self.conditions:
            condition.check_against(self.kind)
        return self


class Debounce(ConfigModel):
    """How long the match must hold before the rule fires (docs/local-rules.md, "Debounce").

    The first matching event opens a window. The rule fires once ``events`` matching events were
    counted in it and ``hold_s`` seconds have passed since it opened (by a timer when the events
    were all there earlier), unless a clear event closed the window first. A window that has not
    reached ``events`` after ``within_s`` seconds is dropped; the next matching event opens a new one.
    """

    events: int = Field(default=1, ge=1, le=1000)
    within_s: float = Field(default=60.0, gt=0, le=86400)
    hold_s: float = Field(default=0.0, ge=0, le=86400)

    @model_validator(mode="after")
    def _hold_inside_window(self) -> Debounce:
        if self.hold_s > self.within_s:
            raise ValueError(
                f"hold_s {self.hold_s:g} is longer than within_s {self.within_s:g}: it would never fire"
            )
        return self


class CommandActionConfig(ConfigModel):
    """Send a command to a local device (through the gateway's command plumbing)."""

    type: Literal["command"]
    on: Literal["fired", "cleared"] = "fired"
    device: GbId
    action: CommandAction
    channel: int = Field(default=1, ge=1, le=64)
    clip: int | None = Field(
        default=None, ge=1, le=255, description="broadcast only: the speaker's preset clip"
    )

    @model_validator(mode="after")
    def _clip_with_broadcast(self) -> CommandActionConfig:
        if (self.action is CommandAction.BROADCAST) != (self.clip is not None):
            raise ValueError(
                "a broadcast names its preset clip (clip = 1..255), and only a broadcast has one"
            )
        return self

    @property
    def target(self) -> str:
        """What the firing event names as the action's target."""
        return self.device


class MqttActionConfig(ConfigModel):
    """Publish to the compound broker."""

    type: Literal["mqtt"]
    on: Literal["fired", "cleared"] = "fired"
    topic: str = Field(min_length=1, max_length=256, pattern=r"^[^#+\x00]+$", description="no wildcards")
    payload: Template = "{{ event | tojson }}"
    qos: Literal[0, 1] = 1
    retain: bool = False

    @field_validator("payload")
    @classmethod
    def _payload_compiles(cls, value: str) -> str:
        return _compiles(value)

    @field_validator("topic")
    @classmethod
    def _not_system(cls, value: str) -> str:
        if value.startswith("$"):
            raise ValueError("topics starting with $ belong to the broker")
        return value

    @property
    def target(self) -> str:
        """What the firing event names as the action's target."""
        return self.topic


class HttpActionConfig(ConfigModel):
    """Call an HTTP endpoint (a property office's system, a speaker's API)."""

    type: Literal["http"]
    on: Literal["fired", "cleared"] = "fired"
    method: Literal["GET", "POST", "PUT"] = "POST"
    url: HttpUrl
    body: Template | None = Field(default=None, description="none: no body")
    content_type: str = Field(default="application/json", max_length=128)
    timeout_s: float = Field(default=5.0, gt=0, le=60)

    @field_validator("body")
    @classmethod
    def _body_compiles(cls, value: str | None) -> str | None:
        return None if value is None else _compiles(value)

    @property
    def target(self) -> str:
        """The URL without its query (which may carry a key)."""
        return str(self.url).split("?", 1)[0][:256]


ActionConfig = Annotated[
    CommandActionConfig | MqttActionConfig | HttpActionConfig, Field(discriminator="type")
]


class RuleConfig(ConfigModel):
    """One local rule (``[[rules]]``)."""

    name: RuleName
    description: str = Field(default="", max_length=256)
    enabled: bool = True
    match: EventMatch
    debounce: Debounce = Debounce()
    cooldown_s: float = Field(default=0.0, ge=0, le=7 * 86400, description="no firing again within this")
    clear: EventMatch | None = Field(
        default=None, description="events that re-arm the rule (a fired rule stays latched until one)"
    )
    severity: Severity | None = Field(
        default=None,
        description="of its rule_fired events when it fires (a clear: the clearing event's); none: the trigger's",
    )
    actions: tuple[ActionConfig, ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _clear_actions_need_clear(self) -> RuleConfig:
        if self.clear is None and any(a.on == "cleared" for a in self.actions):
            raise ValueError(f"rule {self.name}: actions with on = 'cleared' need a [rules.clear] condition")
        return self


class RuleEngineConfig(ConfigModel):
    """How the local rules run (``[rule_engine]``)."""

    max_event_age_s: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="events received longer ago are not evaluated (a backlog after a restart fires nothing late)",
    )
    action_queue: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="actions waiting to run; beyond it new ones fail (queue full)",
    )
    action_workers: int = Field(default=4, ge=1, le=64, description="actions running at once")
    mqtt_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="longest an MQTT publish action may take"
    )
    batch: int = Field(default=256, ge=1, le=10_000, description="events evaluated per read of the outbox")


def check_rules(rules: tuple[RuleConfig, ...], devices: dict[str, str]) -> list[str]:
    """Problems of the rules against the inventory (``devices``: id -> dialect); empty when fine."""
    from adapters import COMMAND_ENCODERS  # noqa: PLC0415 - the registry imports every adapter

    problems: list[str] = []
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        where = f"rules.{index} ({rule.name})"
        if rule.name in seen:
            problems.append(f"{where}.name: a second rule named {rule.name!r}; every rule needs its own name")
        seen.add(rule.name)
        for part, match in (("match", rule.match), ("clear", rule.clear)):
            for device in match.devices if match is not None else ():
                if device not in devices:
                    problems.append(f"{where}.{part}.devices: no device {device} in [[devices]]")
        for number, action in enumerate(rule.actions):
            if not isinstance(action, CommandActionConfig):
                continue
            at = f"{where}.actions.{number}"
            dialect = devices.get(action.device)
            if dialect is None:
                problems.append(f"{at}.device: no device {action.device} in [[devices]]")
                continue
            encoder = COMMAND_ENCODERS.get(dialect)
            if encoder is None:
                takers = sorted(COMMAND_ENCODERS)
                problems.append(
                    f"{at}.device: device {action.device} ({dialect}) takes no commands;"
                    f" devices of {', '.join(takers) or 'no dialect yet'} do"
                )
            elif action.action not in encoder.actions:
                problems.append(
                    f"{at}.action: {dialect} devices cannot {action.action.value};"
                    f" they take {', '.join(sorted(a.value for a in encoder.actions))}"
                )
    return problems
