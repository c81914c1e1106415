"""Image inputs in the converter (issue 12, slice 4): --image/--image-spec declarations whatever the
source, image folders and pixel arrays as data, golden pixels and image-statistic references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converter import ConvertOptions, convert
from converter.errors import DataError, DataShapeError, OptionsError
from converter.image_inputs import as_pixels, image_input, read_declarations
from edgefleet.bundle import read_bundle
from edgefleet.golden import read_golden
from edgefleet.images import normalize
from edgefleet.manifest import TensorSpec
from tests.support.tensor_models import image_classifier, image_folder, save_samples

NCHW = TensorSpec("image", "float32", (-1, 3, 32, 32))


def test_defaults_come_from_the_shape_and_a_toml_file_overrides_them(tmp_path: Path) -> None:
    spec = image_input(NCHW, {})
    assert spec.kind == "image" and spec.image is not None
    assert (spec.image.layout, spec.image.height, spec.image.width, spec.image.channels, spec.image.color,
            spec.image.resize, spec.image.mean, spec.image.std) == ("NCHW", 32, 32, 3, "RGB", "bilinear",
                                                                    (0.0,) * 3, (1.0,) * 3)
    assert image_input(TensorSpec("g", "uint8", (-1, 28, 28, 1)), {}).image.color == "GRAY"  # type: ignore[union-attr]
    toml = tmp_path / "image.toml"
    toml.write_text('[image]\ncolor = "BGR"\nresize = "none"\nmean = [1, 2, 3]\nstd = [4, 5, 6]\n')
    declared = read_declarations(["other"], toml)
    assert declared == {"other": {}, "image": {"color": "BGR", "resize": "none", "mean": [1, 2, 3], "std": [4, 5, 6]}}
    dynamic = TensorSpec("image", "float32", (-1, -1, -1, 3))
    sized = image_input(dynamic, {"height": 96, "width": 64})
    assert sized.shape == (-1, 96, 64, 3)


@pytest.mark.parametrize(("spec", "fields", "words"), [
    (TensorSpec("image", "float32", (-1, -1, -1, 3)), {}, "dynamic height"),
    (TensorSpec("image", "float32", (-1, 3, 3, 3)), {}, "layout cannot be told"),
    (TensorSpec("image", "float32", (-1, 3, 32)), {}, "four dimensions"),
    (TensorSpec("image", "int64", (-1, 3, 32, 32)), {}, "takes int64"),
    (NCHW, {"height": 16}, "has height 32 in its shape"),
    (NCHW, {"color": "GRAY"}, "does not fit 3 channel"),
    (NCHW, {"mean": [0.5]}, "one value per channel"),
    (NCHW, {"resize": "cubic"}, "resize 'cubic' is not known"),
])
def test_a_declaration_that_does_not_fit_is_refused_in_words(spec: TensorSpec, fields: dict[str, object],
                                                             words: str) -> None:
    with pytest.raises(OptionsError, match=words):
        image_input(spec, fields)


def test_bad_spec_files_are_refused(tmp_path: Path) -> None:
    toml = tmp_path / "image.toml"
    toml.write_text("[image]\ncolour = 'RGB'\n")
    with pytest.raises(OptionsError, match="unknown field"):
        read_declarations([], toml)
    toml.write_text("image = 3\n")
    with pytest.raises(OptionsError, match="not a table"):
        read_declarations([], toml)


def test_pixels_and_preprocessed_tensors_are_taken_and_foreign_arrays_refused() -> None:
    spec = image_input(NCHW, {"mean": [0.5] * 3, "std": [0.25] * 3})
    assert spec.image is not None
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_array_equal(as_pixels("image", pixels, spec, "data.npz"), pixels)
    np.testing.assert_array_equal(as_pixels("image", normalize(pixels, spec.image), spec, "data.npz"), pixels)
    with pytest.raises(DataError, match="do not come back as 8-bit pixels"):
        as_pixels("image", normalize(pixels, spec.image) * 10, spec, "data.npz")
    with pytest.raises(DataShapeError, match=r"takes 8-bit pixels \[n, 32, 32, 3\]"):
        as_pixels("image", pixels[:, :16], spec, "data.npz")


def test_folder_or_npz_data_converts_with_golden_pixels(tmp_path: Path) -> None:
    model = image_classifier(tmp_path / "camera.onnx")
    photos = image_folder(tmp_path / "photos", count=16)
    result = convert(ConvertOptions(model, "generic-x86_64", "camera", "1.0.0", tmp_path / "a", quantize="none",
                                    validation=photos, images={"image": {}}))
    loaded = read_bundle(result.bundle_path)
    golden = read_golden("golden.npz", loaded.files["golden.npz"])["inputs"]["image"]
    assert golden.dtype == np.uint8 and golden.shape == (16, 32, 32, 3)
    assert result.report["rows"] == 16 and result.report["accuracy_original"] is not None
    # The same pixels as an .npz of uint8 give the same golden samples.
    data = save_samples(tmp_path / "pixels.npz", {"image": golden, "y": np.zeros(16, np.int64)})
    again = convert(ConvertOptions(model, "generic-x86_64", "camera", "1.0.1", tmp_path / "b", quantize="none",
                                   validation=data, images={"image": {}}))
    np.testing.assert_array_equal(read_golden("golden.npz", read_bundle(again.bundle_path).files["golden.npz"])
                                  ["inputs"]["image"], golden)
    # Nothing given: random pixels, preprocessed; still an image bundle.
    made_up = convert(ConvertOptions(model, "generic-x86_64", "camera", "1.0.2", tmp_path / "c", quantize="none",
                                     images={"image": {}}))
    assert made_up.manifest.inputs[0].kind == "image"


@pytest.mark.parametrize(("layout", "words"), [
    ({"a.png": "", "cat/b.png": ""}, "mixes images in the folder itself"),
    ({"notes.txt": ""}, "holds no PNG or JPEG files"),
    ({"cat/b.png": "garbage"}, "is not a PNG or JPEG image"),
])
def test_bad_image_folders_are_refused(tmp_path: Path, layout: dict[str, str], words: str) -> None:
    model = image_classifier(tmp_path / "camera.onnx")
    good = next(image_folder(tmp_path / "good", count=1).rglob("*.jpg"))
    folder = tmp_path / "data"
    for name, content in layout.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content.encode() if content else good.read_bytes())
    with pytest.raises(DataError, match=words):
        convert(ConvertOptions(model, "generic-x86_64", "camera", "1.0.0", tmp_path / "out", quantize="none",
                               validation=folder, images={"image": {}}))


def test_an_image_declared_for_an_unknown_input_or_a_matrix_model_is_refused(tmp_path: Path) -> None:
    model = image_classifier(tmp_path / "camera.onnx")
    with pytest.raises(OptionsError, match="'picture', which .* does not take"):
        convert(ConvertOptions(model, "generic-x86_64", "camera", "1.0.0", tmp_path, images={"picture": {}}))
