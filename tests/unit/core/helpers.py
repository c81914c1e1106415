"""A minimal valid manifest for contract tests (the model bytes are opaque to the reader)."""

from __future__ import annotations

import json
from typing import Any


def manifest_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "schema_version": 1,
        "name": "digits",
        "version": "1.0.0",
        "format": "onnx",
        "task": "classification",
        "quantization": "none",
        "runtime": {"opset": 17, "domains": ["", "ai.onnx.ml"]},
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 2], "feature_names": ["a", "b"]}],
        "outputs": [
            {"name": "label", "dtype": "int64", "shape": [-1], "role": "label"},
            {"name": "probabilities", "dtype": "float32", "shape": [-1, 2], "role": "probabilities"},
        ],
        "class_labels": [0, 1],
        "profiles": ["generic-x86_64"],
        "health_check": {"min_agreement": 0.98, "max_rel_error": 0.05, "latency_budget_ms": 50.0},
    }
    fields.update(overrides)
    return fields


def bundle_files() -> dict[str, bytes]:
    return {
        "model.onnx": b"\x08\x07fake-onnx-bytes" * 50,
        "golden.json": json.dumps({"inputs": [[0.0, 1.0]], "outputs": {"label": [1]}}).encode(),
        "reference.json": json.dumps({"rows": 1, "features": []}).encode(),
    }
