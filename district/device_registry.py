"""The district's device registry: every compound's configured devices, and how the list changed.

One SQLite file (``[registry] db_path``, default ``registry.db`` beside the operations database;
WAL, one thread). The registry desk (``district/registry_desk.py``) writes each inventory a
compound's gateway retains (``uplink/inventory.py``); the ``devices`` query lists every registered
device, the silent ones included, and ``device_changes`` reads the history.

Applying an inventory is one transaction: the compound's devices become exactly the inventory's,
and each difference is one history row with the district's time: ``added``, ``changed`` (with the
fields that changed, old and new) or ``removed``. The same version again changes nothing (a
gateway restarted with an unchanged config, a redelivery). Inventories are applied in the order
they arrive, never by the gateway's ``generated_at``: a gateway whose clock was reset would
otherwise have its new config ignored, and the broker's retained copy, sent again on every
subscription, is the newest anyway. History rows older than
``[retention] device_changes_days`` are deleted; the current devices stay as long as listed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from foundation.events import Location
from foundation.sqlite_thread import SqliteBacked, transaction
from foundation.sqlite_thread import sortable_time as _iso
from uplink.inventory import Inventory, InventoryDevice

SCHEMA = """
CREATE TABLE IF NOT EXISTS inventories (
    compound_id TEXT PRIMARY KEY, district_id TEXT NOT NULL, version TEXT NOT NULL,
    generated_at TEXT NOT NULL, received_at TEXT NOT NULL, devices INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    compound_id TEXT NOT NULL, device_id TEXT NOT NULL, district_id TEXT NOT NULL, name TEXT NOT NULL,
    kind TEXT NOT NULL, dialect TEXT NOT NULL, location TEXT, vendor_ref TEXT,
    registered_at TEXT NOT NULL, changed_at TEXT NOT NULL, PRIMARY KEY (compound_id, device_id));
CREATE TABLE IF NOT EXISTS device_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, district_id TEXT NOT NULL, compound_id TEXT NOT NULL,
    device_id TEXT NOT NULL, change TEXT NOT NULL, fields TEXT NOT NULL, at TEXT NOT NULL,
    version TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS device_changes_by_at ON device_changes (at);
CREATE INDEX IF NOT EXISTS device_changes_by_device ON device_changes (compound_id, device_id, at);
"""

TRACKED = ("name", "kind", "dialect", "location", "vendor_ref")
"""The fields whose change is recorded (the device id is the identity)."""


class Change(StrEnum):
    """What happened to a device in the registry."""

    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"


class Applied(StrEnum):
    """What applying one inventory did."""

    UPDATED = "updated"  # a new version: the differences are in the history
    UNCHANGED = "unchanged"  # the version held already


def place_text(location: Location | None) -> str | None:
    """Where a device stands, as one line for people (building, unit, gate, description)."""
    if location is None:
        return None
    parts = [p for p in (location.building, location.unit, location.gate, location.description) if p]
    return " ".join(parts) or None


@dataclass(frozen=True)
class RegisteredDevice:
    """One device a compound's gateway is configured with."""

    district_id: str
    compound_id: str
    device_id: str
    name: str
    kind: str
    dialect: str
    location: Location | None
    vendor_ref: str | None
    registered_at: datetime
    changed_at: datetime

    @property
    def place(self) -> str | None:
        """Its location as one line."""
        return place_text(self.location)


@dataclass(frozen=True)
class DeviceChange:
    """One history row: a device added, changed (``fields``: name -> [old, new]) or removed."""

    seq: int
    district_id: str
    compound_id: str
    device_id: str
    change: Change
    fields: dict[str, list[Any]]
    at: datetime
    version: str


@dataclass(frozen=True)
class Outcome:
    """One inventory applied: what it did and how many devices each way."""

    applied: Applied
    added: int = 0
    changed: int = 0
    removed: int = 0


