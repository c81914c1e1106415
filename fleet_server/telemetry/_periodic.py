"""A daemon thread that runs one step every ``interval_s`` until it is stopped.

Shared by the server's watchdog loops (``liveness.LivenessMonitor``, ``monitor.AlertMonitor``):
start, stop and the wait between steps, nothing else. What a step does, and which errors it
survives, stays with its owner: ``step`` is expected to catch and log what it can outlive
(an exception it lets through ends the thread, as it did before this helper existed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Periodic:
    """``step`` on a thread named ``name``, every ``interval_s``; the first at once when ``at_once``."""

    def __init__(self, name: str, step: Callable[[], object], interval_s: float, *, at_once: bool) -> None:
        self.interval_s = interval_s
        self._step = step
        self._at_once = at_once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        if self._at_once:
            self._step()
        while not self._stop.wait(self.interval_s):
            self._step()
