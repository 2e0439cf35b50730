"""District operator commands: ``query``, ``alarm``, ``token``, ``audit-verify`` and ``api``.

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
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from district.config import DistrictConfig, load_district_config
from district.operations import AuditEntry, OperationsDb
from district.operator_api import build_api
from district.operator_output import Presenter, to_jsonable
from district.operator_service import Caller, OperatorService, open_operator_service
from district.query_model import EventPage, Role
from foundation.errors import OperatorError
from foundation.events import utc_now
from foundation.tables import render_csv, render_table

TOKEN_ENV = "CGW_TOKEN"
_DURATION = re.compile(r"^(\d+)([mhd])$")
QUERIES = ("events", "counts", "compare", "barrier", "devices", "alarms", "alarm-counts", "audit")
ALARM_STEPS = {
    "ack": "acknowledged",
    "confirm": "confirmed",
    "false-alarm": "false_alarm",
    "resolve": "resolved",
}


def add_operator_commands(sub: Any) -> None:
    """Register the operator subcommands on the main parser."""
    query = sub.add_parser("query", help="district queries (events, counts, compare, devices, alarms...)")
    query.add_argument("what", choices=QUERIES)
    query.add_argument("--config", type=Path, required=True, help="the district TOML config")
    query.add_argument("--token-file", type=Path, help=f"file holding the token (default: ${TOKEN_ENV})")
    query.add_argument("--format", choices=["table", "json", "csv"], default="table")
    query.add_argument("--start", help="ISO time (without offset: the district's zone)")
    query.add_argument("--end", help="ISO time (default: now)")
    query.add_argument("--last", help="instead of --start: a span back from --end, e.g. 30m, 24h, 7d")
    query.add_argument("--compound", action="append", default=[], dest="compounds")
    query.add_argument("--kind", action="append", default=[], dest="kinds")
    query.add_argument("--device", action="append", default=[], dest="devices")
    query.add_argument("--plate")
    query.add_argument("--person", dest="person_ref")
    query.add_argument("--severity")
    query.add_argument("--state", action="append", default=[], dest="states", help="alarm states")
    query.add_argument("--interval", help="counts: hour|day; alarm-counts: day|month")
    query.add_argument("--by", action="append", default=[], dest="group_by", help="compound|kind|device")
    query.add_argument("--offline", action="store_true", help="devices: only the offline ones")
    query.add_argument("--limit", type=int)
    query.add_argument("--cursor", help="continue after the previous page's next_cursor")
    query.add_argument("--all", action="store_true", help="follow every page (exports); progress on stderr")
    query.add_argument("--reason", help="why (required for plate, person and barrier lookups)")

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


def run_operator_command(args: argparse.Namespace) -> int:
    """Run query, alarm, token or audit-verify; returns the exit status (``api`` is a daemon: ``serve_api``)."""
    config = load_district_config(args.config)
    match args.command:
        case "query":
            return asyncio.run(_query(config, args))
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


def query_params(args: argparse.Namespace, zone: ZoneInfo) -> dict[str, Any]:
    """The request parameters the command line names (the same names the API takes)."""
    params: dict[str, Any] = {}
    if args.what not in {"devices", "audit"}:
        end = parse_time(args.end, zone) if args.end else utc_now()
        start = parse_time(args.start, zone) if args.start else end - parse_span(args.last or "24h")
        params |= {"start": start.isoformat(), "end": end.isoformat()}
    for key in ("compounds", "kinds", "devices", "states", "group_by"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    for key in ("plate", "person_ref", "severity", "interval", "limit", "reason"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if args.what == "barrier":
        if len(args.devices) != 1:
            raise ValueError("barrier needs exactly one --device (the barrier)")
        params["device"] = params.pop("devices")[0]
    if args.cursor:
        params["after" if args.what in {"compare", "barrier"} else "before"] = args.cursor
    if args.offline:
        params["only_offline"] = True
    return params


async def _query(config: DistrictConfig, args: argparse.Namespace) -> int:
    zone = ZoneInfo(config.api.timezone)
    try:
        params = query_params(args, zone)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    action = args.what.replace("-", "_")
    caller = Caller("cli", _local_user())
    token = _token_from(args)
    async with open_operator_service(config) as service:
        try:
            answer = await service.handle(token, action, params, caller)
            if args.all and isinstance(answer.result, EventPage):
                result: Any = await _all_pages(
                    service, token, action, params, caller=caller, first=answer.result
                )
            else:
                result = answer.result
        except OperatorError as exc:
            where = f" ({exc.field})" if exc.field else ""
            print(f"refused [{exc.status} {exc.code}]{where}: {exc.message}", file=sys.stderr)
            return 1
        _print(service, result, args.format)
    return 0


async def _all_pages(
    service: OperatorService,
    token: str | None,
    action: str,
    params: dict[str, Any],
    *,
    caller: Caller,
    first: EventPage,
) -> EventPage:
    events = list(first.events)
    cursor = first.next_cursor
    cursor_key = "after" if action in {"compare", "barrier"} else "before"
    tty = sys.stderr.isatty()
    pages = 1
    while cursor is not None:
        answer = await service.handle(token, action, {**params, cursor_key: cursor}, caller)
        page: EventPage = answer.result
        events += page.events
        cursor = page.next_cursor
        pages += 1
        line = f"exported {len(events):,} events ({pages} pages)"
        if tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif pages % 10 == 0:
            print(line, file=sys.stderr, flush=True)
    if pages > 1:
        print(
            ("\r" if tty else "") + f"exported {len(events):,} events ({pages} pages), done", file=sys.stderr
        )
    return EventPage(events, None)


def _print(service: OperatorService, result: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(to_jsonable(result), ensure_ascii=False, indent=2))
        return
    presenter = Presenter(service.zone, service.compound_name)
    headers, rows = presenter.table(result)
    if output == "csv":
        sys.stdout.write(render_csv(headers, rows))
        return
    numeric = [
        i
        for i, h in enumerate(headers)
        if h in {"events", "alarms", "confirmed", "false", "open", "rows", "seq"}
    ]
    print(render_table(headers, rows, numeric=numeric))
    if hasattr(result, "compounds"):  # devices: the online rate per compound
        summary = [[c.name, str(c.devices), str(c.online), f"{c.rate:.0%}"] for c in result.compounds]
        print()
        print(render_table(["compound", "devices", "online", "rate"], summary, numeric=[1, 2, 3]))
    if getattr(result, "next_cursor", None):
        print(f"\nmore: --cursor {result.next_cursor}", file=sys.stderr)


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
        print(f"alarm {args.event_id}: {answer.result.state.value} by {answer.result.actor}")
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
                    caller,
                    "local-admin",
                    "cli",
                    caller,
                    "token.revoke",
                    {"name": args.name},
                    "ok" if done else "not_found",
                    200 if done else 404,
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
        await ops.audit(AuditEntry(caller, "local-admin", "cli", caller, "token.create", filters, "ok", 200))
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


async def serve_api(config: DistrictConfig) -> None:
    """Serve the operator HTTP API until cancelled."""
    async with open_operator_service(config) as service:
        runner = web.AppRunner(build_api(service), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, config.api.host, config.api.port).start()
            print(f"operator API on http://{config.api.host}:{config.api.port}/api/v1", file=sys.stderr)
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
