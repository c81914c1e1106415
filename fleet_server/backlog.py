"""A count of queued work that a writer thread has not finished, and a bounded wait for zero.

The MQTT handlers (telemetry ingest, presence) only queue; a writer thread stores in batches.
``drain`` lets shutdown and tests wait until everything queued so far is stored.
"""

from __future__ import annotations

import threading
import time


class Backlog:
    def __init__(self) -> None:
        self._idle = threading.Condition()
        self._pending = 0

    def add(self, count: int = 1) -> None:
        with self._idle:
            self._pending += count

    def done(self, count: int) -> None:
        with self._idle:
            self._pending -= count
            self._idle.notify_all()

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every item added so far is done; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True
