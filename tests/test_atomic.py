"""`mia_fast.atomic`: the data reaches the disk before the rename, and the rename after it."""

from __future__ import annotations

import os

import pytest

from mia_fast import atomic


def test_write_bytes_flushes_file_then_renames_then_flushes_directory(tmp_path, monkeypatch):
    target = tmp_path / "part-000000.parquet"
    target.write_bytes(b"old")
    events = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd):
        st = os.fstat(fd)
        kind = "dir" if os.path.samestat(st, os.stat(tmp_path)) else "file"
        events.append((f"fsync {kind}", os.path.getsize(atomic.temporary_path(target))
                       if kind == "file" else None))
        fsync(fd)

    def spy_replace(src, dst):
        events.append(("replace", (os.path.basename(src), os.path.basename(dst))))
        replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", spy_fsync)
    monkeypatch.setattr(atomic.os, "replace", spy_replace)
    atomic.write_bytes(target, b"new contents")
    tmp_name = atomic.temporary_path(target).name
    assert tmp_name.startswith(".part-000000.parquet.tmp-")
    want = [("fsync file", 12), ("replace", (tmp_name, target.name))]
    if hasattr(os, "O_DIRECTORY"):
        want.append(("fsync dir", None))
    assert events == want
    assert target.read_bytes() == b"new contents" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")

    def broken(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", broken)
    with pytest.raises(OSError, match="No space left"):
        atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
