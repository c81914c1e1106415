"""Crash-safe file writes.

A file is written to a temporary name in the same directory, fsynced, renamed over the
target with ``os.replace`` (atomic on POSIX), and the directory is fsynced so the rename
itself survives a power cut. A reader sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replacing(path: str | os.PathLike[str], mode: int) -> Iterator[BinaryIO]:
    """Yield a temp file beside ``path``; on success fsync it, rename it over ``path``, fsync the dir."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    with _replacing(path, mode) as handle:
        handle.write(data)


def atomic_write_json(path: str | os.PathLike[str], document: Any, *, mode: int = 0o644) -> None:
    data = (json.dumps(document, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()
    atomic_write_bytes(path, data, mode=mode)


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, mode: int = 0o644) -> None:
    """Copy ``src`` to ``dst`` atomically (streamed, so large bundles do not sit in memory)."""
    with _replacing(dst, mode) as out, open(src, "rb") as inp:
        while chunk := inp.read(1 << 20):
            out.write(chunk)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], *, shared: bool = False) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if missing): exclusive, or ``shared`` for readers.

    flock, not lockf: the lock belongs to the open file, so threads of one process exclude
    each other as well as other processes (server replicas sharing a directory). OSError
    from opening or locking propagates for the caller to name.
    """
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
