"""Atomic, durable file writes: nothing already written is lost and no reader sees half a file.

A file is written to a temporary name in its directory (``.NAME.tmp-PID``), flushed to disk,
renamed over its final name, and the directory is flushed too. After a crash, a kill or a power
loss the final name holds the old file, or the whole new one: never an empty or partial file.
Temporaries left by a killed process match ``.*.tmp-*`` and are safe to delete.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["temporary_path", "commit", "write_bytes"]


def temporary_path(path: Path) -> Path:
    """Where to write ``path`` before `commit`."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def commit(tmp: Path, path: Path) -> None:
    """Flush the written ``tmp`` to disk, rename it to ``path``, and flush the rename."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):  # POSIX: the directory entry itself
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    tmp = temporary_path(path)
    tmp.write_bytes(data)
    commit(tmp, path)
