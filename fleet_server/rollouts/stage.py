"""The shadow or canary stage of a rollout wave: its settings, the wave's figures, and the verdict.

Before a wave's devices switch to the new version (B), a rollout may run a stage on them
(docs/rollouts.md, "Shadow and canary"): each device is sent B as a *candidate* beside the
version it serves (A) and either mirrors live requests to B off the response path
(``shadow``: every answer still comes from A) or lets B answer a share of them (``canary``).
When the stage time is over, the wave's figures decide: pass, and the wave is assigned B the
usual way; fail, and the rollout halts with the figures as its reason.

* :class:`ShadowPolicy`, :class:`CanaryPolicy`: the ``rollouts create --shadow/--canary`` flags,
  validated (errors carry a ``fix``) and round-tripped through ``to_dict``/``from_dict``.
* :class:`ShadowFigures`: a wave's shadow records (the telemetry batch's ``sh`` key) added up:
  compared, agreed, skipped, candidate errors, relative error, and the latency buckets of both
  versions over the compared requests, from which p50/p99 come (``edgefleet.telemetry.bucket_quantile``
  interpolated inside a bucket, as Prometheus' ``histogram_quantile`` does, since the buckets are
  2-2.5x apart).
* :class:`CanaryFigures`: feedback labels and correct answers per arm (A: the serving versions,
  B: the candidate), from the model records the devices already send.
* :func:`judge_shadow`, :func:`judge_canary`: the verdict, with a reason a person can act on
  (``shadow agreement 0.61 < 0.98 over 1,204 requests on wave 1``).

The rules, and the choices behind them:

* Shadow agreement is ``agreed / (compared + errors)``: a request the candidate failed on is a
  request it disagreed on, so a candidate that crashes on half the inputs cannot pass on the
  half it answered. The requests counted are ``compared + errors``; requests shed under load
  (``skipped``) are shown but count for nothing.
* The latency gate is the candidate's p99 over the serving version's p99, both measured on
  the same device over the same requests.
* Too few requests (or labels) when the stage time is over HALTS the rollout, with that as the
  reason, rather than waiting on: a wave whose devices see no traffic proves nothing, and a
  stage that silently stretched would hold the candidate on the devices without end. The
  operator reruns with a longer stage or a lower minimum (the reason says so).
* A canary passes when the candidate's feedback accuracy is at least the serving arm's minus
  ``max_accuracy_drop``, with at least ``min_labels`` labels in EACH arm.

Pure: no database, broker or clock. The engine (``fleet_server.rollouts.engine``) gathers the
figures, the rollout core (``fleet_server.rollouts.machine``) asks for the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from edgefleet.telemetry import LATENCY_BUCKETS_S, add_buckets, bucket_quantile
from fleet_server.errors import InvalidInputError

__all__ = [
    "CANARY",
    "SHADOW",
    "CanaryFigures",
    "CanaryPolicy",
    "ShadowFigures",
    "ShadowPolicy",
    "StageConfigError",
    "StagePolicy",
    "Verdict",
    "VerdictCode",
    "figures_from_dict",
    "judge",
    "judge_canary",
    "judge_shadow",
    "stage_from_dict",
    "summary",
]

SHADOW = "shadow"
CANARY = "canary"
_BUCKETS = len(LATENCY_BUCKETS_S) + 1  # the last counts what is above the last bound


class StageConfigError(InvalidInputError):
    """A shadow or canary setting is out of range (HTTP 422)."""


def _duration(value: timedelta, flag: str) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise StageConfigError(f"the {flag} duration {value} must be positive", fix=f"use e.g. {flag} 30m")


def _share(value: float, what: str, fix: str, *, zero: bool = False, one: bool = True) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and (value >= 0 if zero else value > 0) \
        and (value <= 1 if one else value < 1)
    if not ok:
        low, high = "[0" if zero else "(0", "1]" if one else "1)"
        raise StageConfigError(f"{what} {value} must be in {low}, {high}", fix=fix)


@dataclass(frozen=True)
class ShadowPolicy:
    """``--shadow DURATION --min-agreement X [--max-latency-ratio R] [--shadow-sample S] [--min-shadow-requests N]``."""

    duration: timedelta
    min_agreement: float
    max_latency_ratio: float = 1.5
    sample: float = 1.0
    min_requests: int = 100

    mode = SHADOW

    def __post_init__(self) -> None:
        _duration(self.duration, "--shadow")
        _share(self.min_agreement, "min agreement", "use e.g. --min-agreement 0.98 (98% of requests agree)")
        if not (isinstance(self.max_latency_ratio, int | float) and math.isfinite(self.max_latency_ratio)
                and self.max_latency_ratio >= 1):
            raise StageConfigError(f"max latency ratio {self.max_latency_ratio} must be at least 1",
                                   fix="use e.g. --max-latency-ratio 1.5 (candidate p99 at most 1.5x the serving p99)")
        _share(self.sample, "shadow sample", "use e.g. --shadow-sample 0.25 to mirror a quarter of requests")
        if isinstance(self.min_requests, bool) or not isinstance(self.min_requests, int) or self.min_requests < 1:
            raise StageConfigError(f"min shadow requests {self.min_requests} must be a positive whole number",
                                   fix="use e.g. --min-shadow-requests 500")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": SHADOW, "duration_s": self.duration.total_seconds(), "min_agreement": self.min_agreement,
                "max_latency_ratio": self.max_latency_ratio, "sample": self.sample,
                "min_requests": self.min_requests}

    def describe(self) -> str:
        return (f"shadow {self.duration.total_seconds():g}s at sample {self.sample:g}: agreement >= "
                f"{self.min_agreement:g}, candidate p99 <= {self.max_latency_ratio:g}x serving, "
                f">= {self.min_requests:,} requests")


@dataclass(frozen=True)
class CanaryPolicy:
    """``--canary SHARE [--canary-for DURATION] [--min-labels N] [--max-accuracy-drop X]``."""

    share: float
    duration: timedelta = timedelta(minutes=30)
    min_labels: int = 100
    max_accuracy_drop: float = 0.0

    mode = CANARY

    def __post_init__(self) -> None:
        _share(self.share, "canary share", "use e.g. --canary 10% (a tenth of live requests answered by the "
                                           "candidate; 100% would be a switch, not a canary)", one=False)
        _duration(self.duration, "--canary-for")
        if isinstance(self.min_labels, bool) or not isinstance(self.min_labels, int) or self.min_labels < 1:
            raise StageConfigError(f"min labels {self.min_labels} must be a positive whole number",
                                   fix="use e.g. --min-labels 200 (feedback labels per arm)")
        _share(self.max_accuracy_drop, "max accuracy drop",
               "use e.g. --max-accuracy-drop 0.01 (the candidate may be 1 point less accurate)", zero=True)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": CANARY, "share": self.share, "duration_s": self.duration.total_seconds(),
                "min_labels": self.min_labels, "max_accuracy_drop": self.max_accuracy_drop}

    def describe(self) -> str:
        return (f"canary {self.share:.0%} for {self.duration.total_seconds():g}s: candidate accuracy >= serving "
                f"- {self.max_accuracy_drop:g}, >= {self.min_labels:,} labels per arm")


StagePolicy = ShadowPolicy | CanaryPolicy


def stage_from_dict(data: Mapping[str, Any] | None) -> StagePolicy | None:
    """The stage a ``to_dict`` wrote (None: no stage)."""
    if data is None:
        return None
    seconds = timedelta(seconds=float(data["duration_s"]))
    if data.get("mode") == SHADOW:
        return ShadowPolicy(seconds, float(data["min_agreement"]), float(data["max_latency_ratio"]),
                            float(data["sample"]), int(data["min_requests"]))
    if data.get("mode") == CANARY:
        return CanaryPolicy(float(data["share"]), seconds, int(data["min_labels"]), float(data["max_accuracy_drop"]))
    raise ValueError(f"unknown stage mode {data.get('mode')!r}")


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class ShadowFigures:
    """A wave's shadow records added up (any number of devices and intervals)."""

    compared: int = 0
    agreed: int = 0
    skipped: int = 0
    errors: int = 0
    relative_error_sum: float | None = None   # regressors only
    serving_buckets: tuple[int, ...] = ()
    candidate_buckets: tuple[int, ...] = ()
    devices: int = 0                          # devices that sent at least one record

    kind = SHADOW

    @classmethod
    def of_records(cls, records: Iterable[Mapping[str, Any]]) -> ShadowFigures:
        """Add up stored shadow rows (``fleet_server.telemetry.shadow``'s column names), one device each or many."""
        total = cls()
        devices: set[str] = set()
        for r in records:
            devices.add(str(r.get("device_id", "")))
            rel = r.get("relative_error_sum")
            total = total + cls(int(r["compared"]), int(r["agreed"]), int(r["skipped"]), int(r["errors"]),
                                None if rel is None else float(rel), tuple(r.get("serving_buckets") or ()),
                                tuple(r.get("candidate_buckets") or ()))
        return ShadowFigures(total.compared, total.agreed, total.skipped, total.errors, total.relative_error_sum,
                             total.serving_buckets, total.candidate_buckets, len(devices))

    def __add__(self, other: ShadowFigures) -> ShadowFigures:
        rel = None if self.relative_error_sum is None and other.relative_error_sum is None else \
            (self.relative_error_sum or 0.0) + (other.relative_error_sum or 0.0)
        return ShadowFigures(self.compared + other.compared, self.agreed + other.agreed, self.skipped + other.skipped,
                             self.errors + other.errors, rel, add_buckets(self.serving_buckets, other.serving_buckets),
                             add_buckets(self.candidate_buckets, other.candidate_buckets),
                             self.devices + other.devices)

    @property
    def requests(self) -> int:
        """Requests the candidate was given: those both answered, and those it failed on."""
        return self.compared + self.errors

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.requests if self.requests else None

    @property
    def mean_relative_error(self) -> float | None:
        return None if self.relative_error_sum is None or not self.compared else self.relative_error_sum / self.compared

    def latency(self, which: str, q: float) -> float | None:
        """``which`` ("serving" | "candidate") quantile ``q`` in seconds."""
        return bucket_quantile(self.serving_buckets if which == "serving" else self.candidate_buckets, q,
                               interpolate=True)

    @property
    def latency_ratio(self) -> float | None:
        """Candidate p99 over serving p99 (None until both are known)."""
        serving, candidate = self.latency("serving", 0.99), self.latency("candidate", 0.99)
        if serving is None or candidate is None or serving <= 0:
            return None
        return candidate / serving

    def to_dict(self) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 4)

        return {"kind": SHADOW, "devices": self.devices, "requests": self.requests, "compared": self.compared,
                "agreed": self.agreed, "skipped": self.skipped, "errors": self.errors,
                "agreement": self.agreement, "relative_error_sum": self.relative_error_sum,
                "mean_relative_error": self.mean_relative_error,
                "serving_p50_ms": ms(self.latency("serving", 0.5)), "serving_p99_ms": ms(self.latency("serving", 0.99)),
                "candidate_p50_ms": ms(self.latency("candidate", 0.5)),
                "candidate_p99_ms": ms(self.latency("candidate", 0.99)), "latency_ratio": self.latency_ratio,
                "serving_buckets": list(self.serving_buckets), "candidate_buckets": list(self.candidate_buckets)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShadowFigures:
        rel = data.get("relative_error_sum")
        return cls(int(data["compared"]), int(data["agreed"]), int(data["skipped"]), int(data["errors"]),
                   None if rel is None else float(rel), tuple(int(c) for c in data.get("serving_buckets", ())),
                   tuple(int(c) for c in data.get("candidate_buckets", ())), int(data.get("devices", 0)))


@dataclass(frozen=True)
class CanaryFigures:
    """Feedback per arm over a wave: A (the versions the devices serve) and B (the candidate)."""

    serving_labels: int = 0
    serving_correct: int = 0
    candidate_labels: int = 0
    candidate_correct: int = 0
    serving_requests: int = 0
    candidate_requests: int = 0
    candidate_errors: int = 0
    devices: int = 0

    kind = CANARY

    def __post_init__(self) -> None:
        if self.serving_correct > self.serving_labels or self.candidate_correct > self.candidate_labels:
            raise ValueError("more correct answers than labels")

    @property
    def serving_accuracy(self) -> float | None:
        return self.serving_correct / self.serving_labels if self.serving_labels else None

    @property
    def candidate_accuracy(self) -> float | None:
        return self.candidate_correct / self.candidate_labels if self.candidate_labels else None

    @property
    def candidate_share(self) -> float | None:
        answered = self.serving_requests + self.candidate_requests
        return self.candidate_requests / answered if answered else None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": CANARY, "devices": self.devices, "serving_labels": self.serving_labels,
                "serving_correct": self.serving_correct, "candidate_labels": self.candidate_labels,
                "candidate_correct": self.candidate_correct, "serving_requests": self.serving_requests,
                "candidate_requests": self.candidate_requests, "candidate_errors": self.candidate_errors,
                "serving_accuracy": self.serving_accuracy, "candidate_accuracy": self.candidate_accuracy,
                "candidate_share": self.candidate_share}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CanaryFigures:
        return cls(*(int(data.get(k, 0)) for k in (
            "serving_labels", "serving_correct", "candidate_labels", "candidate_correct", "serving_requests",
            "candidate_requests", "candidate_errors", "devices")))


