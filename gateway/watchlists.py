"""District watch lists as the compound holds them: applying published documents, matching.

A gateway applies a list only if its document checks out (``uplink.watchlist_document``) and the
version is newer than the one it holds. Applying is atomic twice over: the file in the state directory
is replaced with an fsynced rename (a restart finds the old list or the new, never half of one), and
the matcher swaps its whole index in one assignment (a picture is matched against one version, never a
mix).

Matching is vectorized: a face list is an N x 128 float32 matrix with its rows' squared norms kept,
so the distances of a face to every enrolled embedding are one matrix-vector product.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import structlog

from foundation.durable_files import write_atomically
from foundation.faces import EMBEDDING_SIZE
from uplink.watchlist_document import WatchList, WatchListRejected, decode_document

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class FaceHit:
    """A face matched a subject of a list."""

    list_id: str
    list_version: int
    subject_id: str
    distance: float
    threshold: float


@dataclass(frozen=True)
class PlateHit:
    """A plate matched a plate list."""

    list_id: str
    list_version: int
    plate: str
    label: str | None


class FaceIndex:
    """One face list as a matrix; ``best`` finds the closest subject under the threshold."""

    def __init__(self, watch_list: WatchList, default_threshold: float) -> None:
        self.list_id = watch_list.list_id
        self.version = watch_list.version
        self.threshold = watch_list.threshold or default_threshold
        rows: list[np.ndarray] = []
        self.owners: list[str] = []
        for subject in watch_list.subjects:
            for encoded in subject.embeddings:
                rows.append(np.frombuffer(base64.b64decode(encoded), dtype="<f4"))
                self.owners.append(subject.subject_id)
        self.matrix = (
            np.vstack(rows).astype(np.float32) if rows else np.zeros((0, EMBEDDING_SIZE), np.float32)
        )
        self.norms = np.einsum("ij,ij->i", self.matrix, self.matrix)
        self.subjects = len(watch_list.subjects)

    def distances(self, vector: np.ndarray) -> np.ndarray:
        """Euclidean distance of ``vector`` to every enrolled embedding."""
        v = np.asarray(vector, dtype=np.float32)
        squared = self.norms - 2.0 * (self.matrix @ v) + float(v @ v)
        distances: np.ndarray = np.sqrt(np.maximum(squared, 0.0))
        return distances

    def best(self, vector: np.ndarray) -> FaceHit | None:
        """The closest subject if within the threshold."""
        if not self.owners:
            return None
        distances = self.distances(vector)
        row = int(np.argmin(distances))
        distance = float(distances[row])
        if distance > self.threshold:
            return None
        return FaceHit(self.list_id, self.version, self.owners[row], round(distance, 4), self.threshold)


@dataclass(frozen=True)
class LoadedLists:
    """What the compound matches against right now (replaced whole, never mutated)."""

    faces: tuple[FaceIndex, ...] = ()
    plates: dict[str, tuple[tuple[str, int, str | None], ...]] = field(default_factory=dict)
    versions: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # list -> (kind, version, size)

    def match_face(self, vector: np.ndarray) -> list[FaceHit]:
        """The best subject of every face list the face is close enough to."""
        return [hit for index in self.faces if (hit := index.best(vector)) is not None]

    def match_plate(self, plate: str) -> list[PlateHit]:
        """Every plate list the plate is on."""
        return [
            PlateHit(list_id, version, plate, label) for list_id, version, label in self.plates.get(plate, ())
        ]


def build_index(lists: dict[str, WatchList], default_threshold: float) -> LoadedLists:
    """The matching structures for a set of lists."""
    faces = tuple(FaceIndex(wl, default_threshold) for wl in lists.values() if wl.kind == "face")
    plates: dict[str, list[tuple[str, int, str | None]]] = {}
    for wl in lists.values():
        if wl.kind == "plate":
            for entry in wl.plates:
                plates.setdefault(entry.plate, []).append((wl.list_id, wl.version, entry.label))
    versions: dict[str, tuple[str, int, int]] = {
        wl.list_id: (wl.kind, wl.version, len(wl.subjects) if wl.kind == "face" else len(wl.plates))
        for wl in lists.values()
    }
    return LoadedLists(faces, {k: tuple(v) for k, v in plates.items()}, versions)


class WatchListRegistry:
    """The gateway's lists: persisted in a directory, applied atomically, matched from memory."""

    def __init__(self, directory: Path, district_id: str, default_threshold: float) -> None:
        self.directory = directory
        self._district_id = district_id
        self._threshold = default_threshold
        self._lists: dict[str, WatchList] = {}
        self.loaded = LoadedLists()
        self.rejected = 0

    def load_persisted(self) -> None:
        """Read the lists kept by earlier runs (a damaged file is reported and skipped)."""
        for path in sorted(self.directory.glob("*.json")):
            try:
                watch_list = decode_document(path.read_bytes(), district_id=self._district_id)
            except (WatchListRejected, OSError) as exc:
                log.error("watchlist_file_unreadable", path=str(path), error=str(exc))
                continue
            self._lists[watch_list.list_id] = watch_list
        self.loaded = build_index(self._lists, self._threshold)

    def _check(self, body: bytes, list_id: str) -> WatchList:
        watch_list = decode_document(body, district_id=self._district_id)
        if watch_list.list_id != list_id:
            raise WatchListRejected(f"document is list {watch_list.list_id}, published as {list_id}")
        held = self._lists.get(list_id)
        if held is not None and watch_list.version < held.version:
            raise WatchListRejected(f"version {watch_list.version} is older than the held {held.version}")
        return watch_list

    def apply(self, body: bytes, list_id: str) -> Literal["applied", "unchanged", "removed"]:
        """Apply a published document for ``list_id`` (empty body: the district withdrew the list)."""
        if not body:
            if self._lists.pop(list_id, None) is None:
                return "unchanged"
            (self.directory / f"{list_id}.json").unlink(missing_ok=True)
            self.loaded = build_index(self._lists, self._threshold)
            log.warning("watchlist_removed", list_id=list_id)
            return "removed"
        try:
            watch_list = self._check(body, list_id)
        except WatchListRejected as exc:
            self.rejected += 1
            log.error("watchlist_rejected", list_id=list_id, error=str(exc))
            raise
        held = self._lists.get(list_id)
        if held is not None and watch_list.version == held.version:
            return "unchanged"
        write_atomically(self.directory / f"{list_id}.json", body)
        lists = {**self._lists, list_id: watch_list}
        loaded = build_index(lists, self._threshold)
        self._lists, self.loaded = lists, loaded
        log.info("watchlist_applied", list_id=list_id, version=watch_list.version, kind=watch_list.kind)
        return "applied"
