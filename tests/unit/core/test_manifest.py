"""The manifest schema refuses what a device could not run safely, and names the field."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.bundle import build_bundle_bytes, read_bundle
from edgefleet.errors import ManifestError
from edgefleet.manifest import COLUMN_DTYPES, Manifest, TensorSpec
from tests.unit.core.helpers import bundle_files, manifest_fields


def _manifest(**overrides: Any) -> Manifest:
    return read_bundle(build_bundle_bytes(manifest_fields(**overrides), bundle_files())).manifest


def test_round_trips() -> None:
    manifest = _manifest()
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    assert manifest.output("probabilities") is not None
    assert manifest.input.width == 2


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"format": "pt"}, "format 'pt'"),
        ({"task": "ranking"}, "task 'ranking'"),
        ({"version": "1.0"}, "semantic version"),
        ({"name": "Bad Name"}, "model name"),
        ({"profiles": []}, "profiles"),
        ({"class_labels": None}, "class_labels"),
        ({"schema_version": 3}, "schema_version 3"),
        ({"surprise": 1}, "unknown field"),
        ({"inputs": [{"name": "x", "dtype": "complex64", "shape": [-1, 2]}]}, "dtype 'complex64'"),
        ({"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3], "feature_names": ["a", "b"]}]}, "names 2 features"),
        ({"outputs": [{"name": "y", "dtype": "float32", "shape": [-1], "role": "value"}]}, "'probabilities' or 'label'"),
        ({"health_check": {"min_agreement": 2, "max_rel_error": 0.1, "latency_budget_ms": 5}}, "min_agreement"),
        ({"health_check": {"min_agreement": True, "max_rel_error": 0.1, "latency_budget_ms": 5}}, "boolean"),
    ],
)
def test_rejects_bad_fields(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        _manifest(**overrides)


def test_quantized_tensor_needs_positive_scale() -> None:
    spec = {"name": "x", "dtype": "int8", "shape": [-1, 2], "quantization": {"scale": 0.0, "zero_point": 0}}
    with pytest.raises(ManifestError, match="scale"):
        _manifest(inputs=[spec])


# -- schema 2: column, image and N-D tensor inputs -------------------------------------------------
ALCOHOL = {"name": "alcohol", "kind": "column", "dtype": "float32", "shape": [-1, 1]}
REGION = {"name": "region", "kind": "column", "dtype": "string", "shape": [-1, 1], "categories": ["east", "north", "west"]}
IMAGE = {"name": "pixels", "kind": "image", "dtype": "uint8", "shape": [-1, 32, 32, 3],
         "image": {"layout": "NHWC", "height": 32, "width": 32, "channels": 3, "color": "RGB", "resize": "bilinear",
                   "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]}}
WINDOW = {"name": "window", "dtype": "float32", "shape": [-1, 16000]}


def _v2(*inputs: dict[str, Any]) -> Manifest:
    return _manifest(schema_version=2, inputs=list(inputs))


def test_v2_reads_every_input_kind_and_round_trips() -> None:
    manifest = _v2(ALCOHOL, REGION, IMAGE, WINDOW)
    assert [s.kind for s in manifest.inputs] == ["column", "column", "image", "tensor"]
    assert manifest.inputs[1].categories == ("east", "north", "west")
    image = manifest.inputs[2].image
    assert image is not None and image.shape() == (-1, 32, 32, 3)
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    assert Manifest.lowest_schema(manifest.inputs) == 2


def _spec_dicts() -> st.SearchStrategy[dict[str, Any]]:
    column = st.builds(
        lambda name, dtype, cats: {"name": name, "kind": "column", "dtype": dtype, "shape": [-1, 1],
                                   **({"categories": sorted(cats)} if dtype == "string" and cats else {})},
        st.text("abcxyz_", min_size=1, max_size=8), st.sampled_from(COLUMN_DTYPES),
        st.sets(st.text(min_size=1, max_size=5), max_size=4))
    image = st.builds(
        lambda layout, h, w, gray, dtype: {
            "name": "img", "kind": "image", "dtype": dtype,
            "shape": [-1, h, w, 1 if gray else 3] if layout == "NHWC" else [-1, 1 if gray else 3, h, w],
            "image": {"layout": layout, "height": h, "width": w, "channels": 1 if gray else 3,
                      "color": "GRAY" if gray else "BGR", "resize": "area", "scale": 0.5,
                      "mean": [0.5] * (1 if gray else 3), "std": [0.25] * (1 if gray else 3)}},
        st.sampled_from(["NHWC", "NCHW"]), st.integers(1, 512), st.integers(1, 512), st.booleans(),
        st.sampled_from(["float32", "uint8", "int8"]))
    tensor = st.builds(lambda dims: {"name": "t", "dtype": "float32", "shape": [-1, *dims]},
                       st.lists(st.integers(1, 4096), max_size=4))
    return st.one_of(column, image, tensor)


@settings(max_examples=150, deadline=None)
@given(_spec_dicts())
def test_any_valid_v2_input_round_trips(spec: dict[str, Any]) -> None:
    manifest = _v2(spec)
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    written = manifest.to_dict()["inputs"][0]
    assert {k: v for k, v in written.items() if k in spec} == spec  # what was given is what is written


def test_a_v1_document_with_a_v2_field_is_refused() -> None:
    with pytest.raises(ManifestError, match=r"unknown field\(s\) inputs\[0\]\.kind"):
        _manifest(inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 2], "kind": "tensor"}])
    # A manifest built in code, not read, is held to the same rule.
    with pytest.raises(ManifestError, match="schema_version 1 cannot hold"):
        dataclasses.replace(_v2(ALCOHOL), schema_version=1)


def test_golden_npz_needs_schema_2() -> None:
    manifest = _manifest()
    with pytest.raises(ManifestError, match="golden_file 'golden.npz' is an .npz archive, which schema_version 1"):
        dataclasses.replace(manifest, golden_file="golden.npz",
                            files={**manifest.files, "golden.npz": manifest.files[manifest.golden_file]})
    v2 = dataclasses.replace(manifest, schema_version=2, golden_file="golden.npz",
                             files={**manifest.files, "golden.npz": manifest.files[manifest.golden_file]})
    assert Manifest.from_dict(v2.to_dict()).golden_file == "golden.npz"


def test_a_v1_shaped_spec_writes_v1_bytes() -> None:
    v1 = _manifest()
    spec = TensorSpec.from_dict(v1.to_dict()["inputs"][0], "inputs[0].", 2)
    assert spec == v1.input and spec.to_dict() == v1.input.to_dict()
    assert "kind" not in spec.to_dict() and "categories" not in spec.to_dict() and "image" not in spec.to_dict()
    assert Manifest.lowest_schema(v1.inputs) == 1
    # The same model described under schema 2 differs only in the version number.
    v2 = _manifest(schema_version=2)
    assert {**v2.to_dict(), "schema_version": 1} == v1.to_dict()


def test_lowest_schema() -> None:
    tensor = TensorSpec("input", "float32", (-1, 4))
    assert Manifest.lowest_schema([tensor]) == 1
    assert Manifest.lowest_schema([tensor, TensorSpec("meta", "float32", (-1, 2))]) == 2
    assert Manifest.lowest_schema([TensorSpec("window", "float32", (-1, 16000, 1))]) == 2
    assert Manifest.lowest_schema([TensorSpec("alcohol", "float32", (-1, 1), kind="column")]) == 2


def test_input_of_a_model_with_several_inputs_raises() -> None:
    manifest = _v2(ALCOHOL, REGION)
    with pytest.raises(ManifestError, match="has 2 inputs .*use manifest.inputs"):
        _ = manifest.input


def _image(**changes: Any) -> dict[str, Any]:
    return {**IMAGE, "image": {**IMAGE["image"], **changes}}


@pytest.mark.parametrize(("spec", "match"), [
    ({**ALCOHOL, "kind": "table"}, "input 'alcohol' has kind 'table'"),
    ({**ALCOHOL, "shape": [-1, 2]}, "column 'alcohol' has shape \\[-1, 2\\]"),
    ({**ALCOHOL, "feature_names": ["a"]}, "column 'alcohol' lists feature_names"),
    ({**ALCOHOL, "dtype": "float16"}, "column 'alcohol' has dtype 'float16'"),
    ({**ALCOHOL, "categories": ["a"]}, "input 'alcohol' lists categories"),
    ({**WINDOW, "categories": ["a"]}, "input 'window' lists categories"),
    ({**REGION, "categories": ["a", "a"]}, "column 'region' lists a category twice"),
    ({**REGION, "categories": ["a", 1]}, "'inputs\\[0\\]\\.categories' must be a list of strings"),
    ({**IMAGE, "image": None}, "image input 'pixels' has no image description"),
    ({**IMAGE, "dtype": "int64"}, "image 'pixels' has dtype 'int64'"),
    ({**IMAGE, "shape": [-1, 3, 32, 32]}, "image 'pixels' has shape .* implies \\[-1, 32, 32, 3\\]"),
    ({**WINDOW, "image": IMAGE["image"]}, "input 'window' has an image description but kind 'tensor'"),
    (_image(layout="HWC"), "image layout 'HWC'"),
    (_image(channels=4), "image channels must be 1 or 3"),
    (_image(color="GRAY"), "image color GRAY does not fit 3 channel"),
    (_image(resize="cubic"), "image resize 'cubic'"),
    (_image(scale=0), "image scale must be positive"),
    (_image(mean=[0]), "one value per channel"),
    (_image(std=[1, 0, 1]), "std values must be positive"),
    (_image(surprise=1), "unknown field\\(s\\) inputs\\[0\\]\\.image\\.surprise"),
    ({**WINDOW, "shape": [1, 16000]}, "input 'window' has shape \\[1, 16000\\]; in schema 2 .* -1"),
])
def test_v2_checks_name_the_field(spec: dict[str, Any], match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        _v2(spec)


def test_outputs_are_plain_tensors() -> None:
    outputs = [{"name": "label", "dtype": "string", "shape": [-1, 1], "role": "label", "kind": "column"}]
    with pytest.raises(ManifestError, match="output 'label' has kind 'column'"):
        _manifest(schema_version=2, outputs=outputs)
