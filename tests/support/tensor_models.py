"""Small ONNX models with N-D and several named inputs, built with onnx.helper (no torch), as a
PyTorch export would give them (issue 12, slice 3):

* ``image_and_metadata``: an NCHW image ``[n, 3, 32, 32]`` through a Conv, a ReLU and global
  average pooling, concatenated with a second named input, a metadata vector ``[n, 8]``, then a
  dense layer and a softmax: a 4-class classifier with a ``probabilities`` output.
* ``image_classifier``: the image branch alone, ``[n, 3, 32, 32]`` to 4 classes; ``image_folder``
  writes PNG/JPEG pictures for it in one subfolder per label (an image input's data, slice 4).
* ``audio_window``: a 1-D convolution over ``[n, 16000]`` windows (unsqueezed to one channel),
  pooled, then a dense layer: a regressor with a ``value`` output.

Weights are seeded, so the same call always gives the same bytes. ``samples`` makes matching
data (an .npz file with one array per input name) for conversion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IMAGE_SHAPE = (3, 32, 32)
META_WIDTH = 8
WINDOW = 16_000


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pytorch")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def image_and_metadata(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    channels = 8
    inits = [
        _init("conv.weight", rng.normal(0, 0.3, (channels, 3, 3, 3)).astype(np.float32)),
        _init("conv.bias", rng.normal(0, 0.1, (channels,)).astype(np.float32)),
        _init("fc.weight", rng.normal(0, 2.0, (channels + META_WIDTH, 4)).astype(np.float32)),
        _init("fc.bias", rng.normal(0, 0.1, (4,)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv.weight", "conv.bias"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Concat", ["features", "metadata"], ["joined"], axis=1),
        helper.make_node("MatMul", ["joined", "fc.weight"], ["logits0"]),
        helper.make_node("Add", ["logits0", "fc.bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "image_and_metadata",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", *IMAGE_SHAPE]),
         helper.make_tensor_value_info("metadata", TensorProto.FLOAT, ["batch", META_WIDTH])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4])], inits)
    return _save(graph, path)


def image_classifier(path: Path, seed: int = 4, size: int = 32) -> Path:
    """An NCHW image ``[n, 3, size, size]`` classifier: Conv, ReLU, global average pooling, a dense
    layer and a softmax over 4 classes (the image branch of ``image_and_metadata`` on its own)."""
    rng = np.random.default_rng(seed)
    channels = 8
    inits = [
        _init("conv.weight", rng.normal(0, 0.3, (channels, 3, 3, 3)).astype(np.float32)),
        _init("conv.bias", rng.normal(0, 0.1, (channels,)).astype(np.float32)),
        _init("fc.weight", rng.normal(0, 3.0, (channels, 4)).astype(np.float32)),
        _init("fc.bias", rng.normal(0, 0.1, (4,)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv.weight", "conv.bias"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "fc.weight"], ["logits0"]),
        helper.make_node("Add", ["logits0", "fc.bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "image_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4])], inits)
    return _save(graph, path)


def image_folder(root: Path, count: int = 48, seed: int = 5, size: int = 40) -> Path:
    """PNG and JPEG pictures in one subfolder per label (0-3): coloured blobs on noise, varied
    brightness, ``size`` x ``size`` (the model's input is 32 x 32: the converter resizes them)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        label = i % 4
        colour = np.array([[255, 60, 60], [60, 255, 60], [60, 60, 255], [230, 230, 60]][label], dtype=np.float64)
        cy, cx = rng.uniform(8, size - 8, 2)
        blob = (((yy - cy) ** 2 + (xx - cx) ** 2) < rng.uniform(20, 90))[..., None]
        light = rng.uniform(0.4, 1.0)
        picture = np.clip(rng.normal(90, 25, (size, size, 3)) * (1 - blob) + colour * blob * light, 0, 255)
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        fmt = "JPEG" if i % 3 == 0 else "PNG"
        Image.fromarray(picture.astype(np.uint8)).save(folder / f"{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}",
                                                       format=fmt, quality=92)
    return root


def audio_window(path: Path, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    filters = 4
    inits = [
        _init("axes", np.array([1], dtype=np.int64)),
        _init("conv.weight", rng.normal(0, 0.2, (filters, 1, 64)).astype(np.float32)),
        _init("conv.bias", rng.normal(0, 0.1, (filters,)).astype(np.float32)),
        _init("fc.weight", rng.normal(0, 1.0, (filters, 1)).astype(np.float32)),
        _init("fc.bias", np.array([0.5], dtype=np.float32)),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["window", "axes"], ["channel"]),
        helper.make_node("Conv", ["channel", "conv.weight", "conv.bias"], ["conv"], strides=[16]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "fc.weight"], ["value0"]),
        helper.make_node("Add", ["value0", "fc.bias"], ["value"]),
    ]
    graph = helper.make_graph(
        nodes, "audio_window",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", WINDOW])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch", 1])], inits)
    return _save(graph, path)


def image_samples(rows: int, seed: int = 2) -> dict[str, np.ndarray]:
    """Images (values in [0, 1], per-image brightness varied) and metadata vectors."""
    rng = np.random.default_rng(seed)
    brightness = rng.uniform(0.2, 0.8, (rows, 1, 1, 1))
    image = np.clip(brightness + rng.normal(0, 0.15, (rows, *IMAGE_SHAPE)), 0, 1).astype(np.float32)
    return {"image": image, "metadata": rng.normal(0, 1, (rows, META_WIDTH)).astype(np.float32)}


def window_samples(rows: int, seed: int = 3) -> dict[str, np.ndarray]:
    """Noisy sine windows of varied pitch and loudness."""
    rng = np.random.default_rng(seed)
    t = np.arange(WINDOW) / 16_000.0
    pitch = rng.uniform(100, 2_000, (rows, 1))
    loud = rng.uniform(0.1, 1.0, (rows, 1))
    window = loud * np.sin(2 * np.pi * pitch * t) + rng.normal(0, 0.05, (rows, WINDOW))
    return {"window": window.astype(np.float32)}


def save_samples(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path
