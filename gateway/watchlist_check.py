"""The installer's check on a compound: which held watch lists would match the faces in these photos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from foundation.faces import PictureError, analyse_bytes
from foundation.tables import render_table
from gateway.config import load_config
from gateway.watchlists import WatchListRegistry


def add_watchlist_check_commands(actions: Any) -> None:
    """The compound side's ``watchlist check PHOTO...`` and ``watchlist loaded`` (``actions``: the subparsers)."""
    check = actions.add_parser("check", help="compound: what the loaded lists would match on these photos")
    check.add_argument("photos", nargs="+", type=Path)
    loaded = actions.add_parser("loaded", help="compound: the lists this gateway holds")
    for parser in (check, loaded):
        parser.add_argument("--config", type=Path, required=True, help="the gateway TOML config")


def run_watchlist_check(args: argparse.Namespace) -> int:
    """``watchlist check PHOTO...`` / ``watchlist loaded`` on a compound: what its held lists would match."""
    config = load_config(args.config)
    registry = WatchListRegistry(
        config.state.dir / "watchlists", config.compound.district_id, config.faces.threshold
    )
    registry.load_persisted()
    loaded = registry.loaded
    if args.action == "loaded" or not loaded.versions:
        rows = [
            [name, kind, str(version), str(size)]
            for name, (kind, version, size) in sorted(loaded.versions.items())
        ]
        print(render_table(["list", "kind", "version", "entries"], rows))
        if args.action == "check":
            print("no watch list is loaded: nothing can match", file=sys.stderr)
            return 1
        return 0
    status = 0
    for photo in args.photos:
        try:
            faces = analyse_bytes(
                photo.read_bytes(), model=config.faces.model, upsample=config.faces.upsample
            )
        except (PictureError, OSError) as exc:
            print(f"{photo}: {exc}")
            status = 1
            continue
        if not faces:
            print(f"{photo}: no face found")
            continue
        for number, face in enumerate(faces, start=1):
            closest = []
            for index in loaded.faces:
                distances = index.distances(face.vector())
                if len(distances):
                    row = int(distances.argmin())
                    closest.append(
                        f"{index.list_id}: {index.owners[row]} at {float(distances[row]):.3f}"
                        f" (threshold {index.threshold:g})"
                    )
            hits = loaded.match_face(face.vector())
            verdict = "HIT " + ", ".join(f"{h.list_id}/{h.subject_id}" for h in hits) if hits else "no match"
            print(f"{photo} face {number} at {face.box}: {verdict}; closest: {'; '.join(closest) or '-'}")
    return status
