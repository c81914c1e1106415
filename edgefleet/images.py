"""Image preprocessing: PNG/JPEG bytes to the tensor an image input takes, one implementation.

The converter (calibration, validation, golden samples), the agent's API and batch mode, and the
server's cloud predict all call these functions, so an image is turned into numbers the same way
wherever it is read and train/serve skew cannot creep in between them. An image input is
described by its ``edgefleet.manifest.ImageSpec``; the steps, in order:

1. ``decode``: the bytes must be PNG or JPEG (sniffed from their first bytes, whatever the
   request's Content-Type says). The size is read from the header and refused past
   ``MAX_PIXELS`` *before* anything is decoded (a 100-byte PNG may claim 60,000 x 60,000 pixels:
   a decompression bomb). EXIF orientation is applied (a phone's portrait JPEG is upright).
2. ``pixels``: colour conversion to the spec's ``color`` (GRAY: Pillow's ITU-R 601-2 luma; RGB;
   BGR: RGB with the channels reversed). Alpha is dropped, not composited; 16-bit PNGs are
   scaled to 8 bits. Then the image is resized to ``height`` x ``width`` (stretched: no crop, no
   letterbox) with the spec's ``resize`` (bilinear, nearest, area = Pillow's box filter), or, with
   ``resize = "none"``, refused unless it already has that size. The result is 8-bit pixels,
   ``[height, width, channels]``: the compact form golden samples are stored in.
3. ``normalize``: ``(pixel * scale - mean[c]) / std[c]`` per channel ``c`` in float32, then the
   layout (NHWC, or NCHW: channels first) and the input's dtype (float32; uint8 or int8 rounded and
   clipped for an integer input that carries no quantization; an int8 input with a quantization
   takes float32 values, which the runtime quantizes).

``preprocess`` chains the three. ``restore`` inverts step 3 (a tensor back to float pixel
values) and ``image_statistics`` summarises each image for drift (brightness, contrast,
saturation, the mean of each channel); both sides of drift call it on the tensor the model ran
on, so a request sent as PNG and one sent as the same preprocessed array count the same.

Pure: bytes and arrays in, arrays out. Pillow is imported only by ``decode``/``pixels`` (the
``images`` extra: about 22 MB installed, so a device that serves no image model goes without;
without it an image body is a 415 naming the extra); ``normalize``, ``restore`` and the
statistics need numpy alone, so a device's health check replays golden pixels without Pillow. Errors are ``InputError`` (400: not an image, truncated; 413: too many pixels;
422: the wrong size where resizing is off), naming the image and what is expected.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefleet.errors import InputError
from edgefleet.manifest import ImageSpec

if TYPE_CHECKING:
    from PIL.Image import Image

MAX_PIXELS = 4096 * 4096
"""The most pixels (width x height) an image may claim before it is decoded: 48 MiB as RGB. A
camera frame is far smaller; anything larger is a mistake or a decompression bomb."""
PNG = "image/png"
JPEG = "image/jpeg"
MEDIA_TYPES = (PNG, JPEG)
SUFFIXES = (".png", ".jpg", ".jpeg")
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"))
_FIX = "send PNG or JPEG bytes (Content-Type: image/png or image/jpeg)"
# Luma weights of ITU-R 601-2, the ones Pillow's RGB -> L conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114])
# Per-channel intensity histograms as per-image statistics: ``hist.C.k`` is the share of the
# image's pixels whose channel C lies in the k-th quarter of 0-255. Each image is one row of
# each, so the server merges them as it merges any feature (a histogram of pixel counts would
# count thousands of "rows" per image), and drift over them sees a shifted, clipped or
# washed-out histogram that a mean can miss. Quarters keep it to 4 features a channel.
HISTOGRAM_BINS = 4


def _histogram_names(channels: str) -> tuple[str, ...]:
    return tuple(f"hist.{c}.{k}" for c in channels for k in range(HISTOGRAM_BINS))


IMAGE_STATISTICS_RGB = ("brightness", "contrast", "saturation", "mean.R", "mean.G", "mean.B",
                        *_histogram_names("RGB"))
IMAGE_STATISTICS_GRAY = ("brightness", "contrast", *_histogram_names("L"))
IMAGE_STATISTICS = IMAGE_STATISTICS_RGB + _histogram_names("L")
"""Every statistic ``image_statistics`` knows (``statistic_names`` gives those of one colour mode)."""


def sniff(data: bytes) -> str | None:
    """``"PNG"``, ``"JPEG"`` or None, from the first bytes."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return None


def is_image_media(media_type: str) -> bool:
    """Whether a request's media type announces an image body (image/png, image/jpeg, image/jpg)."""
    return media_type in MEDIA_TYPES or media_type == "image/jpg"


