"""District operator commands: ``query``, ``alarm``, ``command``, ``token``, ``audit-verify`` and ``api``.

``query`` and ``alarm`` go through the same ``OperatorService.handle`` as the HTTP API: the token
(from ``CGW_TOKEN`` or ``--token-file``, never a command-line argument that ``ps`` would show)
decides role and scope, and every call lands in the audit log. ``token`` and ``audit-verify`` are
local administration on the operations database, for whoever can read the district config.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import socket
import ssl
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, get_args
from zoneinfo import ZoneInfo

from aiohttp import web

from district.alarm_feed import AlarmFeed
from district.command_cli import add_command_commands, command_command
from district.command_desk import CommandDesk
from district.config import DistrictConfig, load_district_config
from district.console.pages.alarms import FEED as ALARM_FEED
from district.evidence_cli import EVIDENCE_COMMAND, add_evidence_command, evidence_command
from district.evidence_desk import EvidenceDesk
from district.operations import AuditEntry, OperationsDb
from district.operator_api import build_api
from district.operator_output import Presenter
from district.operator_service import Answer, Caller, OperatorService, open_operator_service
from district.queries.registry import QUERIES
from district.queries.spec import QuerySpec, cli_flag
from district.query_model import AlarmAction, Role
from district.registry_desk import RegistryDesk
from foundation.errors import ConfigError, OperatorError
from foundation.events import utc_now
from foundation.health import Health
from foundation.tables import render_csv, render_table

TOKEN_ENV = "CGW_TOKEN"
_DURATION = re.compile(r"^(\d+)([mhd])$")
FIELD_DEST = "field_"  # argparse dest of a request field's option (apart from the common options)
NUMERIC_COLUMNS = frozenset(
    {"events", "alarms", "confirmed", "false", "open", "rows", "seq", "devices", "online", "rate"}
)
ALARM_STEPS = {
    "ack": "acknowledged",
    "confirm": "confirmed",
    "false-alarm": "false_alarm",
    "resolve": "resolved",
}


def add_operator_commands(sub: Any) -> None:
    """Register the operator subcommands on the main parser (one ``query`` subcommand per spec)."""
    query = sub.add_parser("query", help="district queries (events, counts, compare, devices, alarms...)")
    queries = query.add_subparsers(dest="what", required=True, metavar="QUERY")
    for spec in QUERIES.values():
        if spec.cli:
            _add_query(queries, spec)
    add_evidence_command(queries)
    add_command_commands(sub)

    alarm = sub.add_parser("alarm", help="move an alarm along its lifecycle")
    alarm.add_argument("step", choices=list(ALARM_STEPS))
    alarm.add_argument("event_id")
    alarm.add_argument("--note", required=True, help="what was found or done (kept in the history)")
    alarm.add_argument("--config", type=Path, required=True)
    alarm.add_argument("--token-file", type=Path)

    token = sub.add_parser("token", help="create, list or revoke operator tokens (local admin)")
    token.add_argument("action", choices=["create", "list", "revoke"])
    token.add_argument("--config", type=Path, required=True)
    token.add_argument("--name")
    token.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER.value)
    token.add_argument("--district", help="default: the config's district")
    token.add_argument("--compound", action="append", default=[], dest="compounds", help="limit the scope")

    verify = sub.add_parser("audit-verify", help="check the audit log's hash chain (local admin)")
    verify.add_argument("--config", type=Path, required=True)

    api = sub.add_parser("api", help="serve the operator HTTP API")
    api.add_argument("--config", type=Path, required=True)

    openapi = sub.add_parser("openapi", help="print (or write) the operator API's OpenAPI document")
    openapi.add_argument("--output", type=Path)


def _add_query(queries: Any, spec: QuerySpec[Any, Any]) -> None:
    """The subcommand of one query: its request's fields as options, plus the common ones."""
    command = queries.add_parser(spec.cli, help=spec.route.summary, description=spec.describe_access())
    command.set_defaults(query=spec.name)
    command.add_argument("--config", type=Path, required=True, help="the district TOML config")
    command.add_argument("--token-file", type=Path, help=f"file holding the token (default: ${TOKEN_ENV})")
    command.add_argument("--format", choices=["table", "json", "csv"], default="table")
    skip: set[str] = {spec.paging.cursor} if spec.paging else set()
    if spec.ranged:
        command.add_argument("--start", help="ISO time (without offset: the district's zone)")
        command.add_argument("--end", help="ISO time (default: now)")
        command.add_argument("--last", help="instead of --start: a span back from --end, e.g. 30m, 24h, 7d")
        skip |= {"start", "end"}
    for name, info in spec.request.model_fields.items():
        if name in skip:
            continue
        flag, dest = cli_flag(name, info), FIELD_DEST + name
        help_text = info.description
        if name == spec.reason_field and spec.needs_reason is not None:
            help_text = f"why (required for {spec.needs_reason.what}; kept in the audit log)"
        metavar = flag.removeprefix("--").upper().replace("-", "_")
        if info.annotation is bool:
            command.add_argument(flag, dest=dest, action="store_true", help=help_text)
        elif name in spec.list_fields():
            command.add_argument(
                flag, dest=dest, action="append", metavar=metavar, help=f"{help_text or name} (repeatable)"
            )
        else:
            kind = int if int in {info.annotation, *get_args(info.annotation)} else str
            command.add_argument(flag, dest=dest, type=kind, metavar=metavar, help=help_text)
    if spec.paging:
        command.add_argument("--cursor", help="continue after the previous page's next_cursor")
        command.add_argument(
            "--all", action="store_true", help="follow every page (exports); progress on stderr"
        )