Figures = ShadowFigures | CanaryFigures


def figures_from_dict(data: Mapping[str, Any] | None) -> Figures | None:
    if data is None:
        return None
    return ShadowFigures.from_dict(data) if data.get("kind") == SHADOW else CanaryFigures.from_dict(data)


# --------------------------------------------------------------------------- verdicts


class VerdictCode(StrEnum):
    PASSED = "passed"
    LOW_AGREEMENT = "low_agreement"
    SLOW = "slow"
    LESS_ACCURATE = "less_accurate"
    TOO_FEW = "too_few"          # too few requests (shadow) or labels (canary) when the stage ended
    SKIPPED = "skipped"          # no device of the wave served an earlier version to compare against


@dataclass(frozen=True)
class Verdict:
    code: VerdictCode
    reason: str
    figures: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.code in (VerdictCode.PASSED, VerdictCode.SKIPPED)


def _ratio(value: float) -> str:
    return f"{value:.2f}" if value < 0.995 or value >= 1 else f"{value:.3f}"


def judge_shadow(policy: ShadowPolicy, figures: ShadowFigures, wave: int) -> Verdict:
    """The verdict on wave ``wave`` (0-based) once its shadow time is over."""
    where = f"on wave {wave + 1}"
    seen = figures.to_dict()
    agreement = figures.agreement
    if figures.requests < policy.min_requests or agreement is None:
        skipped = f" ({figures.skipped:,} skipped under load)" if figures.skipped else ""
        return Verdict(VerdictCode.TOO_FEW,
                       f"shadow saw {figures.requests:,} request(s) < the {policy.min_requests:,} needed {where}"
                       f"{skipped}: too few to judge; rerun with a longer --shadow or a lower --min-shadow-requests",
                       seen)
    if agreement < policy.min_agreement:
        errors = f", {figures.errors:,} candidate error(s)" if figures.errors else ""
        return Verdict(VerdictCode.LOW_AGREEMENT,
                       f"shadow agreement {_ratio(agreement)} < {policy.min_agreement:g} over "
                       f"{figures.requests:,} requests {where}{errors}", seen)
    ratio = figures.latency_ratio
    if ratio is not None and ratio > policy.max_latency_ratio:
        serving, candidate = figures.latency("serving", 0.99), figures.latency("candidate", 0.99)
        return Verdict(VerdictCode.SLOW,
                       f"shadow latency: candidate p99 {1000 * (candidate or 0):.2f} ms is {ratio:.2f}x the serving "
                       f"p99 {1000 * (serving or 0):.2f} ms > {policy.max_latency_ratio:g}x over "
                       f"{figures.requests:,} requests {where}", seen)
    latency = f", p99 ratio {ratio:.2f}" if ratio is not None else ""
    return Verdict(VerdictCode.PASSED, f"shadow agreement {_ratio(agreement)} >= {policy.min_agreement:g} over "
                                       f"{figures.requests:,} requests {where}{latency}", seen)


