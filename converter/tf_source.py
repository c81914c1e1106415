"""Keras and SavedModel sources: loading them, saying what they are, and calling them.

``source.load_source`` hands ``.keras``/``.h5`` files and SavedModel directories here. The
converter takes ``[batch, features] -> [batch, outputs]`` models: a softmax-style output (one
column per class) is read as a classifier with classes ``0..k-1``, one column as a regressor.
``TensorflowPredictor`` runs the original model for the proof.

TensorFlow comes from ``tf_runtime`` (extra ``tflite-convert``). This module does not convert
anything (see ``tflite``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from converter.errors import NotAModelError
from converter.predictors import Batch, Outputs
from converter.source_model import SourceModel, file_digest
from converter.tf_runtime import tensorflow


def _keras_task(width: int) -> tuple[str, tuple[str | int, ...] | None]:
    # A softmax-style output (one column per class) is a classifier; one column is a regressor.
    return ("classification", tuple(range(width))) if width > 1 else ("regression", None)


def load_keras(path: Path) -> SourceModel:
    tf = tensorflow()
    try:
        model = tf.keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises ValueError, OSError or its own errors for a bad file
        raise NotAModelError(f"{path} is not a Keras model Keras can load ({type(exc).__name__}: {exc})",
                             fix="save it with model.save('model.keras')") from exc
    in_shape, out_shape = tuple(model.input_shape), tuple(model.output_shape)
    if len(in_shape) != 2 or len(out_shape) != 2 or not in_shape[1] or not out_shape[1]:
        raise NotAModelError(f"{path} takes {in_shape} and returns {out_shape}; the converter handles "
                             "[batch, features] -> [batch, outputs] models",
                             fix="flatten the input, or convert the model yourself with tf.lite.TFLiteConverter")
    task, labels = _keras_task(int(out_shape[1]))
    sha, size = file_digest(path)
    return SourceModel("keras", path, sha, size, task, int(in_shape[1]), labels, None, model, kind=type(model).__name__)


def load_saved_model(path: Path) -> SourceModel:
    tf = tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
    except Exception as exc:
        raise NotAModelError(f"{path} is not a SavedModel with a serving_default signature ({exc})",
                             fix="export it with tf.saved_model.save(model, path) or model.export(path)") from exc
    inputs = list(signature.structured_input_signature[1].values())
    outputs = list(signature.structured_outputs.values())
    if len(inputs) != 1 or len(outputs) != 1 or inputs[0].shape.rank != 2 or outputs[0].shape.rank != 2:
        raise NotAModelError(f"{path}: the converter handles one [batch, features] input and one [batch, outputs] output")
    task, labels = _keras_task(int(outputs[0].shape[1]))
    sha, size = file_digest(path)
    return SourceModel("savedmodel", path, sha, size, task, int(inputs[0].shape[1]), labels, None, signature,
                       kind="SavedModel")


class TensorflowPredictor:
    """The original Keras model or SavedModel signature, called eagerly (no ``predict`` overhead)."""

    def __init__(self, source: SourceModel) -> None:
        self.tf = tensorflow()
        self.source = source

    def predict(self, features: Batch) -> Outputs:
        if isinstance(features, Mapping):
            raise NotAModelError("internal: a Keras model was given named columns", fix="report this as a bug")
        x = self.tf.constant(np.asarray(features, dtype=np.float32))
        if self.source.framework == "keras":
            result = self.source.model(x, training=False)
        else:
            result = next(iter(self.source.model(x).values()))
        values = np.asarray(result, dtype=np.float32)
        if self.source.task == "regression":
            return Outputs(values=values)
        return Outputs(probabilities=values)