def decode(data: bytes, *, where: str = "the image", max_pixels: int = MAX_PIXELS, field: str | None = None) -> Image:
    """The decoded image of PNG or JPEG ``data``, upright, refused before decoding past ``max_pixels``."""
    kind = sniff(data)
    if kind is None:
        shown = data[:8].hex(" ") if data else "nothing"
        raise InputError(f"{where} is not a PNG or JPEG image (its first bytes are {shown})", fix=_FIX, field=field)
    _require_pillow()
    from PIL import Image as PilImage
    from PIL import ImageOps, UnidentifiedImageError

    try:
        image = PilImage.open(io.BytesIO(data), formats=[kind])  # lazy: reads the header only
    except PilImage.DecompressionBombError as exc:  # Pillow's own bound, far above ours
        raise InputError(f"{where} claims more pixels than Pillow decodes, over the limit of {max_pixels} pixels "
                         f"an image ({exc})", fix="resize it before sending (the model takes far fewer pixels)",
                         status=413, field=field) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InputError(f"{where} is not a readable {kind} image ({exc})", fix=_FIX, field=field) from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise InputError(f"{where} is {width}x{height} pixels, over the limit of {max_pixels} pixels an image",
                         fix="resize it before sending (the model takes far fewer pixels)", status=413, field=field)
    if width == 0 or height == 0:
        raise InputError(f"{where} has no pixels ({width}x{height})", fix=_FIX, field=field)
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:  # truncated or corrupt data
        raise InputError(f"{where} is a damaged {kind} image ({exc})", fix=_FIX, field=field) from None
    return upright if upright is not None else image


def warm_up(spec: ImageSpec) -> bool:
    """Run one blank PNG and one blank JPEG through ``preprocess`` for ``spec``, so the first picture a
    newly served model is sent costs what the next one does; False (and nothing done) without Pillow.

    Pillow imports its decoders on first use: measured, the first PNG request after a model was
    loaded took 50-65 ms against 0.3-0.9 ms for the next, and the agent's probation judges the p95 of
    the first 10-20 requests against twice the profile's budget (5 ms on a Jetson), so that one
    request alone rolled back a good camera model.
    """
    try:
        _require_pillow()
    except InputError:
        return False
    from PIL import Image as PilImage

    blank = PilImage.new("RGB", (spec.width, spec.height))
    for kind in ("PNG", "JPEG"):
        out = io.BytesIO()
        blank.save(out, format=kind)
        preprocess([out.getvalue()], spec)
    return True


def _require_pillow() -> None:
    """Pillow is the ``images`` extra: a device without it serves every other model, and answers an
    image with a 415 saying what to install rather than a 500."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise InputError("this installation cannot decode images: the Python package 'Pillow' is not installed",
                         fix="send the preprocessed array (.npy or JSON) instead, or install "
                             "'edgefleet[images]' on this machine", status=415) from None


def pixels(data: bytes, spec: ImageSpec, *, where: str = "the image", max_pixels: int = MAX_PIXELS,
           field: str | None = None) -> np.ndarray:
    """8-bit pixels ``[height, width, channels]`` of PNG/JPEG ``data`` in the spec's colour order and size."""
    return to_pixels(decode(data, where=where, max_pixels=max_pixels, field=field), spec, where=where, field=field)


