"""Shadow traffic off the response path: a bounded queue and one low-priority worker per candidate.

``Mirror`` belongs to one candidate in a shadow stage (issue 18). The serving table calls
``offer(...)`` after the SERVING version answered a request, on the request's thread, with the
checked input and the served predictions: a sampling draw (``Sampler``) and a non-blocking put,
nothing more. The request's answer is already made; the candidate never answers it.

The worker thread wakes when jobs wait (at most once per ``BATCH_S``), takes them, runs the candidate on the same input, compares
(``agent.shadow.compare``) and counts (``ShadowTally``): compared, agreed, the latency of both,
the candidate's errors. Shadow work runs BELOW served requests:

* the queue is bounded (``queue_size``); a sampled request that finds it full is not queued
  but counted ``skipped`` (``k`` in telemetry): under load the device sheds shadow work rather
  than queue it behind (or in front of) live requests;
* the worker spends at most ``cpu_share`` of one core on the candidate (a token bucket of
  run time: each job costs the time it took, the allowance grows by ``cpu_share`` per second
  of wall time, up to ``BURST_S``); a job over the allowance is dropped and counted
  ``skipped``, so shadow work costs the served path a bounded share of the CPU whatever the
  traffic;
* the worker runs a job only while no served request is in flight (``busy``, the serving
  table's count for the model): a job taken while the agent is busy is dropped and counted
  ``skipped`` too, so under steady load the candidate mostly waits, and its Python work (which
  holds the GIL, whatever the thread's priority) does not delay the answers;
* the worker lowers its own scheduling priority (``nice`` +10 for its thread on Linux), so when
  the CPUs are contended the kernel runs request threads first; the candidate session should
  be loaded single-threaded (the updater does), so its inference runs on this thread alone.

Not here: which requests reach ``offer`` (agent/serving.py), loading or closing anything but
the candidate session handed in (``stop`` closes it, after the worker's last run).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.batcher import run_merged
from agent.runtime import ModelSession
from agent.shadow import Sampler, ShadowTally, compare

log = logging.getLogger("agent.mirror")

DEFAULT_QUEUE_SIZE = 16
WORKER_NICE = 10
BATCH_S = 0.002  # the worker sleeps this long after a wake-up, so jobs come in batches
DEFAULT_CPU_SHARE = 0.1
MAX_BATCH = 16    # jobs the candidate runs in one call
BURST_S = 0.05   # the most run time the allowance holds: an idle stretch buys at most this much at once


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
                 clock: Callable[[], float] = time.perf_counter, busy: Callable[[], bool] | None = None,
                 batch_s: float = BATCH_S, cpu_share: float = DEFAULT_CPU_SHARE, start: bool = True) -> None:
        self.session = session
        self.tally = tally
        self.sampler = Sampler(sample, draw)
        self.version = session.manifest.version
        self.serving_version = tally.serving
        self._task = session.manifest.task
        self._tolerance = session.manifest.health_check.max_rel_error
        self._clock = clock
        self._batch_s = batch_s
        if not 0.0 < cpu_share <= 1.0:
            raise ValueError(f"cpu_share is in (0, 1], not {cpu_share}")
        self._share = cpu_share
        self._allowance = BURST_S
        self._refilled = clock()
        self.busy: Callable[[], bool] = busy or (lambda: False)  # the serving table sets it (start_shadow)
        self._size = queue_size
        # A deque and an Event rather than queue.Queue: an append takes no lock and wakes nobody
        # unless the worker sleeps. Measured in a tight predict loop on one core (digits-sized
        # model, every request sampled): served p50 +12% over no shadow with a Queue (a notify
        # and a worker wake-up per request), +6% with this; and without the worker's nice +10,
        # p50 doubled and p99 grew 2-10x (the worker then competes with the request on equal terms).
        self._jobs: deque[MirrorJob] = deque()
        self._wake = threading.Event()
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
        if len(self._jobs) >= self._size:
            self.tally.skipped()
            return False
        self._jobs.append(MirrorJob(matrix, feeds, served, served_ms / 1000.0))
        if not self._wake.is_set():
            self._wake.set()
        return True

    # -- the worker -----------------------------------------------------------------------------
    def _run(self) -> None:
        _lower_priority()
        while not self._stopped:
            self._wake.wait()
            self._wake.clear()
            # Let jobs gather: one wake-up per batch, not per request.
            time.sleep(self._batch_s)
            self.run_pending()

    def run_pending(self) -> int:
        """Run the queued jobs (each shed instead while the agent is busy or over its CPU share),
        those with one input matrix in batches of up to ``MAX_BATCH`` (one runtime call and
        one comparison loop a batch: the worker's Python work, and the GIL it holds, is paid
        once per batch rather than per request); how many jobs were taken."""
        taken = 0
        while not self._stopped and self._jobs:
            now = self._clock()
            self._allowance = min(BURST_S, self._allowance + (now - self._refilled) * self._share)
            self._refilled = now
            batch: list[MirrorJob] = []
            while len(batch) < MAX_BATCH:
                try:
                    job = self._jobs.popleft()
                except IndexError:
                    break
                taken += 1
                if self._allowance <= 0 or self.busy():
                    self.tally.skipped()  # over its CPU share, or served requests first: shed, not delayed
                    continue
                if job.matrix is None:
                    self.run_one(job)  # named inputs run alone
                    continue
                batch.append(job)
            if batch:
                self._run_batch(batch)
            self._allowance -= self._clock() - now
        return taken

    def _run_batch(self, batch: list[MirrorJob]) -> None:
        """The candidate on the batch's matrices in one run (``agent.batcher.run_merged``: a
        failure is retried job by job, so it counts only against the jobs that fail alone).
        Each job's candidate latency is the batch's: how long its answer took to come."""
        start = self._clock()
        outcomes = run_merged(self.session.run_roles, [job.matrix for job in batch if job.matrix is not None])
        elapsed = self._clock() - start
        role = "label" if self._task == "classification" else "value"
        for job, roles in zip(batch, outcomes, strict=True):
            if isinstance(roles, Exception) or role not in roles:
                self.tally.error()
                continue
            self.tally.compared(compare(self._task, job.served, roles[role].tolist(), self._tolerance), job.served_s,
                                elapsed)

    def run_one(self, job: MirrorJob) -> None:
        """Run one job on the candidate and count it (the worker's step)."""
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
        return len(self._jobs)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking jobs, let the worker finish the one it runs, close the candidate session.

        Jobs still queued are counted skipped (sampled, never compared).
        """
        if self._stopped:
            return
        self._stopped = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        dropped = len(self._jobs)
        self._jobs.clear()
        if dropped:
            self.tally.skipped(dropped)
        self.session.close()


def _lower_priority() -> None:
    """nice +10 for this thread only (Linux schedules threads; elsewhere it is a no-op)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICE))
    except (AttributeError, OSError) as exc:  # not Linux, or refused: shadow work still runs, just not niced
        log.debug("cannot lower the shadow worker's priority: %s", exc)


__all__ = ["DEFAULT_QUEUE_SIZE", "Mirror", "MirrorJob"]
