"""Face detection, embeddings and snapshot crops: the CPU work that runs in the face process pool.

Each function here is called in a pool worker with a path or bytes, never with a decoded image, so
what crosses the process boundary is small (a file path in, a few boxes and 128 floats per face
out). ``face_recognition`` (dlib's HOG detector and ResNet embedding) is imported in the worker
only, so the gateway process itself never loads the models.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EMBEDDING_SIZE = 128
MAX_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding


@dataclass(frozen=True, slots=True)
class FoundFace:
    """One face on a picture: its box (top, right, bottom, left, in pixels) and its embedding."""

    box: tuple[int, int, int, int]
    embedding: bytes  # 128 float32, little-endian

    def vector(self) -> np.ndarray:
        """The embedding as a float32 vector."""
        return np.frombuffer(self.embedding, dtype="<f4")


class PictureError(ValueError):
    """The picture cannot be decoded or is not a picture we accept."""


def _load_rgb(data: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 - worker-side import

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in {"JPEG", "PNG"}:
                raise PictureError(f"picture format {image.format} is not JPEG or PNG")
            if image.width * image.height > MAX_PIXELS:
                raise PictureError(f"picture of {image.width}x{image.height} pixels is too large")
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise PictureError(f"not a readable picture: {exc}") from None


def analyse_bytes(data: bytes, *, model: str = "hog", upsample: int = 1) -> list[FoundFace]:
    """Every face on the picture with its embedding (an empty list when there is none)."""
    import face_recognition  # noqa: PLC0415 - loads dlib and the models in the worker only

    pixels = _load_rgb(data)
    boxes = face_recognition.face_locations(pixels, number_of_times_to_upsample=upsample, model=model)
    encodings = face_recognition.face_encodings(pixels, known_face_locations=boxes)
    return [
        FoundFace(tuple(int(v) for v in box), np.asarray(encoding, dtype="<f4").tobytes())  # type: ignore[arg-type]
        for box, encoding in zip(boxes, encodings, strict=True)
    ]


def analyse_file(path: Path, model: str = "hog", upsample: int = 1) -> list[FoundFace]:
    """``analyse_bytes`` on a file of the media store."""
    return analyse_bytes(path.read_bytes(), model=model, upsample=upsample)


def crop_face(data: bytes, box: tuple[int, int, int, int], *, size: int = 160) -> bytes:
    """The face's box with a margin, at most ``size`` pixels square, as JPEG (the hit snapshot)."""
    from PIL import Image  # noqa: PLC0415

    top, right, bottom, left = box
    margin = (bottom - top) // 3
    with Image.open(io.BytesIO(data)) as image:
        region = image.convert("RGB").crop(
            (
                max(0, left - margin),
                max(0, top - margin),
                min(image.width, right + margin),
                min(image.height, bottom + margin),
            )
        )
        region.thumbnail((size, size))
        out = io.BytesIO()
        region.save(out, format="JPEG", quality=85)
    return out.getvalue()


def warm_up() -> bool:
    """Load the models in a pool worker before the first picture arrives."""
    import face_recognition  # noqa: F401, PLC0415

    return True
