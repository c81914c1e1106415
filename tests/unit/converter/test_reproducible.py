"""The same model and data give the same bundle bytes in any process, whatever the process's
string hash seed, the BLAS thread count or the host CPU's int8 instructions (two CLI conversions
in two processes that differ in the first two: test_acceptance.py):

- skl2onnx lists the opset imports by iterating a Python set, in the order of the per-process
  string hash: with PYTHONHASHSEED=30 an MLP's came out as ``ai.onnx.ml, ""`` (1 seed in 40);
- OpenBLAS computes the original model's probabilities (golden.json) to other last bits with one
  thread than with two;
- onnxruntime's default u8s8 int8 products saturate on x86 CPUs without VNNI, so the proof's
  figures (written into the manifest) followed the host CPU.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from threadpoolctl import ThreadpoolController

from converter.onnxgraph import tidy
from converter.predictors import EstimatorPredictor, OnnxPredictor
from converter.quantize import quantize_onnx
from tests.support.tensor_models import audio_window, window_samples

FEATURES = 64


@pytest.fixture(scope="module")
def mlp() -> tuple[object, np.ndarray]:
    """A small digits-shaped MLP (64 -> 256 -> 128 -> 3), big enough for OpenBLAS to use two
    threads on its products, trained in a fraction of a second, and rows for it."""
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 16, (300, FEATURES)).astype(np.float32)
    y = (x[:, :3].argmax(axis=1)).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a few iterations are enough here
        model = MLPClassifier((256, 128), max_iter=5, random_state=0).fit(x, y)
    return model, x[:64]


def test_opset_imports_are_put_in_one_order() -> None:
    graph = onnx.helper.make_graph([], "g", [], [])
    ml_first = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("ai.onnx.ml", 3),
                                                           onnx.helper.make_opsetid("", 17)])
    standard_first = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                                 onnx.helper.make_opsetid("ai.onnx.ml", 3)])
    assert [o.domain for o in tidy(ml_first).opset_import] == ["", "ai.onnx.ml"]
    assert tidy(ml_first).SerializeToString() == tidy(standard_first).SerializeToString()


def test_original_predictions_do_not_follow_the_blas_thread_count(mlp: tuple[object, np.ndarray]) -> None:
    model, rows = mlp
    predictor = EstimatorPredictor(model, "classification")
    outer = ThreadpoolController()
    results = []
    for threads in (1, 2):  # what a 1-core machine, OPENBLAS_NUM_THREADS=1 or a leaked limit would give, and not
        with outer.limit(limits=threads, user_api="blas"):
            results.append(predictor.predict(rows).probabilities)
    assert results[0] is not None and results[1] is not None
    assert results[0].tobytes() == results[1].tobytes()


def test_the_int8_proof_computes_exact_products_on_any_x86_cpu(tmp_path: Path) -> None:
    """The proof's session against the same QDQ graph evaluated unfused in float (onnxruntime with
    graph optimizations off), whose arithmetic no CPU's int8 instructions change. Without exact
    products, an AVX2 host without VNNI gave 0.051 here against 0.0105."""
    import onnxruntime as ort

    windows = window_samples(64)["window"]
    model = onnx.load_model(audio_window(tmp_path / "audio.onnx"))
    quantized = quantize_onnx(model, "int8-static", calibration={"window": windows}).SerializeToString()
    original = OnnxPredictor(model.SerializeToString(), {"value": "value"}).predict(windows).regression()
    proved = OnnxPredictor(quantized, {"value": "value"}).predict(windows).regression()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    exact = ort.InferenceSession(quantized, options, providers=["CPUExecutionProvider"]).run(None, {"window": windows})[0]

    def rel_error(values: np.ndarray) -> float:
        return float(np.abs(values.reshape(original.shape) - original).mean() / original.std())

    assert rel_error(proved) == pytest.approx(rel_error(exact), abs=0.002)
