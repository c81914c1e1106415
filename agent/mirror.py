"""Shadow traffic off the response path: a bounded queue and one low-priority worker per candidate.

``Mirror`` belongs to one candidate in a shadow stage (issue 18). The serving table calls
``offer(...)`` after the SERVING version answered a request, on the request's thread, with the
checked input and the served predictions: a sampling draw (``Sampler``) and a non-blocking put,
nothing more. The request's answer is already made; the candidate never answers it.

The worker thread takes a job, runs the candidate on the same input, compares
(``agent.shadow.compare``) and counts (``ShadowTally``): compared, agreed, the latency of both,
the candidate's errors. Shadow work runs BELOW served requests:

* the queue is bounded (``queue_size``); a sampled request that finds it full is not queued
  but counted ``skipped`` (``k`` in telemetry): under load the device sheds shadow work rather
  than queue it behind (or in front of) live requests;
* the worker lowers its own scheduling priority (``nice`` +10 for its thread on Linux), so when
  the CPUs are contended the kernel runs request threads first; the candidate session should
  be loaded single-threaded (the updater does), so its inference runs on this thread alone.

Not here: which requests reach ``offer`` (agent/serving.py), loading or closing anything but
the candidate session handed in (``stop`` closes it, after the worker's last run).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.runtime import ModelSession
from agent.shadow import Sampler, ShadowTally, compare

log = logging.getLogger("agent.mirror")

DEFAULT_QUEUE_SIZE = 16
WORKER_NICE = 10


@dataclass(frozen=True, slots=True)
class MirrorJob:
    """One served request to replay on the candidate: the checked input (a matrix for a
    single-tensor model, else feeds by input name), what the serving version answered and
    how long it took."""

    matrix: np.ndarray | None
    feeds: Mapping[str, np.ndarray] | None
    served: list[Any]
    served_s: float


class Mirror:
    """Mirrors a sample of one model's served requests to its candidate; see the module docstring."""

    def __init__(self, session: ModelSession, tally: ShadowTally, *, sample: float,
                 queue_size: int = DEFAULT_QUEUE_SIZE, draw: Callable[[], float] | None = None,
                 clock: Callable[[], float] = time.perf_counter, start: bool = True) -> None:
        self.session = session
        self.tally = tally
        self.sampler = Sampler(sample, draw)
        self.version = session.manifest.version
        self.serving_version = tally.serving
        self._task = session.manifest.task
        self._tolerance = session.manifest.health_check.max_rel_error
        self._clock = clock
        self._queue: queue.Queue[MirrorJob | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name=f"edgefleet-shadow-{tally.model}", daemon=True)
        self._stopped = False
        if start:
            self._thread.start()

    # -- the request's thread -------------------------------------------------------------------
    def offer(self, matrix: np.ndarray | None, feeds: Mapping[str, np.ndarray] | None, served: list[Any],
              served_ms: float) -> bool:
        """Queue one served request if it is sampled and there is room; True if queued.

        Never blocks and never raises: it runs inside the request's latency.
        """
        if self._stopped or not self.sampler():
            return False
        try:
            self._queue.put_nowait(MirrorJob(matrix, feeds, served, served_ms / 1000.0))
        except queue.Full:
            self.tally.skipped()
            return False
        return True

    # -- the worker -----------------------------------------------------------------------------
    def _run(self) -> None:
        _lower_priority()
        while True:
            job = self._queue.get()
            if job is None:
                return
            self.run_one(job)

    def run_one(self, job: MirrorJob) -> None:
        """Run one job on the candidate and count it (the worker's step; tests call it directly)."""
        start = self._clock()
        try:
            if job.matrix is not None:
                roles = self.session.run_roles(job.matrix)
            else:
                roles = self.session.run_feeds(job.feeds or {})
            role = "label" if self._task == "classification" else "value"
            candidate = roles[role].tolist()
        except Exception as exc:  # the candidate's failure is a figure of the stage, never the agent's
            log.debug("candidate %s failed on a mirrored request: %s", self.version, exc)
            self.tally.error()
            return
        elapsed = self._clock() - start
        self.tally.compared(compare(self._task, job.served, candidate, self._tolerance), job.served_s, elapsed)

    def pending(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking jobs, let the worker finish the one it runs, close the candidate session."""
        if self._stopped:
            return
        self._stopped = True
        # Drop what is queued (counted as skipped: sampled, never compared), then wake the worker.
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
                dropped += 1
            except queue.Empty:
                break
        if dropped:
            self.tally.skipped(dropped)
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        self.session.close()


def _lower_priority() -> None:
    """nice +10 for this thread only (Linux schedules threads; elsewhere it is a no-op)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICE))
    except (AttributeError, OSError) as exc:  # not Linux, or refused: shadow work still runs, just not niced
        log.debug("cannot lower the shadow worker's priority: %s", exc)


__all__ = ["DEFAULT_QUEUE_SIZE", "Mirror", "MirrorJob"]
