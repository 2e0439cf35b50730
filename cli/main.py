"""The ``compound-gateway`` command: the top of the layers, dispatching to the compound side, the district side and the simulators."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from adapters import DIALECTS
from adapters.base import DeviceContext, RawMessage, Transport
from device_sims.demo import run_demo
from device_sims.devices import SimDevice, build_sim
from device_sims.runner import Runner
from device_sims.scenarios import build
from district.city.cli import add_city_commands, city_usage_error, run_city_status
from district.city.service import run_city
from district.config import load_district_config
from district.ingester import run_ingester
from district.operator_api import openapi_document
from district.operator_cli import add_operator_commands, run_operator_command, serve_api
from district.rollup_backfill import backfill_rollups
from district.watchlist_cli import add_watchlist_commands, run_watchlist_command
from foundation.errors import ConfigError, PayloadRejected
from foundation.events import event_json_schema, utc_now
from foundation.identity import Pseudonymizer
from foundation.logging import configure_logging
from gateway.broker_credentials import add_device_commands, run_devices_command
from gateway.config import GatewayConfig, load_config
from gateway.device_secrets import load_device_secrets, prepare_trust
from gateway.local_rules.cli import add_rules_commands, run_rules_command
from gateway.outbox import Outbox
from gateway.runtime import run_gateway
from gateway.watchlist_check import add_watchlist_check_commands, run_watchlist_check
from uplink.config import TlsConfig, check_client_key

PARSE_PLACEHOLDER_ID = "00000000000000000000"
PARSE_KEY = b"compound-gateway-parse-cli-not-a-production-key"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compound-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway daemon")
    run.add_argument("--config", type=Path, required=True)

    check = sub.add_parser("check-config", help="validate a config file; names the field and the fix")
    check.add_argument("file", type=Path)

    parse = sub.add_parser("parse", help="run one raw payload file through a dialect adapter")
    parse.add_argument("--dialect", help="dialect name (see --list-dialects)")
    parse.add_argument(
        "--list-dialects", action="store_true", help="list dialects with a one-line description"
    )
    parse.add_argument("--content-type", help="for HTTP pushes: the request's Content-Type")
    parse.add_argument("--topic", help="for MQTT dialects: the topic the payload was published on")
    parse.add_argument(
        "--device-id", default=PARSE_PLACEHOLDER_ID, help="20-digit device id to stamp on events"
    )
    parse.add_argument(
        "--timezone", default="Asia/Shanghai", help="device-local zone for times without offset"
    )
    parse.add_argument("--received-at", help="ISO time to use as received_at (default: now)")
    parse.add_argument("file", nargs="?", type=Path)

    sim = sub.add_parser("sim", help="play a simulator scenario against a running gateway")
    sim.add_argument("--config", type=Path, required=True, help="the gateway config (devices, ports)")
    sim.add_argument("--scenario", default="normal-day")
    sim.add_argument("--count", type=int, default=200, help="events for scenarios that take a count")
    sim.add_argument(
        "--rate", type=float, default=None, help="messages per second (default: as fast as acked)"
    )
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--device", action="append", default=[], help="only these device ids (repeatable)")

    demo = sub.add_parser("demo", help="simulators + gateway on embedded defaults; shows the events arriving")
    demo.add_argument("--count", type=int, default=300, help="events in the normal-day scenario")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    demo.add_argument(
        "--keep", type=Path, help="keep the working files (configs, outbox, media) in this directory"
    )
    demo.add_argument(
        "--store", type=Path, help="keep the district's SQLite store at this path for later queries"
    )
    demo.add_argument(
        "--broker",
        choices=["embedded", "mosquitto"],
        default="embedded",
        help="the MQTT broker: embedded (nothing to install) or a private Mosquitto process",
    )

    ingest = sub.add_parser("ingest", help="run a district ingester (uplink -> district store)")
    ingest.add_argument("--config", type=Path, required=True, help="the district TOML config")
    ingest.add_argument(
        "--backfill-rollups",
        action="store_true",
        help="rebuild the store's roll-ups and summaries from its stored events, then exit (repair)",
    )

    schema = sub.add_parser("schema", help="print (or write) the canonical event JSON Schema")
    schema.add_argument("--output", type=Path)

    outbox = sub.add_parser("outbox", help="inspect a gateway's outbox")
    outbox.add_argument("what", choices=["stats", "dead-letters", "pending"])
    outbox.add_argument("--config", type=Path, required=True)
    outbox.add_argument("--limit", type=int, default=20)
    add_city_commands(sub)
    add_device_commands(sub)
    add_rules_commands(sub)
    add_operator_commands(sub)
    add_watchlist_check_commands(add_watchlist_commands(sub))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    # Diagnostics go to stderr, so that stdout carries only the command's output (JSON, tables).
    configure_logging("auto", level=logging.WARNING)
    try:
        match args.command:
            case "run":
                return _run(args.config)
            case "check-config":
                return _check_config(args.file)
            case "parse":
                return _parse(args)
            case "sim":
                return _sim(args)
            case "demo":
                return run_demo(
                    count=args.count,
                    seed=args.seed,
                    as_json=args.json,
                    keep=args.keep,
                    store=args.store,
                    broker=args.broker,
                )
            case "ingest" if args.backfill_rollups:
                return asyncio.run(backfill_rollups(load_district_config(args.config)))
            case "ingest":
                return _ingest(args.config)
            case "city" if args.action == "status":
                return run_city_status(args)
            case "city":
                if (usage := city_usage_error(args)) is not None:
                    print(f"compound-gateway city: {usage}", file=sys.stderr)
                    return 2
                return _city(args.config)
            case "schema":
                return _write_document(event_json_schema(), args.output)
            case "outbox":
                return _outbox(args)
            case "devices":
                return run_devices_command(args)
            case "rules":
                return run_rules_command(args)
            case "query" | "alarm" | "token" | "audit-verify" | "command":
                return run_operator_command(args)
            case "watchlist" if args.action in {"check", "loaded"}:
                return run_watchlist_check(args)
            case "watchlist":
                return run_watchlist_command(args)
            case "openapi":
                return _write_document(openapi_document(), args.output)
            case "api":
                return _serve(serve_api(load_district_config(args.config)))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - argparse enforces the choices


def _write_document(document: object, output: Path | None) -> int:
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _serve(daemon: Coroutine[Any, Any, None]) -> int:
    """Run a daemon coroutine until SIGTERM or Ctrl-C, both of which cancel it cleanly."""

    async def main_task() -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - we are inside a task
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await daemon

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(main_task())
    return 0


def _run(config_path: Path) -> int:
    config, secrets = prepare_trust(load_config(config_path), config_path)
    check_client_key(config.uplink_tls, config_path, "uplink.broker.tls")
    if config.http.tls is not None:  # a certificate that does not load stops the start with the fix
        config.http.tls.server_context(config_path)
    configure_logging(config.log_format)
    return _serve(run_gateway(config, secrets=secrets, source=config_path))


def _ingest(config_path: Path) -> int:
    config = load_district_config(config_path)
    check_client_key(config.broker.tls, config_path, "broker.tls")
    configure_logging(config.log_format)
    return _serve(run_ingester(config))


def _city(config_path: Path) -> int:
    config = load_district_config(config_path)
    configure_logging(config.log_format)
    return _serve(run_city(config))


def _check_config(path: Path) -> int:
    """Validate a gateway or a district config (told apart by their top-level tables); never prints secrets."""
    try:
        top = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        top = {}  # the real loader below reports exactly what is wrong
    if "compound" not in top and "district_id" in top:
        district = load_district_config(path)
        broker = district.broker
        key = _check_key(district.broker.tls, path, "broker.tls")
        print(
            f"{path}: ok: district {district.district_id}, store {district.store.type},"
            f" broker {broker.host}:{broker.port}{' (TLS)' if broker.tls else ''}{key},"
            f" {len(district.compounds)} registered compounds, operator API on {district.api.host}:{district.api.port}"
        )
        return 0
    config = load_config(path)
    uplink = config.uplink.mode if config.uplink else "none"
    key = _check_key(config.uplink_tls, path, "uplink.broker.tls")
    trust = _check_trust(config, path)
    https = _check_https(config, path)
    rules = sum(1 for rule in config.rules if rule.enabled)
    print(
        f"{path}: ok: compound {config.compound.compound_id} ({config.compound.name}), {len(config.devices)} devices, "
        f"dialects: {', '.join(sorted({d.dialect for d in config.devices}))}; uplink: {uplink}{key}; {trust}{https}; "
        f"{rules} local rules"
    )
    return 0


def _check_trust(config: GatewayConfig, path: Path) -> str:
    """Check the device secrets where they can be reached; what was checked, for the summary line."""
    if config.trust.secrets_file is None and "CREDENTIALS_DIRECTORY" not in os.environ:
        if config.trust.lan_trusted:
            return "LAN trusted: devices without secrets accepted"
        # an operator's shell: the credential exists only for the unit, whose ExecStartPre= checks it
        return (
            f"device secrets: credential {config.trust.secrets_credential!r}, checked when the unit runs this"
        )
    _, secrets = prepare_trust(config, path)
    trusted = " (LAN trusted)" if config.trust.lan_trusted else ""
    return f"device secrets: {len(secrets.devices)} devices, {len(secrets.platforms)} platforms{trusted}"


def _check_https(config: GatewayConfig, path: Path) -> str:
    """Check the HTTPS listener's certificate and key where they can be reached; a note for the summary."""
    tls = config.http.tls
    if tls is None:
        return ""
    if tls.key_credential is not None and "CREDENTIALS_DIRECTORY" not in os.environ:
        return (
            f"; HTTPS on {tls.port} (key: credential {tls.key_credential!r}, checked when the unit runs this)"
        )
    tls.server_context(path)
    return f"; HTTPS on {tls.port}" + ("" if config.http.plain else " only")


