"""``compound-gateway query evidence <event id>``: an event's evidence, over the operator API.

Unlike the other queries (which open the store in-process), this command talks to the running API
(``--api``, default ``[api] host``/``port``): the evidence desk, its MQTT session and the files
live in that process. It shows what the district holds; ``--fetch`` asks the compound (and with
``--wait S`` polls until the request is complete, refused, not found, failed or expired);
``--save DIR`` downloads every verified file, checks its SHA-256 and writes it as
``<role>-<sha prefix><ext>``. Every call is audited by the API like any other.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import mimetypes
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import aiohttp

from district.config import DistrictConfig
from district.evidence_store import OPEN_STATES
from district.operator_output import Presenter
from district.queries.evidence import STATUS_SPEC, EvidenceStatus
from foundation.tables import render_table

EVIDENCE_COMMAND = "evidence"
POLL_S = 0.5
READ_BLOCK = 256 * 1024
REFUSED = 1
STILL_OPEN = 3


def add_evidence_command(queries: Any) -> None:
    """Register ``query evidence``."""
    command = queries.add_parser(
        EVIDENCE_COMMAND,
        help="an event's evidence: what the district holds; --fetch asks the compound, --save writes the files",
        description="Talks to the running operator API (--api). Viewing needs the viewer role;"
        " --fetch and --save need the operator role and --reason (kept in the audit log).",
    )
    command.set_defaults(query=EVIDENCE_COMMAND)
    command.add_argument("event_id")
    command.add_argument("--config", type=Path, required=True, help="the district TOML config")
    command.add_argument("--token-file", type=Path, help="file holding the token (default: $CGW_TOKEN)")
    command.add_argument("--api", help="the API's base URL (default: from [api] host and port)")
    command.add_argument("--format", choices=["table", "json"], default="table")
    command.add_argument("--reason", help="why (required for --fetch and --save; kept in the audit log)")
    command.add_argument("--fetch", action="store_true", help="ask the event's compound for its media")
    command.add_argument(
        "--role", dest="roles", action="append", default=[], help="only this role (repeatable)"
    )
    command.add_argument("--compound", help="the event's compound, if the district does not know the event")
    command.add_argument(
        "--wait", type=float, metavar="S", help="with --fetch: poll up to S seconds for the answer"
    )
    command.add_argument("--save", type=Path, metavar="DIR", help="write the verified files here")


def api_base_url(config: DistrictConfig, given: str | None) -> str:
    """The operator API's base URL: ``given``, else from ``[api] host`` and ``port``."""
    if given:
        return given.rstrip("/")
    host = "127.0.0.1" if config.api.host in {"0.0.0.0", "::"} else config.api.host  # noqa: S104 - a wildcard bind is reached locally
    return f"http://{host}:{config.api.port}"


def print_refused(status: int, body: Any) -> int:
    """Print the API's refusal on stderr; returns the exit status of a refusal."""
    if isinstance(body, dict):
        where = f" ({body.get('field')})" if body.get("field") else ""
        print(f"refused [{status} {body.get('error')}]{where}: {body.get('message')}", file=sys.stderr)
    else:
        print(f"refused [{status}]", file=sys.stderr)
    return REFUSED


async def json_answer(response: aiohttp.ClientResponse) -> tuple[int, Any]:
    """The response's status and JSON body (None when it has none)."""
    async with response:
        try:
            return response.status, await response.json(content_type=None)
        except (json.JSONDecodeError, aiohttp.ContentTypeError):
            return response.status, None


