"""TFLite conversions (TensorFlow, onnx2tf, LiteRT): float32, full int8, and a Keras source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter import ConvertOptions, convert
from edgefleet.bundle import read_bundle
from tests.support.bundles import make_tflite_bundle
from tests.unit.converter.conftest import ConvertExample

pytestmark = pytest.mark.tflite


def _litert_top1(model_bytes: bytes, rows: list[list[float]]) -> np.ndarray:
    """Run a bundle's TFLite model the way a device would: quantize with the manifest's numbers."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], [len(rows), inp["shape"][-1]])
    interpreter.allocate_tensors()
    x = np.asarray(rows, np.float32)
    scale, zero_point = inp["quantization"]
    if inp["dtype"] == np.int8:
        x = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return np.argmax(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]), axis=1)


def test_mlp_to_float32_tflite(convert_example: ConvertExample) -> None:
    result = convert_example(profile="rpi4-64", format="tflite", quantize="none")
    manifest = result.manifest
    assert manifest.format == "tflite" and manifest.model_file == "model.tflite"
    assert manifest.input.dtype == "float32" and manifest.input.quantization is None
    assert [o.role for o in manifest.outputs] == ["probabilities"]
    assert result.report["agreement"] == 1.0
    golden = read_bundle(result.bundle_path).golden()
    assert _litert_top1(read_bundle(result.bundle_path).model_bytes, golden["inputs"]).tolist() == golden["outputs"]["label"]


def test_mlp_to_full_int8_tflite_carries_scale_and_zero_point(tmp_path: Path) -> None:
    path = make_tflite_bundle(tmp_path)  # digits MLP, rpi4-64, int8
    bundle = read_bundle(path)
    manifest = bundle.manifest
    assert manifest.quantization == "int8" and manifest.input.dtype == "int8"
    assert manifest.input.quantization is not None and manifest.input.quantization.scale > 0
    output = manifest.output("probabilities")
    assert output is not None and output.dtype == "int8" and output.quantization is not None
    assert manifest.report["agreement"] >= 0.99 and manifest.report["calibration_rows"] == 300
    assert "calibration_method" not in manifest.report  # TFLite has no choice of method
    assert manifest.report["size_after"] <= 0.35 * manifest.report["size_before"]
    golden = bundle.golden()
    agree = _litert_top1(bundle.model_bytes, golden["inputs"]) == np.asarray(golden["outputs"]["label"])
    assert agree.mean() >= manifest.health_check.min_agreement


def _iris_keras() -> tuple[Any, np.ndarray, np.ndarray]:
    import tensorflow as tf
    from sklearn.datasets import load_iris

    tf.keras.utils.set_random_seed(0)
    x, y = load_iris(return_X_y=True)
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(16, activation="relu"),
                                 tf.keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=40, batch_size=32, verbose=0)
    return model, x, y


def test_keras_model_trained_here_converts_to_int8(tmp_path: Path) -> None:
    model, x, y = _iris_keras()
    model.save(tmp_path / "iris.keras")
    np.save(tmp_path / "calib.npy", x[::2])
    np.savez(tmp_path / "val.npz", X=x[1::2], y=y[1::2])
    result = convert(ConvertOptions(tmp_path / "iris.keras", "rpi-zero-2w", "iris", "1.0.0", tmp_path / "out",
                                    calibration=tmp_path / "calib.npy", validation=tmp_path / "val.npz"))
    # rpi-zero-2w defaults: TFLite, full int8; Keras sources default to TFLite anyway.
    assert result.manifest.format == "tflite" and result.manifest.quantization == "int8"
    assert result.manifest.source["framework"] == "keras" and result.manifest.class_labels == (0, 1, 2)
    assert result.report["agreement"] >= 0.95 and result.report["accuracy_converted"] >= 0.85


def test_tflite_conversion_is_deterministic(convert_example: ConvertExample, tmp_path: Path) -> None:
    first = convert_example("digits-small-mlp", profile="rpi4-64", format="tflite", quantize="int8",
                            output_dir=tmp_path / "a")
    second = convert_example("digits-small-mlp", profile="rpi4-64", format="tflite", quantize="int8",
                             output_dir=tmp_path / "b")
    assert first.sha256 == second.sha256


def test_saved_model_directory_converts_with_dynamic_range(tmp_path: Path) -> None:
    model, x, _ = _iris_keras()
    model.export(tmp_path / "iris_saved")
    np.save(tmp_path / "val.npy", x)
    result = convert(ConvertOptions(tmp_path / "iris_saved", "rpi4-64", "iris", "1.0.0", tmp_path / "out",
                                    quantize="int8-dynamic", validation=tmp_path / "val.npy"))
    assert result.manifest.source["framework"] == "savedmodel" and result.manifest.format == "tflite"
    assert result.report["agreement"] >= 0.97 and result.manifest.input.dtype == "float32"
