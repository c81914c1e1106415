"""A thread-safe count of finished requests that a test can wait on, so swap loops interleave
with real traffic on a slow shared machine instead of finishing before the clients start."""

from __future__ import annotations

import threading


class Tally:
    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    def add(self) -> None:
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    @property
    def count(self) -> int:
        with self._changed:
            return self._count

    def wait_for_more(self, than: int, timeout: float = 10.0) -> int:
        """Block until more than ``than`` requests have finished; returns the count."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._count > than, timeout):
                raise AssertionError(f"no request finished within {timeout}s (count stayed {self._count})")
            return self._count
