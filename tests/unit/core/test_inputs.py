"""Request input -> float32 matrix (the agent's and the server's parser): every accepted shape, and every bad
input names its problem."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.errors import InputError
from edgefleet.inputs import to_matrix
from edgefleet.manifest import TensorSpec

NAMED = TensorSpec("input", "float32", (-1, 3), feature_names=("a", "b", "c"))
NAN_OK = TensorSpec("input", "float32", (-1, 3), feature_names=("a", "b", "c"), allow_nan=True)
UNNAMED = TensorSpec("input", "float32", (-1, 3))


@pytest.mark.parametrize("payload", [
    {"inputs": [[1, 2.5, 3], [4, 5, 6]]},
    [[1, 2.5, 3], [4, 5, 6]],
    {"instances": [[1, 2.5, 3], [4, 5, 6]]},
    {"instances": [{"a": 1, "b": 2.5, "c": 3}, {"c": 6, "b": 5, "a": 4}]},
    np.array([[1, 2.5, 3], [4, 5, 6]], dtype=np.float64),
])
def test_accepted_shapes_give_the_same_matrix(payload: Any) -> None:
    matrix = to_matrix(payload, NAMED)
    assert matrix.dtype == np.float32 and matrix.shape == (2, 3)
    np.testing.assert_array_equal(matrix, [[1, 2.5, 3], [4, 5, 6]])


def test_one_row_is_a_batch_of_one() -> None:
    np.testing.assert_array_equal(to_matrix({"inputs": [1, 2, 3]}, UNNAMED), [[1, 2, 3]])


@pytest.mark.parametrize(("payload", "words"), [
    ({"inputs": [[1, 2]]}, "2 values per row but model input 'input' takes 3"),
    ({"inputs": [[1, 2, 3], [1, 2]]}, "inputs[1] has 2 values"),
    ({"inputs": [[1, "2", 3]]}, "inputs[0][1] is str '2', not a number"),
    ({"inputs": [[1, True, 3]]}, "inputs[0][1] is bool True"),
    ({"inputs": [[1, None, 3]]}, "inputs[0][1] is null"),
    ({"inputs": [[1, [2], 3]]}, "inputs[0][1] is list"),
    ({"inputs": [[1, math.nan, 3]]}, "NaN (or null)"),
    ({"inputs": [[1, math.inf, 3]]}, "infinity"),
    ({"inputs": [[1, 1e300, 3]]}, "infinity"),
    ({"inputs": []}, "holds no rows"),
    ({"inputs": {"a": 1}}, "'inputs' must be a list"),
    ({"inputs": [[1, 2, 3]], "extra": 1}, "unknown field(s) 'extra'"),
    ({"rows": [[1, 2, 3]]}, "unknown field(s) 'rows'"),
    ("1,2,3", "JSON str, not an object"),
    ({"instances": [{"a": 1, "b": 2, "zz": 3}]}, "unknown feature(s) 'zz'"),
    ({"instances": [{"a": 1, "b": 2}]}, "missing feature(s) 'c'"),
    ({"instances": [{"a": 1, "b": 2, "c": "x"}]}, "instances[0].c is str 'x'"),
    ({"instances": [{"a": 1, "b": 2, "c": 3}, [1, 2, 3]]}, "instances[1] is list"),
])
def test_bad_input_names_the_problem(payload: Any, words: str) -> None:
    with pytest.raises(InputError) as caught:
        to_matrix(payload, NAMED)
    assert words in caught.value.message
    assert caught.value.status == 400
    assert caught.value.fix


def test_named_instances_need_feature_names() -> None:
    with pytest.raises(InputError, match="does not name its features"):
        to_matrix({"instances": [{"a": 1}]}, UNNAMED)


def test_too_many_rows_is_413() -> None:
    with pytest.raises(InputError) as caught:
        to_matrix({"inputs": [[1, 2, 3]] * 11}, NAMED, max_rows=10)
    assert caught.value.status == 413 and "11 rows" in caught.value.message


def test_nan_and_null_pass_where_the_spec_allows_nan() -> None:
    matrix = to_matrix({"inputs": [[1, None, math.nan]]}, NAN_OK)
    assert np.isnan(matrix[0, 1]) and np.isnan(matrix[0, 2])
    named = to_matrix({"instances": [{"a": 1, "b": None, "c": 2}]}, NAN_OK)
    assert np.isnan(named[0, 1])
    with pytest.raises(InputError, match="infinity"):
        to_matrix({"inputs": [[1, math.inf, 2]]}, NAN_OK)


def test_arrays_of_strings_are_refused() -> None:
    with pytest.raises(InputError, match="not numbers"):
        to_matrix(np.array([["1", "2", "3"]]), NAMED)


@settings(deadline=None)  # shared CI cores: judge behaviour, not speed
@given(st.lists(st.lists(st.floats(min_value=-1e6, max_value=1e6, width=32), min_size=3, max_size=3),
                min_size=1, max_size=20))
def test_any_finite_rows_round_trip(rows: list[list[float]]) -> None:
    np.testing.assert_array_equal(to_matrix({"inputs": rows}, NAMED), np.array(rows, dtype=np.float32))


@settings(deadline=None)  # shared CI cores: judge behaviour, not speed
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5) | st.integers(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=12))
def test_arbitrary_json_either_parses_or_raises_input_error(payload: Any) -> None:
    try:
        matrix = to_matrix(payload, NAMED)
    except InputError:
        return
    assert matrix.shape[1] == 3 and np.isfinite(matrix).all()
