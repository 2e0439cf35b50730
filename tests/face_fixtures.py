"""Where the shared face photos are (``../shared/fixtures/faces`` beside the project, not copied in)."""

from __future__ import annotations

import os
from pathlib import Path


def face_fixtures() -> Path:
    """The fixture directory, found where the workplace keeps it.

    ``$CGW_FACE_FIXTURES``, else ``../shared/fixtures/faces`` beside the project root, else
    ``/work/shared/fixtures/faces`` (a clone made elsewhere). Missing: an error, never a skip.
    """
    root = Path(__file__).resolve().parents[1]
    candidates = [
        *([Path(os.environ["CGW_FACE_FIXTURES"])] if "CGW_FACE_FIXTURES" in os.environ else []),
        root.parent / "shared" / "fixtures" / "faces",
        Path("/work/shared/fixtures/faces"),
    ]
    for candidate in candidates:
        if (candidate / "obama.jpg").exists():
            return candidate
    raise FileNotFoundError(
        "face fixtures not found in " + ", ".join(map(str, candidates)) + "; set CGW_FACE_FIXTURES"
    )
