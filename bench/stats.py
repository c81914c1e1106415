"""Pure statistics for the benchmarks: percentiles, throughput and ratios of measured samples.

No clock and no I/O here: callers time things and hand the samples in, so this is tested alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("no samples: a percentile of nothing is undefined")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


QUANTILES = tuple(range(0, 101, 5))


@dataclass(frozen=True)
class LatencySummary:
    """Latency percentiles in milliseconds and throughput in requests/s of one load run."""

    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_rps: float
    # The distribution at every 5th percentile (0, 5, ..., 100), for the CDF plot.
    quantiles_ms: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.requests < 0 or self.errors < 0 or self.throughput_rps < 0:
            raise ValueError(f"negative counts in {self}")
        if not self.p50_ms <= self.p95_ms <= self.p99_ms:
            raise ValueError(f"percentiles out of order in {self}")

    @classmethod
    def of(cls, latencies_s: Sequence[float], errors: int, wall_s: float, *,
           completed: int | None = None) -> LatencySummary:
        """Summarize per-request latencies; throughput is ``completed`` (default: all samples) per wall second."""
        if wall_s <= 0:
            raise ValueError("wall time must be positive")
        ms = [v * 1000 for v in latencies_s]
        done = len(ms) if completed is None else completed
        return cls(len(ms), errors, round(percentile(ms, 50), 4), round(percentile(ms, 95), 4),
                   round(percentile(ms, 99), 4), round(done / wall_s, 1),
                   tuple(round(percentile(ms, q), 4) for q in QUANTILES))

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "p50_ms": self.p50_ms, "p95_ms": self.p95_ms,
                "p99_ms": self.p99_ms, "throughput_rps": self.throughput_rps, "quantiles_ms": list(self.quantiles_ms)}


def ratio(numerator: float | None, denominator: float | None, digits: int = 2) -> float | None:
    """``numerator / denominator`` rounded, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, digits)


def spread(values: Sequence[float | None]) -> dict[str, float] | None:
    """``{"min", "median", "max"}`` of repeated measurements (None values skipped; None if none left)."""
    present = sorted(v for v in values if v is not None)
    if not present:
        return None
    return {"min": round(present[0], 4), "median": round(percentile(present, 50), 4), "max": round(present[-1], 4)}


def combine_repeats(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row from repeated load runs of the same path and concurrency.

    Each figure (p50, p95, p99, throughput, server CPU) is the median of the repeats, and its
    range is kept beside it (``throughput_rps_range`` etc.). Medians of each percentile keep
    their order (p50 <= p95 <= p99 in every run, so in the medians too). The latency
    distribution (``quantiles_ms``) is that of the run with the median throughput.
    """
    if not runs:
        raise ValueError("no runs to combine")
    out: dict[str, Any] = {"repeats": len(runs), "requests": sum(r["requests"] for r in runs),
                           "errors": sum(r["errors"] for r in runs)}
    for key in ("p50_ms", "p95_ms", "p99_ms", "throughput_rps", "server_cpu_us_per_request"):
        summary = spread([r.get(key) for r in runs])
        out[key] = None if summary is None else summary["median"]
        out[f"{key.removesuffix('_ms').removesuffix('_rps')}_range"] = summary
    by_rate = sorted(runs, key=lambda r: r["throughput_rps"])
    out["quantiles_ms"] = list(by_rate[len(by_rate) // 2].get("quantiles_ms", []))
    return out
