"""Keras models with N-D and several named inputs, trained here on data made here (no download):

* ``image_example()``: the converter's digits CNN (``converter.examples.write_image_example``:
  input ``image`` ``(None, 32, 32, 3)``, the digits upscaled to 32x32 RGB, ten classes), trained
  once per test run and shared by every pytest-xdist worker, like ``tests.support.bundles.example``.
* ``image_and_metadata(path)``: an NHWC image ``(None, 16, 16, 3)`` and a metadata vector
  ``(None, 4)``, two named inputs, to a 4-class softmax whose class depends on both.
* ``sensor_window(path)``: a 1-D convolution over ``(None, 64, 3)`` windows (a 3-axis sensor), a
  regressor of one value.
* ``two_outputs(path)``, ``sequence_output(path)``, ``fixed_batch(path)``: models the converter
  refuses (two outputs; a ``[batch, steps, classes]`` output; a batch fixed at 1).

Each is seeded; ``*_samples`` make matching data (one array per input name, labels as ``y``).
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from converter.examples import ImageExampleFiles, write_image_example
from tests.support.shared import locked, shared_dir

SEED = 0


@functools.cache
def image_example() -> ImageExampleFiles:
    """The trained digits CNN and its .npz data, trained once per test run."""
    shared = shared_dir()
    if shared is None:
        private = tempfile.mkdtemp(prefix="edgefleet-image-example-")
        atexit.register(shutil.rmtree, private, ignore_errors=True)
        return write_image_example(Path(private))
    directory = shared / "example-digits-cnn"
    record = directory / "example.json"  # written last: its presence means the files are whole
    with locked(shared / "example-digits-cnn.lock"):
        if record.exists():
            fields = json.loads(record.read_text())
            return ImageExampleFiles(Path(fields["model_path"]), Path(fields["calibration_npz"]),
                                     Path(fields["validation_npz"]), fields["labels_key"])
        shutil.rmtree(directory, ignore_errors=True)  # a worker that died mid-training left a part
        directory.mkdir()
        files = write_image_example(directory)
        record.write_text(json.dumps({"model_path": str(files.model_path), "calibration_npz": str(files.calibration_npz),
                                      "validation_npz": str(files.validation_npz), "labels_key": files.labels_key}))
        return files


def _keras() -> Any:
    from converter.tf_runtime import keras

    module = keras()
    module.utils.set_random_seed(SEED)
    return module


def image_and_metadata_samples(n: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """Images whose brightness and a metadata sign decide the class (2 x 2 = 4 classes), each with
    a margin (no sample on a knife's edge, where int8 rounding alone would flip it)."""
    rng = np.random.default_rng(seed)
    bright = rng.integers(0, 2, n)
    image = (rng.random((n, 16, 16, 3)) * 0.5 + 0.5 * bright[:, None, None, None]).astype(np.float32)
    metadata = rng.standard_normal((n, 4)).astype(np.float32)
    positive = rng.integers(0, 2, n)
    metadata[:, 0] = np.where(positive, 1, -1) * (0.5 + np.abs(metadata[:, 0]))
    return {"image": image, "metadata": metadata, "y": (2 * bright + positive).astype(np.int64)}


def image_and_metadata(path: Path) -> Path:
    keras = _keras()
    layers = keras.layers
    image = keras.Input((16, 16, 3), name="image")
    metadata = keras.Input((4,), name="metadata")
    x = layers.Conv2D(8, 3, activation="relu")(image)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Concatenate()([x, metadata])
    x = layers.Dense(16, activation="relu")(x)
    model = keras.Model([image, metadata], layers.Dense(4, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    data = image_and_metadata_samples(512, seed=1)
    model.fit([data["image"], data["metadata"]], data["y"], epochs=15, batch_size=64, verbose=0)
    model.save(path)
    return path


def window_samples(n: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """3-axis windows of 64 steps; the target is the mean of the first axis plus noise."""
    rng = np.random.default_rng(seed)
    window = rng.standard_normal((n, 64, 3)).astype(np.float32) + rng.standard_normal((n, 1, 3)).astype(np.float32)
    return {"window": window, "y": window[:, :, 0].mean(axis=1)}


def sensor_window(path: Path) -> Path:
    keras = _keras()
    layers = keras.layers
    window = keras.Input((64, 3), name="window")
    x = layers.Conv1D(8, 5, activation="relu")(window)
    x = layers.GlobalAveragePooling1D()(x)
    model = keras.Model(window, layers.Dense(1)(layers.Dense(16, activation="relu")(x)))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    data = window_samples(512, seed=1)
    model.fit(data["window"], data["y"], epochs=10, batch_size=64, verbose=0)
    model.save(path)
    return path


def two_outputs(path: Path) -> Path:
    keras = _keras()
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Flatten()(inputs)
    keras.Model(inputs, [keras.layers.Dense(3, activation="softmax")(x), keras.layers.Dense(1)(x)]).save(path)
    return path


def sequence_output(path: Path) -> Path:
    keras = _keras()
    inputs = keras.Input((10, 4), name="sequence")
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs)).save(path)
    return path


def fixed_batch(path: Path) -> Path:
    keras = _keras()
    inputs = keras.Input((8, 8, 1), batch_size=1, name="image")
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))).save(path)
    return path
