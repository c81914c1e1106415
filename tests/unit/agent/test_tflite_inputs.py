"""A TFLite model with two named N-D inputs on the agent (issue 12, slice 3): an NHWC image and a
metadata vector, float32 and full-integer int8 (each input with its own scale), built with
TensorFlow's converter; the session matches inputs by name, resizes both with the batch, and
answers as numpy computes the same model; the health check passes on golden.npz."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.health import check_health
from agent.runtime import load_session
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet.bundle import build_bundle_bytes, read_bundle
from edgefleet.golden import NPZ_NAME, encode
from edgefleet.profiles import load_profile

pytestmark = pytest.mark.tflite

RNG = np.random.default_rng(8)
W_IMAGE = RNG.normal(0, 1.0, (3, 3)).astype(np.float32)
W_META = RNG.normal(0, 0.5, (2, 3)).astype(np.float32)


def expected(image: np.ndarray, meta: np.ndarray) -> np.ndarray:
    logits = image.mean(axis=(1, 2)) @ W_IMAGE + meta @ W_META
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def samples(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (rows, 4, 4, 3)).astype(np.float32), rng.normal(0, 1, (rows, 2)).astype(np.float32)


@functools.cache
def bundle(kind: str) -> bytes:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 3], tf.float32, name="meta_is_second_image"),
                                  tf.TensorSpec([None, 2], tf.float32, name="meta")])
    def model(image: Any, meta: Any) -> Any:
        pooled = tf.reduce_mean(image, axis=[1, 2])
        return {"probabilities": tf.nn.softmax(tf.matmul(pooled, W_IMAGE) + tf.matmul(meta, W_META))}

    limit = sys.getrecursionlimit()
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
        if kind == "int8":
            image, meta = samples(200, 1)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([image[i:i + 1], meta[i:i + 1]] for i in range(200))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        data = bytes(converter.convert())
    finally:
        sys.setrecursionlimit(limit)  # the converter raises it for good (see tflite_models.py)
    details = {d["name"]: d for d in Interpreter(model_content=data).get_input_details()}
    output = Interpreter(model_content=data).get_output_details()[0]

    def spec(name: str, shape: list[int], detail: dict[str, Any], role: str = "other") -> dict[str, Any]:
        scale, zero = detail["quantization"]
        return {"name": name, "dtype": "int8" if kind == "int8" else "float32", "shape": shape, "role": role,
                "quantization": {"scale": float(scale), "zero_point": int(zero)} if kind == "int8" else None}

    golden_image, golden_meta = samples(16, 2)
    probabilities = expected(golden_image, golden_meta)
    fields: dict[str, Any] = {
        "schema_version": 2, "name": "vision", "version": "1.0.0", "format": "tflite", "task": "classification",
        "quantization": kind, "runtime": {},
        # Listed in another order than the .tflite file's: the session must match them by name.
        "inputs": [spec("meta", [-1, 2], details["meta"]),
                   spec("meta_is_second_image", [-1, 4, 4, 3], details["meta_is_second_image"])],
        "outputs": [spec("probabilities", [-1, 3], output, "probabilities")],
        "class_labels": ["a", "b", "c"], "profiles": ["generic-x86_64"], "golden_file": NPZ_NAME,
        "health_check": {"min_agreement": 0.9, "max_rel_error": 0.1, "latency_budget_ms": 50.0},
    }
    golden = encode({"meta_is_second_image": golden_image, "meta": golden_meta},
                    {"label": [["a", "b", "c"][i] for i in probabilities.argmax(axis=1)],
                     "probabilities": probabilities.tolist()})
    files = {"model.tflite": data, NPZ_NAME: golden, "reference.json": b'{"rows": 16, "features": []}'}
    return build_bundle_bytes(fields, files)


@pytest.mark.parametrize(("kind", "mean_error"), [("none", 1e-6), ("int8", 0.02)])
def test_two_named_inputs_answer_as_numpy_and_pass_the_health_check(tmp_path: Path, kind: str,
                                                                    mean_error: float) -> None:
    slot = ModelStore(StateDir(tmp_path / "state").ensure()).stage(read_bundle(bundle(kind)))
    session = load_session(slot, load_profile("generic-x86_64"))
    image, meta = samples(100, 3)
    for rows in (100, 1, 3):  # batches of any size: both inputs resized together
        out = session.run_feeds({"meta": meta[:rows], "meta_is_second_image": image[:rows]})["probabilities"]
        want = expected(image[:rows], meta[:rows])
        # int8 rounds each input with its own scale (swapped inputs would be far off, not 2% off).
        assert np.abs(out - want).mean() <= mean_error
        assert (out.argmax(axis=1) == want.argmax(axis=1)).mean() >= 0.9
    report = check_health(session, slot.manifest, slot.golden())
    assert report.passed, report.message
