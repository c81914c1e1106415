"""A DataFrame pipeline with a string column (issue 12): named column inputs from the source
model to a schema-2 bundle, proved against scikit-learn, and the quantizations it cannot take
refused with the reason."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from converter import ConvertOptions, DataShapeError, OptionsError, UnsupportedOpError, convert
from converter.examples import REGIONS
from converter.source import describe_estimator
from edgefleet.bundle import read_bundle
from edgefleet.telemetry import ReferenceProfile
from tests.support.bundles import example
from tests.unit.converter.conftest import ConvertExample

KIND = "wine-pipeline"


def _feeds(session: ort.InferenceSession, columns: dict[str, list[list[object]]]) -> dict[str, np.ndarray]:
    return {i.name: np.asarray(columns[i.name], dtype=object if i.type == "tensor(string)" else np.float32)
            for i in session.get_inputs()}


def test_the_pipeline_converts_to_onnx_with_named_column_inputs(convert_example: ConvertExample) -> None:
    result = convert_example(KIND, quantize="none")
    report = result.report
    assert report["data"] == "validation" and report["rows"] == 45
    assert report["agreement"] >= 0.995 and report["accuracy_drop"] == 0.0
    assert "unseen_categories" not in report  # handle_unknown="ignore": the source answers unseen ones too
    bundle = read_bundle(result.bundle_path)
    manifest = bundle.manifest
    assert manifest.schema_version == 2 and manifest.class_labels == (0, 1, 2)
    names = [str(c) for c in pd.read_csv(example(KIND).calibration_csv, nrows=1).columns]
    assert [s.name for s in manifest.inputs] == names and all(s.kind == "column" for s in manifest.inputs)
    region = next(s for s in manifest.inputs if s.name == "region")
    assert region.dtype == "string" and region.categories == REGIONS and region.shape == (-1, 1)
    assert {s.dtype for s in manifest.inputs if s.name != "region"} == {"float32"}
    # The golden samples are by input name, strings as strings, and the bundle's model reproduces them.
    golden = bundle.golden()
    assert sorted(golden["inputs"]) == sorted(names) and len(golden["inputs"]["region"]) == 32
    assert {row[0] for row in golden["inputs"]["region"]} <= set(REGIONS)
    session = ort.InferenceSession(bundle.model_bytes, providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], _feeds(session, golden["inputs"]))
    assert label.tolist() == golden["outputs"]["label"]
    np.testing.assert_allclose(probabilities, golden["outputs"]["probabilities"], atol=1e-5)
    # The drift reference has one feature per input: numbers binned, "region" by category, unseen last.
    reference = bundle.reference()
    assert [f["name"] for f in reference["features"]] == names
    counted = next(f for f in reference["features"] if f["name"] == "region")
    assert counted["kind"] == "categories" and counted["categories"] == list(REGIONS)
    assert sum(counted["counts"]) == 45 and counted["counts"][-1] == 0  # validation holds no unseen region
    assert ReferenceProfile.from_dict(reference).feature_names == tuple(names)


def test_the_pipeline_bundle_is_deterministic(convert_example: ConvertExample, tmp_path: Path) -> None:
    first = convert_example(KIND, quantize="none", output_dir=tmp_path / "a")
    second = convert_example(KIND, quantize="none", output_dir=tmp_path / "b")
    assert first.sha256 == second.sha256
    assert first.bundle_path.read_bytes() == second.bundle_path.read_bytes()


@pytest.mark.parametrize("quantize", ["int8-static", "int8-dynamic"])
def test_int8_is_refused_as_nothing_to_quantize(convert_example: ConvertExample, quantize: str) -> None:
    with pytest.raises(OptionsError, match="nothing to quantize.*TreeEnsembleClassifier") as caught:
        convert_example(KIND, quantize=quantize)
    assert caught.value.fix == "use --quantize none"


def test_the_rpi_default_int8_static_is_refused_with_the_fix(convert_example: ConvertExample) -> None:
    with pytest.raises(OptionsError, match="int8-static quantization has nothing to quantize") as caught:
        convert_example(KIND, profile="rpi4-64")
    assert caught.value.fix == "use --quantize none"


def test_tflite_is_refused_for_named_columns(convert_example: ConvertExample) -> None:
    with pytest.raises(UnsupportedOpError, match="takes named columns, which TFLite cannot"):
        convert_example(KIND, profile="rpi4-64", format="tflite", quantize="none")


def test_without_data_it_converts_on_synthesized_rows(convert_example: ConvertExample) -> None:
    # It used to fail with skl2onnx's "Unable to find column name 'alcohol' among names ['input']".
    result = convert_example(KIND, quantize="none", calibration=None, validation=None, labels=None)
    assert result.report["data"] == "synthesized" and result.report["agreement"] >= 0.995
    golden = read_bundle(result.bundle_path).golden()
    assert {row[0] for row in golden["inputs"]["region"]} <= set(REGIONS)


def test_data_without_a_column_names_it(convert_example: ConvertExample, tmp_path: Path) -> None:
    frame = pd.read_csv(example(KIND).validation_csv, dtype={"region": object})
    frame.drop(columns=["proline"]).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataShapeError, match="has no column\\(s\\) 'proline'"):
        convert_example(KIND, quantize="none", validation=tmp_path / "short.csv")


def test_parquet_data_is_read_by_column_name(convert_example: ConvertExample, tmp_path: Path) -> None:
    frame = pd.read_csv(example(KIND).validation_csv, dtype={"region": object})
    frame[list(reversed(frame.columns))].to_parquet(tmp_path / "val.parquet")  # any column order
    result = convert_example(KIND, quantize="none", validation=tmp_path / "val.parquet")
    assert result.report["rows"] == 45 and result.report["agreement"] >= 0.995
    assert result.report["accuracy_original"] == convert_example(KIND, quantize="none", output_dir=tmp_path / "csv"
                                                                 ).report["accuracy_original"]


def _refit(tmp_path: Path, **encoder: object) -> Path:
    """The example's pipeline refitted with other OneHotEncoder settings, saved as joblib."""
    from sklearn.preprocessing import OneHotEncoder

    from converter.examples import KINDS

    frame = pd.read_csv(example(KIND).validation_csv, dtype={"region": object})
    labels = frame.pop("label")
    model = KINDS[KIND][1]()
    model.set_params(prep__cat=OneHotEncoder(**encoder))  # type: ignore[arg-type]
    model.fit(frame, labels)
    path = tmp_path / "refit.joblib"
    joblib.dump(model, path)
    return path


