"""Keras models with image-shaped and other N-D inputs through the converter to TFLite (issue 12):
the digits CNN on 32x32 RGB images in float32, fp16, int8-dynamic and full int8; an image with a
metadata vector (two named inputs); a 1-D convolution over sensor windows (a regressor); and the
models the converter refuses, each with its reason and fix. Every bundle that is written passes
the health check a device runs on its golden samples (the agent's code, in-process)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.health import HealthReport, check_health
from agent.runtime import load_session
from agent.slots import ModelStore
from agent.state import StateDir
from converter import ConversionResult, ConvertOptions, convert
from converter.errors import NotAModelError, UnsupportedOpError
from converter.predictors import TflitePredictor
from edgefleet.bundle import read_bundle
from edgefleet.golden import NPZ_NAME
from edgefleet.profiles import load_profile
from tests.support.keras_models import (
    fixed_batch,
    image_and_metadata,
    image_and_metadata_samples,
    image_example,
    sensor_window,
    sequence_output,
    two_outputs,
    window_samples,
)
from tests.support.tensor_models import save_samples

pytestmark = pytest.mark.tflite
PROFILE = "generic-x86_64"


def cnn(out: Path, fmt: str, quantize: str, **options: Any) -> ConversionResult:
    files = image_example()
    return convert(ConvertOptions(files.model_path, PROFILE, "digits-cnn", "1.0.0", out, format=fmt, quantize=quantize,
                                  calibration=files.calibration_npz, validation=files.validation_npz,
                                  labels=files.labels_key, **options))


def health(result: ConversionResult) -> HealthReport:
    """The device's health check of the bundle, as the agent stages and loads it."""
    slot = ModelStore(StateDir(Path(tempfile.mkdtemp()) / "state").ensure()).stage(read_bundle(result.bundle_path))
    return check_health(load_session(slot, load_profile(PROFILE)), slot.manifest, slot.golden())


def test_cnn_to_full_int8_tflite_agrees_shrinks_and_passes_the_health_check(tmp_path: Path) -> None:
    result = cnn(tmp_path, "tflite", "int8")
    manifest, report = result.manifest, result.report
    assert manifest.format == "tflite" and manifest.quantization == "int8" and manifest.schema_version == 2
    (spec,) = manifest.inputs
    assert (spec.name, spec.kind, spec.dtype, spec.shape) == ("image", "tensor", "int8", (-1, 32, 32, 3))
    assert spec.quantization is not None and spec.quantization.scale > 0  # a device quantizes [0, 1] pixels with it
    assert manifest.class_labels == tuple(range(10)) and manifest.golden_file == NPZ_NAME
    assert report["agreement"] >= 0.98 and report["passed"]
    # "before" is the float32 TFLite model (not the .keras file, which also holds Adam's state).
    assert report["size_ratio"] <= 0.30 and report["size_before"] > 4 * report["size_after"] * 0.9
    assert report["calibration_rows"] == 300 and report["rows"] == 450
    golden = read_bundle(result.bundle_path).golden()
    assert golden["inputs"]["image"].shape == (32, 32, 32, 3) and golden["inputs"]["image"].dtype == np.float32
    check = health(result)
    assert check.passed and check.agreement is not None and check.agreement >= 0.98


@pytest.mark.parametrize("quantize", ["none", "fp16", "int8-dynamic"])
def test_cnn_float_input_variants_pass(tmp_path: Path, quantize: str) -> None:
    result = cnn(tmp_path, "tflite", quantize)
    assert result.manifest.inputs[0].dtype == "float32" and result.manifest.inputs[0].shape == (-1, 32, 32, 3)
    assert result.report["agreement"] >= 0.99 and result.report["passed"]
    expected_ratio = {"none": 1.0, "fp16": 0.55, "int8-dynamic": 0.30}[quantize]
    assert result.report["size_ratio"] <= expected_ratio
    assert health(result).passed


def test_the_same_cnn_and_data_give_the_same_tflite_bundle(tmp_path: Path) -> None:
    first = cnn(tmp_path / "a", "tflite", "int8")
    second = cnn(tmp_path / "b", "tflite", "int8")
    assert first.sha256 == second.sha256


