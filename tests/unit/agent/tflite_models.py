"""Real TFLite bundles for the agent's tests, built with TensorFlow's own converter.

The model is the same linear softmax classifier as tests/unit/agent/models.py (same weights,
so golden outputs come from numpy), exported as float32 and as full-integer int8 (int8 input
and output tensors, calibrated on sample rows); ``converter_bundle`` is the converter's own
int8 TFLite bundle, for parity with its report. The manifest carries the int8 tensors' scale
and zero point, read back from the converted model. Building needs TensorFlow (the
``tflite-convert`` extra); the second test environment (scripts/test-tflite-runtime, numpy<2
and tflite-runtime, no TensorFlow) gets the bundles prebuilt:

    .venv/bin/python -m tests.unit.agent.tflite_models OUTDIR

which takes them from $EDGEFLEET_TEST_SHARED when the main test run left them there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.bundle import build_bundle_bytes
from tests.support.shared import locked, shared_dir
from tests.unit.agent.models import FEATURES, LABELS, linear_probabilities, linear_weights

KINDS = ("float32", "int8")
BUNDLES_ENV = "EDGEFLEET_TFLITE_BUNDLES"


def _tflite(kind: str, seed: int) -> bytes:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    weights, bias = linear_weights(seed)

    @tf.function(input_signature=[tf.TensorSpec([None, len(FEATURES)], tf.float32, name="features")])
    def model(x: Any) -> Any:
        return {"probabilities": tf.nn.softmax(tf.matmul(x, weights) + bias)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    if kind == "int8":
        rows = np.random.default_rng(1).normal(size=(200, len(FEATURES))).astype(np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([r[None, :]] for r in rows)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def _quantization(model: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()

    def q(detail: dict[str, Any]) -> dict[str, Any]:
        scale, zero = detail["quantization"]
        return {"scale": float(scale), "zero_point": int(zero)}
    return q(inp), q(out)


def make_tflite_bundle(kind: str = "float32", *, version: str = "1.0.0", seed: int = 0) -> bytes:
    model = _tflite(kind, seed)
    dtype = "int8" if kind == "int8" else "float32"
    in_q, out_q = _quantization(model) if kind == "int8" else (None, None)
    x = np.random.default_rng(100 + seed).normal(size=(40, len(FEATURES))).astype(np.float32)
    probs = linear_probabilities(x, seed)
    fields: dict[str, Any] = {
        "schema_version": 1, "name": "iris", "version": version, "format": "tflite", "task": "classification",
        "quantization": "int8" if kind == "int8" else "none", "runtime": {},
        "inputs": [{"name": "features", "dtype": dtype, "shape": [-1, len(FEATURES)],
                    "feature_names": list(FEATURES), "quantization": in_q}],
        "outputs": [{"name": "probabilities", "dtype": dtype, "shape": [-1, len(LABELS)], "role": "probabilities",
                     "quantization": out_q}],
        "class_labels": list(LABELS), "profiles": ["generic-x86_64", "rpi4-64"],
        "health_check": {"min_agreement": 0.9, "max_rel_error": 0.1, "latency_budget_ms": 50.0},
    }
    golden = {"inputs": x.tolist(), "outputs": {"label": [LABELS[i] for i in probs.argmax(axis=1)],
                                                "probabilities": probs.tolist()}}
    files = {"model.tflite": model, "golden.json": json.dumps(golden).encode(),
             "reference.json": json.dumps({"rows": 40, "features": []}).encode()}
    return build_bundle_bytes(fields, files)


def converter_bundle() -> bytes:
    """The converter's own full-int8 TFLite bundle (tests/support/bundles.py: digits MLP, rpi4-64)."""
    import tempfile

    from tests.support.bundles import make_tflite_bundle as converter_tflite

    return converter_tflite(Path(tempfile.mkdtemp(prefix="edgefleet-agent-tflite-"))).read_bytes()


def bundle_bytes(kind: str) -> bytes:
    """A prebuilt bundle from $EDGEFLEET_TFLITE_BUNDLES, else the test run's shared one, else one built now.

    Kinds: ``float32`` and ``int8`` (the linear iris model), ``converter`` (the converter's
    int8 digits bundle). In a test run (tests/support/shared.py) each kind is built once, by
    the first worker that asks, and kept for the run: scripts/test keeps that directory until
    scripts/test-tflite-runtime has taken the same bundles, so the second pass converts nothing."""
    prebuilt = os.environ.get(BUNDLES_ENV)
    if prebuilt:
        return (Path(prebuilt) / f"{kind}.tar.gz").read_bytes()
    shared = shared_dir()
    if shared is None:
        return _build(kind)
    path = shared / "agent-tflite-bundles" / f"{kind}.tar.gz"
    with locked(shared / "agent-tflite-bundles.lock"):
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            partial = path.with_suffix(".part")
            partial.write_bytes(_build(kind))
            partial.rename(path)  # whole or absent
        return path.read_bytes()


def _build(kind: str) -> bytes:
    limit = sys.getrecursionlimit()
    try:
        return converter_bundle() if kind == "converter" else make_tflite_bundle(kind)
    finally:
        # The TFLite conversion raises the limit to 2**31-1 and leaves it there; a later test of deep
        # JSON nesting (tests/unit/core) then overflows the C stack instead of raising RecursionError.
        sys.setrecursionlimit(limit)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for k in (*KINDS, "converter"):
        (target / f"{k}.tar.gz").write_bytes(bundle_bytes(k))
    print(f"wrote {', '.join(KINDS)} and converter bundles to {target}")