def _check_key(tls: TlsConfig | None, path: Path, field: str) -> str:
    """Check the TLS client key where it can be reached; a note when only the unit can reach it."""
    if tls is not None and tls.key_credential is not None and "CREDENTIALS_DIRECTORY" not in os.environ:
        # an operator's shell, not the unit's ExecStartPre=: the credential exists only for the unit
        return f" (client key: credential {tls.key_credential!r}, checked when the unit runs this)"
    check_client_key(tls, path, field)
    return ""


def _parse(args: argparse.Namespace) -> int:
    if args.list_dialects:
        width = max(len(name) for name in DIALECTS)
        for name, listed in DIALECTS.items():
            print(f"{name:<{width}}  {listed.transport.value:<13}  {listed.description}")
        return 0
    if not args.dialect or not args.file:
        print("parse needs --dialect NAME and a FILE (or --list-dialects)", file=sys.stderr)
        return 2
    dialect = DIALECTS.get(args.dialect)
    if dialect is None:
        print(f"unknown dialect {args.dialect!r}; known: {', '.join(DIALECTS)}", file=sys.stderr)
        return 2
    if dialect.transport is Transport.MQTT and not args.topic:
        example = (dialect.topic_filter or "").replace("+", "<device>", 1).replace("+", "<channel>")
        print(f"{dialect.name} is an MQTT dialect: pass --topic (like {example})", file=sys.stderr)
        return 2
    raw = RawMessage(args.file.read_bytes(), content_type=args.content_type, topic=args.topic)
    received = datetime.fromisoformat(args.received_at) if args.received_at else utc_now()
    ctx = DeviceContext(
        district_id=PARSE_PLACEHOLDER_ID,
        compound_id=PARSE_PLACEHOLDER_ID,
        device_id=args.device_id,
        received_at=received,
        local_tz=ZoneInfo(args.timezone),
        pseudonymizer=Pseudonymizer(PARSE_KEY, PARSE_PLACEHOLDER_ID),
    )
    try:
        result = dialect.parse(raw, ctx)
    except PayloadRejected as exc:
        rejection = exc.rejection
        print(
            json.dumps(
                {"rejected": rejection.reason, "field": rejection.field, "detail": rejection.detail},
                ensure_ascii=False,
            ),
            file=sys.stderr,
        )
        return 1
    events = [json.loads(event.model_dump_json()) for event in result.events]
    print(json.dumps(events, indent=2, ensure_ascii=False))
    return 0