def judge_canary(policy: CanaryPolicy, figures: CanaryFigures, wave: int) -> Verdict:
    """The verdict on wave ``wave`` (0-based) once its canary time is over."""
    where = f"on wave {wave + 1}"
    seen = figures.to_dict()
    serving, candidate = figures.serving_accuracy, figures.candidate_accuracy
    fewest = min(figures.serving_labels, figures.candidate_labels)
    if fewest < policy.min_labels or serving is None or candidate is None:
        return Verdict(VerdictCode.TOO_FEW,
                       f"canary feedback: {figures.candidate_labels:,} label(s) for the candidate and "
                       f"{figures.serving_labels:,} for the serving version < the {policy.min_labels:,} needed per "
                       f"arm {where}: too few to judge; rerun with a longer --canary-for, a larger --canary share "
                       "or a lower --min-labels", seen)
    counts = (f"over {figures.candidate_labels:,} and {figures.serving_labels:,} labels {where}")
    if candidate < serving - policy.max_accuracy_drop - 1e-12:
        return Verdict(VerdictCode.LESS_ACCURATE,
                       f"canary accuracy {candidate:.3f} < serving {serving:.3f} - {policy.max_accuracy_drop:g} "
                       f"{counts}", seen)
    return Verdict(VerdictCode.PASSED, f"canary accuracy {candidate:.3f} >= serving {serving:.3f} - "
                                       f"{policy.max_accuracy_drop:g} {counts}", seen)


