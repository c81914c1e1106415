"""Shadow figures, pure: does the candidate agree with the serving version, and how fast is each.

A shadow stage (issue 18, docs/update-path.md "Candidates") mirrors a sample of live requests
to a candidate version off the response path (agent/mirror.py does the threads). What this
module decides, with no thread, clock or runtime inside:

    compare(task, served, candidate, tolerance)   one request: agreed or not, its relative error
    ShadowTally                                    counts for one (model, candidate, serving):
                                                   compared, agreed, skipped, candidate errors,
                                                   relative errors, latency buckets of both; the
                                                   interval's ``edgefleet.telemetry.ShadowRecord``
                                                   (``take``) and running totals (``totals``)
    Sampler                                        whether this request is mirrored (or answered
                                                   by a canary): a share ``rate``, random draws
                                                   injected so tests pin them

Agreement of one request: classifiers, every row's top-1 label equal (labels compared as
strings, like feedback: 3 and "3" are one class); regressors, every row's relative error
``abs(b - a) / max(abs(a), EPS)`` within the candidate bundle's health-check ``max_rel_error``.
A request's relative error is the mean over its rows, so ``rel_error_sum / compared`` is a
mean per request. A request whose answers differ in length (a bug in one model) disagrees.

Not here: running either model, queues, when a stage starts or ends (agent/updater.py).
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edgefleet.telemetry import LATENCY_BUCKETS_S, ShadowRecord, latency_bucket, trim_buckets

EPS = 1e-9
_BUCKETS = len(LATENCY_BUCKETS_S) + 1


@dataclass(frozen=True)
class Comparison:
    """One mirrored request: whether the candidate agreed, and its relative error (regressors)."""

    agreed: bool
    rel_error: float | None = None


def compare(task: str, served: Sequence[Any], candidate: Sequence[Any], tolerance: float) -> Comparison:
    """Compare the serving version's predictions with the candidate's for one request.

    ``task`` is the manifest's (``classification`` or anything else: a regressor); ``tolerance``
    the candidate's ``health_check.max_rel_error`` (regressors only).
    """
    if task == "classification":
        if len(served) != len(candidate):
            return Comparison(False)
        return Comparison(all(str(a) == str(b) for a, b in zip(served, candidate, strict=True)))
    a_rows, b_rows = _flat(served), _flat(candidate)
    if len(a_rows) != len(b_rows) or not a_rows:
        return Comparison(False, None)
    errors = []
    for a, b in zip(a_rows, b_rows, strict=True):
        if not (math.isfinite(a) and math.isfinite(b)):
            errors.append(math.inf)
            continue
        errors.append(abs(b - a) / max(abs(a), EPS))
    worst = max(errors)
    mean = sum(errors) / len(errors)
    # An infinite error (NaN/inf output) disagrees, and is kept out of the sum (it would poison it).
    return Comparison(worst <= tolerance, mean if math.isfinite(mean) else None)


def _flat(values: Sequence[Any]) -> list[float]:
    out: list[float] = []
    for value in values:
        if isinstance(value, (list, tuple)):
            out.extend(_flat(value))
        else:
            try:
                out.append(float(value))
            except (TypeError, ValueError):
                out.append(math.nan)
    return out


@dataclass(frozen=True)
class ShadowTotals:
    """Running totals of one candidate since its stage started (the agent's /metrics, status)."""

    model: str
    version: str
    serving: str
    mode: str
    compared: int
    agreed: int
    skipped: int
    errors: int

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "serving": self.serving, "mode": self.mode,
                "compared": self.compared, "agreed": self.agreed, "skipped": self.skipped, "errors": self.errors,
                "agreement": None if self.agreement is None else round(self.agreement, 4)}


class _Counts:
    __slots__ = ("agreed", "candidate_buckets", "compared", "errors", "rel_sum", "serving_buckets", "skipped")

    def __init__(self) -> None:
        self.compared = self.agreed = self.skipped = self.errors = 0
        self.rel_sum: float | None = None
        self.serving_buckets = [0] * _BUCKETS
        self.candidate_buckets = [0] * _BUCKETS

    @property
    def active(self) -> bool:
        return bool(self.compared or self.skipped or self.errors)


class ShadowTally:
    """The shadow counts of one candidate: the interval's (``take``) and since the start (``totals``).

    Thread-safe: the mirror's worker adds comparisons and errors, request threads add skips,
    the reporter takes the interval.
    """

    def __init__(self, model: str, version: str, serving: str, mode: str = "shadow") -> None:
        self.model, self.version, self.serving, self.mode = model, version, serving, mode
        self._lock = threading.Lock()
        self._interval = _Counts()
        self._total = _Counts()

    def compared(self, comparison: Comparison, serving_s: float, candidate_s: float) -> None:
        s_bucket, c_bucket = latency_bucket(serving_s), latency_bucket(candidate_s)
        with self._lock:
            for counts in (self._interval, self._total):
                counts.compared += 1
                counts.agreed += comparison.agreed
                if comparison.rel_error is not None:
                    counts.rel_sum = (counts.rel_sum or 0.0) + comparison.rel_error
                counts.serving_buckets[s_bucket] += 1
                counts.candidate_buckets[c_bucket] += 1

    def skipped(self, n: int = 1) -> None:
        with self._lock:
            self._interval.skipped += n
            self._total.skipped += n

    def error(self) -> None:
        with self._lock:
            self._interval.errors += 1
            self._total.errors += 1

    def take(self) -> ShadowRecord | None:
        """Close the interval: its record, or None when nothing happened in it."""
        with self._lock:
            counts, self._interval = self._interval, _Counts()
        if not counts.active:
            return None
        return ShadowRecord(self.model, self.version, self.serving, counts.compared, counts.agreed, counts.skipped,
                            counts.errors, counts.rel_sum, trim_buckets(counts.serving_buckets),
                            trim_buckets(counts.candidate_buckets))

    def totals(self) -> ShadowTotals:
        with self._lock:
            t = self._total
            return ShadowTotals(self.model, self.version, self.serving, self.mode, t.compared, t.agreed, t.skipped,
                                t.errors)


class Sampler:
    """Whether one request is picked, with probability ``rate`` (1.0: every one; 0: none).

    Independent draws, not every k-th request: a pattern in the traffic (a client that
    alternates two kinds of input) cannot line up with the choice. ``draw`` is injected.
    """

    def __init__(self, rate: float, draw: Callable[[], float] | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"a sampling rate is in [0, 1], not {rate}")
        self.rate = rate
        self._draw = draw or random.Random().random

    def __call__(self) -> bool:
        return self.rate >= 1.0 or (self.rate > 0.0 and self._draw() < self.rate)


__all__ = ["EPS", "Comparison", "Sampler", "ShadowTally", "ShadowTotals", "compare"]
