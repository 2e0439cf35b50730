"""``compound-gateway command``: order a device, follow a command, list commands, over the operator API.

Like ``query evidence`` this talks to the running API (``--api``, default ``[api] host``/``port``):
the command desk and its MQTT session live in that process, and the API audits every call::

    compound-gateway command barrier open <device> --reason "ambulance" [--channel N] [--wait S]
    compound-gateway command door open <device> --reason "visitor, flat 3-201"
    compound-gateway command status <command id> [--wait S]
    compound-gateway command list [--compound C] [--device D] [--state S] [--limit N]

The target and verb come from ``CLI_VERBS`` (derived from ``foundation.commands.CommandAction``:
``barrier_open`` is ``barrier open``), so a new action is a new enum member, and an action whose
name does not split that way is one line in ``RENAMED``. The CLI picks the ``command_id`` (``cli_...``)
when ``--id`` is not given, so the audit entry of the call names the command. ``--wait S`` polls until the command is
final (verified, failed, expired, refused) or shown ``no_answer``; the exit status is 0 for
verified, 1 for refused or ended otherwise, 3 still open when the wait ran out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import aiohttp

from district.command_book import FINAL, BookState
from district.config import DistrictConfig
from district.evidence_cli import api_base_url, json_answer, print_refused
from district.operator_output import Presenter
from district.queries.commands import DISTRICT_ACTIONS, LIST_SPEC, STATUS_SPEC, CommandPage, CommandStatus
from foundation.commands import CommandAction
from foundation.tables import render_table

COMMAND = "command"
POLL_S = 0.5
REFUSED = 1
STILL_OPEN = 3
ENDED = FINAL | {BookState.NO_ANSWER}

RENAMED: dict[CommandAction, tuple[str, str]] = {}
"""Actions whose ``<target>_<verb>`` name does not read well on the command line: (target, verb)."""


def _verbs() -> dict[tuple[str, str], CommandAction]:
    table: dict[tuple[str, str], CommandAction] = {}
    for action in sorted(DISTRICT_ACTIONS):
        target, _, verb = action.value.partition("_")
        table[RENAMED.get(action, (target, verb or "run"))] = action
    return table


CLI_VERBS = _verbs()
"""(target, verb) -> the action: ``("barrier", "open")`` -> ``barrier_open``."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="the district TOML config")
    parser.add_argument("--token-file", type=Path, help="file holding the token (default: $CGW_TOKEN)")
    parser.add_argument("--api", help="the API's base URL (default: from [api] host and port)")
    parser.add_argument("--format", choices=["table", "json"], default="table")


def add_command_commands(sub: Any) -> None:
    """Register ``command <target> <verb>``, ``command status`` and ``command list``."""
    command = sub.add_parser(
        COMMAND,
        help="order a device (barrier, door...) over the operator API; follow and list commands",
        description="Talks to the running operator API (--api). Ordering needs the operator role (or a"
        " token scoped to exactly the device's compound) and --reason, kept in the audit log.",
    )
    targets = command.add_subparsers(dest="target", required=True, metavar="TARGET")
    verbs_of: dict[str, list[str]] = {}
    for target, verb in CLI_VERBS:
        verbs_of.setdefault(target, []).append(verb)
    for target, verbs in sorted(verbs_of.items()):
        parser = targets.add_parser(target, help=f"order a {target}: {', '.join(sorted(verbs))}")
        verb_parsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
        for verb in sorted(verbs):
            order = verb_parsers.add_parser(verb, help=CLI_VERBS[target, verb].value)
            order.add_argument("device", help="the device's 20-digit id")
            order.add_argument("--reason", required=True, help="why (kept in the audit log)")
            order.add_argument("--channel", type=int, default=1, help="which barrier or door (from 1)")
            order.add_argument("--compound", help="the device's compound, if the district does not know it")
            order.add_argument(
                "--id", dest="command_id", help="your id for it (a retry with it never orders twice)"
            )
            order.add_argument(
                "--lifetime", type=int, metavar="S", help="never executed later than S seconds"
            )
            order.add_argument("--wait", type=float, metavar="S", help="poll up to S seconds for the outcome")
            _common(order)
    status = targets.add_parser("status", help="one command and the states its compound reported")
    status.add_argument("command_id")
    status.add_argument("--wait", type=float, metavar="S", help="poll up to S seconds until it is final")
    _common(status)
    listing = targets.add_parser("list", help="commands, newest first")
    listing.add_argument("--compound")
    listing.add_argument("--device")
    listing.add_argument("--state", choices=[s.value for s in BookState])
    listing.add_argument("--limit", type=int, default=50)
    _common(listing)


async def command_command(config: DistrictConfig, args: argparse.Namespace, token: str | None) -> int:
    """Run ``command ...``; returns the exit status (1 refused or not verified, 3 still open)."""
    base = f"{api_base_url(config, args.api)}/api/v1/commands"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        if args.target == "list":
            return await _list(config, http, base, args)
        if args.target == "status":
            command_id = args.command_id
        else:
            body: dict[str, Any] = {
                # an id chosen here is in the audit entry of the call, beside the reason
                "command_id": args.command_id or f"cli_{secrets.token_urlsafe(12)}",
                "device": args.device,
                "action": CLI_VERBS[args.target, args.verb].value,
                "reason": args.reason,
                "channel": args.channel,
            }
            for name, value in (
                ("lifetime_s", args.lifetime),
                ("compound", args.compound),
            ):
                if value is not None:
                    body[name] = value
            status, answer = await json_answer(await http.post(base, json=body))
            if status != 200:
                return print_refused(status, answer)
            command_id = answer["command_id"]
            again = " (issued before: the same command)" if answer.get("repeated") else ""
            print(f"command {command_id}: {answer['state']}{again}", file=sys.stderr)
        return await _follow(config, http, f"{base}/{quote(command_id, safe='')}", args)


async def _follow(
    config: DistrictConfig, http: aiohttp.ClientSession, url: str, args: argparse.Namespace
) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (args.wait or 0)
    seen: str | None = None
    while True:
        status, document = await json_answer(await http.get(url))
        if status != 200:
            return print_refused(status, document)
        state = BookState(document["command"]["state"])
        if args.wait and state.value != seen:
            print(f"command {document['command']['command_id']}: {state.value}", file=sys.stderr)
            seen = state.value
        if state in ENDED or loop.time() >= deadline:
            break
        await asyncio.sleep(POLL_S)
    if args.format == "json":
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        for headers, rows in STATUS_SPEC.tables(_presenter(config), CommandStatus.model_validate(document)):
            print("\n" + render_table(headers, rows))
    if state is BookState.VERIFIED:
        return 0
    if state in ENDED:
        return REFUSED
    return STILL_OPEN if args.wait else 0


async def _list(
    config: DistrictConfig, http: aiohttp.ClientSession, base: str, args: argparse.Namespace
) -> int:
    params = {
        name: str(value)
        for name, value in (
            ("compound", args.compound),
            ("device", args.device),
            ("state", args.state),
            ("limit", args.limit),
        )
        if value is not None
    }
    status, document = await json_answer(await http.get(base, params=params))
    if status != 200:
        return print_refused(status, document)
    if args.format == "json":
        print(json.dumps(document, ensure_ascii=False, indent=2))
        return 0
    for headers, rows in LIST_SPEC.tables(_presenter(config), CommandPage.model_validate(document)):
        print(render_table(headers, rows))
    return 0


def _presenter(config: DistrictConfig) -> Presenter:
    names = {c.id: c.name for c in config.compounds}
    return Presenter(ZoneInfo(config.api.timezone), lambda c: names.get(c, c))