def _row_values(device: InventoryDevice) -> dict[str, Any]:
    return {
        "name": device.name,
        "kind": device.kind,
        "dialect": device.dialect,
        # an empty location is no location, as stored (NULL): never a change by itself
        "location": (device.location.model_dump(mode="json", exclude_none=True) or None)
        if device.location
        else None,
        "vendor_ref": device.vendor_ref,
    }


def _stored_values(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    name, kind, dialect, location, vendor_ref = row
    return {
        "name": name,
        "kind": kind,
        "dialect": dialect,
        "location": json.loads(location) if location else None,
        "vendor_ref": vendor_ref,
    }


def _in(column: str, values: Sequence[str] | None) -> tuple[str, list[str]]:
    if values is None:
        return "", []
    return f" AND {column} IN ({','.join('?' * len(values))})", list(values)


class DeviceRegistry(SqliteBacked):
    """The registry file, open for the ``async with`` block."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA, "device-registry")

    async def apply(self, inventory: Inventory, received_at: datetime) -> Outcome:
        """Make the compound's devices the inventory's, recording each difference at ``received_at``."""
        return await self._file.call(lambda db: _apply(db, inventory, received_at))

    async def devices(
        self, district_id: str, compounds: Sequence[str] | None = None
    ) -> list[RegisteredDevice]:
        """The registered devices of a district (of these compounds only, if given), by compound and id."""
        where, args = _in("compound_id", compounds)

        def read(db: sqlite3.Connection) -> list[RegisteredDevice]:
            rows = db.execute(
                "SELECT district_id, compound_id, device_id, name, kind, dialect, location, vendor_ref,"  # noqa: S608 - placeholders only
                f" registered_at, changed_at FROM devices WHERE district_id = ?{where}"
                " ORDER BY compound_id, device_id",
                [district_id, *args],
            ).fetchall()
            return [
                RegisteredDevice(
                    district_id=r[0],
                    compound_id=r[1],
                    device_id=r[2],
                    name=r[3],
                    kind=r[4],
                    dialect=r[5],
                    location=Location.model_validate_json(r[6]) if r[6] else None,
                    vendor_ref=r[7],
                    registered_at=datetime.fromisoformat(r[8]),
                    changed_at=datetime.fromisoformat(r[9]),
                )
                for r in rows
            ]

        return await self._file.call(read)

    async def registered_compounds(self, district_id: str) -> set[str]:
        """The compounds of a district whose gateway has published an inventory."""
        rows = await self._file.call(
            lambda db: db.execute(
                "SELECT compound_id FROM inventories WHERE district_id = ?", (district_id,)
            ).fetchall()
        )
        return {r[0] for r in rows}

    async def removals(self, district_id: str) -> dict[tuple[str, str], datetime]:
        """When each device that is no longer registered was last removed, by (compound, device)."""

        def read(db: sqlite3.Connection) -> dict[tuple[str, str], datetime]:
            rows = db.execute(
                "SELECT c.compound_id, c.device_id, MAX(c.at) FROM device_changes c"
                " WHERE c.district_id = ? AND c.change = 'removed' AND NOT EXISTS (SELECT 1 FROM devices d"
                " WHERE d.compound_id = c.compound_id AND d.device_id = c.device_id)"
                " GROUP BY c.compound_id, c.device_id",
                (district_id,),
            ).fetchall()
            return {(r[0], r[1]): datetime.fromisoformat(r[2]) for r in rows}

        return await self._file.call(read)

    async def changes(
        self,
        district_id: str,
        compounds: Sequence[str] | None,
        *,
        since: datetime | None = None,
        device_id: str | None = None,
        limit: int = 200,
    ) -> list[DeviceChange]:
        """History rows, newest first."""
        where, args = _in("compound_id", compounds)
        if since is not None:
            where += " AND at >= ?"
            args.append(_iso(since))
        if device_id is not None:
            where += " AND device_id = ?"
            args.append(device_id)

        def read(db: sqlite3.Connection) -> list[DeviceChange]:
            rows = db.execute(
                "SELECT seq, district_id, compound_id, device_id, change, fields, at, version"  # noqa: S608 - placeholders only
                f" FROM device_changes WHERE district_id = ?{where} ORDER BY at DESC, seq DESC LIMIT ?",
                [district_id, *args, limit],
            ).fetchall()
            return [
                DeviceChange(
                    seq=r[0],
                    district_id=r[1],
                    compound_id=r[2],
                    device_id=r[3],
                    change=Change(r[4]),
                    fields=json.loads(r[5]),
                    at=datetime.fromisoformat(r[6]),
                    version=r[7],
                )
                for r in rows
            ]

        return await self._file.call(read)

    async def purge(self, cutoff: datetime) -> int:
        """Delete history rows before ``cutoff``; returns how many."""

        def delete(db: sqlite3.Connection) -> int:
            with transaction(db):
                return db.execute("DELETE FROM device_changes WHERE at < ?", (_iso(cutoff),)).rowcount

        return await self._file.call(delete)


def _apply(db: sqlite3.Connection, inventory: Inventory, received_at: datetime) -> Outcome:
    compound = inventory.compound_id
    at = _iso(received_at)
    with transaction(db):
        held = db.execute("SELECT version FROM inventories WHERE compound_id = ?", (compound,)).fetchone()
        if held is not None and held[0] == inventory.version:
            return Outcome(Applied.UNCHANGED)
        stored = {
            r[0]: _stored_values(r[1:])
            for r in db.execute(
                "SELECT device_id, name, kind, dialect, location, vendor_ref FROM devices WHERE compound_id = ?",
                (compound,),
            )
        }
        history: list[tuple[str, Change, dict[str, list[Any]]]] = []
        for device in inventory.devices:
            values = _row_values(device)
            location = json.dumps(values["location"], ensure_ascii=False) if values["location"] else None
            before = stored.pop(device.device_id, None)
            if before is None:
                history.append((device.device_id, Change.ADDED, {k: [None, v] for k, v in values.items()}))
                db.execute(
                    "INSERT INTO devices (compound_id, device_id, district_id, name, kind, dialect, location,"
                    " vendor_ref, registered_at, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        compound,
                        device.device_id,
                        inventory.district_id,
                        device.name,
                        device.kind,
                        device.dialect,
                        location,
                        device.vendor_ref,
                        at,
                        at,
                    ),
                )
                continue
            diff = {k: [before[k], values[k]] for k in TRACKED if before[k] != values[k]}
            if not diff:
                continue
            history.append((device.device_id, Change.CHANGED, diff))
            db.execute(
                "UPDATE devices SET district_id = ?, name = ?, kind = ?, dialect = ?, location = ?,"
                " vendor_ref = ?, changed_at = ? WHERE compound_id = ? AND device_id = ?",
                (
                    inventory.district_id,
                    device.name,
                    device.kind,
                    device.dialect,
                    location,
                    device.vendor_ref,
                    at,
                    compound,
                    device.device_id,
                ),
            )
        for device_id, before in stored.items():
            history.append((device_id, Change.REMOVED, {k: [v, None] for k, v in before.items()}))
            db.execute("DELETE FROM devices WHERE compound_id = ? AND device_id = ?", (compound, device_id))
        db.executemany(
            "INSERT INTO device_changes (district_id, compound_id, device_id, change, fields, at, version)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    inventory.district_id,
                    compound,
                    device_id,
                    change.value,
                    json.dumps(fields, ensure_ascii=False),
                    at,
                    inventory.version,
                )
                for device_id, change, fields in history
            ],
        )
        db.execute(
            "INSERT INTO inventories (compound_id, district_id, version, generated_at, received_at, devices)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (compound_id) DO UPDATE SET district_id = excluded.district_id,"
            " version = excluded.version, generated_at = excluded.generated_at,"
            " received_at = excluded.received_at, devices = excluded.devices",
            (
                compound,
                inventory.district_id,
                inventory.version,
                _iso(inventory.generated_at),
                at,
                len(inventory.devices),
            ),
        )
    counts = {c: sum(1 for _, change, _ in history if change is c) for c in Change}
    return Outcome(Applied.UPDATED, counts[Change.ADDED], counts[Change.CHANGED], counts[Change.REMOVED])