def to_pixels(image: Image, spec: ImageSpec, *, where: str = "the image", field: str | None = None) -> np.ndarray:
    """A decoded image as 8-bit pixels ``[height, width, channels]``: colour, then size (step 2)."""
    from PIL import Image as PilImage

    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grey: scale to 8 bits
        wide = np.asarray(image).astype(np.int64)
        image = PilImage.fromarray(((np.clip(wide, 0, 65535) + 128) // 257).astype(np.uint8), "L")
    elif image.mode in ("P", "PA"):  # a palette (maybe with transparency): through RGBA, as Pillow advises
        image = image.convert("RGBA")
    target = "L" if spec.color == "GRAY" else "RGB"
    if image.mode != target:
        image = image.convert(target)  # RGBA -> RGB drops alpha
    if image.size != (spec.width, spec.height):
        if spec.resize == "none":
            raise InputError(f"{where} is {image.width}x{image.height} pixels; this input takes "
                             f"{spec.width}x{spec.height} images and does not resize them",
                             fix=f"send {spec.width}x{spec.height} images", field=field)
        image = image.resize((spec.width, spec.height), resample=_resample(spec.resize))
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    if spec.color == "BGR":
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array)


def _resample(mode: str) -> Any:
    from PIL import Image as PilImage

    return {"bilinear": PilImage.Resampling.BILINEAR, "nearest": PilImage.Resampling.NEAREST,
            "area": PilImage.Resampling.BOX}[mode]


def normalize(batch: np.ndarray, spec: ImageSpec, dtype: Any = np.float32) -> np.ndarray:
    """8-bit pixels ``[n, height, width, channels]`` as the tensor the input takes (step 3)."""
    values = np.asarray(batch)
    if values.ndim != 4 or values.shape[1:] != (spec.height, spec.width, spec.channels):
        raise ValueError(f"pixels of shape {list(values.shape)} do not fit {spec.height}x{spec.width}x{spec.channels}")
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    tensor = (values.astype(np.float32) * np.float32(spec.scale) - mean) / std
    if spec.layout == "NCHW":
        tensor = tensor.transpose(0, 3, 1, 2)
    target = np.dtype(dtype)
    if target.kind == "f":
        return np.ascontiguousarray(tensor, dtype=target)
    info = np.iinfo(target)
    return np.ascontiguousarray(np.clip(np.rint(tensor), info.min, info.max).astype(target))


def preprocess(images: Sequence[bytes], spec: ImageSpec, dtype: Any = np.float32, *, where: str = "image",
               max_pixels: int = MAX_PIXELS, field: str | None = None) -> np.ndarray:
    """PNG/JPEG images as one batch tensor: ``decode``, ``pixels`` and ``normalize`` each. ``where``
    names the images in a refusal (``image 3``), ``field`` the input they feed."""
    if not images:
        raise InputError(f"no {where} was sent", fix=_FIX, field=field)
    batch = np.stack([pixels(data, spec, where=f"{where} {i}" if len(images) > 1 else where, max_pixels=max_pixels,
                             field=field)
                      for i, data in enumerate(images)])
    return normalize(batch, spec, dtype)


def restore(tensor: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """``normalize`` undone: float64 pixel values ``[n, height, width, channels]`` (not rounded)."""
    values = np.asarray(tensor, dtype=np.float64)
    if spec.layout == "NCHW":
        values = values.transpose(0, 2, 3, 1)
    return (values * np.asarray(spec.std) + np.asarray(spec.mean)) / spec.scale


def statistic_names(spec: ImageSpec) -> tuple[str, ...]:
    """The statistics ``image_statistics`` gives for images of this spec."""
    return IMAGE_STATISTICS_GRAY if spec.color == "GRAY" else IMAGE_STATISTICS_RGB


def image_statistics(tensor: np.ndarray, spec: ImageSpec, names: Sequence[str] | None = None) -> np.ndarray:
    """``[n, len(names)]`` float64: each image's statistics over its pixels (0-255, clipped):
    ``brightness`` (mean luma), ``contrast`` (standard deviation of luma), ``saturation`` (mean HSV
    saturation, 0-1), ``mean.R``/``mean.G``/``mean.B`` (mean of each channel, in RGB terms
    whatever the input's colour order) and ``hist.C.k`` (the share of pixels with channel C, or
    luma L for GRAY, in the k-th of ``HISTOGRAM_BINS`` equal ranges of 0-255). ``tensor`` is what
    the model ran on (``normalize``'s output), taken back to pixels with ``restore``."""
    wanted = tuple(names) if names is not None else statistic_names(spec)
    known = statistic_names(spec)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown image statistic(s) {', '.join(unknown)} for {spec.color} images; "
                         f"known: {', '.join(known)}")
    values = np.clip(restore(tensor, spec), 0.0, 255.0)
    n = values.shape[0]
    flat = values.reshape(n, -1, spec.channels)
    if spec.color == "BGR":
        flat = flat[:, :, ::-1]
    luma = flat[:, :, 0] if spec.channels == 1 else flat @ _LUMA
    out = np.empty((n, len(wanted)), dtype=np.float64)
    for j, name in enumerate(wanted):
        if name == "brightness":
            out[:, j] = luma.mean(axis=1)
        elif name == "contrast":
            out[:, j] = luma.std(axis=1)
        elif name == "saturation":
            high, low = flat.max(axis=2), flat.min(axis=2)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, j] = np.where(high > 0, (high - low) / np.where(high > 0, high, 1.0), 0.0).mean(axis=1)
        elif name.startswith("hist."):
            _, channel, k = name.split(".")
            plane = luma if channel == "L" else flat[:, :, "RGB".index(channel)]
            width = 256.0 / HISTOGRAM_BINS
            quarter = np.minimum((plane // width).astype(np.int64), HISTOGRAM_BINS - 1)
            out[:, j] = (quarter == int(k)).mean(axis=1)
        else:
            out[:, j] = flat[:, :, "RGB".index(name[-1])].mean(axis=1)
    return out


def encode_png(array: np.ndarray) -> bytes:
    """8-bit pixels ``[height, width, channels]`` (1 or 3 channels, RGB order) as PNG bytes (tests, demos)."""
    from PIL import Image as PilImage

    values = np.asarray(array, dtype=np.uint8)
    image = PilImage.fromarray(values[:, :, 0] if values.shape[2] == 1 else values, "L" if values.shape[2] == 1 else "RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