def run_operator_command(args: argparse.Namespace) -> int:
    """Run query, alarm, token or audit-verify; returns the exit status (``api`` is a daemon: ``serve_api``)."""
    config = load_district_config(args.config)
    match args.command:
        case "query" if args.query == EVIDENCE_COMMAND:
            return asyncio.run(evidence_command(config, args, _token_from(args)))
        case "query":
            return asyncio.run(_query(config, args))
        case "command":
            return asyncio.run(command_command(config, args, _token_from(args)))
        case "alarm":
            return asyncio.run(_alarm(config, args))
        case "token":
            return asyncio.run(_token(config, args))
        case "audit-verify":
            return asyncio.run(_verify(config))
    return 2


def _local_user() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _token_from(args: argparse.Namespace) -> str | None:
    token_file: Path | None = args.token_file
    if token_file is not None:
        return token_file.read_text(encoding="utf-8").strip()
    return os.environ.get(TOKEN_ENV)


def parse_time(text: str, zone: ZoneInfo) -> datetime:
    """An ISO time; without an offset it is read in the district's zone."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def parse_span(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d``."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"span {text!r}: use a number and m, h or d (30m, 24h, 7d)")
    number, unit = int(match[1]), match[2]
    return {"m": timedelta(minutes=number), "h": timedelta(hours=number), "d": timedelta(days=number)}[unit]


def query_params(spec: QuerySpec[Any, Any], args: argparse.Namespace, zone: ZoneInfo) -> dict[str, Any]:
    """The request parameters the command line names (the same names the API takes)."""
    params: dict[str, Any] = {}
    if spec.ranged:
        end = parse_time(args.end, zone) if args.end else utc_now()
        start = parse_time(args.start, zone) if args.start else end - parse_span(args.last or "24h")
        params |= {"start": start.isoformat(), "end": end.isoformat()}
    for name in spec.request.model_fields:
        value = getattr(args, FIELD_DEST + name, None)
        if value is not None and value is not False:
            params[name] = value
    if spec.paging and args.cursor:
        params[spec.paging.cursor] = args.cursor
    return params


async def _query(config: DistrictConfig, args: argparse.Namespace) -> int:
    spec = QUERIES[args.query]
    zone = ZoneInfo(config.api.timezone)
    try:
        params = query_params(spec, args, zone)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    caller = Caller("cli", _local_user())
    token = _token_from(args)
    async with open_operator_service(config) as service:
        try:
            answer = await service.handle(token, spec.name, params, caller)
            if spec.paging is not None and args.all:
                answer = await _all_pages(service, token, params, caller=caller, first=answer)
        except OperatorError as exc:
            where = f" ({exc.field})" if exc.field else ""
            print(f"refused [{exc.status} {exc.code}]{where}: {exc.message}", file=sys.stderr)
            return 1
        _print(service, answer, args.format)
    return 0


async def _all_pages(
    service: OperatorService,
    token: str | None,
    params: dict[str, Any],
    *,
    caller: Caller,
    first: Answer[Any],
) -> Answer[Any]:
    spec = first.spec
    paging = spec.paging
    assert paging is not None  # noqa: S101 - only paged queries offer --all
    result = first.result
    cursor = paging.next_cursor(result)
    tty = sys.stderr.isatty()
    pages = 1
    while cursor is not None:
        answer = await service.handle(token, spec.name, {**params, paging.cursor: cursor}, caller)
        result = paging.join(result, answer.result)
        cursor = paging.next_cursor(answer.result)
        pages += 1
        line = f"exported {spec.rows(result):,} rows ({pages} pages)"
        if tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif pages % 10 == 0:
            print(line, file=sys.stderr, flush=True)
    if pages > 1:
        print(
            ("\r" if tty else "") + f"exported {spec.rows(result):,} rows ({pages} pages), done",
            file=sys.stderr,
        )
    return Answer(result, spec.rows(result), spec)


def _print(service: OperatorService, answer: Answer[Any], output: str) -> None:
    if output == "json":
        print(json.dumps(answer.dump(), ensure_ascii=False, indent=2))
        return
    presenter = Presenter(service.zone, service.compound_name)
    tables = answer.spec.tables(presenter, answer.result)
    if output == "csv":
        headers, rows = tables[0]
        sys.stdout.write(render_csv(headers, rows))
        return
    for i, (headers, rows) in enumerate(tables):
        numeric = [column for column, header in enumerate(headers) if header in NUMERIC_COLUMNS]
        print(("\n" if i else "") + render_table(headers, rows, numeric=numeric))
    paging = answer.spec.paging
    next_cursor = paging.next_cursor(answer.result) if paging else None
    if next_cursor:
        print(f"\nmore: --cursor {next_cursor}", file=sys.stderr)


async def _alarm(config: DistrictConfig, args: argparse.Namespace) -> int:
    params = {"event_id": args.event_id, "to": ALARM_STEPS[args.step], "note": args.note}
    async with open_operator_service(config) as service:
        try:
            answer = await service.handle(
                _token_from(args), "alarm_action", params, Caller("cli", _local_user())
            )
        except OperatorError as exc:
            print(f"refused [{exc.status} {exc.code}]: {exc.message}", file=sys.stderr)
            return 1
        step: AlarmAction = answer.result
        print(f"alarm {args.event_id}: {step.state.value} by {step.actor}")
    return 0


async def _token(config: DistrictConfig, args: argparse.Namespace) -> int:
    async with OperationsDb(config.api.ops_db) as ops:
        caller = _local_user()
        if args.action == "list":
            rows = [
                [
                    t.name,
                    t.role,
                    t.district_id,
                    ",".join(t.compounds) or "(all)",
                    t.created_at[:19],
                    t.revoked_at or "",
                ]
                for t in await ops.tokens()
            ]
            print(render_table(["name", "role", "district", "compounds", "created", "revoked"], rows))
            return 0
        if not args.name:
            print("error: --name is required", file=sys.stderr)
            return 2
        if args.action == "revoke":
            done = await ops.revoke_token(args.name)
            await ops.audit(
                AuditEntry(
                    actor=caller,
                    role="local-admin",
                    channel="cli",
                    client=caller,
                    action="token.revoke",
                    filters={"name": args.name},
                    outcome="ok" if done else "not_found",
                    status=200 if done else 404,
                )
            )
            print(f"token {args.name!r} {'revoked' if done else 'was not live'}", file=sys.stderr)
            return 0 if done else 1
        district = args.district or config.district_id
        filters = {
            "name": args.name,
            "role": args.role,
            "district": district,
            "compounds": ",".join(args.compounds),
        }
        try:
            secret = await ops.create_token(args.name, Role(args.role), district, args.compounds, caller)
        except OperatorError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        await ops.audit(
            AuditEntry(
                actor=caller,
                role="local-admin",
                channel="cli",
                client=caller,
                action="token.create",
                filters=filters,
                outcome="ok",
                status=200,
            )
        )
        print(secret)
        print("the token is shown once; only its hash is stored", file=sys.stderr)
    return 0


async def _verify(config: DistrictConfig) -> int:
    async with OperationsDb(config.api.ops_db) as ops:
        checked, broken = await ops.verify_audit()
    if broken is not None:
        print(f"audit log BROKEN at entry {broken} (after {checked} good entries)", file=sys.stderr)
        return 1
    print(f"audit log intact: {checked} entries")
    return 0


def _api_tls(config: DistrictConfig) -> ssl.SSLContext | None:
    # a certificate that does not load stops the start with the field and the fix
    if config.api.tls is None:
        return None
    try:
        return config.api.tls.server_context()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"api.tls: the certificate or key does not load: {exc}") from exc


async def serve_api(config: DistrictConfig, *, ready: asyncio.Event | None = None) -> None:
    """Serve the operator HTTP API until cancelled, with the evidence, command and registry desks beside it.

    The API answers whether or not the district broker does: the desk reconnects on its own.
    """
    async with open_operator_service(config) as service:
        health = Health()
        desk = None
        if config.evidence.enabled and service.evidence is not None:
            desk = EvidenceDesk(config, service.evidence, service.backend, service.operations)
            desk.expose(health)
        commands = None
        if config.commands.enabled and service.commands is not None:
            commands = CommandDesk(config, service.commands)
            commands.expose(health)
        registry = None
        if config.registry.enabled and service.device_registry is not None:
            registry = RegistryDesk(config, service.device_registry)
            registry.expose(health)
        tls = _api_tls(config)
        # one poller of new alarms for every console left open (the alarm queue's live updates)
        feed = AlarmFeed(service.backend, config.district_id, poll_s=config.api.alarm_poll_s)
        app = build_api(service, health, config.api)
        app[ALARM_FEED] = feed
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, config.api.host, config.api.port, ssl_context=tls).start()
            scheme = "https" if tls else "http"
            where = f"{scheme}://{config.api.host}:{config.api.port}"
            print(f"operator API on {where}/api/v1, console on {where}/console/", file=sys.stderr)
            async with asyncio.TaskGroup() as tg:
                if desk is not None:
                    tg.create_task(desk.run(health), name="evidence-desk")
                if commands is not None:
                    tg.create_task(commands.run(health), name="command-desk")
                if registry is not None:
                    tg.create_task(registry.run(health), name="registry-desk")
                tg.create_task(feed.run(), name="alarm-feed")
                if ready is not None:
                    ready.set()
                await asyncio.Event().wait()
        finally:
            await runner.cleanup()
