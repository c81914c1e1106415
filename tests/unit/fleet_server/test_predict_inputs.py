"""The server's own input parser for predict: the agent's rules, without importing agent/."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from edgefleet.manifest import TensorSpec
from fleet_server.predict import PredictInputError, Prediction, read_table, to_matrix

SPEC = TensorSpec("x", "float32", (-1, 3), feature_names=("a", "b", "c"))
NAN_SPEC = TensorSpec("x", "float32", (-1, 2), allow_nan=True)


def test_rows_one_row_and_named_features_give_the_same_matrix() -> None:
    rows = to_matrix({"inputs": [[1, 2.5, 3], [4, 5, 6]]}, SPEC)
    assert rows.dtype == np.float32 and rows.tolist() == [[1, 2.5, 3], [4, 5, 6]]
    assert to_matrix({"inputs": [1, 2.5, 3]}, SPEC).tolist() == [[1, 2.5, 3]]
    named = to_matrix({"instances": [{"c": 3, "a": 1, "b": 2.5}, {"a": 4, "b": 5, "c": 6}]}, SPEC)
    assert named.tolist() == rows.tolist()


def test_null_is_nan_only_where_the_spec_allows_it() -> None:
    assert math.isnan(to_matrix({"inputs": [[None, 1]]}, NAN_SPEC)[0, 0])
    with pytest.raises(PredictInputError, match="not a number"):
        to_matrix({"inputs": [[None, 1, 2]]}, SPEC)


@pytest.mark.parametrize("payload, words", [
    ([[1, 2, 3]], "one key"),
    ({"inputs": [[1, 2, 3]], "extra": 1}, "one key"),
    ({"inputs": "1,2,3"}, "must be a list"),
    ({"inputs": [[1, 2]]}, "has 2 values; the model takes 3"),
    ({"inputs": [[1, "2", 3]]}, "not a number"),
    ({"inputs": [[1, False, 3]]}, "not a number"),
    ({"inputs": [[1, float("inf"), 3]]}, "finite"),
    ({"instances": [{"a": 1, "b": 2, "d": 3}]}, "unknown feature"),
    ({"inputs": [[1, 2, 3], 4]}, "neither a list"),
])
def test_bad_inputs_are_refused_with_a_reason(payload: object, words: str) -> None:
    with pytest.raises(PredictInputError, match=words):
        to_matrix(payload, SPEC)


def test_too_many_rows_is_413() -> None:
    with pytest.raises(PredictInputError) as caught:
        to_matrix({"inputs": [[1, 2, 3]] * 11}, SPEC, max_rows=10)
    assert caught.value.status_code == 413


def test_csv_with_or_without_header_and_npy_read_as_rows() -> None:
    expected = [[1, 2, 3], [4, 5, 6]]
    assert read_table(b"c,a,b\n3,1,2\n6,4,5\n", "x.csv", SPEC).tolist() == expected
    assert read_table(b"1,2,3\n4,5,6\n", "x.csv", SPEC).tolist() == expected
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(expected, dtype=np.float64))
    assert read_table(buffer.getvalue(), "x.npy", SPEC).tolist() == expected
    with pytest.raises(PredictInputError, match="not a readable .npy"):
        read_table(b"\x93NUMPYgarbage", "x.npy", SPEC)
    with pytest.raises(PredictInputError, match="is empty"):
        read_table(b"\n", "x.csv", SPEC)


def test_prediction_csv_has_one_probability_column_per_class() -> None:
    result = Prediction("m", "1.0.0", "r", ["cat", "dog"], [[0.9, 0.1], [0.2, 0.8]], ["cat", "dog"])
    assert result.to_csv() == "prediction,p_cat,p_dog\ncat,0.9,0.1\ndog,0.2,0.8\n"
    assert "probabilities" not in Prediction("m", "1.0.0", "r", [1.5], None, None).to_dict()