def test_an_encoder_that_would_raise_on_unseen_categories_answers_them_and_says_so(tmp_path: Path) -> None:
    files = example(KIND)
    result = convert(ConvertOptions(_refit(tmp_path, handle_unknown="error"), "generic-x86_64", "wine", "1.0.0",
                                    tmp_path / "out", quantize="none", validation=files.validation_csv, labels="label"))
    assert result.report["unseen_categories"] == "encoded as all zeros (the source model would raise)"
    assert result.manifest.report["unseen_categories"] == result.report["unseen_categories"]
    bundle = read_bundle(result.bundle_path)
    session = ort.InferenceSession(bundle.model_bytes, providers=["CPUExecutionProvider"])
    golden = bundle.golden()["inputs"]
    golden["region"] = [["south"]] * len(golden["region"])  # never seen in training
    label, probabilities = session.run(["label", "probabilities"], _feeds(session, golden))
    assert len(label) == 32 and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_a_column_transformer_that_passes_columns_through_is_refused(tmp_path: Path) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = pd.DataFrame({"a": [0.0, 1, 2, 3], "b": ["x", "y", "x", "y"]})
    model = Pipeline([("prep", ColumnTransformer([("cat", OneHotEncoder(), ["b"])], remainder="passthrough")),
                      ("clf", LogisticRegression())]).fit(frame, [0, 1, 0, 1])
    (tmp_path / "m.joblib").write_bytes(b"")
    with pytest.raises(UnsupportedOpError, match="passes the remaining column\\(s\\) 'a' through"):
        describe_estimator(model, tmp_path / "m.joblib")
