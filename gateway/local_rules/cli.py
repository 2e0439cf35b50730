"""``compound-gateway rules test``: which rules a payload would fire, without firing anything.

The payload is what a configured device sends (run through that device's adapter, as the intake
would) or, with ``--event``, a canonical event JSON (one object or a list). The rules are evaluated
on a fresh state, as if none had fired before: no cooldown or latch of a running gateway is
consulted, nothing is written, no action runs.

Exit status: 0 when at least one rule fires, 1 when none does, 2 when the config, the payload or
the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from adapters import DIALECTS
from adapters.base import RawMessage, Transport
from foundation.events import Event
from foundation.identity import Pseudonymizer
from gateway.config import GatewayConfig, load_config
from gateway.intake import Intake
from gateway.local_rules.engine import Engine, matches
from gateway.outbox import StoreEvents

DRY_RUN_KEY = b"compound-gateway-rules-test-not-a-production-key"
EXIT_FIRES, EXIT_NONE, EXIT_ERROR = 0, 1, 2


def add_rules_commands(sub: Any) -> None:
    """``rules test`` (``sub``: the top-level subparsers)."""
    rules = sub.add_parser("rules", help="compound: the local rules (docs/local-rules.md)")
    actions = rules.add_subparsers(dest="action", required=True)
    test = actions.add_parser(
        "test",
        help="which rules a device payload (or a canonical event) would fire; exit 0 if any, 1 if none",
    )
    test.add_argument("--config", type=Path, required=True, help="the gateway TOML config")
    test.add_argument("--device", help="the inventory id of the device that sends the payload")
    test.add_argument("--topic", help="MQTT devices: the topic the payload is published on")
    test.add_argument("--content-type", help="HTTP devices: the Content-Type of the push")
    test.add_argument("--event", action="store_true", help="the file is a canonical event JSON (or a list)")
    test.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    test.add_argument("payload", type=Path)


class UsageError(Exception):
    """The arguments or the payload are wrong; the message says how."""


def run_rules_command(args: argparse.Namespace) -> int:
    """Run ``rules test``; the exit status as the module says."""
    config = load_config(args.config)
    try:
        body = args.payload.read_bytes()
        events = _events(config, args, body)
    except (UsageError, OSError) as exc:
        print(f"rules test: {exc}", file=sys.stderr)
        return EXIT_ERROR
    verdicts = dry_run(config, events)
    if args.json:
        print(json.dumps(verdicts, indent=2, ensure_ascii=False))
    else:
        for verdict in verdicts:
            print(
                f"{verdict['event_id']} ({verdict['kind']}, {verdict['severity']}, device {verdict['device_id']}):"
            )
            for rule in verdict["rules"]:
                print(
                    f"  {rule['rule']}: {rule['verdict']}"
                    + (f" - {rule['detail']}" if rule["detail"] else "")
                )
        if not config.rules:
            print("the config has no [[rules]]", file=sys.stderr)
    fired = any(r["verdict"] in {"fires", "clears"} for v in verdicts for r in v["rules"])
    return EXIT_FIRES if fired else EXIT_NONE


def dry_run(config: GatewayConfig, events: list[Event]) -> list[dict[str, Any]]:
    """Per event, per rule: what the rule does with it.

    ``fires``, ``clears``, ``matches`` (debounce not reached yet), ``suppressed`` (it fired on an
    earlier event of the same file: cooldown or latch) or ``no match``.
    """
    engine = Engine(config.rules)
    verdicts = []
    for event in events:
        firings = {(f.rule.name, f.phase) for f in engine.evaluate(event, 0.0)}
        payload = event.payload.model_dump(mode="json")
        rows = []
        for rule in engine.rules:
            debounce = rule.debounce
            state = engine.states.get((rule.name, event.device_id))
            if (rule.name, "fired") in firings:
                verdict, detail = "fires", _actions(rule.actions, "fired")
            elif (rule.name, "cleared") in firings:
                verdict, detail = "clears", _actions(rule.actions, "cleared")
            elif not matches(rule.match, event, payload) or state is None:
                verdict, detail = "no match", ""
            elif state.latched:
                verdict, detail = (
                    "suppressed",
                    "it fired before in this file and waits for its clear condition",
                )
            elif state.window_opened is None:
                verdict, detail = (
                    "suppressed",
                    f"it fired before in this file (cooldown {rule.cooldown_s:g} s)",
                )
            else:
                verdict = "matches"
                detail = (
                    f"{state.window_count} of {debounce.events} events within {debounce.within_s:g} s,"
                    f" held {debounce.hold_s:g} s: fires when the debounce is reached"
                )
            rows.append({"rule": rule.name, "verdict": verdict, "detail": detail})
        verdicts.append(
            {
                "event_id": event.event_id,
                "kind": event.kind.value,
                "severity": event.severity.value,
                "device_id": event.device_id,
                "rules": rows,
            }
        )
    return verdicts


def _actions(actions: tuple[Any, ...], phase: str) -> str:
    chosen = [f"{a.type} {a.target}" for a in actions if a.on == phase]
    return "actions: " + ", ".join(chosen) if chosen else "no actions"


def _events(config: GatewayConfig, args: argparse.Namespace, body: bytes) -> list[Event]:
    if args.event:
        try:
            data = json.loads(body)
            return TypeAdapter(list[Event]).validate_python(data if isinstance(data, list) else [data])
        except (ValueError, ValidationError) as exc:
            raise UsageError(f"{args.payload} is no canonical event: {str(exc).splitlines()[0]}") from None
    if not args.device:
        raise UsageError("name the device that sends the payload (--device ID), or pass --event")
    device = next((d for d in config.devices if d.id == args.device), None)
    if device is None:
        raise UsageError(f"no device {args.device} in the config's [[devices]]")
    dialect = DIALECTS[device.dialect]
    intake = Intake(config, Pseudonymizer(DRY_RUN_KEY, config.compound.compound_id))
    raw = RawMessage(body, content_type=args.content_type, topic=args.topic)
    if dialect.transport is Transport.MQTT:
        if not args.topic:
            raise UsageError(
                f"{device.id} speaks {dialect.name} over MQTT: pass --topic (like {dialect.topic_filter})"
            )
        outcome = intake.from_mqtt(raw, config.mqtt.max_payload_bytes)
    elif dialect.transport is Transport.HTTP_PLATFORM:
        outcome = intake.from_http_platform(raw, dialect.name, config.http.max_body_bytes)
    else:
        outcome = intake.from_http_device(raw, device.id, config.http.max_body_bytes)
    if outcome.rejection is not None or not isinstance(outcome.operation, StoreEvents):
        rejection = outcome.rejection
        reason = f"{rejection.reason}: {rejection.detail}" if rejection is not None else "refused"
        field = f" (field {rejection.field})" if rejection is not None and rejection.field else ""
        raise UsageError(f"the {dialect.name} adapter refused the payload: {reason}{field}")
    if outcome.device != device.id:
        raise UsageError(f"the payload is from device {outcome.device}, not {device.id}")
    return [Event.model_validate_json(row.body) for row in outcome.operation.events]
