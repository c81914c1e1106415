"""The same model and data give the same bundle bytes in any process, whatever the process's
string hash seed, the BLAS thread count or the host CPU's int8 instructions:

- skl2onnx lists the opset imports by iterating a Python set, in the order of the per-process
  string hash: with PYTHONHASHSEED=30 an MLP's came out as ``ai.onnx.ml, ""`` (1 seed in 40);
- OpenBLAS computes the original model's probabilities (golden.json) to other last bits with one
  thread than with two;
- onnxruntime's default u8s8 int8 products saturate on x86 CPUs without VNNI, so the proof's
  figures (written into the manifest) followed the host CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import joblib
import numpy as np
import onnx
import pytest
from threadpoolctl import ThreadpoolController

from converter.onnxgraph import tidy
from converter.predictors import EstimatorPredictor, OnnxPredictor
from converter.quantize import quantize_onnx
from tests.support.tensor_models import audio_window, window_samples

FEATURES = 64
# A seed under which skl2onnx (1.x) lists ai.onnx.ml before the standard domain for an MLP.
FLIPPING_HASH_SEED = "30"


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """A small digits-shaped MLP (64 -> 256 -> 128 -> 3), big enough for OpenBLAS to use two
    threads on its products, trained in a fraction of a second, and a CSV of rows with labels."""
    from sklearn.neural_network import MLPClassifier

    d = tmp_path_factory.mktemp("reproducible")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 16, (300, FEATURES)).astype(np.float32)
    y = (x[:, :3].argmax(axis=1)).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a few iterations are enough here
        model = MLPClassifier((256, 128), max_iter=5, random_state=0).fit(x, y)
    joblib.dump(model, d / "mlp.joblib")
    header = ",".join([*(f"f{i}" for i in range(FEATURES)), "label"])
    rows = np.concatenate([x, y[:, None].astype(np.float32)], axis=1)
    np.savetxt(d / "rows.csv", rows, delimiter=",", header=header, comments="", fmt="%.6g")
    return d / "mlp.joblib", d / "rows.csv", model


def test_opset_imports_are_put_in_one_order() -> None:
    graph = onnx.helper.make_graph([], "g", [], [])
    ml_first = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("ai.onnx.ml", 3),
                                                           onnx.helper.make_opsetid("", 17)])
    standard_first = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                                 onnx.helper.make_opsetid("ai.onnx.ml", 3)])
    assert [o.domain for o in tidy(ml_first).opset_import] == ["", "ai.onnx.ml"]
    assert tidy(ml_first).SerializeToString() == tidy(standard_first).SerializeToString()


def test_original_predictions_do_not_follow_the_blas_thread_count(mlp: tuple[Path, Path, object]) -> None:
    _, csv, model = mlp
    rows = np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.float32)[:64, :FEATURES]
    predictor = EstimatorPredictor(model, "classification")
    outer = ThreadpoolController()
    results = []
    for threads in (1, 2):  # what a 1-core machine, OPENBLAS_NUM_THREADS=1 or a leaked limit would give, and not
        with outer.limit(limits=threads, user_api="blas"):
            results.append(predictor.predict(rows).probabilities)
    assert results[0] is not None and results[1] is not None
    assert results[0].tobytes() == results[1].tobytes()


def test_int8_static_bundles_from_two_processes_are_byte_identical(mlp: tuple[Path, Path, object],
                                                                   tmp_path: Path) -> None:
    model, csv, _ = mlp
    runs = []
    for name, hash_seed, blas in (("a", "0", "2"), ("b", FLIPPING_HASH_SEED, "1")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OPENBLAS_NUM_THREADS": blas}
        runs.append(subprocess.Popen(  # both at once: the test costs one conversion's time on two cores
            [sys.executable, "-m", "edgefleet.cli", "convert", str(model), "--profile", "generic-x86_64",
             "--name", "mlp", "--version", "1.0.0", "--quantize", "int8-static", "--calibration", str(csv),
             "--validation", str(csv), "--labels", "label", "--force", "-o", str(tmp_path / name), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    reports = []
    for run in runs:
        out, err = run.communicate(timeout=240)
        assert run.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert reports[0]["sha256"] == reports[1]["sha256"]


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
