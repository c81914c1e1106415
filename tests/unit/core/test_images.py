"""edgefleet.images, the one image preprocessing (issue 12, slice 4), and the shared parser's image
bodies: PNG/JPEG in, the input's tensor out; decompression bombs refused before decoding; hostile
bytes and multipart bodies refused as InputError, never anything else."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgefleet.errors import InputError
from edgefleet.images import (
    HISTOGRAM_BINS,
    decode,
    image_statistics,
    normalize,
    pixels,
    preprocess,
    restore,
    sniff,
)
from edgefleet.inputs import Body, read_multipart, to_feeds
from edgefleet.manifest import ImageSpec, TensorSpec

RGB = ImageSpec("NHWC", 8, 8, 3, "RGB", "bilinear", 1 / 255, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
RNG = np.random.default_rng(11)
PICTURE = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)


def saved(array: np.ndarray, fmt: str = "PNG", mode: str | None = None, **options: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format=fmt, **options) if mode else Image.fromarray(array).save(
        out, format=fmt, **options)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims ``width`` x ``height`` pixels (a bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_png_gives_the_pixels_and_the_normalised_tensor() -> None:
    assert sniff(saved(PICTURE)) == "PNG" and sniff(saved(PICTURE, "JPEG")) == "JPEG"
    np.testing.assert_array_equal(pixels(saved(PICTURE), RGB), PICTURE)
    tensor = preprocess([saved(PICTURE)], RGB)
    expected = (PICTURE.astype(np.float32) * np.float32(1 / 255) - np.float32([0.5, 0.4, 0.3])) / np.float32([0.2, 0.25, 0.3])
    assert tensor.shape == (1, 8, 8, 3) and tensor.dtype == np.float32
    np.testing.assert_array_equal(tensor[0], expected)


def test_layout_colour_order_and_integer_dtypes() -> None:
    nchw = ImageSpec("NCHW", 8, 8, 3, "BGR", "bilinear", 1.0, (0, 0, 0), (1, 1, 1))
    tensor = preprocess([saved(PICTURE)], nchw)
    assert tensor.shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(tensor[0, 0], PICTURE[:, :, 2])  # BGR: blue first
    as_uint8 = normalize(PICTURE[None], nchw, np.uint8)
    assert as_uint8.dtype == np.uint8 and as_uint8[0, 2].tolist() == PICTURE[:, :, 2].tolist()  # as given
    centred = ImageSpec("NHWC", 8, 8, 3, "RGB", "nearest", 1.0, (128, 128, 128), (1, 1, 1))
    as_int8 = normalize(PICTURE[None], centred, np.int8)
    assert as_int8.dtype == np.int8 and int(as_int8.min()) >= -128
    np.testing.assert_array_equal(as_int8[0].astype(int), PICTURE.astype(int) - 128)


def test_grey_sixteen_bit_palette_and_alpha_images_are_converted() -> None:
    grey = ImageSpec("NHWC", 8, 8, 1, "GRAY", "bilinear", 1.0, (0,), (1,))
    expected_luma = np.asarray(Image.fromarray(PICTURE).convert("L"))
    np.testing.assert_array_equal(pixels(saved(PICTURE), grey)[:, :, 0], expected_luma)
    wide = (PICTURE[:, :, 0].astype(np.uint16) * 257)
    np.testing.assert_array_equal(pixels(saved(wide), grey)[:, :, 0], PICTURE[:, :, 0])
    rgba = np.concatenate([PICTURE, np.full((8, 8, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(pixels(saved(rgba), RGB), PICTURE)  # alpha dropped, colours kept
    palette = Image.fromarray(PICTURE).quantize(16)
    out = io.BytesIO()
    palette.save(out, format="PNG")
    np.testing.assert_array_equal(pixels(out.getvalue(), RGB), np.asarray(palette.convert("RGB")))


def test_resize_modes_and_no_resize() -> None:
    big = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for mode, resample in (("bilinear", Image.Resampling.BILINEAR), ("nearest", Image.Resampling.NEAREST),
                           ("area", Image.Resampling.BOX)):
        spec = ImageSpec("NHWC", 8, 8, 3, "RGB", mode, 1.0, (0, 0, 0), (1, 1, 1))
        want = np.asarray(Image.fromarray(big).resize((8, 8), resample=resample))
        np.testing.assert_array_equal(pixels(saved(big), spec), want)
    fixed = ImageSpec("NHWC", 8, 8, 3, "RGB", "none", 1.0, (0, 0, 0), (1, 1, 1))
    np.testing.assert_array_equal(pixels(saved(PICTURE), fixed), PICTURE)
    with pytest.raises(InputError, match=r"is 30x20 pixels; this input takes 8x8 images and does not resize") as caught:
        pixels(saved(big), fixed)
    assert caught.value.status == 400


def test_exif_orientation_is_applied() -> None:
    tall = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    data = saved(tall, "JPEG", exif=exif.tobytes(), quality=95)
    assert decode(data).size == (6, 10)


def test_a_decompression_bomb_is_refused_before_it_is_decoded() -> None:
    with pytest.raises(InputError, match=r"is 5000x5000 pixels, over the limit of 16777216") as caught:
        decode(png_claiming(5_000, 5_000))
    assert caught.value.status == 413
    with pytest.raises(InputError, match=r"claims more pixels than Pillow decodes, over the limit") as caught:
        decode(png_claiming(60_000, 60_000))  # Pillow's own bound (179 million) refuses it first
    assert caught.value.status == 413
    with pytest.raises(InputError, match=r"100x100 pixels, over the limit of 5000") as caught:
        decode(saved(np.zeros((100, 100, 3), np.uint8)), max_pixels=5_000)
    assert caught.value.status == 413


@pytest.mark.parametrize(("data", "words"), [
    (b"", "not a PNG or JPEG image (its first bytes are nothing)"),
    (b"GIF89a....", "not a PNG or JPEG image (its first bytes are 47 49 46 38"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "is not a readable PNG image"),
    (saved(PICTURE)[:60], "PNG image"),
    (saved(PICTURE, "JPEG")[:200], "JPEG image"),
])
def test_bytes_that_are_not_an_image_are_refused_in_words(data: bytes, words: str) -> None:
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")) as caught:
        preprocess([data], RGB, field="image")
    assert caught.value.status == 400 and caught.value.field == "image"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300),
                 st.binary(max_size=300).map(lambda tail: b"\x89PNG\r\n\x1a\n" + tail),
                 st.binary(max_size=300).map(lambda tail: b"\xff\xd8\xff" + tail),
                 st.tuples(st.integers(0, 400), st.binary(max_size=16)).map(
                     lambda cut: saved(PICTURE)[:cut[0]] + cut[1])))
def test_any_bytes_are_an_image_or_an_input_error(data: bytes) -> None:
    try:
        tensor = preprocess([data], RGB)
    except InputError as exc:
        assert exc.status in (400, 413)
    else:
        assert tensor.shape == (1, 8, 8, 3) and np.isfinite(tensor).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 2_000_000))
def test_the_pixel_limit_is_judged_on_the_header(width: int, height: int, limit: int) -> None:
    try:
        decode(png_claiming(width, height), max_pixels=limit)
    except InputError as exc:
        if width * height > limit:
            assert exc.status == 413
        else:  # within the limit: decoding the (too short) data fails, as a 400
            assert exc.status == 400
    else:
        assert width * height <= limit  # 64 bytes of data fill a small enough image


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["NHWC", "NCHW"]), st.sampled_from(["RGB", "BGR", "GRAY"]),
       st.floats(1e-3, 2.0), st.floats(-2, 200), st.floats(0.05, 80))
def test_restore_undoes_normalize(layout: str, color: str, scale: float, mean: float, std: float) -> None:
    channels = 1 if color == "GRAY" else 3
    spec = ImageSpec(layout, 4, 5, channels, color, "bilinear", scale, (mean,) * channels, (std,) * channels)
    batch = RNG.integers(0, 256, (2, 4, 5, channels), dtype=np.uint8)
    np.testing.assert_allclose(restore(normalize(batch, spec), spec), batch, atol=0.02 * max(1.0, 1 / (scale * 255)) + 1e-2)


def test_image_statistics_see_a_brightness_shift_the_same_from_any_layout() -> None:
    batch = RNG.integers(40, 180, (6, 8, 8, 3), dtype=np.uint8)
    nchw = ImageSpec("NCHW", 8, 8, 3, "BGR", "bilinear", 1 / 255, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    plain = image_statistics(normalize(batch, RGB), RGB)
    other = image_statistics(normalize(batch[..., ::-1], nchw), nchw)  # the same pictures, stored as BGR
    np.testing.assert_allclose(plain, other, atol=1e-3)
    brighter = image_statistics(normalize(batch + 50, RGB), RGB)
    assert (brighter[:, 0] > plain[:, 0] + 45).all()  # brightness
    np.testing.assert_allclose(brighter[:, 1], plain[:, 1], atol=1e-3)  # contrast unchanged
    assert plain.shape == (6, 18) and (plain[:, 2] >= 0).all() and (plain[:, 2] <= 1).all()


def test_intensity_histograms_give_each_channels_pixel_shares_per_quarter() -> None:
    names = [f"hist.{c}.{k}" for c in "RGB" for k in range(HISTOGRAM_BINS)]
    picture = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    picture[0, :, :, 0] = 10          # red all in the first quarter
    picture[0, :4, :, 1] = 100        # green: half in the second quarter, half in the first
    picture[0, :, :, 2] = 255         # blue all in the last (255 is in it, not past it)
    shares = image_statistics(normalize(picture, RGB), RGB, names).reshape(3, HISTOGRAM_BINS)
    np.testing.assert_allclose(shares, [[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0, 1]], atol=1e-9)
    batch = RNG.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    every = image_statistics(normalize(batch, RGB), RGB, names).reshape(5, 3, HISTOGRAM_BINS)
    np.testing.assert_allclose(every.sum(axis=2), 1.0)  # each channel's pixels, all counted once
    washed_out = image_statistics(normalize(np.clip(batch.astype(int) + 128, 0, 255).astype(np.uint8), RGB), RGB,
                                  names).reshape(5, 3, HISTOGRAM_BINS)
    assert (washed_out[:, :, 3] > every[:, :, 3]).all() and (washed_out[:, :, :2] == 0).all()
    grey = ImageSpec("NHWC", 8, 8, 1, "GRAY", "bilinear", 1 / 255, (0.0,), (1.0,))
    grey_shares = image_statistics(normalize(picture[..., :1], grey), grey, [f"hist.L.{k}" for k in range(4)])
    np.testing.assert_allclose(grey_shares, [[1, 0, 0, 0]])
    with pytest.raises(ValueError, match="hist.L.0"):
        image_statistics(normalize(picture, RGB), RGB, ["hist.L.0"])  # an RGB input's histograms are per channel


# -- the shared parser's image bodies ---------------------------------------------------------------

NCHW = ImageSpec("NCHW", 8, 8, 3, "RGB", "bilinear", 1 / 255, (0, 0, 0), (1, 1, 1))
IMAGE = TensorSpec("image", "float32", NCHW.shape(), kind="image", image=NCHW)
META = TensorSpec("meta", "float32", (-1, 4))
BOUNDARY = "b0undary"


def part(name: str, data: bytes, media: str = "image/png", filename: str | None = "a.png") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: {media}\r\n\r\n").encode() + data + b"\r\n"


def multipart(*parts: bytes) -> Body:
    return Body.from_headers(b"".join(parts) + f"--{BOUNDARY}--\r\n".encode(),
                             f'multipart/form-data; boundary="{BOUNDARY}"')


def test_png_jpeg_and_multipart_bodies_feed_image_inputs() -> None:
    png, jpeg = saved(PICTURE), saved(PICTURE, "JPEG")
    one = to_feeds(Body.from_headers(png, "image/png"), (IMAGE,))["image"]
    np.testing.assert_array_equal(one, preprocess([png], NCHW))
    assert to_feeds(Body.from_headers(jpeg, "image/jpeg"), (IMAGE,))["image"].shape == (1, 3, 8, 8)
    several = to_feeds(multipart(part("file", png), part("file", jpeg)), (IMAGE,))["image"]
    np.testing.assert_array_equal(several, preprocess([png, jpeg], NCHW))
    feeds = to_feeds(multipart(part("image", png), part("image", jpeg), part("meta", b"[[1,2,3,4],[5,6,7,8]]",
                                                                             "application/json", None)), (IMAGE, META))
    assert feeds["image"].shape == (2, 3, 8, 8) and feeds["meta"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    npy = io.BytesIO()
    np.save(npy, np.ones((1, 4), np.float32))
    feeds = to_feeds(multipart(part("meta", npy.getvalue(), "application/x-npy", "m.npy"), part("image", png)),
                     (IMAGE, META))
    assert feeds["meta"].tolist() == [[1, 1, 1, 1]]
    # The preprocessed array still feeds the input as a tensor (JSON or .npy), as in slice 3.
    np.testing.assert_array_equal(to_feeds({"inputs": one.tolist()}, (IMAGE,))["image"], one)


@pytest.mark.parametrize(("body", "specs", "words", "status", "field"), [
    (Body.from_headers(b"hello", "image/png"), (IMAGE,), "the image for 'image' is not a PNG or JPEG", 400, "image"),
    (Body.from_headers(saved(PICTURE), "image/png"), (META,), "this model takes no image input", 415, None),
    (Body.from_headers(saved(PICTURE), "image/png"), (IMAGE, META), "takes 2 inputs .*one image body feeds one",
     400, None),
    (multipart(part("image", saved(PICTURE))), (IMAGE, META), "lacks input\\(s\\) 'meta'", 400, "meta"),
    (multipart(part("color", b"[1]", "application/json", None), part("image", saved(PICTURE))), (IMAGE, META),
     "part 0 is named 'color', which is not one of this model's inputs", 400, "color"),
    (multipart(part("image", saved(PICTURE)), part("image", saved(PICTURE)), part("meta", b"[[1,2,3,4]]",
                                                                                  "application/json", None)),
     (IMAGE, META), "different numbers of rows", 400, None),
    (multipart(part("image", saved(PICTURE)), part("meta", b"[1,2", "application/json", None)), (IMAGE, META),
     "part 'meta' is neither .npy nor JSON", 400, "meta"),
    (Body.from_headers(b"--x\r\n\r\n", "multipart/form-data"), (IMAGE,), "needs a boundary", 400, None),
    (Body.from_headers(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc".encode(),
                       f"multipart/form-data; boundary={BOUNDARY}"), (IMAGE,), "closing boundary is missing", 400, None),
    (multipart(part("image", saved(PICTURE))), (META,), "this model takes no image input", 415, None),
])
def test_bad_image_bodies_are_4xx_naming_what_is_expected(body: Body, specs: tuple[TensorSpec, ...], words: str,
                                                          status: int, field: str | None) -> None:
    with pytest.raises(InputError, match=words) as caught:
        to_feeds(body, specs)
    assert caught.value.status == status and caught.value.field == field


def test_too_many_images_is_413_before_any_is_decoded() -> None:
    with pytest.raises(InputError, match="over the limit") as caught:
        to_feeds(multipart(*[part("image", b"not even an image")] * 5), (IMAGE,), max_rows=3)
    assert caught.value.status == 413


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text("abcdefgh_", min_size=1, max_size=8),
                          st.binary(max_size=64).filter(lambda b: f"--{BOUNDARY}".encode() not in b)),
                min_size=1, max_size=6))
def test_multipart_parts_come_back_byte_for_byte(parts: list[tuple[str, bytes]]) -> None:
    body = multipart(*[part(name, data) for name, data in parts])
    read = read_multipart(body.data, body.params["boundary"])
    assert [(p.name, p.data, p.media_type, p.filename) for p in read] == [(n, d, "image/png", "a.png") for n, d in parts]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_any_multipart_bytes_are_feeds_or_an_input_error(data: bytes) -> None:
    try:
        to_feeds(Body.from_headers(f"--{BOUNDARY}\r\n".encode() + data, f"multipart/form-data; boundary={BOUNDARY}"),
                 (IMAGE, META))
    except InputError as exc:
        assert exc.status in (400, 413, 415)
