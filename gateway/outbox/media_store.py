"""Pictures that arrived with events, as content-addressed files next to the outbox.

A picture is stored under its SHA-256 (``ab/abcdef....jpg``), so identical pictures are stored once
and an event refers to a picture by ``local:<path>``, never by its bytes. Every file is written
atomically and fsynced (file and directory) by ``write``; the outbox calls it before it commits the
rows that refer to the pictures, so a committed reference always finds its file (a crash in between
leaves at worst a file nothing refers to, which the retention purge removes in time).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from adapters.base import MediaBlob
from foundation.durable_files import write_atomically


class MediaStore:
    """The content-addressed picture directory; blocking file I/O, call from a worker thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def create(self) -> None:
        """Make the directory if it is not there."""
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, blobs: Iterable[MediaBlob]) -> None:
        """Store each picture durably (fsynced) unless its content is already stored."""
        for blob in blobs:
            target = self.directory / blob.relative_path
            if target.exists():
                continue  # content-addressed: same bytes, same file
            write_atomically(target, blob.data)

    def purge(self, older_than: datetime) -> int:
        """Delete pictures written before ``older_than``; returns how many were deleted."""
        return len(self.purge_paths(older_than))

    def purge_paths(self, older_than: datetime) -> list[str]:
        """Delete pictures written before ``older_than``; returns their paths relative to the store."""
        cutoff = older_than.timestamp()
        removed: list[str] = []
        for path in self.directory.glob("*/*"):
            if path.name.startswith(".tmp-"):
                continue  # a download or write in progress (its own cleanup removes it)
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path.relative_to(self.directory).as_posix())
            except FileNotFoundError:
                continue  # removed meanwhile (another purge): nothing left to do
        return removed