def test_image_and_metadata_keep_their_names_through_full_int8(tmp_path: Path) -> None:
    model = image_and_metadata(tmp_path / "two.keras")
    save_samples(tmp_path / "val.npz", image_and_metadata_samples(300, seed=2))
    result = convert(ConvertOptions(model, PROFILE, "two-inputs", "1.0.0", tmp_path / "out", format="tflite",
                                    quantize="int8", validation=tmp_path / "val.npz"))
    inputs = {spec.name: spec for spec in result.manifest.inputs}
    assert [(n, s.dtype, s.shape) for n, s in inputs.items()] == [
        ("image", "int8", (-1, 16, 16, 3)), ("metadata", "int8", (-1, 4))]
    assert inputs["image"].quantization != inputs["metadata"].quantization  # each input its own range
    assert result.report["agreement"] >= 0.97 and result.report["accuracy_converted"] >= 0.9
    # The names reach the .tflite file's signature, by which a device matches its inputs.
    predictor = TflitePredictor(read_bundle(result.bundle_path).model_bytes, "classification")
    assert sorted(predictor.input_details()) == ["image", "metadata"]
    assert health(result).passed


def test_a_sensor_window_regressor_converts_with_summary_drift_reference(tmp_path: Path) -> None:
    model = sensor_window(tmp_path / "window.keras")
    data = window_samples(200, seed=2)
    np.save(tmp_path / "windows.npy", data["window"])  # one input: a bare .npy
    result = convert(ConvertOptions(model, PROFILE, "window", "1.0.0", tmp_path / "out", format="tflite",
                                    quantize="int8-dynamic", validation=tmp_path / "windows.npy"))
    manifest = result.manifest
    assert manifest.task == "regression" and manifest.inputs[0].shape == (-1, 64, 3)
    assert [o.role for o in manifest.outputs] == ["value"]
    assert result.report["passed"] and result.report["max_abs_error"] < 0.05
    features = read_bundle(result.bundle_path).reference()["features"]
    assert features[0]["name"] == "window.mean" and sum(features[0]["counts"]) == 200
    assert health(result).passed


def test_models_without_one_batch_output_or_with_a_fixed_batch_are_refused(tmp_path: Path) -> None:
    cases = [(two_outputs, "returns 2 outputs", "keras.Model(model.inputs, model.outputs[0])"),
             (sequence_output, "returns an output of shape [None, 10, 3]", "Flatten"),
             (fixed_batch, "is not a dynamic batch", "without batch_size")]
    for build, message, fix in cases:
        path = build(tmp_path / f"{build.__name__}.keras")
        with pytest.raises(NotAModelError) as caught:
            convert(ConvertOptions(path, PROFILE, "refused", "1.0.0", tmp_path / "out", format="tflite"))
        assert message in caught.value.message and fix in (caught.value.fix or "")
    assert not (tmp_path / "out").exists()


# Keras -> ONNX: Keras 3's model.export(format="onnx") through tf2onnx (converter.keras_onnx).


def test_cnn_to_onnx_int8_static_agrees_shrinks_and_passes_the_health_check(tmp_path: Path) -> None:
    result = cnn(tmp_path, "onnx", "int8-static")
    manifest, report = result.manifest, result.report
    assert manifest.format == "onnx" and manifest.source["framework"] == "keras"
    assert [(s.name, s.dtype, s.shape) for s in manifest.inputs] == [("image", "float32", (-1, 32, 32, 3))]
    assert [(o.name, o.role) for o in manifest.outputs] == [("probabilities", "probabilities")]
    assert report["agreement"] >= 0.98 and report["size_ratio"] <= 0.30 and report["passed"]
    assert report["calibration_method"] == "minmax" and manifest.runtime["domains"] == ["ai.onnx"]
    check = health(result)
    assert check.passed and check.agreement is not None and check.agreement >= 0.98


