"""Probation: the judgement on a newly activated model while it serves real traffic.

After the switch the new model serves, but the update is not final: ``Probation`` is fed
serving-stats snapshots and agent restarts, each with its timestamp, and ``decide(now)``
says continue, commit or roll back, with a reason:

    crash_loop   ``max_restarts`` agent restarts since probation began
    bad_outputs  a NaN, infinite or out-of-range output was served
    errors       inference errors above ``max_error_rate``
    latency      p95 latency above ``latency_budget_multiplier`` x the profile's budget
    (commit)     ``duration_s`` elapsed with at least ``min_requests`` requests and none of the
                 above; or ``max_wait_s`` elapsed without enough traffic to judge (a device
                 nobody queries must not hold a rollout's wave forever: ``low_traffic`` says so)

``output_problems`` counts the rows of one inference result that no sane model produces
(NaN or infinite numbers, probabilities outside [0, 1] or not summing to 1), so the serving
path can feed ``bad_outputs``.

Pure: no clock, no runtime, no disk. Counters in snapshots are cumulative since the serving
process started; a counter that goes down means the process restarted and is read as a fresh
start, so the totals survive restarts when the I/O layer persists ``to_dict()``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agent.errors import AgentError


class ProbationError(AgentError):
    """A probation configuration or persisted probation state is invalid."""


class Verdict(enum.StrEnum):
    CONTINUE = "continue"
    COMMIT = "commit"
    ROLL_BACK = "roll_back"


@dataclass(frozen=True)
class ProbationConfig:
    """How long and how hard a new model is watched before it is committed."""

    duration_s: float = 60.0
    min_requests: int = 20
    max_error_rate: float = 0.02
    latency_budget_multiplier: float = 2.0
    max_restarts: int = 3
    max_wait_s: float | None = None        # default: 5 x duration_s
    # Fewer samples than this say nothing about p95: below 20, one request in the window is more
    # than 5% of it, and the p95 of 15 samples is mostly their maximum, so a single request the OS
    # preempted once rolled back a good camera model in the demo (p95 11.6 ms of 15 requests).
    min_latency_samples: int = 20

    def __post_init__(self) -> None:
        if not self.duration_s >= 0:
            raise ProbationError(f"probation duration must be >= 0 seconds, got {self.duration_s}")
        if self.min_requests < 0 or self.max_restarts < 1 or self.min_latency_samples < 1:
            raise ProbationError("probation min_requests must be >= 0, max_restarts and min_latency_samples >= 1")
        if not 0 <= self.max_error_rate <= 1:
            raise ProbationError(f"probation max_error_rate must be in [0, 1], got {self.max_error_rate}")
        if not self.latency_budget_multiplier > 0:
            raise ProbationError("probation latency_budget_multiplier must be positive")
        if self.max_wait_s is not None and self.max_wait_s < self.duration_s:
            raise ProbationError("probation max_wait_s must be at least duration_s")

    @property
    def wait_limit_s(self) -> float:
        return self.max_wait_s if self.max_wait_s is not None else 5 * self.duration_s

    def to_dict(self) -> dict[str, Any]:
        return {"duration_s": self.duration_s, "min_requests": self.min_requests, "max_error_rate": self.max_error_rate,
                "latency_budget_multiplier": self.latency_budget_multiplier, "max_restarts": self.max_restarts,
                "max_wait_s": self.max_wait_s, "min_latency_samples": self.min_latency_samples}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbationConfig:
        wait = data.get("max_wait_s")
        return cls(float(data["duration_s"]), int(data["min_requests"]), float(data["max_error_rate"]),
                   float(data["latency_budget_multiplier"]), int(data["max_restarts"]),
                   None if wait is None else float(wait), int(data.get("min_latency_samples", 20)))


@dataclass(frozen=True)
class StatsSnapshot:
    """Serving statistics of one model at one moment (cumulative counts, recent latencies)."""

    at: float
    requests: int
    errors: int
    bad_outputs: int = 0
    latencies_ms: Sequence[float] = ()

    def __post_init__(self) -> None:
        if self.requests < 0 or self.errors < 0 or self.bad_outputs < 0:
            raise ProbationError("serving counters cannot be negative")


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str | None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Counts:
    requests: int = 0
    errors: int = 0
    bad_outputs: int = 0


@dataclass(frozen=True)
class Probation:
    """What has been seen of one activated model since ``started_at``."""

    config: ProbationConfig
    started_at: float
    latency_budget_ms: float
    totals: _Counts = _Counts()
    last: _Counts = _Counts()              # the last snapshot's cumulative counters
    restarts: tuple[float, ...] = ()
    p95_ms: float | None = None            # of the last snapshot with enough samples
    worst_p95_ms: float | None = None

    def __post_init__(self) -> None:
        if not self.latency_budget_ms > 0:
            raise ProbationError("probation needs a positive latency budget")

    def observe(self, snapshot: StatsSnapshot) -> Probation:
        """Fold in one serving-stats snapshot."""
        cur = _Counts(snapshot.requests, snapshot.errors, snapshot.bad_outputs)
        if cur.requests < self.last.requests or cur.errors < self.last.errors or cur.bad_outputs < self.last.bad_outputs:
            base = _Counts()  # the serving process restarted: its counters began again at zero
        else:
            base = self.last
        totals = _Counts(self.totals.requests + cur.requests - base.requests,
                         self.totals.errors + cur.errors - base.errors,
                         self.totals.bad_outputs + cur.bad_outputs - base.bad_outputs)
        p95 = self.p95_ms
        worst = self.worst_p95_ms
        if len(snapshot.latencies_ms) >= self.config.min_latency_samples:
            p95 = float(np.percentile(np.asarray(snapshot.latencies_ms, dtype=float), 95))
            worst = p95 if worst is None else max(worst, p95)
        return replace(self, totals=totals, last=cur, p95_ms=p95, worst_p95_ms=worst)

    def restart(self, at: float) -> Probation:
        """The agent restarted at ``at``; its serving counters start again from zero."""
        return replace(self, restarts=(*self.restarts, at), last=_Counts())

    def decide(self, now: float) -> Decision:
        cfg = self.config
        elapsed = max(0.0, now - self.started_at)
        t = self.totals
        details: dict[str, Any] = {"elapsed_s": round(elapsed, 3), "requests": t.requests, "errors": t.errors,
                                   "bad_outputs": t.bad_outputs, "restarts": len(self.restarts),
                                   "p95_ms": self.p95_ms, "latency_budget_ms": self.latency_budget_ms}
        restarts = [r for r in self.restarts if r >= self.started_at]
        if len(restarts) >= cfg.max_restarts:
            return Decision(Verdict.ROLL_BACK, "crash_loop", details)
        if t.bad_outputs > 0:
            return Decision(Verdict.ROLL_BACK, "bad_outputs", details)
        # Divide by at least min_requests: one error in the first two requests is not a 50% rate,
        # but a burst of errors early on still rolls back before the probation ends.
        if t.errors / max(t.requests, cfg.min_requests, 1) > cfg.max_error_rate:
            return Decision(Verdict.ROLL_BACK, "errors", details)
        limit = self.latency_budget_ms * cfg.latency_budget_multiplier
        if self.p95_ms is not None and self.p95_ms > limit:
            return Decision(Verdict.ROLL_BACK, "latency", {**details, "latency_limit_ms": limit})
        if elapsed >= cfg.duration_s and t.requests >= cfg.min_requests:
            return Decision(Verdict.COMMIT, None, details)
        if elapsed >= cfg.wait_limit_s:
            return Decision(Verdict.COMMIT, None, {**details, "low_traffic": True})
        return Decision(Verdict.CONTINUE, None, details)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "started_at": self.started_at,
                "latency_budget_ms": self.latency_budget_ms, "totals": _counts_dict(self.totals),
                "last": _counts_dict(self.last), "restarts": list(self.restarts), "p95_ms": self.p95_ms,
                "worst_p95_ms": self.worst_p95_ms}

    @classmethod
    def from_dict(cls, data: Any) -> Probation:
        try:
            return cls(ProbationConfig.from_dict(data["config"]), float(data["started_at"]),
                       float(data["latency_budget_ms"]), _Counts(**data["totals"]), _Counts(**data["last"]),
                       tuple(float(r) for r in data["restarts"]), _opt(data.get("p95_ms")),
                       _opt(data.get("worst_p95_ms")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProbationError(f"persisted probation state is malformed: {exc}",
                                 fix="delete update.json; the agent keeps serving its active model") from exc


def _counts_dict(c: _Counts) -> dict[str, int]:
    return {"requests": c.requests, "errors": c.errors, "bad_outputs": c.bad_outputs}


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def output_problems(outputs: Mapping[str, Any], *, atol: float = 1e-3) -> int:
    """Rows of one inference result that are NaN, infinite or out of range.

    ``outputs`` maps roles to arrays as ``ModelSession.run_roles`` returns them. Labels are
    not checked (any label the model emits is in its vocabulary by construction).
    """
    bad: np.ndarray | None = None
    for role in ("probabilities", "value"):
        if role not in outputs:
            continue
        arr = np.asarray(outputs[role], dtype=float)
        rows = arr.reshape(arr.shape[0], -1) if arr.ndim else arr.reshape(1, 1)
        row_bad = ~np.isfinite(rows).all(axis=1)
        if role == "probabilities":
            with np.errstate(invalid="ignore"):
                row_bad |= (rows < -atol).any(axis=1) | (rows > 1 + atol).any(axis=1)
                row_bad |= np.abs(rows.sum(axis=1) - 1.0) > max(atol, 1e-2)
        bad = row_bad if bad is None else bad | row_bad
    return 0 if bad is None else int(bad.sum())
