"""A small real model with named column inputs (a float column "size" and a string column
"color"), for tests of batch files and uploads of column models, built in milliseconds.

The ONNX graph one-hot encodes ``color`` over ``COLORS`` (an unseen color is all zeros, as the
converter's pipelines do), concatenates ``size`` and runs a linear softmax over ``LABELS``;
``column_probabilities`` is the same arithmetic in numpy. The bundle is schema 2, built with
edgefleet.bundle, with golden samples by input name and a reference with a categories feature.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edgefleet.bundle import build_bundle_bytes

COLORS = ("blue", "red")
LABELS = ("small", "big")
_WEIGHTS = np.array([[1.5, -1.5], [0.5, -0.5], [-0.5, 0.5]], dtype=np.float32)  # size, blue, red -> logits
_BIAS = np.array([0.0, 0.25], dtype=np.float32)


def column_probabilities(size: list[float], color: list[str]) -> np.ndarray:
    onehot = np.array([[c == known for known in COLORS] for c in color], dtype=np.float32).reshape(-1, len(COLORS))
    logits = np.concatenate([np.asarray(size, np.float32).reshape(-1, 1), onehot], axis=1) @ _WEIGHTS + _BIAS
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def column_labels(size: list[float], color: list[str]) -> list[str]:
    return [LABELS[i] for i in column_probabilities(size, color).argmax(axis=1)]


def _model() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("OneHotEncoder", ["color"], ["onehot3"], domain="ai.onnx.ml", cats_strings=list(COLORS), zeros=1),
        helper.make_node("Flatten", ["onehot3"], ["onehot"], axis=1),
        helper.make_node("Concat", ["size", "onehot"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "W"], ["z"]),
        helper.make_node("Add", ["z", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "columns",
        [helper.make_tensor_value_info("size", TensorProto.FLOAT, ["n", 1]),
         helper.make_tensor_value_info("color", TensorProto.STRING, ["n", 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", len(LABELS)])],
        [numpy_helper.from_array(_WEIGHTS, "W"), numpy_helper.from_array(_BIAS, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def make_column_bundle(version: str = "1.0.0", *, name: str = "shapes") -> bytes:
    rng = np.random.default_rng(5)
    size = rng.normal(size=24).round(3).tolist()
    color = [COLORS[i % 2] for i in range(24)]
    probs = column_probabilities(size, color)
    fields: dict[str, Any] = {
        "schema_version": 2, "name": name, "version": version, "format": "onnx", "task": "classification",
        "quantization": "none", "runtime": {"opset": 13},
        "inputs": [{"name": "size", "kind": "column", "dtype": "float32", "shape": [-1, 1]},
                   {"name": "color", "kind": "column", "dtype": "string", "shape": [-1, 1],
                    "categories": list(COLORS)}],
        "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, len(LABELS)], "role": "probabilities"}],
        "class_labels": list(LABELS), "profiles": ["generic-x86_64"],
        "health_check": {"min_agreement": 0.95, "max_rel_error": 0.05, "latency_budget_ms": 50.0},
    }
    golden = {"inputs": {"size": [[v] for v in size], "color": [[c] for c in color]},
              "outputs": {"label": [LABELS[i] for i in probs.argmax(axis=1)], "probabilities": probs.tolist()}}
    reference = {"rows": 24,
                 "features": [{"name": "size", "edges": [-3.0, 0.0, 3.0], "counts": [12, 12]},
                              {"name": "color", "kind": "categories", "categories": list(COLORS), "counts": [12, 12, 0]}],
                 "outputs": {"kind": "classes", "labels": list(LABELS), "counts": [12, 12]}}
    files = {"model.onnx": _model(), "golden.json": json.dumps(golden).encode(),
             "reference.json": json.dumps(reference).encode()}
    return build_bundle_bytes(fields, files)
