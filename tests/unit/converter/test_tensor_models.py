"""ONNX models with N-D and several named inputs through the converter (issue 12, slice 3):
an NCHW image with a metadata vector, and a 1-D convolution over [batch, 16000] windows, both
built with onnx.helper as a PyTorch export would give them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from converter import ConvertOptions, convert
from converter.errors import DataShapeError, NotAModelError, OptionsError, UnsupportedOpError
from converter.predictors import OnnxPredictor
from edgefleet.bundle import read_bundle
from edgefleet.golden import NPZ_NAME
from tests.support.tensor_models import (
    audio_window,
    image_and_metadata,
    image_samples,
    save_samples,
    window_samples,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tensor-models")
    return {"image": image_and_metadata(d / "image.onnx"), "audio": audio_window(d / "audio.onnx"),
            "image_data": save_samples(d / "image.npz", {**image_samples(200), "y": np.zeros(200, np.int64)}),
            "audio_data": save_samples(d / "audio.npz", window_samples(64))}


def run(model: Path, out: Path, **options: object) -> tuple[object, object]:
    result = convert(ConvertOptions(model, "generic-x86_64", "tensors", "1.0.0", out, **options))  # type: ignore[arg-type]
    return result, read_bundle(result.bundle_path)


def test_image_and_metadata_converts_with_named_nd_inputs(files: dict[str, Path], tmp_path: Path) -> None:
    result, bundle = run(files["image"], tmp_path, quantize="none", validation=files["image_data"])
    manifest = bundle.manifest  # type: ignore[attr-defined]
    assert manifest.schema_version == 2 and manifest.golden_file == NPZ_NAME
    assert [(s.name, s.kind, s.dtype, s.shape) for s in manifest.inputs] == [
        ("image", "tensor", "float32", (-1, 3, 32, 32)), ("metadata", "tensor", "float32", (-1, 8))]
    assert result.report["agreement"] == 1.0 and result.report["rows"] == 200  # type: ignore[attr-defined]
    assert manifest.class_labels == (0, 1, 2, 3)
    golden = bundle.golden()  # type: ignore[attr-defined]
    assert golden["inputs"]["image"].shape == (32, 3, 32, 32)
    predictor = OnnxPredictor(bundle.model_bytes, {o.name: o.role for o in manifest.outputs})  # type: ignore[attr-defined]
    again = predictor.predict(golden["inputs"])
    np.testing.assert_allclose(again.probabilities, golden["outputs"]["probabilities"], atol=1e-6)
    features = bundle.reference()["features"]  # type: ignore[attr-defined]
    assert [(f["name"], f["input"], f["statistic"]) for f in features][:4] == [
        ("image.mean", "image", "mean"), ("image.std", "image", "std"), ("image.min", "image", "min"),
        ("image.max", "image", "max")]
    assert len(features) == 8 and sum(features[0]["counts"]) == 200


def test_int8_static_calibrates_over_both_inputs(files: dict[str, Path], tmp_path: Path) -> None:
    result, bundle = run(files["image"], tmp_path, quantize="int8-static", calibration=files["image_data"],
                         validation=files["image_data"])
    report = result.report  # type: ignore[attr-defined]
    assert report["calibration_rows"] == 200 and report["agreement"] >= 0.98
    ops = {n.op_type for n in onnx.load_model_from_string(bundle.model_bytes).graph.node}  # type: ignore[attr-defined]
    assert "QuantizeLinear" in ops and "Conv" in ops


def test_the_same_model_and_data_give_the_same_bundle(files: dict[str, Path], tmp_path: Path) -> None:
    first, _ = run(files["image"], tmp_path / "a", quantize="none", validation=files["image_data"])
    second, _ = run(files["image"], tmp_path / "b", quantize="none", validation=files["image_data"])
    assert first.sha256 == second.sha256  # type: ignore[attr-defined]


def test_a_window_model_is_summarised_and_its_golden_kept_compact(files: dict[str, Path], tmp_path: Path) -> None:
    result, bundle = run(files["audio"], tmp_path, quantize="int8-static", calibration=files["audio_data"],
                         validation=files["audio_data"])
    manifest = bundle.manifest  # type: ignore[attr-defined]
    # One [batch, 16000] input: a matrix, but too wide to bin per value, so summarised like a tensor,
    # with golden.npz (which needs schema 2).
    assert manifest.inputs[0].shape == (-1, 16000) and manifest.task == "regression"
    assert manifest.schema_version == 2 and manifest.golden_file == NPZ_NAME
    assert [f["name"] for f in bundle.reference()["features"]] == [  # type: ignore[attr-defined]
        "window.mean", "window.std", "window.min", "window.max"]
    assert len(bundle.files[NPZ_NAME]) < 1_100_000  # type: ignore[attr-defined]
    assert result.report["rel_error"] < 0.05  # type: ignore[attr-defined]


def test_without_data_samples_are_made_up(files: dict[str, Path], tmp_path: Path) -> None:
    result, _ = run(files["image"], tmp_path, quantize="int8-dynamic")
    assert result.report["data"] == "synthesized" and result.report["passed"]  # type: ignore[attr-defined]


def test_npz_data_missing_an_input_or_of_the_wrong_shape_is_named(files: dict[str, Path], tmp_path: Path) -> None:
    samples = image_samples(10)
    missing = save_samples(tmp_path / "missing.npz", {"image": samples["image"]})
    with pytest.raises(DataShapeError, match="lacks input\\(s\\) 'metadata'"):
        run(files["image"], tmp_path, quantize="none", validation=missing)
    wrong = save_samples(tmp_path / "wrong.npz", {**samples, "metadata": samples["metadata"][:, :5]})
    with pytest.raises(DataShapeError, match="input 'metadata' has shape \\[10, 5\\] but the model takes \\[n, 8\\]"):
        run(files["image"], tmp_path, quantize="none", validation=wrong)
    with pytest.raises(DataShapeError, match="one array but the model takes 2 inputs"):
        np.save(tmp_path / "one.npy", samples["image"])
        run(files["image"], tmp_path, quantize="none", validation=tmp_path / "one.npy")


def test_a_fixed_batch_export_is_refused_with_the_export_fix(tmp_path: Path) -> None:
    model = onnx.load_model(image_and_metadata(tmp_path / "m.onnx"))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "fixed.onnx"
    onnx.save_model(model, fixed)
    with pytest.raises(NotAModelError) as caught:
        run(fixed, tmp_path, quantize="none")
    assert "not a dynamic batch" in caught.value.message and "dynamic_axes" in (caught.value.fix or "")


def test_a_dynamic_sample_dimension_needs_data(tmp_path: Path) -> None:
    model = onnx.load_model(image_and_metadata(tmp_path / "m.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    dynamic = tmp_path / "dynamic.onnx"
    onnx.save_model(model, dynamic)
    with pytest.raises(OptionsError, match="dynamic dimension besides the batch"):
        run(dynamic, tmp_path, quantize="none")


def test_tflite_is_refused_for_nd_onnx_inputs(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOpError, match="named tensor inputs"):
        run(files["image"], tmp_path, quantize="none", format="tflite")
