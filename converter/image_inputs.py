"""Image inputs in the converter: declaring them, and reading images as calibration/validation data.

An input becomes an image (``kind: image`` with an ``ImageSpec`` in the manifest) because the user
says so, whatever the source: ``declare(source, declarations)`` rewrites ``SourceModel.inputs``
after any loader (ONNX here, Keras in ``tf_source``) has described them, so the declaration does
not depend on the framework. A declaration is ``--image INPUT`` (defaults below) or a table of
``--image-spec FILE.toml`` named after the input::

    [image]                        # the model's input name
    color = "RGB"                  # RGB | BGR | GRAY            (default: RGB for 3 channels, GRAY for 1)
    resize = "bilinear"            # bilinear | nearest | area | none   (default: bilinear)
    scale = 0.00392156862745098    # 1/255                       (default: 1/255)
    mean = [0.485, 0.456, 0.406]   # per channel                 (default: 0)
    std = [0.229, 0.224, 0.225]    # per channel                 (default: 1)
    # layout, height, width, channels: read from the input's shape; give them where it is
    # dynamic or ambiguous ([n, 3, 3, 3])

The data for an image input is a folder of PNG/JPEG files (``load_image_folder``; labels from
subfolder names), or an .npz/.npy holding either 8-bit pixels ``[n, height, width, channels]``
(uint8) or tensors already preprocessed with this spec. Either way the converter keeps 8-bit
pixels (``Dataset.pixels``; tensors are taken back with ``edgefleet.images.restore`` and rounded
to whole pixels, and refused if they come back outside 0-255: data made with another scale, mean
or std), and the tensors it proves the model on are ``normalize(pixels)``: exactly what a
device's health check replays from golden.npz.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import DataError, DataShapeError, OptionsError
from converter.source_model import SourceModel
from edgefleet.errors import InputError, ManifestError
from edgefleet.images import SUFFIXES, normalize, pixels, restore
from edgefleet.inputs import array_dtype
from edgefleet.manifest import ImageSpec, TensorSpec

FIELDS = ("layout", "height", "width", "channels", "color", "resize", "scale", "mean", "std")
DEFAULT_SCALE = 1 / 255
# How far (in 8-bit steps) preprocessed tensors may come back from whole pixels before they are
# taken for data made with another scale, mean or std.
_PIXEL_SLACK = 1.0


def read_declarations(names: Sequence[str], spec_file: Path | None) -> dict[str, dict[str, Any]]:
    """``--image NAME`` (repeated) and ``--image-spec FILE.toml`` as fields by input name."""
    declared: dict[str, dict[str, Any]] = {name: {} for name in names}
    if spec_file is not None:
        try:
            document = tomllib.loads(Path(spec_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise OptionsError(f"cannot read the image spec file {spec_file}: {exc}",
                               fix="give a TOML file with one table per image input, e.g. [image] color = \"RGB\"") from exc
        for name, table in document.items():
            if not isinstance(table, dict):
                raise OptionsError(f"{spec_file}: {name!r} is not a table",
                                   fix=f"write [{name}] followed by the fields ({', '.join(FIELDS)})")
            unknown = sorted(set(table) - set(FIELDS))
            if unknown:
                raise OptionsError(f"{spec_file}: [{name}] has unknown field(s) {', '.join(unknown)}",
                                   fix=f"use {', '.join(FIELDS)}")
            declared[name] = {**declared.get(name, {}), **table}
    return declared


def declare(source: SourceModel, declarations: Mapping[str, Mapping[str, Any]]) -> SourceModel:
    """``source`` with the declared inputs turned into image inputs (kind, ImageSpec, shape)."""
    if not declarations:
        return source
    if source.inputs is None or any(spec.kind == "column" for spec in source.inputs):
        raise OptionsError(f"{source.path} takes a [batch, features] matrix or named columns, not an image",
                           fix="declare --image only for an input of shape [n, height, width, channels] or "
                               "[n, channels, height, width]")
    by_name = {spec.name: spec for spec in source.inputs}
    unknown = [name for name in declarations if name not in by_name]
    if unknown:
        raise OptionsError(f"--image names {', '.join(map(repr, unknown))}, which {source.path} does not take",
                           fix=f"name one of the model's inputs: {', '.join(by_name)}")
    inputs = tuple(image_input(spec, declarations[spec.name]) if spec.name in declarations else spec
                   for spec in source.inputs)
    return dataclasses.replace(source, inputs=inputs)


def image_input(spec: TensorSpec, fields: Mapping[str, Any]) -> TensorSpec:
    """A tensor input as an image input: the declared fields, the rest read from its shape."""
    shape = spec.shape
    if len(shape) != 4:
        raise OptionsError(f"input {spec.name!r} has shape {list(shape)}; an image input has four dimensions",
                           fix="declare --image for an [n, height, width, channels] or [n, channels, height, width] input")
    if spec.dtype not in ("float32", "uint8", "int8"):
        raise OptionsError(f"input {spec.name!r} takes {spec.dtype}; an image input takes float32, uint8 or int8",
                           fix="export the model with a float32 image input")
    layout = fields.get("layout") or _layout(spec)
    dims = dict(zip(("height", "width", "channels"), (shape[1], shape[2], shape[3]) if layout == "NHWC"
                    else (shape[2], shape[3], shape[1]), strict=True))
    for key, value in dims.items():
        given = fields.get(key)
        if given is not None and value not in (-1, given):
            raise OptionsError(f"input {spec.name!r} has {key} {value} in its shape {list(shape)}, not {given}",
                               fix=f"leave {key} out of the image spec, or give the model's own")
        dims[key] = given if given is not None else value
        if dims[key] == -1:
            raise OptionsError(f"input {spec.name!r} has a dynamic {key} in its shape {list(shape)}",
                               fix=f"give the {key} the model should see in --image-spec ([{spec.name}] {key} = ...)")
    channels = dims["channels"]
    color = fields.get("color") or ("GRAY" if channels == 1 else "RGB")
    try:
        image = ImageSpec(layout=layout, height=dims["height"], width=dims["width"], channels=channels, color=color,
                          resize=fields.get("resize", "bilinear"), scale=float(fields.get("scale", DEFAULT_SCALE)),
                          mean=tuple(float(v) for v in fields.get("mean", (0.0,) * channels)),
                          std=tuple(float(v) for v in fields.get("std", (1.0,) * channels)))
        return dataclasses.replace(spec, kind="image", image=image, shape=image.shape())
    except (ManifestError, TypeError, ValueError) as exc:
        raise OptionsError(f"image input {spec.name!r}: {exc}", fix="check the fields given for it in --image-spec") from exc


def _layout(spec: TensorSpec) -> str:
    _, a, _, c = spec.shape
    if c in (1, 3) and a not in (1, 3):
        return "NHWC"
    if a in (1, 3) and c not in (1, 3):
        return "NCHW"
    raise OptionsError(f"input {spec.name!r} has shape {list(spec.shape)}, whose layout cannot be told from it",
                       fix=f"give layout = \"NHWC\" or \"NCHW\" in --image-spec ([{spec.name}])")


def image_specs(inputs: Sequence[TensorSpec] | None) -> dict[str, TensorSpec]:
    return {spec.name: spec for spec in inputs or () if spec.kind == "image" and spec.image is not None}


def load_image_folder(path: Path, specs: Sequence[TensorSpec]) -> tuple[dict[str, np.ndarray], list[str] | None, int]:
    """A folder of PNG/JPEG files as pixels of the model's one image input, and labels: the name of
    the subfolder each image is in (``folder/cat/1.png``), or none when every image lies in the
    folder itself. Files are read in sorted order. Returns (pixels by input, label names, count)."""
    images = image_specs(specs)
    if len(specs) != 1 or len(images) != 1:
        shown = ", ".join(f"{s.name} ({s.kind})" for s in specs[:4])
        raise DataShapeError(f"{path} is a folder of images, but the model takes {shown}",
                             fix="a folder feeds a model whose one input is an image; give an .npz with one array "
                                 "per input name for this model")
    spec = next(iter(images.values()))
    assert spec.image is not None
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise DataError(f"{path} holds no PNG or JPEG files", fix="put the images (.png, .jpg, .jpeg) in the folder, "
                                                                   "one subfolder per label")
    depths = {len(p.relative_to(path).parts) for p in files}
    if depths not in ({1}, {2}):
        raise DataError(f"{path} mixes images in the folder itself with images in subfolders, or nests deeper",
                        fix="put every image in a subfolder named after its label, or all of them in the folder")
    try:
        batch = np.stack([pixels(p.read_bytes(), spec.image, where=str(p)) for p in files])
    except InputError as exc:
        raise DataError(f"{exc.message}", fix=exc.fix) from exc
    labels = [p.parent.name for p in files] if depths == {2} else None
    return {spec.name: batch}, labels, len(files)


def as_pixels(name: str, values: np.ndarray, spec: TensorSpec, source: str) -> np.ndarray:
    """Data for an image input as 8-bit pixels: uint8 ``[n, height, width, channels]`` as they are,
    tensors of the input's shape taken back through ``restore`` (refused unless they come back as
    pixels, i.e. were made with this spec's scale, mean and std)."""
    image = spec.image
    assert image is not None
    values = np.asarray(values)
    layout = (image.height, image.width, image.channels)
    if values.dtype == np.uint8 and values.ndim == 4 and values.shape[1:] == layout:
        return values
    if values.ndim == 3 and values.shape == (values.shape[0], *layout[:2]) and image.channels == 1 and values.dtype == np.uint8:
        return values[..., None]
    wanted = tuple(spec.shape[1:])
    if values.ndim != 4 or values.shape[1:] != wanted or values.dtype.kind not in "fiu":
        raise DataShapeError(f"{source}: input {name!r} has an array of shape {list(values.shape)} ({values.dtype}); "
                             f"an image input takes 8-bit pixels [n, {image.height}, {image.width}, {image.channels}] "
                             f"(uint8) or preprocessed tensors [n, {', '.join(map(str, wanted))}]",
                             fix="give uint8 pixels, tensors preprocessed with the declared spec, or a folder of images")
    restored = restore(values, image)
    low, high = float(restored.min()), float(restored.max())
    if low < -_PIXEL_SLACK or high > 255 + _PIXEL_SLACK:
        raise DataError(f"{source}: the arrays for image input {name!r} do not come back as 8-bit pixels under its spec "
                        f"(scale {image.scale:g}, mean {list(image.mean)}, std {list(image.std)}): values from "
                        f"{low:.4g} to {high:.4g}", fix="declare the scale, mean and std the data was made with "
                        "(--image-spec), or give uint8 pixels or a folder of images")
    # Rounded to whole pixels: what a device would be sent as PNG, and what golden.npz keeps.
    return np.clip(np.rint(restored), 0, 255).astype(np.uint8)


def tensors(pixels_by_input: Mapping[str, np.ndarray], specs: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
    """What the model runs on for each image input's pixels: ``normalize`` in the input's dtype."""
    out = {}
    for name, batch in pixels_by_input.items():
        spec = specs[name]
        assert spec.image is not None
        out[name] = normalize(batch, spec.image, array_dtype(spec))
    return out
