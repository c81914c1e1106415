"""The shared parser for N-D tensor inputs (issue 12, slice 3): JSON by input name, .npy, .npz
and raw little-endian bodies; every refusal names the input and the shape it expects."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib import format as npy_format

from edgefleet.errors import InputError
from edgefleet.inputs import Body, read_npy, read_npz, to_feeds
from edgefleet.manifest import Quantization, TensorSpec

IMAGE = TensorSpec("image", "float32", (-1, 3, 8, 8))
META = TensorSpec("meta", "float32", (-1, 4))
SPECS = (IMAGE, META)
WINDOW = TensorSpec("window", "float32", (-1, 1, 64))
RNG = np.random.default_rng(3)
X = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
M = RNG.standard_normal((2, 4)).astype(np.float32)


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def forged_header(shape: tuple[int, ...]) -> bytes:
    """An .npy header claiming ``shape`` with nothing after it (np.load would allocate it first)."""
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def refusal(payload: Any, specs: tuple[TensorSpec, ...] = SPECS) -> InputError:
    with pytest.raises(InputError) as caught:
        to_feeds(payload, specs)
    return caught.value


def test_json_by_input_name_gives_one_array_per_input() -> None:
    feeds = to_feeds({"inputs": {"meta": M.tolist(), "image": X.tolist()}}, SPECS)
    assert list(feeds) == ["image", "meta"]
    np.testing.assert_array_equal(feeds["image"], X)
    np.testing.assert_array_equal(feeds["meta"], M)
    assert feeds["image"].dtype == np.float32


def test_npz_and_json_give_the_same_feeds() -> None:
    body = Body.from_headers(npz(image=X, meta=M.astype(np.float64)), "application/x-npz")
    feeds = to_feeds(body, SPECS)
    np.testing.assert_array_equal(feeds["image"], X)
    np.testing.assert_array_equal(feeds["meta"], M)
    assert feeds["meta"].dtype == np.float32


def test_one_input_takes_npy_raw_and_a_bare_list() -> None:
    window = RNG.standard_normal((3, 1, 64)).astype(np.float32)
    raw = Body.from_headers(window.astype("<f4").tobytes(), "application/octet-stream",
                            {"x-edgefleet-shape": "3, 1, 64", "x-edgefleet-dtype": "float32"})
    for payload in (Body.from_headers(npy(window), "application/x-npy"), raw, {"inputs": window.tolist()},
                    {"inputs": {"window": window.tolist()}}, window):
        np.testing.assert_array_equal(to_feeds(payload, (WINDOW,))["window"], window)


def test_one_sample_without_the_batch_axis_is_a_batch_of_one() -> None:
    feeds = to_feeds({"inputs": {"image": X[0].tolist(), "meta": M[0].tolist()}}, SPECS)
    assert feeds["image"].shape == (1, 3, 8, 8) and feeds["meta"].shape == (1, 4)


def test_a_matrix_model_takes_its_matrix_as_npy_npz_raw_and_by_name() -> None:
    spec = TensorSpec("input", "float32", (-1, 4))
    for payload in (Body.from_headers(npy(M), "application/x-npy"), Body.from_headers(npz(input=M), "application/x-npz"),
                    Body.from_headers(M.tobytes(), "application/octet-stream",
                                      {"x-edgefleet-shape": "2,4", "x-edgefleet-dtype": "float32"}),
                    {"inputs": {"input": M.tolist()}}):
        np.testing.assert_array_equal(to_feeds(payload, (spec,))["input"], M)
    assert "input array has 4 dimensions" in str(refusal(Body.from_headers(npy(X), "application/x-npy"), (spec,)))


@pytest.mark.parametrize(("payload", "field", "words"), [
    ({"inputs": {"image": X[:, :2].tolist(), "meta": M.tolist()}}, "image",
     "input 'image' has shape [2, 2, 8, 8] but the model takes [n, 3, 8, 8]"),
    ({"inputs": {"image": X.tolist(), "meta": M[:, :3].tolist()}}, "meta", "the model takes [n, 4]"),
    ({"inputs": {"image": X.tolist()}}, "meta", "lacks input(s) 'meta'"),
    ({"inputs": {"image": X.tolist(), "meta": M.tolist(), "extra": [1]}}, "extra", "unknown input(s) 'extra'"),
    ({"inputs": {"image": X.tolist(), "meta": [[1.0, True, 2.0, 3.0]] * 2}}, "meta", "at [0, 1] is bool True"),
    ({"inputs": {"image": X.tolist(), "meta": [[1.0, "2", 2.0, 3.0]] * 2}}, "meta", "at [0, 1] is str '2'"),
    ({"inputs": {"image": X.tolist(), "meta": [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]]}}, "meta",
     "list where a number belongs"),
    ({"inputs": {"image": X.tolist(), "meta": [[1.0, None, 2.0, 3.0]] * 2}}, "meta", "at [0, 1] is null"),
    ({"inputs": {"image": X.tolist(), "meta": [[1e39, 0.0, 2.0, 3.0]] * 2}}, "meta", "at [0, 0] is infinity"),
    ({"inputs": {"image": X.tolist(), "meta": 3}}, "meta", "is a JSON int, not an array"),
])
def test_a_bad_tensor_names_its_input_and_the_expected_shape(payload: Any, field: str, words: str) -> None:
    error = refusal(payload)
    assert error.status == 400 and error.field == field
    assert words in error.message, error.message
    assert error.fix


def test_inputs_of_different_row_counts_are_refused() -> None:
    assert "different numbers of rows (image 2, meta 1)" in refusal({"inputs": {"image": X.tolist(),
                                                                               "meta": M[:1].tolist()}}).message


def test_one_array_cannot_feed_two_inputs() -> None:
    assert "one array feeds one" in refusal(Body.from_headers(npy(X), "application/x-npy")).message


def test_records_are_refused_for_a_tensor_model_with_the_form_to_use() -> None:
    error = refusal({"instances": [{"image": 1}]})
    assert "the request body is a JSON object with field(s) 'instances'" in error.message
    assert '{"inputs": {"<input>"' in (error.fix or "")


def test_integer_inputs_take_integers_in_range_and_a_quantized_one_takes_real_values() -> None:
    ids = TensorSpec("ids", "uint8", (-1, 2))
    assert to_feeds({"inputs": [[0, 255]]}, (ids,))["ids"].dtype == np.uint8
    assert refusal({"inputs": [[0, 256]]}, (ids,)).message == "input 'ids' holds 256, outside uint8's range 0 to 255"
    assert "it takes integers from 0 to 255" in refusal({"inputs": [[0, 1.5]]}, (ids,)).message
    assert "was sent as float32 values" in refusal(np.zeros((1, 2), np.float32), (ids,)).message
    quantized = TensorSpec("q", "int8", (-1, 2), quantization=Quantization(0.1, 0))
    feeds = to_feeds({"inputs": [[0.25, -1.5]]}, (quantized,))
    assert feeds["q"].dtype == np.float32 and feeds["q"].tolist() == [[0.25, -1.5]]


def test_null_is_nan_where_the_input_allows_nan() -> None:
    spec = TensorSpec("w", "float32", (-1, 1, 2), allow_nan=True)
    assert np.isnan(to_feeds({"inputs": [[[1.0, None]]]}, (spec,))["w"][0, 0, 1])


def test_too_many_samples_is_413() -> None:
    with pytest.raises(InputError) as caught:
        to_feeds({"inputs": np.zeros((11, 1, 64)).tolist()}, (WINDOW,), max_rows=10)
    assert caught.value.status == 413


@pytest.mark.parametrize(("body", "words", "status"), [
    (Body.from_headers(npy(np.zeros((2, 1, 64), np.float32))[:-4], "application/x-npy"),
     "its header claims shape [2, 1, 64] of float32, 512 bytes, but 508 bytes follow it", 400),
    (Body.from_headers(forged_header((99_999_999_999, 1, 64)), "application/x-npy"),
     "claims shape [99999999999, 1, 64] of float32, 25599999999744 bytes, but 0 bytes follow it", 400),
    (Body.from_headers(npy(np.array([{"a": 1}], dtype=object)), "application/x-npy"), "not a readable .npy", 400),
    (Body.from_headers(b"PK\x03\x04 not a zip", "application/x-npz"), "not a readable .npz archive", 400),
    (Body.from_headers(b"\0" * 12, "application/octet-stream", {"x-edgefleet-shape": "2,64", "x-edgefleet-dtype": "float32"}),
     "needs 512 bytes, the body has 12", 400),
    (Body.from_headers(b"\0" * 12, "application/octet-stream", {"x-edgefleet-dtype": "float32"}),
     "needs X-Edgefleet-Shape and X-Edgefleet-Dtype headers", 400),
    (Body.from_headers(b"\0" * 12, "application/octet-stream", {"x-edgefleet-shape": "3", "x-edgefleet-dtype": "object"}),
     "X-Edgefleet-Dtype 'object' is not one of", 400),
    (Body.from_headers(b"\0" * 12, "application/octet-stream", {"x-edgefleet-shape": "-3", "x-edgefleet-dtype": "int8"}),
     "is not a list of dimensions", 400),
    (Body.from_headers(b"GIF89a", "image/gif"), "request bodies of type 'image/gif' are not read here", 415),
    (Body.from_headers(b'{"inputs": [[1]]}', "application/x-www-form-urlencoded"), "curl -d's default", 415),
    (Body.from_headers(b"{", "application/json; charset=utf-8"), "request body is not valid JSON", 400),
])
def test_a_malformed_binary_body_is_refused_before_it_is_read(body: Body, words: str, status: int) -> None:
    error = refusal(body, (WINDOW,))
    assert error.status == status and words in error.message, error.message


def test_an_npz_that_unpacks_past_the_limit_is_413_before_it_is_read() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("window.npy", npy(np.zeros((4096, 1, 64), np.float32)))  # 1 MiB of zeros, a few kB zipped
    with pytest.raises(InputError) as caught:
        read_npz(buffer.getvalue(), "the .npz body", max_bytes=1 << 16)
    assert caught.value.status == 413 and len(buffer.getvalue()) < 1 << 14


def test_fortran_order_and_big_endian_npy_read_as_their_values() -> None:
    array = np.asfortranarray(RNG.standard_normal((2, 1, 64))).astype(">f8")
    np.testing.assert_array_equal(read_npy(npy(array), "x"), array)
    np.testing.assert_array_equal(to_feeds(Body.from_headers(npy(array), "application/x-npy"), (WINDOW,))["window"],
                                  array.astype(np.float32))


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 3), st.integers(1, 3), st.sampled_from(["float32", "int64", "uint8", "bool"]), st.data())
def test_json_npy_and_raw_bodies_agree(rows: int, width: int, dtype: str, data: st.DataObject) -> None:
    spec = TensorSpec("t", dtype, (-1, 2, width))
    shape = (rows, 2, width)
    if dtype == "bool":
        values = np.array(data.draw(st.lists(st.booleans(), min_size=rows * 2 * width, max_size=rows * 2 * width)))
    elif dtype == "float32":
        values = np.array(data.draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=rows * 2 * width,
                                             max_size=rows * 2 * width)), dtype=np.float32)
    else:
        values = np.array(data.draw(st.lists(st.integers(0, 255), min_size=rows * 2 * width, max_size=rows * 2 * width)))
    array = values.reshape(shape).astype(dtype)
    from_json = to_feeds({"inputs": array.tolist()}, (spec,))["t"]
    from_npy = to_feeds(Body.from_headers(npy(array), "application/x-npy"), (spec,))["t"]
    from_raw = to_feeds(Body.from_headers(array.tobytes(), "application/octet-stream",
                                          {"x-edgefleet-shape": ",".join(map(str, shape)), "x-edgefleet-dtype": dtype}),
                        (spec,))["t"]
    for got in (from_json, from_npy, from_raw):
        assert got.dtype == array.dtype and got.shape == shape
        np.testing.assert_array_equal(got, array)