def judge(policy: StagePolicy, figures: Figures, wave: int) -> Verdict:
    """Dispatch on the stage's mode; a figures kind that does not match the stage is a bug (ValueError)."""
    if isinstance(policy, ShadowPolicy) and isinstance(figures, ShadowFigures):
        return judge_shadow(policy, figures, wave)
    if isinstance(policy, CanaryPolicy) and isinstance(figures, CanaryFigures):
        return judge_canary(policy, figures, wave)
    raise ValueError(f"{type(figures).__name__} cannot judge a {policy.mode} stage")


# --------------------------------------------------------------------------- words


def _num(value: Any, form: str = ".3f") -> str:
    return "-" if value is None else format(value, form)


def summary(wave: Mapping[str, Any]) -> str:
    """A wave's stage in a few words, from its status view (``WaveSummary.to_dict``): state, then figures.

    The API puts it in each wave as ``stage_summary``, so ``rollouts status`` and the console show the same words.
    """
    stage = wave.get("stage")
    if not stage:
        return ""
    if stage.get("verdict"):
        state = stage["verdict"].replace("_", " ")
    elif stage.get("opened_at"):
        state = f"running on {wave.get('shadowing', 0)}/{stage.get('sent', 0)}"
    else:
        state = f"starting: {wave.get('shadowing', 0)}/{stage.get('sent', 0)} ready"
    figures = stage.get("figures") or {}
    if not figures:
        return state
    if figures.get("kind") == "shadow":
        ratio = figures.get("latency_ratio")
        return (f"{state}: agreement {_num(figures.get('agreement'))} over {figures.get('requests', 0):,} req, "
                f"p99 {_num(figures.get('candidate_p99_ms'), '.2f')}/{_num(figures.get('serving_p99_ms'), '.2f')} ms"
                + (f" ({ratio:.2f}x)" if ratio is not None else "")
                + (f", {figures['skipped']:,} skipped" if figures.get("skipped") else "")
                + (f", {figures['errors']:,} errors" if figures.get("errors") else ""))
    return (f"{state}: accuracy {_num(figures.get('candidate_accuracy'))} ({figures.get('candidate_labels', 0):,} "
            f"labels) vs {_num(figures.get('serving_accuracy'))} ({figures.get('serving_labels', 0):,})")
