"""golden.npz, the compact golden samples of a model with tensor inputs (issue 12, slice 3):
deterministic bytes, a round trip through the bundle's and the slot's readers, and hostile
archives refused as bundle errors."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from edgefleet.errors import BundleError
from edgefleet.golden import decode, encode, read_golden

RNG = np.random.default_rng(5)
IMAGE = RNG.integers(0, 256, (4, 3, 8, 8)).astype(np.uint8)
WINDOW = RNG.standard_normal((4, 1, 16)).astype(np.float32)


def test_the_same_samples_give_the_same_bytes_and_read_back() -> None:
    outputs = {"label": [0, 2, 1, 1], "probabilities": RNG.random((4, 3)).tolist()}
    data = encode({"window": WINDOW, "image": IMAGE}, outputs)
    assert data == encode({"image": IMAGE, "window": WINDOW}, outputs)
    document = read_golden("golden.npz", data)
    assert document["inputs"]["image"].dtype == np.uint8
    np.testing.assert_array_equal(document["inputs"]["image"], IMAGE)
    np.testing.assert_array_equal(document["inputs"]["window"], WINDOW)
    assert document["outputs"] == outputs


def test_text_labels_stay_text_without_pickle() -> None:
    document = decode(encode({"x": WINDOW}, {"label": np.asarray(["cat", "dog", "cat", "eel"], dtype=object)}))
    assert document["outputs"]["label"] == ["cat", "dog", "cat", "eel"]


def test_json_golden_files_read_as_before() -> None:
    assert read_golden("golden.json", b'{"inputs": [[1.0]], "outputs": {"value": [2.0]}}')["outputs"] == {"value": [2.0]}


def zipped(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name.replace("__", "/"), data)
    return buffer.getvalue()


@pytest.mark.parametrize("data", [
    b"not a zip",
    zipped(inputs__x=b"\x93NUMPY junk"),
    zipped(**{"inputs__x.npy": encode({"x": WINDOW}, {"value": [1.0]})[:0]}),
    zipped(other=b""),
])
def test_a_malformed_archive_is_a_bundle_error(data: bytes) -> None:
    with pytest.raises(BundleError):
        decode(data)
