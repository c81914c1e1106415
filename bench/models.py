"""The three models every benchmark uses, trained once and cached under ``bench/results/cache``.

    mlp     scikit-learn MLPClassifier(256, 128) on digits (the converter's ``digits-mlp`` example)
    forest  scikit-learn RandomForestClassifier, 100 trees, on breast cancer
    cnn     a tiny Keras conv net on the 8x8 digits (Conv 8x3x3, ReLU, Dense 10, softmax), also
            written as an equivalent ONNX graph built with ``onnx.helper`` from the trained weights
            (built before the converter could export Keras to ONNX, and kept so that runs compare;
            the ONNX copy is what the agent serves)

Each comes with its baseline file (joblib or .keras), its float32 ONNX model, a float32 bundle
the agent installs, and the calibration/validation CSVs.

The inference benchmark also serves ``image`` (``prepare_image``): the typed-inputs work's digits
CNN (``converter.examples.write_image_example``: Keras, input ``image`` ``(None, 32, 32, 3)``, the
digits enlarged to 32x32 RGB, ten classes), converted to a float32 ONNX bundle with that input
declared an image (``images={"image": {}}``, what ``edgefleet convert --image image`` does), so
the agent answers ``Content-Type: image/png`` bodies with it. Its requests are PNG pictures of
held-out digits (``ImageBenchModel.png``).

The quantization benchmark also converts ``mobilenetv2`` (``prepare_mobilenet``):
``keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(96, 96, 3))``, seeded
random weights (nothing downloaded), with seeded random images in [-1, 1] (MobileNetV2's input
range) as calibration and validation ``.npy`` files. Random weights make its agreement figures
mean little; its sizes and latencies are real. This module does not time anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.errors import BenchError

if TYPE_CHECKING:
    from edgefleet.manifest import ImageSpec

CACHE = Path(__file__).resolve().parent / "results" / "cache"
MODEL_NAMES = ("mlp", "forest", "cnn")
SEED = 0
PROFILE = "generic-x86_64"


@dataclass(frozen=True)
class BenchModel:
    """One benchmark model and the files made from it."""

    name: str
    baseline_path: Path        # joblib (scikit-learn) or .keras: what the Flask baseline loads
    onnx_path: Path            # float32 ONNX: what the raw runtime runs
    bundle_path: Path          # float32 ONNX bundle: what the agent serves
    calibration_csv: Path
    validation_csv: Path
    labels_column: str

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise BenchError(f"unknown benchmark model {self.name!r}", fix=f"use one of {', '.join(MODEL_NAMES)}")

    @property
    def baseline_kind(self) -> str:
        return "keras" if self.baseline_path.suffix == ".keras" else "joblib"

    def validation(self) -> tuple[np.ndarray, np.ndarray]:
        """The held-out rows and their labels."""
        data = np.loadtxt(self.validation_csv, delimiter=",", skiprows=1, dtype=np.float64)
        return data[:, :-1].astype(np.float32), data[:, -1].astype(np.int64)


def _split(loader: Callable[[], Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    data = loader()
    # The same split the converter's examples use, so their CSVs are this model's held-out rows.
    x_train, x_val, y_train, y_val = train_test_split(data.data.astype(np.float32), data.target,
                                                      test_size=0.25, random_state=SEED)
    return x_train, x_val, y_train, y_val


def _train_forest(path: Path) -> None:
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    x_train, _, y_train, _ = _split(load_breast_cancer)
    joblib.dump(RandomForestClassifier(n_estimators=100, random_state=SEED, n_jobs=1).fit(x_train, y_train), path)


def _train_cnn(keras_path: Path, onnx_path: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from sklearn.datasets import load_digits

    x_train, _, y_train, _ = _split(load_digits)
    tf.keras.utils.set_random_seed(SEED)
    model = tf.keras.Sequential([
        tf.keras.Input(shape=(64,)),
        tf.keras.layers.Rescaling(1 / 16),
        tf.keras.layers.Reshape((8, 8, 1)),
        tf.keras.layers.Conv2D(8, 3, activation="relu"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=30, batch_size=32, verbose=0)
    model.save(keras_path)
    conv, dense = model.layers[2], model.layers[4]
    kernel, conv_bias = (np.asarray(w) for w in conv.get_weights())
    weights, dense_bias = (np.asarray(w) for w in dense.get_weights())
    onnx_path.write_bytes(_cnn_onnx(kernel, conv_bias, weights, dense_bias))


def _cnn_onnx(kernel: np.ndarray, conv_bias: np.ndarray, weights: np.ndarray, dense_bias: np.ndarray) -> bytes:
    """The Keras CNN as a standard-op ONNX graph with the same arithmetic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.ascontiguousarray(value), name)

    inits = [
        const("scale", np.array(1 / 16, dtype=np.float32)),
        const("nchw", np.array([-1, 1, 8, 8], dtype=np.int64)),
        # Keras kernels are HWIO; ONNX Conv wants OIHW.
        const("W", kernel.transpose(3, 2, 0, 1).astype(np.float32)),
        const("B", conv_bias.astype(np.float32)),
        const("flat", np.array([-1, int(weights.shape[0])], dtype=np.int64)),
        const("D", weights.astype(np.float32)),
        const("DB", dense_bias.astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Mul", ["input", "scale"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "nchw"], ["image"]),
        helper.make_node("Conv", ["image", "W", "B"], ["conv"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        # Keras flattens channels-last: go back to NHWC before flattening so Dense sees its order.
        helper.make_node("Transpose", ["relu"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["nhwc", "flat"], ["flattened"]),
        helper.make_node("Gemm", ["flattened", "D", "DB"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(nodes, "bench_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _convert(source: Path, name: str, examples: Any, out: Path, *, profile: str = PROFILE, fmt: str = "onnx",
             quantize: str = "none", force: bool = False) -> Any:
    from converter import ConvertOptions, convert

    return convert(ConvertOptions(source, profile, name, "1.0.0", out, format=fmt, quantize=quantize,
                                  calibration=examples.calibration_csv, validation=examples.validation_csv,
                                  labels=examples.labels_column, force=force))


def prepare(name: str, cache: Path = CACHE) -> BenchModel:
    """Train (first time only) and convert ``name``; later calls reuse the cached files."""
    from converter.examples import write_example
    from edgefleet.bundle import read_bundle

    if name not in MODEL_NAMES:
        raise BenchError(f"unknown benchmark model {name!r}", fix=f"use one of {', '.join(MODEL_NAMES)}")
    work = cache / name
    work.mkdir(parents=True, exist_ok=True)
    examples = write_example(work / "data", kind="breast-cancer-rf" if name == "forest" else "digits-mlp") \
        if not (work / "data").exists() else _cached_examples(work / "data", name)
    if name == "mlp":
        baseline = examples.model_path
    elif name == "forest":
        baseline = work / "forest100.joblib"
        if not baseline.exists():
            _train_forest(baseline)
    else:
        baseline = work / "cnn.keras"
        if not baseline.exists():
            _train_cnn(baseline, work / "cnn-source.onnx")
    bundle = work / "bundles" / f"bench-{name}-1.0.0.tar.gz"
    if not bundle.exists():
        source = work / "cnn-source.onnx" if name == "cnn" else baseline
        _convert(source, f"bench-{name}", examples, work / "bundles")
    onnx_path = work / "model.onnx"
    if not onnx_path.exists():
        onnx_path.write_bytes(read_bundle(bundle).model_bytes)
    return BenchModel(name, baseline, onnx_path, bundle, examples.calibration_csv, examples.validation_csv,
                      examples.labels_column)


def _cached_examples(directory: Path, name: str) -> Any:
    from converter.examples import LABELS_COLUMN, ExampleFiles

    kind = "breast-cancer-rf" if name == "forest" else "digits-mlp"
    return ExampleFiles(directory / f"{kind}.joblib", directory / f"{kind}-calibration.csv",
                        directory / f"{kind}-validation.csv", LABELS_COLUMN)


def convert_variant(model: BenchModel, profile: str, fmt: str, quantize: str, out: Path) -> Any:
    """Convert ``model`` once more for a profile/format/quantization (``force``: report, do not refuse)."""
    source = model.onnx_path.parent / "cnn.keras" if model.name == "cnn" and fmt == "tflite" else (
        model.onnx_path.parent / "cnn-source.onnx" if model.name == "cnn" else model.baseline_path)
    examples = _cached_examples(model.validation_csv.parent, model.name)
    return _convert(source, f"bench-{model.name}", examples, out, profile=profile, fmt=fmt, quantize=quantize,
                    force=True)


IMAGE_MODEL = "image"


@dataclass(frozen=True)
class ImageBenchModel:
    """The image benchmark model: its float32 ONNX file and bundle, and its held-out pictures."""

    name: str
    onnx_path: Path            # float32 ONNX: what the raw runtime runs
    bundle_path: Path          # float32 ONNX bundle, input declared an image: what the agent serves
    validation_npz: Path       # held-out pictures (``image``: [n, 32, 32, 3] in [0, 1]) and labels (``y``)

    def spec(self) -> ImageSpec:
        """The bundle's ImageSpec: how the agent (and the peer) decode and preprocess a picture."""
        from edgefleet.bundle import read_bundle

        spec = read_bundle(self.bundle_path).manifest.inputs[0].image
        if spec is None:
            raise BenchError(f"{self.bundle_path.name} has no image input",
                             fix=f"delete {self.bundle_path.parent.parent} so that it is converted again")
        return spec

    def pixels(self, index: int = 0) -> np.ndarray:
        """Held-out picture ``index`` as 8-bit RGB pixels ``[32, 32, 3]`` (as a camera would store it)."""
        with np.load(self.validation_npz) as data:
            return picture_pixels(data["image"][index])

    def png(self, index: int = 0) -> bytes:
        """Held-out picture ``index`` as the PNG bytes a request carries."""
        from edgefleet.images import encode_png

        return encode_png(self.pixels(index))


def picture_pixels(image: np.ndarray) -> np.ndarray:
    """An example picture in [0, 1] (multiples of 1/255) back to the 8-bit pixels it was made from."""
    values = np.asarray(image, dtype=np.float64)
    if values.ndim != 3 or values.shape[2] not in (1, 3):
        raise BenchError(f"a picture must be [height, width, 1 or 3], got {list(values.shape)}")
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def prepare_image(cache: Path = CACHE) -> ImageBenchModel:
    """Train the digits CNN and convert it (first time only: TensorFlow, a few seconds of training);
    later calls reuse the cached files."""
    from converter import ConvertOptions, convert
    from edgefleet.bundle import read_bundle

    work = cache / IMAGE_MODEL
    data = work / "data"
    bundle = work / "bundles" / f"bench-{IMAGE_MODEL}-1.0.0.tar.gz"
    validation = data / "digits-cnn-validation.npz"
    if not bundle.exists():
        from converter.examples import write_image_example

        files = write_image_example(data)
        convert(ConvertOptions(files.model_path, PROFILE, f"bench-{IMAGE_MODEL}", "1.0.0", work / "bundles",
                               format="onnx", quantize="none", calibration=files.calibration_npz,
                               validation=files.validation_npz, labels=files.labels_key, images={"image": {}}))
    onnx_path = work / "model.onnx"
    if not onnx_path.exists():
        onnx_path.write_bytes(read_bundle(bundle).model_bytes)
    return ImageBenchModel(IMAGE_MODEL, onnx_path, bundle, validation)


MOBILENET = "mobilenetv2"
MOBILENET_SHAPE = (96, 96, 3)
MOBILENET_CALIBRATION_ROWS = 64
MOBILENET_VALIDATION_ROWS = 128


@dataclass(frozen=True)
class KerasFiles:
    """A Keras model for the quantization benchmark and its data (.npy images, no labels)."""

    name: str
    keras_path: Path
    calibration_npy: Path
    validation_npy: Path


def prepare_mobilenet(cache: Path = CACHE) -> KerasFiles:
    """Build (first time only) MobileNetV2 0.35 at 96x96 with random weights, and its images."""
    work = cache / MOBILENET
    files = KerasFiles(MOBILENET, work / "mobilenetv2.keras", work / "calibration.npy", work / "validation.npy")
    if files.keras_path.exists() and files.validation_npy.exists():
        return files
    from converter.tf_runtime import keras

    work.mkdir(parents=True, exist_ok=True)
    k = keras()
    k.utils.set_random_seed(SEED)
    model = k.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=MOBILENET_SHAPE)
    rng = np.random.default_rng(SEED)
    np.save(files.calibration_npy, rng.uniform(-1, 1, (MOBILENET_CALIBRATION_ROWS, *MOBILENET_SHAPE)).astype(np.float32))
    np.save(files.validation_npy, rng.uniform(-1, 1, (MOBILENET_VALIDATION_ROWS, *MOBILENET_SHAPE)).astype(np.float32))
    model.save(files.keras_path)  # last: its presence means the files are whole
    return files


def convert_keras_variant(files: KerasFiles, profile: str, fmt: str, quantize: str, out: Path) -> Any:
    """Convert a Keras benchmark model for a profile/format/quantization (``force``: report, do not refuse)."""
    from converter import ConvertOptions, convert

    return convert(ConvertOptions(files.keras_path, profile, f"bench-{files.name}", "1.0.0", out, format=fmt,
                                  quantize=quantize, calibration=files.calibration_npy,
                                  validation=files.validation_npy, force=True))
