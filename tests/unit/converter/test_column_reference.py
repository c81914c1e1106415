"""The drift reference of a model with named columns (issue 12): one feature per input, numbers
as quantile bins, strings as category counts with the unseen count last; the agent's and the
server's ReferenceProfile read it."""

from __future__ import annotations

import numpy as np

from converter.golden import MAX_REFERENCE_CATEGORIES, column_reference_document
from converter.predictors import Outputs
from edgefleet.manifest import TensorSpec
from edgefleet.telemetry import ReferenceProfile

PROBS = np.tile(np.array([[0.7, 0.3], [0.2, 0.8]]), (3, 1))


def test_columns_become_bins_and_categories_in_input_order() -> None:
    columns = {"region": np.array([["west"], ["east"], ["west"], ["south"], ["east"], ["west"]], dtype=object),
               "alcohol": np.arange(6, dtype=np.float32).reshape(-1, 1)}
    inputs = [TensorSpec("region", "string", (-1, 1), kind="column", categories=("east", "north", "west")),
              TensorSpec("alcohol", "float32", (-1, 1), kind="column")]
    doc = column_reference_document(columns, inputs, Outputs(probabilities=PROBS), "classification", ["no", "yes"])
    region, alcohol = doc["features"]
    # The training categories in their order, counted; "south" (not among them) in the unseen count.
    assert region == {"name": "region", "kind": "categories", "categories": ["east", "north", "west"],
                      "counts": [2, 0, 3, 1]}
    assert alcohol["name"] == "alcohol" and sum(alcohol["counts"]) == 6 and "kind" not in alcohol
    assert doc["rows"] == 6 and doc["outputs"] == {"kind": "classes", "labels": ["no", "yes"], "counts": [3, 3]}
    profile = ReferenceProfile.from_dict(doc)
    assert profile.feature_names == ("region", "alcohol") and profile.features[0].bins == 4


def test_a_string_column_without_training_categories_keeps_its_most_frequent_values() -> None:
    values = [f"c{i:03d}" for i in range(MAX_REFERENCE_CATEGORIES + 10)] + ["c000"] * 5 + ["c099"] * 3
    column = np.array(values, dtype=object).reshape(-1, 1)
    doc = column_reference_document({"tag": column}, [TensorSpec("tag", "string", (-1, 1), kind="column")],
                                    Outputs(values=np.zeros(len(values))), "regression", None)
    (tag,) = doc["features"]
    assert len(tag["categories"]) == MAX_REFERENCE_CATEGORIES and tag["categories"] == sorted(tag["categories"])
    assert {"c000", "c099"} <= set(tag["categories"])  # the frequent ones are kept, ties by name
    assert sum(tag["counts"]) == len(values) and tag["counts"][-1] == 11  # the 11 rarest count as unseen
    again = column_reference_document({"tag": column[::-1]}, [TensorSpec("tag", "string", (-1, 1), kind="column")],
                                      Outputs(values=np.zeros(len(values))), "regression", None)
    assert again["features"] == doc["features"]  # the row order does not change the reference
