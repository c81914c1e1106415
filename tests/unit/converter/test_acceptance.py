"""The issue's "done when", tried as a new user would, through the real command line.

MLPClassifier(hidden_layer_sizes=(256, 128)) trained on digits and saved with joblib,
converted with `--quantize int8-static --profile rpi4-64` and a calibration CSV: the model is
at most 35% of the float32 ONNX model, agrees with scikit-learn on >= 99% of held-out rows,
and converting twice (two separate processes) gives the same sha256.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from converter import ExampleFiles
from edgefleet.bundle import read_bundle


def _edgefleet(*args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "edgefleet.cli", *args, "--json"], capture_output=True, text=True,
                          timeout=240, check=False, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def _convert(files: ExampleFiles, out: Path, *extra: str, env: dict[str, str] | None = None) -> dict[str, object]:
    return _edgefleet("convert", str(files.model_path), "--profile", "rpi4-64", "--name", "digits",
                      "--version", "1.0.0", "--calibration", str(files.calibration_csv),
                      "--validation", str(files.validation_csv), "--labels", files.labels_column, "-o", str(out), *extra,
                      env=env)


def test_int8_static_onnx_is_small_agrees_and_is_reproducible(digits: ExampleFiles, tmp_path: Path) -> None:
    import joblib

    model = joblib.load(digits.model_path)
    assert type(model).__name__ == "MLPClassifier" and model.hidden_layer_sizes == (256, 128)
    float32 = _convert(digits, tmp_path / "float", "--quantize", "none")
    # Two processes that differ where the bytes once followed them (test_reproducible.py): the
    # string hash seed (30 put skl2onnx's ai.onnx.ml opset first) and the BLAS thread count.
    first = _convert(digits, tmp_path / "first", "--quantize", "int8-static",
                     env={"PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "2"})
    second = _convert(digits, tmp_path / "second", "--quantize", "int8-static",
                      env={"PYTHONHASHSEED": "30", "OPENBLAS_NUM_THREADS": "1"})
    bundle = read_bundle(Path(str(first["bundle"])))
    float_model = read_bundle(Path(str(float32["bundle"]))).model_bytes
    assert len(bundle.model_bytes) <= 0.35 * len(float_model)
    assert first["data"] == "validation" and first["rows"] == 450  # held-out rows, not training rows
    assert float(str(first["agreement"])) >= 0.99
    assert first["sha256"] == second["sha256"] == bundle.sha256


@pytest.mark.tflite
def test_the_same_with_full_int8_tflite(digits: ExampleFiles, tmp_path: Path) -> None:
    report = _convert(digits, tmp_path, "--format", "tflite", "--quantize", "int8")
    bundle = read_bundle(Path(str(report["bundle"])))
    assert bundle.manifest.format == "tflite" and bundle.manifest.input.dtype == "int8"
    assert float(str(report["agreement"])) >= 0.99
