"""Drift of tensor inputs (issue 12, slice 3): each sample summarised by mean, std, min and max
(edgefleet.summaries), binned against the converter's reference; a shift in one input's samples
moves that input's features only."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent.drift import DriftError, DriftWindow
from converter.golden import summary_reference_document
from converter.predictors import Outputs
from edgefleet.summaries import statistics

RNG = np.random.default_rng(9)


def samples(rows: int, brightness: float = 0.5) -> dict[str, np.ndarray]:
    return {"image": np.clip(brightness + RNG.normal(0, 0.1, (rows, 3, 8, 8)), 0, 1).astype(np.float32),
            "metadata": RNG.normal(0, 1, (rows, 4)).astype(np.float32)}


def reference(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    n = len(next(iter(arrays.values())))
    outputs = Outputs(probabilities=np.tile([0.9, 0.1], (n, 1)))
    return summary_reference_document(arrays, outputs, "classification", (0, 1))


def test_tensor_inputs_are_counted_by_their_samples_statistics() -> None:
    training = samples(400)
    window = DriftWindow(reference(training))
    assert window.feature_names[:4] == ("image.mean", "image.std", "image.min", "image.max")
    window.observe(samples(300), [0] * 300, now=1.0)
    calm = {s.feature: s for s in window.scores(2.0)}
    assert all(s.rows == 300 for s in calm.values())
    assert calm["image.mean"].band == "stable" and calm["metadata.std"].band == "stable"

    shifted = DriftWindow(reference(training))
    shifted.observe(samples(300, brightness=0.8), [0] * 300, now=1.0)
    scores = {s.feature: s for s in shifted.scores(2.0)}
    assert scores["image.mean"].band == "drift"
    assert all(scores[f"metadata.{s}"].band == "stable" for s in ("mean", "std", "min", "max"))


def test_counts_match_the_converters_binning_of_the_same_samples() -> None:
    training = samples(200)
    window = DriftWindow(reference(training))
    for i in range(0, 200, 7):  # requests of a few samples, buffered, binned later
        window.observe({k: v[i:i + 7] for k, v in training.items()}, None, now=1.0)
    features, _ = window.take_interval()
    expected = [tuple(f["counts"]) for f in reference(training)["features"]]
    assert list(features) == expected


def test_a_wide_matrix_is_summarised_as_its_one_input() -> None:
    windows = RNG.normal(0, 1, (100, 1000)).astype(np.float32)
    window = DriftWindow(reference({"window": windows}))
    window.observe(windows[:10], None, now=1.0)  # a matrix, as serving hands a one-matrix model's rows
    features, _ = window.take_interval()
    assert [sum(c) for c in features] == [10, 10, 10, 10]
    summary = statistics(windows[:10])
    assert summary.shape == (10, 4)


def test_a_request_without_a_summarised_input_or_with_text_is_refused() -> None:
    window = DriftWindow(reference(samples(50)))
    with pytest.raises(DriftError, match="no input 'metadata'"):
        window.observe({"image": samples(2)["image"]}, None, now=1.0)
    with pytest.raises(DriftError, match="its drift features summarise numbers"):
        window.observe({**samples(2), "metadata": np.array([["a"] * 4] * 2, dtype=object)}, None, now=1.0)


def test_a_statistic_this_agent_does_not_compute_is_refused_at_load() -> None:
    document = reference(samples(50))
    document["features"][0]["statistic"] = "kurtosis"
    with pytest.raises(DriftError, match="statistic 'kurtosis'"):
        DriftWindow(document)