def _password(secret: bytes | None) -> str | None:
    return secret.decode() if secret is not None else None


def _sim(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    devices = [d for d in config.devices if not args.device or d.id in args.device]
    # the simulated devices present the secrets the gateway checks (the sample's if it has none)
    secrets = load_device_secrets(config)
    sims = [
        build_sim(
            SimDevice(
                d.id,
                d.dialect,
                d.ref,
                d.push_auth,
                _password(
                    secrets.platform(d.dialect)
                    if DIALECTS[d.dialect].transport is Transport.HTTP_PLATFORM
                    else secrets.device(d.id)
                ),
            )
        )
        for d in devices
    ]
    steps = build(args.scenario, sims, args.seed, args.count)
    host = "127.0.0.1" if config.http.host in {"0.0.0.0", "::"} else config.http.host  # noqa: S104
    runner = Runner(f"http://{host}:{config.http.port}", config.mqtt.host, config.mqtt.port)
    report = asyncio.run(runner.run(steps, rate=args.rate))
    print(json.dumps(report.summary(), ensure_ascii=False))
    return 0 if report.failed == 0 else 1


def _outbox(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with Outbox(config.state.dir / "outbox.db", max_bytes=config.state.outbox_max_bytes) as outbox:
        if args.what == "stats":
            stats = outbox.stats()
            out: object = {
                "pending": stats.pending,
                "pending_alarms": stats.pending_alarms,
                "pending_bytes": stats.pending_bytes,
                "oldest_pending_received_at": stats.oldest_pending_received_at,
                "sent_awaiting_receipt": stats.sent,
                "delivered": stats.delivered,
                "shed_total": stats.shed_total,
                "dead_letters": stats.dead_letters,
                "counters": [
                    {"name": n, "a": a, "b": b, "value": v} for (n, a, b), v in sorted(stats.counters.items())
                ],
            }
        elif args.what == "dead-letters":
            out = [
                {
                    k: (v[:200].decode("utf-8", "replace") if isinstance(v, bytes) else v)
                    for k, v in row.items()
                }
                for row in outbox.dead_letters(args.limit)
            ]
        else:
            out = [json.loads(row.body) for row in outbox.pending(args.limit)]
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
