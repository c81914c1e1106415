"""A directory for what is built once per test run and shared by every pytest-xdist worker.

tests/conftest.py makes it in the controlling process (or the only one) and names it in
EDGEFLEET_TEST_SHARED, which the workers inherit; ``locked`` lets the first worker that needs
an entry build it while the others wait, then read it. Without the variable (a helper used
outside pytest) there is no shared directory and callers build privately.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

SHARED_ENV = "EDGEFLEET_TEST_SHARED"


def shared_dir() -> Path | None:
    raw = os.environ.get(SHARED_ENV)
    return Path(raw) if raw else None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing) held by this process."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
