"""On-device drift counting: bins agree with the reference's, PSI bands react to shifted inputs."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.drift import DriftError, DriftWindow

FEATURES = 64
CLASSES = 10


def reference_for(x: np.ndarray, labels: list[int] | None = None, *, bins: int = 10) -> dict[str, Any]:
    """A reference.json as docs/contracts.md describes it (quantile edges, open outer bins)."""
    features = []
    for i in range(x.shape[1]):
        edges = np.unique(np.quantile(x[:, i], np.linspace(0, 1, bins + 1)))
        if len(edges) == 1:
            edges = np.array([edges[0], edges[0]])
        counts = np.bincount(np.searchsorted(edges[1:-1], x[:, i], side="right"), minlength=len(edges) - 1)
        features.append({"name": f"f{i}", "edges": edges.tolist(), "counts": counts.tolist()})
    labels = labels if labels is not None else [int(v) for v in np.random.default_rng(9).integers(0, CLASSES, len(x))]
    return {"rows": len(x), "features": features,
            "outputs": {"kind": "classes", "labels": list(range(CLASSES)),
                        "counts": [labels.count(c) for c in range(CLASSES)]}}


@pytest.fixture(scope="module")
def training() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4000, FEATURES))


@pytest.fixture(scope="module")
def reference(training: np.ndarray) -> dict[str, Any]:
    return reference_for(training)


def test_counts_match_searchsorted_on_every_feature_for_small_and_large_batches(reference: dict[str, Any]) -> None:
    rng = np.random.default_rng(1)
    for n in (1, 7, 500):  # both code paths (broadcast for small batches, feature-major for large)
        window = DriftWindow(reference)
        rows = rng.normal(scale=2.0, size=(n, FEATURES))
        window.observe(rows, now=0.0)
        counts, _ = window.window_counts(0.0)
        for i, feature in enumerate(reference["features"]):
            edges = np.asarray(feature["edges"])
            expected = np.bincount(np.searchsorted(edges[1:-1], rows[:, i], side="right"), minlength=len(edges) - 1)
            assert counts[i].tolist() == expected.tolist()


def test_outer_bins_are_open_ended_and_nan_is_not_counted() -> None:
    ref = {"rows": 4, "features": [{"name": "a", "edges": [0.0, 1.0, 2.0], "counts": [2, 2]},
                                   {"name": "const", "edges": [5.0, 5.0], "counts": [4]}]}
    window = DriftWindow(ref)
    window.observe([[-1e9, 7.0], [1e9, 5.0], [1.0, float("nan")], [float("nan"), 4.0]], now=0.0)
    counts, _ = window.window_counts(0.0)
    assert counts[0].tolist() == [1, 2]  # -1e9 in the first bin; 1.0 and 1e9 in the last
    assert counts[1].tolist() == [3]


def test_traffic_like_the_reference_is_stable(training: np.ndarray, reference: dict[str, Any]) -> None:
    window = DriftWindow(reference)
    window.observe(np.random.default_rng(2).normal(size=(3000, FEATURES)), now=10.0)
    scores = window.scores(now=10.0)
    assert len(scores) == FEATURES
    assert all(s.band == "stable" and s.rows == 3000 for s in scores)


def test_shifted_feature_crosses_into_the_drift_band_and_others_stay_stable(reference: dict[str, Any]) -> None:
    rows = np.random.default_rng(3).normal(size=(3000, FEATURES))
    rows[:, 5] += 1.0  # one standard deviation
    rows[:, 6] += 0.35
    window = DriftWindow(reference)
    window.observe(rows, now=0.0)
    by_name = {s.feature: s for s in window.scores(now=0.0)}
    assert by_name["f5"].band == "drift" and by_name["f5"].psi > 0.25
    assert by_name["f6"].band == "moderate"
    assert by_name["f0"].band == "stable"


def test_window_slides_with_injected_time(reference: dict[str, Any]) -> None:
    window = DriftWindow(reference, window_s=600, buckets=6)
    rng = np.random.default_rng(4)
    window.observe(rng.normal(loc=3.0, size=(500, FEATURES)), now=0.0)
    assert window.scores(now=50.0)[0].band == "drift"
    window.observe(rng.normal(size=(2000, FEATURES)), now=400.0)
    assert window.scores(now=599.0)[0].rows == 2500
    # At 700 s the first 100-second bucket has left the window: only normal traffic remains.
    later = window.scores(now=700.0)
    assert later[0].rows == 2000 and later[0].band == "stable"
    assert window.scores(now=10_000.0)[0].rows == 0


def test_output_counts_by_label_and_output_psi(reference: dict[str, Any]) -> None:
    window = DriftWindow(reference)
    window.observe(np.zeros((4, FEATURES)), [3, "3", 9, "not-a-class"], now=0.0)
    _, outputs = window.window_counts(0.0)
    assert outputs.tolist() == [0, 0, 0, 2, 0, 0, 0, 0, 0, 1]
    score = window.output_score(0.0)
    assert score is not None and score.band == "drift" and score.rows == 3


def test_regression_outputs_are_counted_in_value_bins() -> None:
    ref = {"rows": 3, "features": [{"name": "a", "edges": [0.0, 1.0], "counts": [3]}],
           "outputs": {"kind": "bins", "edges": [0.0, 10.0, 20.0, 30.0], "counts": [1, 1, 1]}}
    window = DriftWindow(ref)
    window.observe([[0.5], [0.5], [0.5]], [-5.0, 15.0, 99.0], now=0.0)
    assert window.take_interval()[1] == (1, 1, 1)


def test_take_interval_resets_and_can_defer_feature_counts(reference: dict[str, Any]) -> None:
    window = DriftWindow(reference)
    window.observe(np.zeros((3, FEATURES)), [1, 1, 2], now=0.0)
    features, outputs = window.take_interval(include_features=False)
    assert features == () and outputs[1:3] == (2, 1)
    window.observe(np.zeros((2, FEATURES)), [1, 1], now=1.0)
    features, outputs = window.take_interval()
    assert len(features) == FEATURES and all(sum(f) == 5 for f in features)  # deferred counts kept
    assert outputs[1] == 2
    assert window.take_interval() == (tuple((0,) * len(f) for f in features), (0,) * CLASSES)
    assert window.window_counts(1.0)[0][0].sum() == 5  # the sliding window is separate


def test_rows_of_the_wrong_width_are_refused_with_the_fix(reference: dict[str, Any]) -> None:
    with pytest.raises(DriftError, match="64 features"):
        DriftWindow(reference).observe(np.zeros((2, 3)), now=0.0)


@settings(max_examples=50, deadline=None)
@given(rows=hnp.arrays(np.float64, st.tuples(st.integers(0, 40), st.just(3)),
                       elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_every_finite_or_infinite_value_lands_in_exactly_one_bin(rows: np.ndarray) -> None:
    ref = {"rows": 1, "features": [{"name": n, "edges": [-1.0, 0.0, 0.5, 2.0], "counts": [1, 1, 1]} for n in "abc"]}
    window = DriftWindow(ref)
    window.observe(rows, now=0.0)
    counts, _ = window.window_counts(0.0)
    for i in range(3):
        assert counts[i].sum() == int((~np.isnan(rows[:, i])).sum())


@pytest.mark.slow
def test_cost_per_row_for_64_features_is_tiny(reference: dict[str, Any]) -> None:
    window = DriftWindow(reference)
    rows = np.random.default_rng(5).normal(size=(256, FEATURES))
    labels = list(np.random.default_rng(6).integers(0, CLASSES, 256))
    start = time.perf_counter()
    for i in range(50):
        window.observe(rows, labels, now=float(i))
    per_row_us = (time.perf_counter() - start) / (50 * 256) * 1e6
    print(f"drift observe: {per_row_us:.2f} us per row of {FEATURES} features")
    assert per_row_us < 50  # generous: a shared CI core; docs/telemetry.md has the measured figure


def test_a_reference_without_feature_bins_still_counts_outputs() -> None:
    window = DriftWindow({"rows": 2, "features": [],
                          "outputs": {"kind": "classes", "labels": ["a", "b"], "counts": [1, 1]}})
    window.observe([[1.0, 2.0, 3.0]], ["b"], now=0.0)
    assert window.scores(0.0) == []
    assert window.take_interval() == ((), (0, 1))
