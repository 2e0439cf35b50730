"""District watch lists as the compound holds them: the document format, integrity, matching.

A watch list is versioned and published by the district as one document (retained on the district
broker, one topic per list). The document carries the SHA-256 of its canonical content; a gateway
applies a list only if the digest matches, the district is its own, and the version is newer than
the one it holds. Applying is atomic twice over: the file in the state directory is replaced with
an fsynced rename (a restart finds the old list or the new, never half of one), and the matcher
swaps its whole index in one assignment (a picture is matched against one version, never a mix).

Matching is vectorized: a face list is an N x 128 float32 matrix with its rows' squared norms kept,
so the distances of a face to every enrolled embedding are one matrix-vector product.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import structlog
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from gateway import strict_json
from gateway.durable_files import write_atomically
from gateway.errors import GatewayError
from gateway.events import PLATE_PATTERN, GbId
from gateway.faces import EMBEDDING_SIZE

log = structlog.get_logger(__name__)

FORMAT: Literal["cgw-watchlist/1"] = "cgw-watchlist/1"
ListId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]
SubjectRef = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9:_\-]{0,79}$")]
MAX_EMBEDDINGS_PER_SUBJECT = 20


class WatchListRejected(GatewayError):  # noqa: N818 - names the outcome, like PayloadRejected
    """A published list was not applied (bad digest, wrong district, older version, malformed)."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FaceSubject(_Model):
    """An enrolled person: the district's reference and one or more face embeddings."""

    subject_id: SubjectRef
    label: str | None = Field(default=None, max_length=120, description="why the subject is listed")
    embeddings: tuple[str, ...] = Field(
        min_length=1,
        max_length=MAX_EMBEDDINGS_PER_SUBJECT,
        description="base64 of 128 little-endian float32 values each",
    )


class PlateEntry(_Model):
    """A listed plate."""

    plate: Annotated[str, StringConstraints(pattern=PLATE_PATTERN.pattern)]
    label: str | None = Field(default=None, max_length=120)


class WatchList(_Model):
    """One version of one list."""

    format: Literal["cgw-watchlist/1"] = FORMAT
    district_id: GbId
    list_id: ListId
    version: int = Field(ge=1)
    kind: Literal["face", "plate"]
    threshold: float | None = Field(default=None, gt=0.0, le=1.5, description="face lists: match distance")
    issued_at: AwareDatetime
    subjects: tuple[FaceSubject, ...] = ()
    plates: tuple[PlateEntry, ...] = ()


def encode_embedding(vector: np.ndarray) -> str:
    """A 128-d embedding as the document carries it."""
    array = np.asarray(vector, dtype="<f4")
    if array.shape != (EMBEDDING_SIZE,):
        raise ValueError(f"an embedding has {EMBEDDING_SIZE} values, not {array.shape}")
    return base64.b64encode(array.tobytes()).decode()


def canonical_json(content: dict[str, Any]) -> bytes:
    """The bytes a list's digest is taken over: sorted keys, no spaces, UTF-8."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_document(watch_list: WatchList) -> bytes:
    """The published form: the list and the SHA-256 of its canonical JSON."""
    content = watch_list.model_dump(mode="json")
    return canonical_json({"list": content, "sha256": hashlib.sha256(canonical_json(content)).hexdigest()})


def decode_document(body: bytes, *, district_id: str) -> WatchList:
    """Check and parse a published document (``WatchListRejected`` says why not)."""
    try:
        outer = strict_json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WatchListRejected(f"not JSON: {str(exc)[:120]}") from None
    if (
        not isinstance(outer, dict)
        or not isinstance(outer.get("list"), dict)
        or not isinstance(outer.get("sha256"), str)
    ):
        raise WatchListRejected("expected an object with 'list' and 'sha256'")
    digest = hashlib.sha256(canonical_json(outer["list"])).hexdigest()
    if digest != outer["sha256"]:
        raise WatchListRejected(
            f"digest mismatch: content hashes to {digest[:16]}..., document says {outer['sha256'][:16]}..."
        )
    try:
        watch_list = WatchList.model_validate(outer["list"])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WatchListRejected(f"invalid list at {where}: {first['msg']}") from None
    if watch_list.district_id != district_id:
        raise WatchListRejected(
            f"list of district {watch_list.district_id}, this compound is in {district_id}"
        )
    for subject in watch_list.subjects:
        for encoded in subject.embeddings:
            _check_embedding(subject.subject_id, encoded)
    return watch_list


def _check_embedding(subject_id: str, encoded: str) -> None:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise WatchListRejected(f"subject {subject_id}: an embedding is not base64") from None
    if len(raw) != EMBEDDING_SIZE * 4:
        raise WatchListRejected(f"subject {subject_id}: an embedding is not 128 float32 values")
    if not np.isfinite(np.frombuffer(raw, dtype="<f4")).all():
        raise WatchListRejected(f"subject {subject_id}: an embedding holds NaN or infinity")


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
