"""DriftWindow holds rows before binning them: every count read is still exact.

The window bins rows ``BUFFER_ROWS`` at a time (agent/drift.py); these tests observe one row at
a time, as the serving path does, and compare every read against counts made directly with
``searchsorted`` on all the rows seen so far.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent.drift import BUFFER_ROWS, DriftError, DriftWindow
from tests.unit.agent.test_drift import CLASSES, FEATURES, reference_for


def expected_counts(reference: dict[str, Any], rows: np.ndarray) -> list[list[int]]:
    out = []
    for i, feature in enumerate(reference["features"]):
        edges = np.asarray(feature["edges"])
        out.append(np.bincount(np.searchsorted(edges[1:-1], rows[:, i], side="right"),
                               minlength=len(edges) - 1).tolist())
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return reference_for(np.random.default_rng(0).normal(size=(2000, FEATURES)))


def test_counts_read_between_single_row_observes_are_exact(reference: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    window = DriftWindow(reference)
    rows = rng.normal(scale=1.5, size=(2 * BUFFER_ROWS + 37, FEATURES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, len(rows)).tolist()
    taken_features = np.zeros((FEATURES, 10), dtype=np.int64)
    taken_outputs = np.zeros(CLASSES, dtype=np.int64)
    for n, (row, label) in enumerate(zip(rows, labels, strict=True), start=1):
        window.observe(row[None, :], [label], now=1.0)
        if n in (1, 5, BUFFER_ROWS - 1, BUFFER_ROWS, BUFFER_ROWS + 1, len(rows)):
            counts, outputs = window.window_counts(1.0)
            seen = rows[:n].astype(np.float64)
            assert [c.tolist() for c in counts] == expected_counts(reference, seen)
            assert outputs.tolist() == np.bincount(labels[:n], minlength=CLASSES).tolist()
        if n % 100 == 0 or n == len(rows):  # the reporter's interval takes, mid-buffer too
            features, outs = window.take_interval()
            taken_features += np.asarray(features)
            taken_outputs += np.asarray(outs)
    assert taken_features.tolist() == expected_counts(reference, rows.astype(np.float64))
    assert taken_outputs.tolist() == np.bincount(labels, minlength=CLASSES).tolist()


def test_held_rows_land_in_the_time_bucket_they_were_observed_in(reference: dict[str, Any]) -> None:
    rng = np.random.default_rng(4)
    window = DriftWindow(reference, window_s=120.0, buckets=12)  # 10 s buckets
    early = rng.normal(size=(30, FEATURES))
    late = rng.normal(loc=3.0, size=(40, FEATURES))
    for row in early:
        window.observe(row, [1], now=5.0)
    for row in late:
        window.observe(row, [2], now=65.0)
    counts, outputs = window.window_counts(65.0)
    assert [c.tolist() for c in counts] == expected_counts(reference, np.vstack([early, late]))
    # 120 s after the early rows their bucket has slid out; the late rows are still in.
    counts, outputs = window.window_counts(126.0)
    assert [c.tolist() for c in counts] == expected_counts(reference, late)
    assert outputs.tolist() == [0, 0, 40] + [0] * (CLASSES - 3)


def test_a_batch_larger_than_the_buffer_is_counted_whole(reference: dict[str, Any]) -> None:
    rng = np.random.default_rng(5)
    window = DriftWindow(reference)
    single = rng.normal(size=(3, FEATURES))
    batch = rng.normal(size=(BUFFER_ROWS * 2 + 1, FEATURES))
    for row in single:
        window.observe(row, now=0.0)
    window.observe(batch, now=0.0)
    features, _ = window.take_interval()
    assert [list(f) for f in features] == expected_counts(reference, np.vstack([single, batch]))


def test_a_misfit_row_is_refused_when_observed_not_when_binned(reference: dict[str, Any]) -> None:
    window = DriftWindow(reference)
    window.observe(np.zeros(FEATURES), [0], now=0.0)
    with pytest.raises(DriftError, match="do not fit"):
        window.observe(np.zeros((1, FEATURES + 1)), [0], now=0.0)
    features, outputs = window.take_interval()
    assert sum(sum(f) for f in features) == FEATURES  # the good row, once per feature
    assert sum(outputs) == 1


def test_value_bins_refuse_outputs_that_are_not_numbers() -> None:
    ref = {"rows": 4, "features": [{"name": "a", "edges": [0.0, 1.0, 2.0], "counts": [2, 2]}],
           "outputs": {"kind": "bins", "edges": [0.0, 0.5, 1.0], "counts": [2, 2]}}
    window = DriftWindow(ref)
    with pytest.raises(ValueError):
        window.observe([[0.5]], ["high"], now=0.0)
    window.observe([[0.5]], [0.9], now=0.0)
    _, outputs = window.take_interval()
    assert outputs == (0, 1)


def test_observe_many_counts_what_one_by_one_observes_count(reference: dict[str, Any]) -> None:
    rng = np.random.default_rng(8)
    bulk = DriftWindow(reference, window_s=120.0, buckets=12)  # 10 s buckets
    single = DriftWindow(reference, window_s=120.0, buckets=12)
    items: list[tuple[Any, Any, float]] = []
    for i in range(300):
        rows = rng.normal(scale=1.5, size=(1 + i % 4, FEATURES)).astype(np.float32)
        items.append((rows, rng.integers(0, CLASSES, len(rows)).tolist(), 3.0 + i * 0.1))  # spans 3 buckets
    odd = (np.zeros((1, FEATURES - 1)), [1], items[150][2])  # does not fit: fails alone
    failed = bulk.observe_many([*items[:150], odd, *items[150:]])
    assert [(index, type(exc)) for index, exc in failed] == [(150, DriftError)]
    for rows, outputs, now in items:
        single.observe(rows, outputs, now=now)
    for now in (10.0, 25.0, 33.0, 140.0):
        got, want = bulk.window_counts(now), single.window_counts(now)
        assert [c.tolist() for c in got[0]] == [c.tolist() for c in want[0]]
        assert got[1].tolist() == want[1].tolist()
    assert bulk.take_interval() == single.take_interval()
