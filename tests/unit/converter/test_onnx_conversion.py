"""Real ONNX conversions, checked by reading the bundle back and running it in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from converter import ConvertOptions, ExampleFiles, convert
from edgefleet.bundle import read_bundle
from tests.unit.converter.conftest import ConvertExample


def _run(model_bytes: bytes, rows: list[list[float]]) -> list[np.ndarray]:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.asarray(rows, np.float32)})


def test_float32_onnx_matches_scikit_learn_and_carries_golden_and_reference(convert_example: ConvertExample) -> None:
    result = convert_example(quantize="none")
    report = result.report
    assert report["agreement"] == 1.0 and report["data"] == "validation" and report["rows"] == 450
    assert report["accuracy_original"] > 0.95 and report["accuracy_drop"] == 0.0
    assert report["size_before"] == report["size_after"]
    bundle = read_bundle(result.bundle_path)
    manifest = bundle.manifest
    assert result.bundle_path.name == "digits-mlp-1.0.0.tar.gz" and bundle.sha256 == result.sha256
    assert manifest.task == "classification" and manifest.class_labels == tuple(range(10))
    assert manifest.input.shape == (-1, 64) and manifest.input.feature_names is not None
    assert {o.role for o in manifest.outputs} == {"label", "probabilities"}
    assert manifest.health_check.min_agreement == 0.98 and manifest.health_check.latency_budget_ms == 50.0
    assert manifest.profiles == ("generic-x86_64",) and manifest.source["framework"] == "sklearn"
    assert "latency" not in manifest.report  # timings vary: they stay out of the deterministic bundle
    golden = bundle.golden()
    assert len(golden["inputs"]) == 32
    label, probabilities = _run(bundle.model_bytes, golden["inputs"])
    assert label.tolist() == golden["outputs"]["label"]
    np.testing.assert_allclose(probabilities, golden["outputs"]["probabilities"], atol=1e-5)
    reference = bundle.reference()
    assert reference["rows"] == 450 and len(reference["features"]) == 64
    assert sum(reference["outputs"]["counts"]) == 450


@pytest.mark.parametrize("quantize", ["int8-dynamic", "int8-static", "fp16"])
def test_quantized_onnx_is_smaller_and_still_agrees(convert_example: ConvertExample, quantize: str) -> None:
    result = convert_example(quantize=quantize)
    report = result.report
    assert report["passed"] and report["agreement"] >= 0.99
    assert report["size_after"] < (0.35 if quantize.startswith("int8") else 0.7) * report["size_before"]
    ops = {d for d in result.manifest.runtime["domains"]}
    assert "ai.onnx.ml" in ops  # the label output keeps skl2onnx's ArrayFeatureExtractor
    if quantize == "int8-static":
        assert report["calibration_rows"] == 300 and report["calibration_method"] == "minmax"
        assert b"QuantizeLinear" in read_bundle(result.bundle_path).model_bytes


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(convert_example: ConvertExample, method: str) -> None:
    result = convert_example("digits-small-mlp", quantize="int8-static", calibration_method=method)
    assert result.report["calibration_method"] == method and result.report["agreement"] >= 0.95


def test_converting_twice_gives_the_same_sha256(convert_example: ConvertExample, tmp_path: Path) -> None:
    first = convert_example(quantize="int8-static", output_dir=tmp_path / "a")
    second = convert_example(quantize="int8-static", output_dir=tmp_path / "b")
    assert first.sha256 == second.sha256
    assert first.bundle_path.read_bytes() == second.bundle_path.read_bytes()


@pytest.mark.parametrize(("kind", "quantize"), [("diabetes-ridge", "none"), ("diabetes-mlp", "int8-dynamic")])
def test_regression_reports_errors_and_golden_values(convert_example: ConvertExample, kind: str, quantize: str) -> None:
    result = convert_example(kind, quantize=quantize)
    report = result.report
    assert result.manifest.task == "regression" and result.manifest.class_labels is None
    assert report["rel_error"] <= 0.05 and report["max_abs_error"] >= report["mean_abs_error"]
    bundle = read_bundle(result.bundle_path)
    assert bundle.reference()["outputs"]["kind"] == "bins"
    golden = bundle.golden()
    (values,) = _run(bundle.model_bytes, golden["inputs"])
    np.testing.assert_allclose(values.reshape(-1), golden["outputs"]["value"], rtol=0.1, atol=5.0)


def test_lightgbm_classifier_through_onnxmltools(convert_example: ConvertExample) -> None:
    result = convert_example("breast-cancer-lgbm", quantize="none")
    assert result.manifest.source["framework"] == "lightgbm"
    assert result.report["agreement"] >= 0.99 and result.manifest.class_labels == (0, 1)
    assert "ai.onnx.ml" in result.manifest.runtime["domains"]


def test_onnx_file_as_source(digits: ExampleFiles, tmp_path: Path) -> None:
    float_bundle = convert(ConvertOptions(digits.model_path, "generic-x86_64", "digits", "1.0.0", tmp_path / "f",
                                          quantize="none"))
    onnx_path = tmp_path / "digits.onnx"
    onnx_path.write_bytes(read_bundle(float_bundle.bundle_path).model_bytes)
    result = convert(ConvertOptions(onnx_path, "rpi4-64", "digits", "2.0.0", tmp_path / "q",
                                    calibration=digits.calibration_csv, validation=digits.validation_csv,
                                    labels=digits.labels_column))
    assert result.manifest.source["framework"] == "onnx"
    assert result.manifest.quantization == "int8-static"  # rpi4-64's default
    assert result.manifest.class_labels == tuple(range(10))
    assert result.report["size_before"] == float_bundle.report["size_after"] and result.report["agreement"] >= 0.99


def test_without_data_a_synthesized_sample_is_used_and_reported(convert_example: ConvertExample) -> None:
    result = convert_example("iris-logreg", calibration=None, validation=None, labels=None, quantize="none")
    assert result.report["data"] == "synthesized" and result.report["rows"] == 256
    assert "accuracy_original" not in result.report


def test_calibration_data_is_used_when_there_is_no_validation_file(convert_example: ConvertExample) -> None:
    result = convert_example(validation=None, quantize="int8-dynamic")
    assert result.report["data"] == "calibration" and result.report["rows"] == 300


def test_xgboost_classifier_with_npy_validation(tmp_path: Path) -> None:
    import joblib
    import xgboost
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    model = xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1, random_state=0).fit(x.astype(np.float32), y)
    joblib.dump(model, tmp_path / "iris.joblib")
    np.save(tmp_path / "iris.npy", np.column_stack([x, y]).astype(np.float32))
    result = convert(ConvertOptions(tmp_path / "iris.joblib", "generic-x86_64", "iris-xgb", "1.0.0", tmp_path / "out",
                                    validation=tmp_path / "iris.npy", labels="4"))
    assert result.manifest.source["framework"] == "xgboost"
    assert result.report["agreement"] == 1.0 and result.report["accuracy_converted"] > 0.95
