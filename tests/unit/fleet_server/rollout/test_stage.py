"""The shadow and canary stage's pure parts: its settings, the figures of a wave, and the verdict."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_server.rollouts.machine import RolloutPolicy
from fleet_server.rollouts.stage import (
    CanaryFigures,
    CanaryPolicy,
    ShadowFigures,
    ShadowPolicy,
    StageConfigError,
    VerdictCode,
    judge,
    judge_canary,
    judge_shadow,
    stage_from_dict,
    summary,
)

SHADOW = ShadowPolicy(timedelta(minutes=30), 0.98, max_latency_ratio=1.5, min_requests=100)
CANARY = CanaryPolicy(0.1, timedelta(minutes=30), min_labels=50, max_accuracy_drop=0.01)
FAST = (0, 0, 0, 10)  # ten requests in the 0.5-1 ms bucket


def shadow(compared: int, agreed: int, *, errors: int = 0, skipped: int = 0, serving: tuple[int, ...] = (),
           candidate: tuple[int, ...] = ()) -> ShadowFigures:
    return ShadowFigures(compared, agreed, skipped, errors, None, serving, candidate, 3)


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make, flag", [
    (lambda: ShadowPolicy(timedelta(0), 0.98), "--shadow"),
    (lambda: ShadowPolicy(timedelta(minutes=5), 1.2), "--min-agreement"),
    (lambda: ShadowPolicy(timedelta(minutes=5), 0.9, max_latency_ratio=0.5), "--max-latency-ratio"),
    (lambda: ShadowPolicy(timedelta(minutes=5), 0.9, sample=0.0), "--shadow-sample"),
    (lambda: ShadowPolicy(timedelta(minutes=5), 0.9, min_requests=0), "--min-shadow-requests"),
    (lambda: CanaryPolicy(1.0), "--canary"),
    (lambda: CanaryPolicy(0.0), "--canary"),
    (lambda: CanaryPolicy(0.1, timedelta(seconds=-1)), "--canary-for"),
    (lambda: CanaryPolicy(0.1, min_labels=0), "--min-labels"),
    (lambda: CanaryPolicy(0.1, max_accuracy_drop=float("nan")), "--max-accuracy-drop"),
])
def test_bad_stage_settings_are_refused_with_the_flag_to_fix(make: object, flag: str) -> None:
    with pytest.raises(StageConfigError) as caught:
        make()  # type: ignore[operator]
    assert flag in (caught.value.fix or ""), caught.value.fix


@pytest.mark.parametrize("stage", [SHADOW, CANARY, ShadowPolicy(timedelta(seconds=90), 0.9, 2.0, 0.25, 7)])
def test_a_policy_with_a_stage_round_trips(stage: ShadowPolicy | CanaryPolicy) -> None:
    policy = RolloutPolicy(stage=stage)
    assert RolloutPolicy.from_dict(policy.to_dict()) == policy
    assert stage_from_dict(stage.to_dict()) == stage


def test_a_policy_stored_before_stages_reads_as_no_stage() -> None:
    stored = RolloutPolicy().to_dict()
    del stored["stage"]
    assert RolloutPolicy.from_dict(stored).stage is None


# -- figures ----------------------------------------------------------------------------------


_records = st.lists(st.builds(
    lambda c, g, k, e, hs: {"device_id": f"d{c % 3}", "compared": c, "agreed": min(g, c), "skipped": k, "errors": e,
                            "relative_error_sum": None, "serving_buckets": hs, "candidate_buckets": hs[::-1]},
    st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 50), st.integers(0, 50),
    st.lists(st.integers(0, 9), max_size=17)), max_size=12)


@given(_records, _records)
def test_figures_add_up_whatever_the_grouping(a: list[dict[str, object]], b: list[dict[str, object]]) -> None:
    whole = ShadowFigures.of_records(a + b)
    parts = ShadowFigures.of_records(a) + ShadowFigures.of_records(b)
    assert (whole.compared, whole.agreed, whole.errors, whole.skipped) == \
        (parts.compared, parts.agreed, parts.errors, parts.skipped)
    assert sum(whole.serving_buckets) == sum(parts.serving_buckets)
    assert whole.agreement is None or 0 <= whole.agreement <= 1
    assert ShadowFigures.from_dict(whole.to_dict()) == whole


# -- verdicts ---------------------------------------------------------------------------------


def test_low_agreement_fails_with_the_figures_as_the_reason() -> None:
    verdict = judge_shadow(SHADOW, shadow(1204, 734), 0)
    assert verdict.code is VerdictCode.LOW_AGREEMENT and not verdict.passed
    assert verdict.reason == "shadow agreement 0.61 < 0.98 over 1,204 requests on wave 1"
    assert verdict.figures["requests"] == 1204


def test_candidate_errors_count_as_disagreement() -> None:
    verdict = judge_shadow(SHADOW, shadow(500, 500, errors=500), 2)
    assert verdict.code is VerdictCode.LOW_AGREEMENT
    assert "0.50 < 0.98 over 1,000 requests on wave 3, 500 candidate error(s)" in verdict.reason


def test_agreeing_candidate_passes() -> None:
    verdict = judge_shadow(SHADOW, shadow(1000, 990, serving=FAST, candidate=FAST), 0)
    assert verdict.passed and verdict.code is VerdictCode.PASSED


def test_a_slower_candidate_fails_on_the_p99_ratio() -> None:
    slow = (0, 0, 0, 0, 0, 0, 10)  # 5-10 ms against 0.5-1 ms
    verdict = judge_shadow(SHADOW, shadow(1000, 1000, serving=FAST, candidate=slow), 0)
    assert verdict.code is VerdictCode.SLOW
    assert "> 1.5x" in verdict.reason


def test_too_few_requests_halt_rather_than_pass() -> None:
    verdict = judge_shadow(SHADOW, shadow(99, 99, skipped=400), 1)
    assert verdict.code is VerdictCode.TOO_FEW and not verdict.passed
    assert "99 request(s) < the 100 needed on wave 2 (400 skipped under load)" in verdict.reason


def test_canary_halts_a_less_accurate_candidate_and_passes_a_better_one() -> None:
    worse = CanaryFigures(serving_labels=200, serving_correct=180, candidate_labels=60, candidate_correct=30)
    better = CanaryFigures(serving_labels=200, serving_correct=180, candidate_labels=60, candidate_correct=58)
    failed = judge_canary(CANARY, worse, 0)
    assert failed.code is VerdictCode.LESS_ACCURATE
    assert failed.reason.startswith("canary accuracy 0.500 < serving 0.900 - 0.01 over 60 and 200 labels on wave 1")
    assert judge(CANARY, better, 0).passed


def test_canary_within_the_allowed_drop_passes() -> None:
    figures = CanaryFigures(serving_labels=100, serving_correct=90, candidate_labels=100, candidate_correct=89)
    assert judge_canary(CANARY, figures, 0).passed
    assert not judge_canary(CanaryPolicy(0.1, min_labels=50), figures, 0).passed


def test_canary_needs_labels_in_each_arm() -> None:
    figures = CanaryFigures(serving_labels=1000, serving_correct=900, candidate_labels=10, candidate_correct=10)
    verdict = judge_canary(CANARY, figures, 0)
    assert verdict.code is VerdictCode.TOO_FEW
    assert "10 label(s) for the candidate" in verdict.reason


@given(st.integers(0, 500), st.integers(0, 500), st.integers(0, 500), st.integers(0, 500))
def test_canary_verdict_follows_the_accuracies(sl: int, sc: int, cl: int, cc: int) -> None:
    figures = CanaryFigures(sl, min(sc, sl), cl, min(cc, cl))
    verdict = judge_canary(CANARY, figures, 0)
    if min(sl, cl) < CANARY.min_labels:
        assert verdict.code is VerdictCode.TOO_FEW
    else:
        assert figures.candidate_accuracy is not None and figures.serving_accuracy is not None
        assert verdict.passed == (figures.candidate_accuracy >= figures.serving_accuracy - 0.01 - 1e-12)


def test_figures_of_the_other_mode_cannot_judge() -> None:
    with pytest.raises(ValueError, match="cannot judge"):
        judge(SHADOW, CanaryFigures(), 0)


def test_the_summary_says_the_state_then_the_figures() -> None:
    figures = shadow(1204, 734, serving=FAST, candidate=FAST)
    stage = {"sent": 4, "opened_at": "2026-12-07T12:00:00+00:00", "verdict": None, "figures": figures.to_dict()}
    assert summary({"shadowing": 3, "stage": stage}) == \
        "running on 3/4: agreement 0.610 over 1,204 req, p99 0.99/0.99 ms (1.00x)"
    assert summary({"shadowing": 0, "stage": {**stage, "opened_at": None, "figures": None}}) == "starting: 0/4 ready"
    canary = CanaryFigures(serving_labels=200, serving_correct=180, candidate_labels=60, candidate_correct=30)
    assert summary({"stage": {**stage, "verdict": "less_accurate", "figures": canary.to_dict()}}) == \
        "less accurate: accuracy 0.500 (60 labels) vs 0.900 (200)"
    assert summary({"stage": None}) == ""
