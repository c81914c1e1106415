"""Probation: commit a healthy model, roll back on errors, latency, bad outputs and crash loops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.probation import (
    Probation,
    ProbationConfig,
    ProbationError,
    StatsSnapshot,
    Verdict,
    output_problems,
)

CFG = ProbationConfig(duration_s=60, min_requests=20, max_error_rate=0.05, latency_budget_multiplier=2.0,
                      max_restarts=3, max_wait_s=300)
FAST = [1.0] * 20


def start() -> Probation:
    return Probation(CFG, started_at=1000.0, latency_budget_ms=10.0)


def test_healthy_model_continues_then_commits_after_duration_and_traffic() -> None:
    p = start().observe(StatsSnapshot(1010, requests=30, errors=0, latencies_ms=FAST))
    assert p.decide(1010).verdict is Verdict.CONTINUE
    decision = p.decide(1060)
    assert decision.verdict is Verdict.COMMIT and decision.reason is None
    assert decision.details["requests"] == 30


def test_not_enough_traffic_waits_then_commits_as_low_traffic() -> None:
    p = start().observe(StatsSnapshot(1010, requests=3, errors=0))
    assert p.decide(1100).verdict is Verdict.CONTINUE
    decision = p.decide(1300)
    assert decision.verdict is Verdict.COMMIT and decision.details["low_traffic"] is True


def test_error_burst_rolls_back_before_probation_ends() -> None:
    decision = start().observe(StatsSnapshot(1005, requests=10, errors=5)).decide(1005)
    assert decision.verdict is Verdict.ROLL_BACK and decision.reason == "errors"


def test_single_early_error_is_not_a_fifty_percent_rate() -> None:
    assert start().observe(StatsSnapshot(1005, requests=2, errors=1)).decide(1005).verdict is Verdict.CONTINUE


def test_latency_above_budget_rolls_back() -> None:
    decision = start().observe(StatsSnapshot(1005, requests=30, errors=0, latencies_ms=[25.0] * 20)).decide(1005)
    assert decision.verdict is Verdict.ROLL_BACK and decision.reason == "latency"
    assert decision.details["latency_limit_ms"] == 20.0


def test_too_few_latency_samples_say_nothing() -> None:
    p = start().observe(StatsSnapshot(1005, requests=3, errors=0, latencies_ms=[500.0] * 3))
    assert p.decide(1005).verdict is Verdict.CONTINUE


def test_one_slow_request_among_twenty_is_within_p95_but_not_among_fifteen() -> None:
    one_slow = [1.0] * 19 + [50.0]  # one request preempted: 5% of 20, which p95 tolerates
    assert start().observe(StatsSnapshot(1005, requests=20, errors=0, latencies_ms=one_slow)).decide(1005).verdict \
        is Verdict.CONTINUE
    # Fewer than 20 samples are not judged at all (their p95 would be that one request).
    few = start().observe(StatsSnapshot(1005, requests=15, errors=0, latencies_ms=one_slow[5:]))
    assert few.p95_ms is None and few.decide(1005).verdict is Verdict.CONTINUE


def test_bad_output_rolls_back() -> None:
    decision = start().observe(StatsSnapshot(1005, requests=30, errors=0, bad_outputs=1)).decide(1005)
    assert decision.reason == "bad_outputs"


def test_crash_loop_rolls_back() -> None:
    p = start().restart(1001).restart(1002)
    assert p.decide(1003).verdict is Verdict.CONTINUE
    assert p.restart(1003).decide(1003).reason == "crash_loop"


def test_counters_survive_a_restart_of_the_serving_process() -> None:
    p = start().observe(StatsSnapshot(1010, requests=15, errors=0)).restart(1011)
    p = p.observe(StatsSnapshot(1020, requests=10, errors=0))  # new process: counting from zero again
    assert p.totals.requests == 25
    p = Probation.from_dict(json.loads(json.dumps(p.to_dict())))
    assert p.observe(StatsSnapshot(1030, requests=12, errors=0)).totals.requests == 27


def test_bad_config_and_state_name_the_problem() -> None:
    with pytest.raises(ProbationError, match="max_error_rate"):
        ProbationConfig(max_error_rate=2)
    with pytest.raises(ProbationError, match="delete update.json"):
        Probation.from_dict({"config": {}})


def test_output_problems_counts_nan_and_out_of_range_rows() -> None:
    good = {"probabilities": np.array([[0.2, 0.8], [1.0, 0.0]], dtype=np.float32), "label": np.array([1, 0])}
    assert output_problems(good) == 0
    bad = {"probabilities": np.array([[math.nan, 0.5], [1.5, -0.5], [0.3, 0.3], [0.5, 0.5]])}
    assert output_problems(bad) == 3
    assert output_problems({"value": np.array([1.0, math.inf, -3.0])}) == 1


# --- properties --------------------------------------------------------------------------------

snapshots = st.lists(st.tuples(st.floats(0, 500), st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 2),
                               st.booleans()), max_size=30)


@settings(max_examples=200, deadline=None)
@given(snapshots)
def test_any_stats_stream_keeps_totals_sane_and_verdicts_consistent(stream: list[tuple]) -> None:
    p = start()
    seen_bad = False
    now = 1000.0
    for dt, requests, errors, bad, restart in sorted(stream):
        now = 1000.0 + dt
        if restart:
            p = p.restart(now)
        errors = min(errors, requests)
        p = p.observe(StatsSnapshot(now, requests=requests, errors=errors, bad_outputs=bad))
        seen_bad = seen_bad or bad > 0
        assert p.totals.requests >= 0 and p.totals.errors <= p.totals.requests
        decision = p.decide(now)
        # Nothing that served a bad output or crash-looped is ever committed.
        if seen_bad or len(p.restarts) >= CFG.max_restarts:
            assert decision.verdict is Verdict.ROLL_BACK
        if decision.verdict is Verdict.COMMIT:
            assert now - 1000.0 >= CFG.duration_s
        assert Probation.from_dict(json.loads(json.dumps(p.to_dict()))) == p
