"""Small real bundles for the agent's tests, built in milliseconds.

``make_linear_bundle`` builds a real ONNX model (MatMul + Add + Softmax, written with the onnx
helper API, run by the real onnxruntime) and a real bundle with edgefleet.bundle: named
features, string class labels and a probabilities-only output, so the agent's label-by-argmax
path is exercised. Golden outputs are computed with numpy from the same weights.
Converter-made bundles (tests/support/bundles.py) are used where parity with the converter's
report is the point.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from edgefleet.bundle import build_bundle_bytes

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
LABELS = ("setosa", "versicolor", "virginica")

BundleMaker = Callable[..., bytes]


def linear_weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(len(FEATURES), len(LABELS))).astype(np.float32), rng.normal(size=len(LABELS)).astype(np.float32)


def linear_probabilities(x: np.ndarray, seed: int) -> np.ndarray:
    weights, bias = linear_weights(seed)
    logits = x.astype(np.float32) @ weights + bias
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _model(seed: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    weights, bias = linear_weights(seed)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["z"]), helper.make_node("Add", ["z", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)],
        "linear", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", len(FEATURES)])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", len(LABELS)])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def make_linear_bundle(version: str = "1.0.0", *, seed: int = 0, name: str = "iris",
                       profiles: tuple[str, ...] = ("generic-x86_64",), allow_nan: bool = False,
                       golden_seed: int | None = None) -> bytes:
    """``golden_seed`` other than ``seed`` makes golden outputs the model disagrees with (a bad build)."""
    x = np.random.default_rng(100 + seed).normal(size=(20, len(FEATURES))).astype(np.float32)
    probs = linear_probabilities(x, seed if golden_seed is None else golden_seed)
    fields: dict[str, Any] = {
        "schema_version": 1, "name": name, "version": version, "format": "onnx", "task": "classification",
        "quantization": "none", "runtime": {"opset": 13},
        "inputs": [{"name": "features", "dtype": "float32", "shape": [-1, len(FEATURES)],
                    "feature_names": list(FEATURES), "allow_nan": allow_nan}],
        "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, len(LABELS)], "role": "probabilities"}],
        "class_labels": list(LABELS), "profiles": list(profiles),
        "health_check": {"min_agreement": 0.95, "max_rel_error": 0.05, "latency_budget_ms": 50.0},
    }
    golden = {"inputs": x.tolist(), "outputs": {"label": [LABELS[i] for i in probs.argmax(axis=1)],
                                                "probabilities": probs.tolist()}}
    files = {"model.onnx": _model(seed), "golden.json": json.dumps(golden).encode(),
             "reference.json": json.dumps({"rows": 20, "features": []}).encode()}
    return build_bundle_bytes(fields, files)
