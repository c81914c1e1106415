"""How many intra-op threads a model gets: measured, 1 against the profile's N, when it is loaded.

A profile's ``intra_op_threads`` suits big models; for the small ones edge devices mostly serve,
a single-row run split over threads is slower than on one (the bench's forest: 21 µs with two
threads against 13 µs with one) and the waiting thread's core is taken from the API. So when
a session is loaded with N > 1, a second one with a single thread is built, both run the same
made-up single row, and the faster by a clear margin serves (``choose``); ties go to one
thread, which costs less CPU.

Pure parts: ``choose`` (times in, thread count out) and ``sample_feeds`` (input descriptions
in, one zero row per input out, or None where a shape is not known without data). The
timing loop takes its clock as an argument. It does not build sessions (``agent.runtime``
does) and skips models whose file is over ``MAX_TUNED_BYTES``: a second copy of a big model
costs memory and load time, and big models are the ones N threads are for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

MAX_TUNED_BYTES = 16 * 1024 * 1024
# N threads must be at least this much faster than one to be worth their CPU.
MARGIN = 0.9

# onnxruntime's input type names -> the dtype of a zero row.
_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
           "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def choose(seconds: Mapping[int, float], *, margin: float = MARGIN) -> int:
    """The thread count to serve with: the fewest, unless more are faster than ``margin`` x its time."""
    if not seconds:
        raise ValueError("no timings to choose from")
    best = min(seconds)
    for threads in sorted(seconds):
        if seconds[threads] < seconds[best] * margin:
            best = threads
    return best


def sample_feeds(inputs: Sequence[tuple[str, str, Sequence[Any]]]) -> dict[str, np.ndarray] | None:
    """One zero row per input from (name, type, shape) triples; None when a dimension after the
    batch is not a number or a type has no zero row here (strings)."""
    feeds: dict[str, np.ndarray] = {}
    for name, kind, shape in inputs:
        dtype = _DTYPES.get(kind)
        rest = list(shape[1:])
        if dtype is None or not shape or not all(isinstance(d, int) and d > 0 for d in rest):
            return None
        feeds[name] = np.zeros([1, *rest], dtype=dtype)
    return feeds


def seconds_per_run(run: Callable[[], Any], runs: int = 40, *, clock: Callable[[], float] = time.perf_counter) -> float:
    """The median of ``runs`` timed calls after a few untimed ones (first runs allocate)."""
    for _ in range(5):
        run()
    times = []
    for _ in range(runs):
        start = clock()
        run()
        times.append(clock() - start)
    times.sort()
    return times[len(times) // 2]
