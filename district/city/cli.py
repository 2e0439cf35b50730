"""``compound-gateway city`` (the service) and ``compound-gateway city status`` (read from the queue file).

``city status`` does not ask the service: it reads what the service last saved to the queue file
(registration, last keepalive, clock skew, last error) and the queue's own counts and refusals, so it
answers with the service stopped too, and says how old the saved state is. It opens the file
read-only (``read_status``): it never creates it nor writes beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from district.city.config import CityConfig
from district.city.model import Category, LinkState
from district.city.queue import QueueCounts, Refusal, read_status
from district.config import DistrictConfig, load_district_config
from foundation.errors import ConfigError
from foundation.events import utc_now

STALE_AFTER_S = 30.0
"""A saved state older than this is shown as such: the service has probably stopped."""

UNREADABLE_EXIT = 3
"""``city status`` exit status when the queue file exists but cannot be read (1: no file yet; 2: config)."""


def add_city_commands(sub: Any) -> None:
    """Register ``city`` (run the service) and ``city status``."""
    city = sub.add_parser("city", help="the GA/T 1400 link to the city platform (run it, or show its status)")
    city.add_argument(
        "action", nargs="?", choices=["status"], help="status: registration, keepalive, backlog, refusals"
    )
    city.add_argument(
        "--config", type=Path, required=True, help="the district TOML config (its [city] section)"
    )
    city.add_argument("--json", action="store_true", default=None, help="status: one JSON object")
    city.add_argument(
        "--refusals", type=_count, default=None, help="status: how many recent refusals to list (20)"
    )


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def city_usage_error(args: argparse.Namespace) -> str | None:
    """Why ``city`` (the service) was given options of ``city status`` only, if it was."""
    if args.action != "status" and (args.json is not None or args.refusals is not None):
        return "--json and --refusals go with 'city status' only"
    return None


def city_section(config: DistrictConfig) -> CityConfig:
    """The ``[city]`` section, or ``ConfigError`` saying it is missing."""
    if config.city is None:
        raise ConfigError("the district config has no [city] section (docs/city.md)")
    return config.city


def run_city_status(args: argparse.Namespace) -> int:
    """Print the link's status; exit 1: no queue file yet (never ran), 3: the file cannot be read."""
    config = load_district_config(args.config)
    city = city_section(config)
    refusals = 20 if args.refusals is None else args.refusals
    # read-only: the operator may not (and must not) write the service's file
    try:
        status = asyncio.run(read_status(city.queue_path, refusals))
    except (sqlite3.Error, OSError, ValueError) as exc:
        # ValueError: a saved state that is not the JSON the service writes
        print(f"cannot read the city queue file {city.queue_path}: {exc}", file=sys.stderr)
        return UNREADABLE_EXIT
    if status is None:
        print(f"no queue file at {city.queue_path}: the city service has not run yet", file=sys.stderr)
        return 1
    report = status_report(city, status.link, status.counts, status.refusals, now=utc_now())
    if args.json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write(format_status(report, ZoneInfo(config.api.timezone)))
    return 0


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def status_report(
    city: CityConfig, state: LinkState, counts: QueueCounts, refusals: list[Refusal], *, now: datetime
) -> dict[str, Any]:
    """The status as one JSON-ready object (``--json`` prints it as is)."""
    age = (now - state.updated_at).total_seconds() if state.updated_at is not None else None
    stale = age is None or age > STALE_AFTER_S
    return {
        "server_url": city.server_url,
        "platform_id": city.platform_id,
        # a stale state cannot say whether the city knows us now (the service may have died registered)
        "registered": None if stale else state.registered,
        "registered_at": _iso(state.registered_at),
        "last_keepalive_at": _iso(state.last_keepalive_at),
        "last_error": state.last_error,
        "clock_skew_s": state.clock_skew_s,
        "state_saved_at": _iso(state.updated_at),
        "state_stale": stale,
        "backlog": {c.value: counts.backlog.get(c.value, 0) for c in Category},
        "refused": {c.value: counts.refused.get(c.value, 0) for c in Category},
        "parked": {c.value: counts.parked.get(c.value, 0) for c in Category},
        "accepted": {c.value: counts.accepted.get(c.value, 0) for c in Category},
        "oldest_pending_at": _iso(counts.oldest_pending_at),
        "refusals": [
            {
                "category": r.category.value,
                "object_id": r.object_id,
                "source": r.source,
                "attempts": r.attempts,
                "reason": r.reason,
                "at": r.at.isoformat(),
                "parked": r.parked,
            }
            for r in refusals
        ],
    }


def _when(text: object, zone: ZoneInfo) -> str:
    if not isinstance(text, str):
        return "never"
    return datetime.fromisoformat(text).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def format_status(report: dict[str, Any], zone: ZoneInfo) -> str:
    """The status for people: times in the district's zone."""
    lines = [f"city platform  {report['server_url']}  (we are {report['platform_id']})"]
    if report["registered"] is None:
        lines.append("registered     unknown (the saved state is stale)")
    elif report["registered"]:
        lines.append(f"registered     yes, since {_when(report['registered_at'], zone)}")
    else:
        lines.append("registered     no")
    lines.append(f"last keepalive {_when(report['last_keepalive_at'], zone)}")
    skew = report["clock_skew_s"]
    lines.append(
        "clock skew     "
        + ("not read yet" if skew is None else f"{skew:+.1f} s (the city's clock minus ours)")
    )
    if report["last_error"]:
        lines.append(f"last error     {report['last_error']}")
    saved = _when(report["state_saved_at"], zone)
    lines.append(
        f"state saved    {saved}" + ("  (stale: is the service running?)" if report["state_stale"] else "")
    )
    lines.append("")
    lines.append(f"{'category':<14}{'backlog':>9}{'refused':>9}{'parked':>8}{'accepted':>10}")
    for category in Category:
        name = category.value
        lines.append(
            f"{name:<14}{report['backlog'][name]:>9}{report['refused'][name]:>9}"
            f"{report['parked'][name]:>8}{report['accepted'][name]:>10}"
        )
    if report["oldest_pending_at"]:
        lines.append(f"oldest waiting object: {_when(report['oldest_pending_at'], zone)}")
    lines.append("")
    if not report["refusals"]:
        lines.append("no refusals")
    else:
        lines.append("recent refusals (newest first):")
        for refusal in report["refusals"]:
            parked = ", parked" if refusal["parked"] else ""
            lines.append(
                f"  {_when(refusal['at'], zone)}  {refusal['category']:<13} {refusal['object_id']}"
                f"  attempt {refusal['attempts']}{parked}: {refusal['reason']}"
            )
    return "\n".join(lines) + "\n"
