"""Drift of a model with named columns (issue 12): the feeds are counted by reference feature
name, numbers in their bins, strings by category with every unseen value in the last count."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drift import BUFFER_ROWS, DriftError, DriftWindow
from edgefleet.inputs import to_feeds
from edgefleet.manifest import TensorSpec

REGIONS = ["east", "north", "west"]
REFERENCE: dict[str, Any] = {
    "rows": 90,
    "features": [{"name": "alcohol", "edges": [10.0, 12.0, 13.0, 15.0], "counts": [30, 30, 30]},
                 {"name": "region", "kind": "categories", "categories": REGIONS, "counts": [30, 30, 30, 0]}],
    "outputs": {"kind": "classes", "labels": [0, 1, 2], "counts": [30, 30, 30]},
}
INPUTS = (TensorSpec("alcohol", "float32", (-1, 1), kind="column"),
          TensorSpec("region", "string", (-1, 1), kind="column", categories=tuple(REGIONS)))


def feeds(rows: list[tuple[float, str]]) -> dict[str, np.ndarray]:
    """Feeds as the agent's serving table has them: the shared parser's output for records."""
    return to_feeds({"instances": [{"alcohol": a, "region": r} for a, r in rows]}, INPUTS)


def test_feeds_are_counted_by_name_numbers_in_bins_strings_by_category() -> None:
    window = DriftWindow(REFERENCE)
    window.observe(feeds([(11.0, "west"), (14.0, "east"), (12.5, "west"), (9.0, "south")]), [0, 1, 2, 0], now=0.0)
    (alcohol, region), outputs = window.window_counts(0.0)
    assert alcohol.tolist() == [2, 1, 1]  # 9.0 in the open first bin
    assert region.tolist() == [1, 0, 2, 1]  # east, north, west, unseen ("south")
    assert outputs.tolist() == [2, 1, 1]


def test_an_unseen_category_reaches_the_interval_counts_the_telemetry_carries() -> None:
    window = DriftWindow(REFERENCE)
    window.observe(feeds([(11.0, "south"), (11.0, "South"), (11.0, ""), (11.0, "east")]), now=0.0)
    features, _ = window.take_interval()
    assert features == ((4, 0, 0), (1, 0, 0, 3))
    assert window.take_interval()[0] == ((0, 0, 0), (0, 0, 0, 0))  # reset after the take


def test_only_unseen_categories_drift_and_traffic_like_the_reference_is_stable() -> None:
    rng = np.random.default_rng(0)
    like = [(float(rng.uniform(10, 15)), REGIONS[i % 3]) for i in range(600)]
    stable = DriftWindow(REFERENCE)
    stable.observe(feeds(like), now=0.0)
    assert {s.feature: s.band for s in stable.scores(0.0)}["region"] == "stable"
    shifted = DriftWindow(REFERENCE)
    shifted.observe(feeds([(a, "south" if i % 4 == 0 else r) for i, (a, r) in enumerate(like)]), now=0.0)
    scores = {s.feature: s for s in shifted.scores(0.0)}
    assert scores["region"].band == "drift" and scores["region"].rows == 600
    assert scores["alcohol"].psi == pytest.approx({s.feature: s for s in stable.scores(0.0)}["alcohol"].psi)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.sampled_from([*REGIONS, "south", "", "EAST"])),
                min_size=1, max_size=2 * BUFFER_ROWS + 3),
       st.integers(1, 40))
def test_counts_equal_a_plain_count_whatever_the_request_sizes(rows: list[tuple[float, str]], size: int) -> None:
    window = DriftWindow(REFERENCE)
    for start in range(0, len(rows), size):  # held in the buffer, binned in batches, or at once
        window.observe(feeds(rows[start:start + size]), now=0.0)
    (alcohol, region), _ = window.window_counts(0.0)
    expected = [sum(1 for _, r in rows if r == c) for c in REGIONS]
    assert region.tolist() == [*expected, len(rows) - sum(expected)]
    inner = np.asarray(REFERENCE["features"][0]["edges"][1:-1])
    values = np.asarray([a for a, _ in rows], dtype=np.float32)  # the parser's float32 column
    assert alcohol.tolist() == np.bincount(np.searchsorted(inner, values, side="right"), minlength=3).tolist()


def test_a_reference_of_numeric_columns_only_counts_feeds_by_name() -> None:
    # Slice-1 bundles: the reference holds the numeric columns only; the string feed is ignored.
    window = DriftWindow({**REFERENCE, "features": REFERENCE["features"][:1]})
    window.observe(feeds([(11.0, "south"), (14.0, "east")]), now=0.0)
    (alcohol,), _ = window.window_counts(0.0)
    assert alcohol.tolist() == [1, 0, 1]


def test_feeds_that_do_not_fit_the_reference_are_refused_with_the_fix() -> None:
    window = DriftWindow(REFERENCE)
    with pytest.raises(DriftError, match="no input 'region'") as caught:
        window.observe({"alcohol": np.ones((2, 1), np.float32)}, now=0.0)
    assert caught.value.fix
    with pytest.raises(DriftError, match="one value a row"):
        window.observe({"alcohol": np.ones((2, 1), np.float32), "region": np.array([["a"]], dtype=object)}, now=0.0)
    with pytest.raises(DriftError, match="counts named columns, not a matrix"):
        window.observe(np.ones((2, 2)), now=0.0)
    strings = DriftWindow({**REFERENCE, "features": REFERENCE["features"][:1]})
    with pytest.raises(DriftError, match="holds object values"):
        strings.observe({"alcohol": np.array([["x"]], dtype=object)}, now=0.0)
    assert window.window_counts(0.0)[0][1].tolist() == [0, 0, 0, 0]  # nothing half-counted
