"""Atomic file writes: temporary file in the same folder, fsync, rename.

A failed write (full disk, read-only or missing folder, a file where a folder should be) leaves the old
file as it was, removes the temporary file and raises :class:`StorageError` naming the file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class StorageError(OSError):
    """A file could not be written; the message names it and the reason (e.g. "No space left on device")."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(fileobj)``; readers never see a partial file."""
    path = Path(path)
    try:
        return _atomic_write(path, write)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from exc


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name stays short, so a final name at the file system's length limit can be written
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
