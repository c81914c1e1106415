"""TensorFlow in the converter's process: imported through the extra, quietly and deterministically.

``tf_source`` (loading and calling Keras and SavedModel sources) and ``tflite`` (building
TFLite models) both get TensorFlow from ``tensorflow()`` here, and Keras 3 from ``keras()``, so the environment that makes
conversions repeatable is set once, before the first import, whichever of them runs first.
``quiet_native_output`` silences what TensorFlow's and MLIR's C++ code writes straight to file
descriptors 1 and 2, process-wide.

This module loads no model and converts nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType

EXTRA = "tflite-convert"


def tensorflow() -> ModuleType:
    """TensorFlow, imported through ``edgefleet.extras.require`` with its logging silenced and seeds fixed."""
    # Must be set before TensorFlow is first imported: C++ log level and oneDNN's
    # non-deterministic kernels (they reorder float sums between runs).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    from edgefleet.extras import require

    with quiet_native_output():  # the first import prints absl and CUDA-stub chatter
        tf = require("tensorflow", EXTRA, "TFLite conversion")
    tf.get_logger().setLevel("ERROR")
    tf.random.set_seed(0)
    return tf


def keras() -> ModuleType:
    """Keras 3 (the pinned ``keras``), whatever ``tf.keras`` points at.

    onnx2tf sets ``TF_USE_LEGACY_KERAS=1`` when imported, and from then on ``tf.keras`` in that
    process is tf_keras (Keras 2), which cannot read a Keras 3 ``.keras`` file (it fails on the
    InputLayer). Sources are loaded, trained and exported with Keras 3 itself.
    """
    tensorflow()
    from edgefleet.extras import require

    with quiet_native_output():
        return require("keras", EXTRA, "reading Keras models")


@contextlib.contextmanager
def quiet_native_output() -> Iterator[None]:
    """Silence what TensorFlow's and MLIR's C++ code writes straight to file descriptors 1 and 2."""
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
