"""The watch-list document, as the district publishes it and a compound checks it.

A watch list is versioned and published by the district as one document (retained on the district
broker, one topic per list). The document carries the SHA-256 of its canonical content; a compound
applies a list only if the digest matches, the district is its own, and every embedding is 128 finite
float32 values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from foundation import strict_json
from foundation.errors import GatewayError
from foundation.events import PLATE_PATTERN, GbId
from foundation.faces import EMBEDDING_SIZE

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
