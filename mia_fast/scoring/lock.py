"""One writer per score directory: an exclusive OS file lock held for the whole run.

The lock is ``DIR/.lock``, locked with ``flock`` (``msvcrt.locking`` on Windows) for as long as
the run's process holds it open. The operating system releases it when the process ends, however
it ends (a kill -9 included), so a lock is never left stale; the file itself stays, holding the
last holder's pid, host, start time and command line, which a refused run quotes.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any, Optional

__all__ = ["LOCK", "DirectoryBusyError", "DirectoryLock", "check_unlocked"]

LOCK = ".lock"


class DirectoryBusyError(RuntimeError):
    """Another process is writing the score directory."""


def _try_lock(f: IO[str]) -> bool:
    """Lock the open file exclusively without waiting; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _busy(out_dir: Path, f: IO[str]) -> DirectoryBusyError:
    f.seek(0)
    try:
        holder: dict[str, Any] = json.loads(f.read() or "{}")
    except json.JSONDecodeError:
        holder = {}
    who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
           + (f": {holder['command']}" if holder.get("command") else ""))
    return DirectoryBusyError(
        f"out_dir: {str(out_dir)!r} is being written by another run ({who}); two runs into one directory "
        "would mix their results. Wait for it to finish (or stop it), or use another output directory."
    )


def check_unlocked(out_dir: Path) -> None:
    """Raise `DirectoryBusyError` if a live process holds ``out_dir``'s lock (writes nothing)."""
    path = Path(out_dir) / LOCK
    if not path.is_file():
        return
    with open(path, "r+", encoding="utf-8") as f:
        if not _try_lock(f):
            raise _busy(Path(out_dir), f)
    # closing the file releases the probe's own lock at once


class DirectoryLock:
    """Context manager holding ``out_dir``'s exclusive lock (``out_dir`` is created if needed).

    Raises `DirectoryBusyError` naming the holder when another live process has it.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self._file: Optional[IO[str]] = None

    def __enter__(self) -> "DirectoryLock":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.out_dir / LOCK, "a+", encoding="utf-8")
        if not _try_lock(f):
            err = _busy(self.out_dir, f)
            f.close()
            raise err
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}))
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()  # releases the lock
            self._file = None
