"""Host latency of a predictor: single-row p50/p95 and batched throughput.

The clock is injected (``time.perf_counter`` by default) so the arithmetic is testable
without sleeping. Host numbers only say how two models compare on this machine; the
device's own budget is checked on the device. They vary run to run, so they are reported
but never written into the (deterministic) bundle.

Single-row runs stop early once they have taken ``SINGLE_BUDGET_S`` (after at least
``MIN_SINGLE_RUNS``): a DataFrame pipeline's original takes about 10 ms a row through pandas,
so 200 runs of it cost 2-6 s of every conversion on a busy machine, for a figure that only
says "the original is slower"; 1 s of runs says the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from converter.predictors import Batch, take
from converter.predictors import batch_rows as count_rows

SINGLE_RUNS = 200
MIN_SINGLE_RUNS = 20
SINGLE_BUDGET_S = 1.0
BATCH_ROWS = 256
BATCH_RUNS = 5


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    batch_rows_per_s: float

    def __post_init__(self) -> None:
        if min(self.p50_ms, self.p95_ms, self.batch_rows_per_s) < 0 or self.p95_ms < self.p50_ms:
            raise ValueError(f"inconsistent latency figures {self}: is the injected clock monotonic?")

    def to_dict(self) -> dict[str, float]:
        return {"p50_ms": round(self.p50_ms, 4), "p95_ms": round(self.p95_ms, 4),
                "batch_rows_per_s": round(self.batch_rows_per_s, 1)}


def measure(predict: Callable[[Any], Any], rows: Batch, *, clock: Callable[[], float] = time.perf_counter,
            single_runs: int = SINGLE_RUNS, batch_rows: int = BATCH_ROWS, batch_runs: int = BATCH_RUNS,
            single_budget_s: float = SINGLE_BUDGET_S) -> Latency:
    """Time ``predict`` on one row at a time (after one warm-up call) and on batches.

    ``rows`` is a float matrix or, for a model with named columns, [n, 1] arrays by name. The
    single-row runs end after ``single_runs``, or earlier once at least ``MIN_SINGLE_RUNS`` have
    taken ``single_budget_s`` between them.
    """
    total = count_rows(rows)
    predict(take(rows, slice(0, 1)))
    singles: list[float] = []
    for i in range(single_runs):
        row = take(rows, slice(i % total, i % total + 1))
        start = clock()
        predict(row)
        singles.append(clock() - start)
        if len(singles) >= MIN_SINGLE_RUNS and sum(singles) >= single_budget_s:
            break
    batch = _repeated(rows, batch_rows)
    predict(batch)
    start = clock()
    for _ in range(batch_runs):
        predict(batch)
    elapsed = clock() - start
    ms = np.asarray(singles) * 1000.0
    rate = batch_rows * batch_runs / elapsed if elapsed > 0 else float("inf")
    return Latency(float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(rate))


def _repeated(rows: Batch, count: int) -> Batch:
    """``count`` rows, cycling through ``rows`` (the batched-throughput input)."""
    if isinstance(rows, Mapping):
        return take(rows, np.arange(count) % count_rows(rows))
    return np.resize(rows, (count, rows.shape[1])).astype(np.float32)
