"""Each bad input gets its own error that names the problem and the fix, and writes nothing."""

from __future__ import annotations

import pickle
from pathlib import Path

import joblib
import pytest

from converter import (
    ConvertOptions,
    DataShapeError,
    ExampleFiles,
    ModelNotFoundError,
    NotAModelError,
    OptionsError,
    ToleranceError,
    UnsupportedOpError,
    convert,
)
from edgefleet.errors import ProfileError
from edgefleet.profiles import load_profile
from tests.support.bundles import example
from tests.unit.converter.conftest import ConvertExample


def _options(model: Path, out: Path, **extra: object) -> ConvertOptions:
    return ConvertOptions(model, extra.pop("profile", "generic-x86_64"), "m", "1.0.0", out, **extra)  # type: ignore[arg-type]


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        convert(_options(tmp_path / "nope.joblib", tmp_path))


def test_a_text_file_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    path.write_text("hello, I am not a pickle\n")
    with pytest.raises(NotAModelError, match="not a model file") as info:
        convert(_options(path, tmp_path))
    assert info.value.fix and "joblib" in info.value.fix


def test_a_pickled_dict_is_not_an_estimator(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(NotAModelError, match="holds a dict, not a fitted estimator"):
        convert(_options(path, tmp_path))


def test_garbage_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(NotAModelError, match="not a valid ONNX model"):
        convert(_options(path, tmp_path))


def test_unfitted_estimator(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    path = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression(), path)
    with pytest.raises(NotAModelError, match="unfitted LogisticRegression"):
        convert(_options(path, tmp_path))


def test_tree_ensemble_to_tflite_names_the_op_and_the_way_out(tmp_path: Path) -> None:
    files = example("breast-cancer-rf")
    with pytest.raises(UnsupportedOpError) as info:
        convert(_options(files.model_path, tmp_path, profile="rpi4-64", format="tflite", quantize="none"))
    assert info.value.op == "ai.onnx.ml.TreeEnsembleClassifier"
    assert "TreeEnsembleClassifier" in str(info.value) and "--format onnx" in str(info.value)
    assert not any(tmp_path.glob("*.tar.gz"))


def test_a_format_the_profile_does_not_allow(tmp_path: Path, digits: ExampleFiles) -> None:
    assert "onnx" not in load_profile("rpi-zero-2w").allowed_formats
    with pytest.raises(OptionsError, match="profile rpi-zero-2w does not take onnx models"):
        convert(_options(digits.model_path, tmp_path, profile="rpi-zero-2w", format="onnx"))


def test_malformed_profile_names_file_and_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                digits: ExampleFiles) -> None:
    text = load_profile("rpi4-64").to_toml().replace('name = "rpi4-64"', 'name = "broken"')
    text = text.replace("min_agreement = 0.98", 'min_agreement = "high"')
    (tmp_path / "broken.toml").write_text(text)
    monkeypatch.setenv("EDGEFLEET_PROFILES_DIR", str(tmp_path))
    with pytest.raises(ProfileError, match=r"broken\.toml: field 'tolerance\.min_agreement'"):
        convert(_options(digits.model_path, tmp_path, profile="broken"))


def test_calibration_with_the_wrong_number_of_columns(tmp_path: Path, digits: ExampleFiles) -> None:
    bad = tmp_path / "calib.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(DataShapeError, match="has 3 feature columns but the model takes 64"):
        convert(_options(digits.model_path, tmp_path, quantize="int8-static", calibration=bad))


def test_static_quantization_without_any_data(tmp_path: Path, digits: ExampleFiles) -> None:
    with pytest.raises(OptionsError, match="needs calibration data") as info:
        convert(_options(digits.model_path, tmp_path, quantize="int8-static"))
    assert info.value.fix and "--calibration" in info.value.fix


def test_int8_on_a_model_with_only_ml_ops(convert_example: ConvertExample) -> None:
    with pytest.raises(OptionsError, match="nothing to quantize.*LinearRegressor"):
        convert_example("diabetes-ridge", quantize="int8-dynamic")


def test_bad_name_version_and_options_are_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match="model name"):
        ConvertOptions(tmp_path / "m", "rpi4-64", "Bad Name", "1.0.0", tmp_path)
    with pytest.raises(OptionsError, match="not semantic|semantic"):
        ConvertOptions(tmp_path / "m", "rpi4-64", "m", "1.0", tmp_path)
    with pytest.raises(OptionsError, match="quantization 'int4'"):
        ConvertOptions(tmp_path / "m", "rpi4-64", "m", "1.0.0", tmp_path, quantize="int4")


def _tight_profile(directory: Path, **changes: str) -> str:
    text = load_profile("rpi4-64").to_toml().replace('name = "rpi4-64"', 'name = "tight"')
    for old, new in changes.items():
        text = text.replace(old, new)
    (directory / "tight.toml").write_text(text)
    return "tight"


def test_missed_size_budget_writes_nothing_unless_forced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         convert_example: ConvertExample) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    monkeypatch.setenv("EDGEFLEET_PROFILES_DIR", str(profiles))
    name = _tight_profile(profiles, **{"max_model_bytes = 50000000": "max_model_bytes = 10000"})
    out = tmp_path / "out"
    with pytest.raises(ToleranceError, match="over the profile's max_model_bytes 10000") as info:
        convert_example(profile=name, output_dir=out)
    assert info.value.report["passed"] is False
    assert not out.exists() or not any(out.iterdir())
    forced = convert_example(profile=name, output_dir=out, force=True)
    assert forced.bundle_path.exists() and forced.manifest.report["passed"] is False
    assert "max_model_bytes" in forced.manifest.report["failures"][0]


def test_missed_agreement_is_a_tolerance_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               convert_example: ConvertExample) -> None:
    monkeypatch.setenv("EDGEFLEET_PROFILES_DIR", str(tmp_path))
    # Full agreement over 450 held-out rows is more than int8 promises: a plain, deterministic miss.
    name = _tight_profile(tmp_path, **{"min_agreement = 0.98": "min_agreement = 1.0"})
    with pytest.raises(ToleranceError, match="top-1 agreement 0.99.* is below the profile's min_agreement 1.0"):
        convert_example(profile=name, quantize="int8-static", output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