async def evidence_command(config: DistrictConfig, args: argparse.Namespace, token: str | None) -> int:
    """Run ``query evidence``; returns the exit status (1 refused or failed, 3 still open after --wait)."""
    if (args.fetch or args.save) and not args.reason:
        print("error: --fetch and --save need --reason (kept in the audit log)", file=sys.stderr)
        return 2
    base = f"{api_base_url(config, args.api)}/api/v1/evidence/{quote(args.event_id, safe='')}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    extra = {"compound": args.compound} if args.compound else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        request_id: str | None = None
        if args.fetch:
            body = {"reason": args.reason, "roles": args.roles, **extra}
            status, answer = await json_answer(await http.post(f"{base}/requests", json=body))
            if status != 200:
                return print_refused(status, answer)
            request_id = answer["request_id"]
            print(f"request {request_id}: {answer['state']}", file=sys.stderr)
        query = {**extra, **({"reason": args.reason} if args.reason else {})}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (args.wait or 0)
        while True:
            status, document = await json_answer(await http.get(base, params=query))
            if status != 200:
                return print_refused(status, document)
            state = _state_of(document, request_id)
            if request_id is None or state not in {s.value for s in OPEN_STATES} or loop.time() >= deadline:
                break
            await asyncio.sleep(POLL_S)
        _print(config, document, args.format)
        if args.save is not None:
            saved = await _save(http, base, EvidenceStatus.model_validate(document), args.save, args.reason)
            if saved is None:
                return REFUSED
        if request_id is not None and state in {s.value for s in OPEN_STATES}:
            return STILL_OPEN if args.wait else 0
        return REFUSED if request_id is not None and state != "complete" else 0


def _state_of(document: Any, request_id: str | None) -> str | None:
    for request in document.get("requests", []):
        if request["request_id"] == request_id:
            return str(request["state"])
    return None


def _print(config: DistrictConfig, document: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(document, ensure_ascii=False, indent=2))
        return
    names = {c.id: c.name for c in config.compounds}
    presenter = Presenter(ZoneInfo(config.api.timezone), lambda c: names.get(c, c))
    status = EvidenceStatus.model_validate(document)
    state = f", compound {status.compound_status}" if status.compound_status else ""
    print(f"event {status.event_id} of {presenter.name(status.compound_id)}{state}")
    for headers, rows in STATUS_SPEC.tables(presenter, status):
        print("\n" + render_table(headers, rows))


async def _save(
    http: aiohttp.ClientSession, base: str, status: EvidenceStatus, directory: Path, reason: str
) -> list[Path] | None:
    """Download each verified file, check its SHA-256, write it; None if one was refused or corrupt.

    A clip is megabytes: each body is streamed into ``<name>.partial`` while it is hashed, and
    renamed only when it matches, so neither a whole clip in memory nor a corrupt file on disk.
    """
    saved: list[Path] = []
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    for held in status.held:
        if not held.verified:
            continue
        ext = mimetypes.guess_extension(held.content_type) or ".bin"
        path = directory / f"{held.role}-{held.sha256[:12]}{ext}"
        partial = path.with_name(path.name + ".partial")
        async with http.get(f"{base}/media/{held.sha256}", params={"reason": reason}) as response:
            if response.status != 200:
                print_refused(response.status, await response.json(content_type=None))
                return None
            digest = await _stream_to(response, partial)
        if digest != held.sha256:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            print(
                f"error: {held.role} file {held.sha256[:12]} does not match its SHA-256; not saved",
                file=sys.stderr,
            )
            return None
        await asyncio.to_thread(partial.replace, path)
        saved.append(path)
        print(f"saved {path}", file=sys.stderr)
    return saved


async def _stream_to(response: aiohttp.ClientResponse, partial: Path) -> str:
    """Write the body to ``partial`` block by block (removed if the download breaks); its SHA-256."""
    digest = hashlib.sha256()
    handle = await asyncio.to_thread(partial.open, "wb")
    try:
        async for block in response.content.iter_chunked(READ_BLOCK):
            digest.update(block)
            await asyncio.to_thread(handle.write, block)
    except BaseException:
        await asyncio.to_thread(handle.close)
        await asyncio.to_thread(partial.unlink, missing_ok=True)
        raise
    await asyncio.to_thread(handle.close)
    return digest.hexdigest()
