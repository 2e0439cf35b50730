"""``compound-gateway watchlist ...``: district enrolment and publication; the installer's check.

District side (``--config district.toml``): ``enroll``, ``add-plate``, ``remove``, ``show``,
``publish``. Compound side (``--config gateway.toml``): ``check PHOTO...`` reports what the lists
the gateway holds would match on each face of each photo, and ``loaded`` lists them.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
import sys
from pathlib import Path
from typing import Any

from district.config import load_district_config
from district.operations import AuditEntry, OperationsDb
from district.watchlist_admin import WatchListDb, describe, publish, published_documents
from foundation.errors import OperatorError
from foundation.tables import render_table


def add_watchlist_commands(sub: Any) -> Any:
    """Register ``watchlist`` and its district actions; returns its actions for the compound side's."""
    watch = sub.add_parser("watchlist", help="key-person and plate watch lists (enrol, publish, check)")
    actions = watch.add_subparsers(dest="action", required=True)
    enroll = actions.add_parser("enroll", help="district: add a subject's face from photos (one face each)")
    enroll.add_argument("photos", nargs="+", type=Path)
    enroll.add_argument("--list", required=True, dest="list_id")
    enroll.add_argument("--subject", required=True, help="the district's reference for the person")
    enroll.add_argument("--label", help="why the subject is listed")
    enroll.add_argument(
        "--threshold", type=float, help="match distance for this list (default: the compounds')"
    )
    plate = actions.add_parser("add-plate", help="district: list a plate")
    plate.add_argument("plate")
    plate.add_argument("--list", required=True, dest="list_id")
    plate.add_argument("--label")
    remove = actions.add_parser("remove", help="district: take a subject or plate off a list")
    remove.add_argument("--list", required=True, dest="list_id")
    target = remove.add_mutually_exclusive_group(required=True)
    target.add_argument("--subject")
    target.add_argument("--plate")
    actions.add_parser("show", help="district: the lists, their sizes and published versions")
    publish = actions.add_parser("publish", help="district: publish new versions to every compound")
    publish.add_argument("--list", action="append", default=[], dest="list_ids", help="default: every list")
    publish.add_argument(
        "--output", type=Path, help="also write the documents here (compounds without a broker)"
    )
    publish.add_argument("--no-broker", action="store_true", help="only write --output")
    for parser in actions.choices.values():  # each action once (``choices`` also holds no aliases here)
        parser.add_argument("--config", type=Path, required=True, help="the district TOML config")
    return actions


def _who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def run_watchlist_command(args: argparse.Namespace) -> int:
    """Run one ``watchlist`` action; returns the exit status."""
    config = load_district_config(args.config)
    try:
        return asyncio.run(_district_side(config, args))
    except OperatorError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


async def _district_side(config: Any, args: argparse.Namespace) -> int:

    db = await asyncio.to_thread(WatchListDb, config.api.ops_db)
    try:
        async with OperationsDb(config.api.ops_db) as ops:
            who = _who()

            async def audit(action: str, filters: dict[str, Any], rows: int | None = None) -> None:
                await ops.audit(
                    AuditEntry(
                        actor=who,
                        role="local-admin",
                        channel="cli",
                        client=who,
                        action=action,
                        filters=filters,
                        outcome="ok",
                        status=200,
                        rows=rows,
                    )
                )

            match args.action:
                case "enroll":
                    added = await asyncio.to_thread(
                        db.enroll, args.list_id, args.subject, args.photos, args.label, args.threshold
                    )
                    await audit("watchlist.enroll", {"list": args.list_id, "subject": args.subject}, added)
                    print(
                        f"{args.subject}: {added} face(s) enrolled in {args.list_id}; publish to take effect"
                    )
                case "add-plate":
                    await asyncio.to_thread(db.add_plate, args.list_id, args.plate, args.label)
                    await audit("watchlist.add_plate", {"list": args.list_id, "plate": args.plate}, 1)
                    print(f"{args.plate} added to {args.list_id}; publish to take effect")
                case "remove":
                    removed = await asyncio.to_thread(
                        db.remove, args.list_id, subject_id=args.subject, plate=args.plate
                    )
                    await audit(
                        "watchlist.remove",
                        {"list": args.list_id, "subject": args.subject, "plate": args.plate},
                        removed,
                    )
                    print(f"removed {removed} entr{'y' if removed == 1 else 'ies'}; publish to take effect")
                case "show":
                    rows = [
                        [
                            s.list_id,
                            s.kind,
                            str(s.version),
                            str(s.entries),
                            "" if s.threshold is None else f"{s.threshold:g}",
                            s.published_at or "never",
                        ]
                        for s in db.lists()
                    ]
                    print(
                        render_table(["list", "kind", "version", "entries", "threshold", "published"], rows)
                    )
                case "publish":
                    documents = await asyncio.to_thread(published_documents, db, config, args.list_ids)
                    if args.output:
                        args.output.mkdir(parents=True, exist_ok=True)
                        for list_id, body, _ in documents:
                            (args.output / f"{list_id}.json").write_bytes(body)
                    if not args.no_broker:
                        await publish(config, [(list_id, body) for list_id, body, _ in documents])
                    for _, _, watch_list in documents:
                        await audit("watchlist.publish", describe(watch_list))
                        print(f"{watch_list.list_id}: version {watch_list.version} published")
    finally:
        db.close()
    return 0
