"""Pure parts of the proof: comparisons, tolerance, golden rows, reference bins, latency maths."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converter.golden import golden_document, golden_rows, reference_document
from converter.latency import MIN_SINGLE_RUNS, measure
from converter.predictors import Outputs
from converter.proof import compare_classifier, compare_regressor, tolerance_failures
from edgefleet.profiles import load_profile


def test_classifier_agreement_and_accuracy() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    flipped = probs.copy()
    flipped[2] = [0.4, 0.6]
    result = compare_classifier(Outputs(probabilities=probs), Outputs(probabilities=flipped), ["a", "b"],
                                np.array(["a", "b", "a", "b"], dtype=object))
    assert result["agreement"] == 0.75
    assert result["accuracy_original"] == 1.0 and result["accuracy_converted"] == 0.75
    assert result["accuracy_drop"] == 0.25
    assert result["max_abs_error"] == 0.2


def test_regressor_relative_error_is_mean_abs_over_std() -> None:
    original = Outputs(values=np.array([0.0, 2.0, 4.0, 6.0]))
    converted = Outputs(values=np.array([0.5, 2.0, 4.0, 6.0]))
    result = compare_regressor(original, converted)
    assert result["max_abs_error"] == 0.5
    assert result["rel_error"] == round(0.125 / np.std([0.0, 2, 4, 6]), 6)


def test_tolerance_names_every_miss() -> None:
    profile = load_profile("rpi4-64")
    ok = {"agreement": 0.99, "accuracy_drop": 0.0}
    assert tolerance_failures("classification", ok, 1000, profile) == []
    bad = {"agreement": 0.5, "accuracy_drop": 0.2}
    failures = tolerance_failures("classification", bad, profile.max_model_bytes + 1, profile)
    assert len(failures) == 3
    assert "min_agreement" in failures[0] and "max_accuracy_drop" in failures[1] and "max_model_bytes" in failures[2]
    strict = replace(profile, tolerance=replace(profile.tolerance, max_rel_error=0.01))
    assert "max_rel_error" in tolerance_failures("regression", {"rel_error": 0.02}, 10, strict)[0]


def test_golden_rows_are_fixed_sorted_and_bounded() -> None:
    first = golden_rows(1000)
    assert len(first) == 32 and list(first) == sorted(first)
    np.testing.assert_array_equal(first, golden_rows(1000))
    assert list(golden_rows(5)) == [0, 1, 2, 3, 4]


def test_golden_document_holds_the_original_outputs() -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    probs = np.tile([[0.25, 0.75]], (10, 1))
    doc = golden_document(x, Outputs(probabilities=probs), "classification", [3, 7])
    assert doc["outputs"]["label"] == [7] * 10
    assert doc["inputs"][0] == [0.0, 1.0] and len(doc["outputs"]["probabilities"]) == 10


def test_reference_bins_count_every_row_and_classes_in_label_order() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)).astype(np.float32)
    probs = np.zeros((500, 3))
    probs[np.arange(500), np.arange(500) % 3] = 1
    doc = reference_document(x, ["a", "b", "c"], Outputs(probabilities=probs), "classification", ["x", "y", "z"])
    assert doc["rows"] == 500
    for feature in doc["features"]:
        assert len(feature["edges"]) == 11 and len(feature["counts"]) == 10
        assert sum(feature["counts"]) == 500
        assert all(40 <= c <= 60 for c in feature["counts"])  # quantile bins hold ~50 each
    assert doc["outputs"] == {"kind": "classes", "labels": ["x", "y", "z"], "counts": [167, 167, 166]}
    constant = reference_document(np.ones((4, 1), np.float32), None, Outputs(values=np.ones(4)), "regression", None)
    assert constant["features"][0]["counts"] == [4] and constant["outputs"]["kind"] == "bins"


def test_latency_percentiles_and_rate_from_an_injected_clock() -> None:
    ticks = itertools.count(step=0.001)  # every clock read advances 1 ms

    result = measure(lambda rows: None, np.zeros((3, 2), np.float32), clock=lambda: next(ticks),
                     single_runs=10, batch_rows=100, batch_runs=4)
    assert result.p50_ms == pytest.approx(1.0) and result.p95_ms == pytest.approx(1.0)
    assert result.batch_rows_per_s == pytest.approx(400_000)  # 400 rows between two consecutive reads


def test_single_row_runs_stop_once_they_have_taken_the_budget() -> None:
    ticks = itertools.count(step=0.1)  # every clock read advances 100 ms: a slow original
    calls: list[int] = []

    def predict(rows: np.ndarray) -> None:
        calls.append(len(rows))

    result = measure(predict, np.zeros((3, 2), np.float32), clock=lambda: next(ticks), single_runs=200,
                     batch_rows=10, batch_runs=2, single_budget_s=1.0)
    # 1 s of single runs is 10 of them, but never fewer than MIN_SINGLE_RUNS; then the batches.
    assert calls.count(1) == 1 + MIN_SINGLE_RUNS and calls.count(10) == 1 + 2
    assert result.p50_ms == pytest.approx(100.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32), min_size=1, max_size=200))
def test_reference_bins_always_count_every_row_with_sorted_edges(values: list[float]) -> None:
    x = np.asarray(values, np.float32)[:, None]
    doc = reference_document(x, ["v"], Outputs(values=x[:, 0].astype(np.float64)), "regression", None)
    for binned in (doc["features"][0], doc["outputs"]):
        assert sum(binned["counts"]) == len(values)
        assert len(binned["counts"]) == len(binned["edges"]) - 1 >= 1
        assert binned["edges"] == sorted(binned["edges"])


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=5000))
def test_golden_rows_are_distinct_valid_indices(total: int) -> None:
    rows = golden_rows(total)
    assert len(rows) == min(total, 32) == len(set(rows.tolist()))
    assert rows.min() >= 0 and rows.max() < total