@pytest.mark.parametrize("quantize", ["none", "fp16", "int8-dynamic"])
def test_cnn_to_onnx_other_variants_pass(tmp_path: Path, quantize: str) -> None:
    result = cnn(tmp_path, "onnx", quantize)
    assert result.report["agreement"] >= 0.99 and result.report["passed"]
    assert result.report["size_ratio"] <= {"none": 1.0, "fp16": 0.55, "int8-dynamic": 0.30}[quantize]
    assert health(result).passed


def test_the_same_cnn_gives_the_same_onnx_bundle(tmp_path: Path) -> None:
    # tf2onnx numbers tensors with per-process counters; the export renames them by position.
    first = cnn(tmp_path / "a", "onnx", "int8-static")
    second = cnn(tmp_path / "b", "onnx", "int8-static")
    assert first.sha256 == second.sha256


def test_a_keras_model_on_an_onnx_only_profile_goes_to_onnx(tmp_path: Path) -> None:
    files = image_example()
    result = convert(ConvertOptions(files.model_path, "jetson-nano", "digits-cnn", "1.0.0", tmp_path,
                                    validation=files.validation_npz, labels=files.labels_key))
    assert result.manifest.format == "onnx" and result.manifest.quantization == "fp16" and result.report["passed"]


def test_image_and_metadata_to_onnx_int8_static_by_name(tmp_path: Path) -> None:
    model = image_and_metadata(tmp_path / "two.keras")
    save_samples(tmp_path / "val.npz", image_and_metadata_samples(300, seed=2))
    result = convert(ConvertOptions(model, PROFILE, "two-inputs", "1.0.0", tmp_path / "out", format="onnx",
                                    quantize="int8-static", validation=tmp_path / "val.npz"))
    assert [(s.name, s.dtype, s.shape) for s in result.manifest.inputs] == [
        ("image", "float32", (-1, 16, 16, 3)), ("metadata", "float32", (-1, 4))]
    assert result.report["agreement"] >= 0.97 and health(result).passed


def test_saved_models_export_to_onnx_with_one_input_and_are_refused_with_two(tmp_path: Path) -> None:
    from converter.tf_runtime import keras

    window = keras().models.load_model(sensor_window(tmp_path / "window.keras"))
    window.export(tmp_path / "window_saved", verbose=False)
    np.save(tmp_path / "windows.npy", window_samples(100, seed=2)["window"])
    result = convert(ConvertOptions(tmp_path / "window_saved", PROFILE, "window", "1.0.0", tmp_path / "out",
                                    format="onnx", quantize="none", validation=tmp_path / "windows.npy"))
    assert result.manifest.source["framework"] == "savedmodel" and result.report["max_abs_error"] < 1e-4
    assert [(s.name, s.shape) for s in result.manifest.inputs] == [("window", (-1, 64, 3))]
    assert health(result).passed
    two = keras().models.load_model(image_and_metadata(tmp_path / "two.keras"))
    two.export(tmp_path / "two_saved", verbose=False)
    with pytest.raises(UnsupportedOpError) as caught:
        convert(ConvertOptions(tmp_path / "two_saved", PROFILE, "two", "1.0.0", tmp_path / "out2", format="onnx"))
    assert "SavedModel with 2 inputs" in caught.value.message and "--format tflite" in (caught.value.fix or "")


def test_a_declared_image_input_stays_an_image_through_full_int8(tmp_path: Path) -> None:
    # --image image: the digits are multiples of 1/255, so the .npz tensors go back to 8-bit pixels exactly.
    result = cnn(tmp_path, "tflite", "int8", images={"image": {}})
    (spec,) = result.manifest.inputs
    assert spec.kind == "image" and spec.dtype == "int8" and spec.image is not None
    assert (spec.image.layout, spec.image.height, spec.image.channels) == ("NHWC", 32, 3)
    assert result.report["agreement"] >= 0.98 and result.report["size_ratio"] <= 0.30
    assert read_bundle(result.bundle_path).golden()["inputs"]["image"].dtype == np.uint8  # pixels, compact
    assert health(result).passed
