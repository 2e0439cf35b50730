"""The district's watch lists: enrolment, plates, versions, publication to the compounds.

Lists live in the district's operations database (next to tokens and the audit log). Enrolment
computes face embeddings from photos at the district -- a photo must show exactly one face -- and
keeps only the embeddings, never the photo. ``publish`` gives the list a new version and retains
the signed-by-digest document on the district broker, where every compound's gateway picks it up
(now, or when it next connects); ``--output`` writes the same document for compounds without a
broker connection. Every change and every publication is audited.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from district.config import DistrictConfig
from foundation.errors import InvalidQueryError
from foundation.events import PLATE_PATTERN, utc_now
from foundation.faces import PictureError, analyse_bytes
from foundation.mqtt import MqttSession, SessionOptions
from uplink.protocol import watchlist_topic
from uplink.watchlist_document import FaceSubject, PlateEntry, WatchList, encode_document, encode_embedding

SCHEMA = """
CREATE TABLE IF NOT EXISTS watchlists (
    list_id TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('face', 'plate')),
    threshold REAL, version INTEGER NOT NULL DEFAULT 0, published_at TEXT);
CREATE TABLE IF NOT EXISTS watchlist_faces (
    list_id TEXT NOT NULL, subject_id TEXT NOT NULL, label TEXT, embedding TEXT NOT NULL,
    source TEXT NOT NULL, enrolled_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS watchlist_plates (
    list_id TEXT NOT NULL, plate TEXT NOT NULL, label TEXT, added_at TEXT NOT NULL,
    PRIMARY KEY (list_id, plate));
"""


@dataclass(frozen=True)
class ListSummary:
    """A list as ``watchlist show`` prints it."""

    list_id: str
    kind: str
    version: int
    entries: int
    threshold: float | None
    published_at: str | None


@dataclass(frozen=True)
class ListEntry:
    """One subject (``faces``: how many embeddings) or plate (``faces`` 1) of a list."""

    ref: str
    label: str | None
    faces: int


def face_embedding(name: str, data: bytes) -> str:
    """The encoded embedding of the one face on a photo (CPU-heavy: call it off the event loop).

    Raises ``InvalidQueryError`` (field ``photo``) for an unreadable picture (code
    ``not_a_picture``) or a photo without exactly one face (``face_count``).
    """
    try:
        faces = analyse_bytes(data)
    except PictureError as exc:
        raise InvalidQueryError(f"{name}: {exc}", field="photo", code="not_a_picture") from None
    if len(faces) != 1:
        what = "no face" if not faces else f"{len(faces)} faces"
        raise InvalidQueryError(
            f"{name}: found {what}; enrol from a photo of the subject alone", field="photo", code="face_count"
        )
    return encode_embedding(faces[0].vector())


class WatchListDb:
    """The district's lists (synchronous: used by the CLI, one command at a time)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # one command at a time, from worker threads: never concurrently
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the file."""
        self._db.close()

    def _ensure(self, list_id: str, kind: Literal["face", "plate"], threshold: float | None) -> None:
        row = self._db.execute("SELECT kind FROM watchlists WHERE list_id = ?", (list_id,)).fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO watchlists (list_id, kind, threshold) VALUES (?,?,?)", (list_id, kind, threshold)
            )
        elif row[0] != kind:
            raise InvalidQueryError(f"list {list_id} is a {row[0]} list, not a {kind} list", field="list")
        elif threshold is not None:
            self._db.execute("UPDATE watchlists SET threshold = ? WHERE list_id = ?", (threshold, list_id))

    def enroll(
        self,
        list_id: str,
        subject_id: str,
        photos: Sequence[Path],
        label: str | None,
        threshold: float | None,
    ) -> int:
        """Add the face of each photo to the subject; every photo must show exactly one face."""
        embeddings: list[tuple[str, str]] = []
        for photo in photos:
            try:
                data = photo.read_bytes()
            except OSError as exc:
                raise InvalidQueryError(f"{photo}: {exc}", field="photo") from None
            embeddings.append((face_embedding(str(photo), data), photo.name))
        return self.enroll_embeddings(list_id, subject_id, embeddings, label, threshold)

    def enroll_embeddings(
        self,
        list_id: str,
        subject_id: str,
        embeddings: Sequence[tuple[str, str]],
        label: str | None,
        threshold: float | None,
    ) -> int:
        """Add computed embeddings (each with the name of the photo it came from) to the subject."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._ensure(list_id, "face", threshold)
            now = utc_now().isoformat()
            self._db.executemany(
                "INSERT INTO watchlist_faces VALUES (?,?,?,?,?,?)",
                [(list_id, subject_id, label, embedding, source, now) for embedding, source in embeddings],
            )
        return len(embeddings)

    def add_plate(self, list_id: str, plate: str, label: str | None) -> None:
        """List a plate."""
        if not PLATE_PATTERN.match(plate):
            raise InvalidQueryError(f"{plate!r} is not a civil Chinese plate", field="plate")
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._ensure(list_id, "plate", None)
            self._db.execute(
                "INSERT OR REPLACE INTO watchlist_plates VALUES (?,?,?,?)",
                (list_id, plate, label, utc_now().isoformat()),
            )

    def remove(self, list_id: str, *, subject_id: str | None = None, plate: str | None = None) -> int:
        """Take a subject or a plate off a list (effective at the next publish)."""
        with self._db:
            if subject_id is not None:
                return self._db.execute(
                    "DELETE FROM watchlist_faces WHERE list_id = ? AND subject_id = ?", (list_id, subject_id)
                ).rowcount
            return self._db.execute(
                "DELETE FROM watchlist_plates WHERE list_id = ? AND plate = ?", (list_id, plate)
            ).rowcount

    def lists(self) -> list[ListSummary]:
        """Every list with its size and published version."""
        rows = self._db.execute(
            "SELECT w.list_id, w.kind, w.version, w.threshold, w.published_at,"
            " (SELECT count(DISTINCT subject_id) FROM watchlist_faces f WHERE f.list_id = w.list_id)"
            " + (SELECT count(*) FROM watchlist_plates p WHERE p.list_id = w.list_id)"
            " FROM watchlists w ORDER BY w.list_id"
        ).fetchall()
        return [ListSummary(r[0], r[1], r[2], r[5], r[3], r[4]) for r in rows]

    def entries(self, list_id: str, limit: int) -> list[ListEntry]:
        """A list's subjects (with how many faces each) or plates, at most ``limit``, by reference."""
        rows = self._db.execute(
            "SELECT subject_id, max(label), count(*) FROM watchlist_faces WHERE list_id = ?"
            " GROUP BY subject_id UNION ALL SELECT plate, label, 1 FROM watchlist_plates WHERE list_id = ?"
            " ORDER BY 1 LIMIT ?",
            (list_id, list_id, limit),
        ).fetchall()
        return [ListEntry(r[0], r[1], r[2]) for r in rows]

    def next_version(self, list_id: str, district_id: str) -> WatchList:
        """The list's content as a new version (recorded as published)."""
        row = self._db.execute(
            "SELECT kind, threshold, version FROM watchlists WHERE list_id = ?", (list_id,)
        ).fetchone()
        if row is None:
            raise InvalidQueryError(f"no list {list_id!r}", field="list")
        kind, threshold, version = row
        now = utc_now()
        subjects: dict[str, tuple[str | None, list[str]]] = {}
        for subject_id, label, embedding in self._db.execute(
            "SELECT subject_id, label, embedding FROM watchlist_faces WHERE list_id = ? ORDER BY rowid",
            (list_id,),
        ):
            subjects.setdefault(subject_id, (label, []))[1].append(embedding)
        plates = self._db.execute(
            "SELECT plate, label FROM watchlist_plates WHERE list_id = ? ORDER BY plate", (list_id,)
        ).fetchall()
        watch_list = WatchList(
            district_id=district_id,
            list_id=list_id,
            version=version + 1,
            kind=kind,
            threshold=threshold,
            issued_at=now,
            subjects=tuple(
                FaceSubject(subject_id=s, label=label, embeddings=tuple(e[-20:]))
                for s, (label, e) in subjects.items()
            ),
            plates=tuple(PlateEntry(plate=p, label=label) for p, label in plates),
        )
        with self._db:
            self._db.execute(
                "UPDATE watchlists SET version = ?, published_at = ? WHERE list_id = ?",
                (watch_list.version, now.isoformat(), list_id),
            )
        return watch_list


async def publish(config: DistrictConfig, documents: Sequence[tuple[str, bytes]]) -> None:
    """Retain each list document on the district broker (QoS 1: returns once the broker has it).

    Raises:
        PublishRefusedError: the broker refused a document (e.g. its ACL does not let this user
            write watch lists); MQTT v5, so a refusal is reported instead of passing silently.
        TransportError: the broker could not be reached or did not acknowledge in time.
    """
    broker = config.broker
    options = SessionOptions(
        host=broker.host,
        port=broker.port,
        client_id=f"cgw-district-lists-{utc_now():%H%M%S%f}",
        tls_context=broker.tls.context() if broker.tls else None,
        username=broker.username,
        password=broker.password.get_secret_value() if broker.password else None,
    )
    async with MqttSession(options) as session:
        for list_id, body in documents:
            topic = watchlist_topic(config.ingest.topic_prefix, config.district_id, list_id)
            await session.publish(topic, body, qos=1, retain=True, timeout_s=30)


def published_documents(
    db: WatchListDb, config: DistrictConfig, list_ids: Sequence[str]
) -> list[tuple[str, bytes, WatchList]]:
    """New versions of the named lists (all lists when none is named), encoded."""
    chosen = list_ids or [summary.list_id for summary in db.lists()]
    out = []
    for list_id in chosen:
        watch_list = db.next_version(list_id, config.district_id)
        out.append((list_id, encode_document(watch_list), watch_list))
    return out


def describe(watch_list: WatchList, published_at: datetime | None = None) -> dict[str, Any]:
    """A short, secret-free description for logs and the audit log."""
    return {
        "list": watch_list.list_id,
        "version": watch_list.version,
        "kind": watch_list.kind,
        "entries": len(watch_list.subjects) if watch_list.kind == "face" else len(watch_list.plates),
        "at": (published_at or watch_list.issued_at).isoformat(),
    }
