"""Keras and SavedModel sources: loading them, saying what they are, and calling them.

``source.load_source`` hands ``.keras``/``.h5`` files and SavedModel directories here. A model
with one ``[batch, features]`` input is a matrix model, as it always was (``SourceModel.inputs``
is None, so its bundles keep their bytes). Any other input, an image ``[batch, 32, 32, 3]``, a
sensor window ``[batch, 128, 6]``, several named inputs, is described by named tensor specs
(kind ``tensor``, the batch dynamic, named as the model names them: the Keras input names, or
the SavedModel signature's keys), the way an ONNX model with N-D inputs is. Every model has one
``[batch, outputs]`` output: a softmax-style output (one column per class) is read as a
classifier with classes ``0..k-1``, one column as a regressor.

``TensorflowPredictor`` runs the original model for the proof. TensorFlow comes from
``tf_runtime`` (extra ``tflite-convert``). This module does not convert anything (see
``tflite`` and ``keras_onnx``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import NotAModelError, UnsupportedOpError
from converter.predictors import Batch, Outputs, batch_rows, take
from converter.source_model import SourceModel, file_digest
from converter.tf_runtime import keras as keras3
from converter.tf_runtime import tensorflow
from edgefleet.manifest import DTYPES, TensorSpec

# A tensor model runs eagerly on at most this many samples at a time: 1,000 MobileNet inputs at
# once would hold gigabytes of activations.
PREDICT_ROWS = 128


def _keras_task(width: int) -> tuple[str, tuple[str | int, ...] | None]:
    # A softmax-style output (one column per class) is a classifier; one column is a regressor.
    return ("classification", tuple(range(width))) if width > 1 else ("regression", None)


def _dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    return tuple(None if d is None else int(d) for d in shape)


def _output_width(path: Path, shapes: Sequence[tuple[int | None, ...]]) -> int:
    """The width of the model's one ``[batch, outputs]`` output, or a refusal saying what to change."""
    if len(shapes) != 1:
        raise NotAModelError(f"{path} returns {len(shapes)} outputs ({', '.join(str(list(s)) for s in shapes)}); the "
                             "converter takes models with one [batch, outputs] output",
                             fix="save a model that returns the one output to serve, e.g. "
                                 "keras.Model(model.inputs, model.outputs[0]).save('model.keras')")
    shape = shapes[0]
    if len(shape) != 2 or not shape[1]:
        raise NotAModelError(f"{path} returns an output of shape {list(shape)}; the converter takes one "
                             "[batch, outputs] output (class probabilities or regression values)",
                             fix="end the model with a Flatten or GlobalAveragePooling and a Dense layer, "
                                 "or a Reshape to [batch, outputs]")
    return int(shape[1])


def _tensor_inputs(path: Path, described: Sequence[tuple[str, str, tuple[int | None, ...]]]
                   ) -> tuple[TensorSpec, ...] | None:
    """Named tensor specs for the model's inputs; None for one ``[batch, features]`` float input
    (a matrix model). A fixed batch dimension and dtypes a bundle cannot carry are refused."""
    if len(described) == 1:
        _, dtype, shape = described[0]
        if len(shape) == 2 and shape[1] and dtype == "float32":
            return None
    specs = []
    for name, dtype, shape in described:
        if len(shape) < 2 or shape[0] is not None:
            raise NotAModelError(f"{path}: input {name!r} has shape {list(shape)}, whose first dimension is not a "
                                 "dynamic batch", fix="build the model on keras.Input(shape=...) without batch_size "
                                 "(a device batches requests)")
        if dtype not in DTYPES or dtype == "string":
            raise UnsupportedOpError(f"{path}: input {name!r} has dtype {dtype}, which a bundle cannot carry",
                                     op=f"{dtype} input", fix="take the input as float32 (or uint8/int8/int32/int64)")
        specs.append(TensorSpec(name, dtype, (-1, *(-1 if d is None else d for d in shape[1:]))))
    return tuple(specs)


def _keras_inputs(model: Any, path: Path) -> list[tuple[str, str, tuple[int | None, ...]]]:
    try:
        tensors = list(model.inputs)
    except (AttributeError, ValueError) as exc:  # a Sequential never built has no inputs
        raise NotAModelError(f"{path} holds a Keras model whose inputs are not defined ({exc})",
                             fix="build it on keras.Input(shape=...) before saving") from exc
    if not tensors:
        raise NotAModelError(f"{path} holds a Keras model without inputs", fix="build it on keras.Input(shape=...)")
    # Keras 3 gives dtypes as strings; tf.keras 2 (tf_keras, which onnx2tf loads) as tf.DType.
    return [(str(t.name), str(getattr(t.dtype, "name", t.dtype)), _dims(t.shape)) for t in tensors]


def _load_keras_model(path: Path) -> Any:
    """The model in a .keras/.h5 file, read by Keras 3; a file only tf.keras (tf_keras, Keras 2)
    reads, where that is what ``tf.keras`` is in this process, by tf.keras."""
    tf = tensorflow()
    keras = keras3()
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises ValueError, OSError or its own errors for a bad file
        if tf.keras is not keras:
            try:
                return tf.keras.models.load_model(path, compile=False)
            except Exception:  # report what Keras 3, the pinned Keras, says
                pass
        raise NotAModelError(f"{path} is not a Keras model Keras can load ({type(exc).__name__}: {exc})",
                             fix="save it with model.save('model.keras') (Keras 3)") from exc


def load_keras(path: Path) -> SourceModel:
    model = _load_keras_model(path)
    described = _keras_inputs(model, path)
    width = _output_width(path, [_dims(t.shape) for t in model.outputs])
    inputs = _tensor_inputs(path, described)
    task, labels = _keras_task(width)
    sha, size = file_digest(path)
    n_features = int(described[0][2][1] or 0) if inputs is None else len(inputs)
    return SourceModel("keras", path, sha, size, task, n_features, labels, None, model, kind=type(model).__name__,
                       inputs=inputs)


def load_saved_model(path: Path) -> SourceModel:
    tf = tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
    except Exception as exc:
        raise NotAModelError(f"{path} is not a SavedModel with a serving_default signature ({exc})",
                             fix="export it with tf.saved_model.save(model, path) or model.export(path)") from exc
    # The signature's inputs by keyword, in name order (how TensorFlow lists them).
    described = [(str(name), spec.dtype.name, _dims(spec.shape.as_list()) if spec.shape.rank is not None else ())
                 for name, spec in sorted(signature.structured_input_signature[1].items())]
    outputs = list(signature.structured_outputs.values())
    width = _output_width(path, [_dims(o.shape.as_list()) if o.shape.rank is not None else () for o in outputs])
    inputs = _tensor_inputs(path, described)
    task, labels = _keras_task(width)
    sha, size = file_digest(path)
    n_features = int(described[0][2][1] or 0) if inputs is None else len(inputs)
    return SourceModel("savedmodel", path, sha, size, task, n_features, labels, None, signature,
                       kind="SavedModel", inputs=inputs)


class TensorflowPredictor:
    """The original Keras model or SavedModel signature, called eagerly (no ``predict`` overhead)."""

    def __init__(self, source: SourceModel) -> None:
        self.tf = tensorflow()
        self.source = source
        self._graph = self._traced(source) if source.framework == "keras" and source.inputs is not None else None

    def _traced(self, source: SourceModel) -> Any:
        """A Keras model with tensor inputs, traced once for any batch size: eagerly, MobileNetV2
        takes 150 ms a sample in op-by-op dispatch, and the proof and the latency probe call it
        hundreds of times. Matrix models stay eager, so their golden outputs keep their bytes."""
        tf = self.tf
        assert source.inputs is not None
        model = source.model
        signature = [tf.TensorSpec((None, *(None if d == -1 else d for d in spec.shape[1:])), tf.as_dtype(spec.dtype))
                     for spec in source.inputs]

        def call(*tensors: Any) -> Any:
            return model(list(tensors) if len(tensors) > 1 else tensors[0], training=False)
        return tf.function(call, input_signature=signature)

    def _call(self, features: Batch) -> np.ndarray:
        tf = self.tf
        if isinstance(features, Mapping):
            if self.source.inputs is None:
                raise NotAModelError("internal: a matrix model was given named inputs", fix="report this as a bug")
            tensors = {spec.name: tf.constant(np.asarray(features[spec.name], dtype=spec.dtype))
                       for spec in self.source.inputs}
            if self._graph is not None:  # a Keras model: its inputs in the model's order
                result = self._graph(*(tensors[spec.name] for spec in self.source.inputs))
            else:
                result = next(iter(self.source.model(**tensors).values()))
        else:
            x = tf.constant(np.asarray(features, dtype=np.float32))
            if self.source.framework == "keras":
                result = self.source.model(x, training=False)
            else:
                result = next(iter(self.source.model(x).values()))
        return np.asarray(result, dtype=np.float32)

    def predict(self, features: Batch) -> Outputs:
        rows = batch_rows(features)
        # Matrix models run in one call, as they always did (their golden outputs keep their bytes).
        if rows <= PREDICT_ROWS or not isinstance(features, Mapping):
            values = self._call(features)
        else:
            values = np.concatenate([self._call(take(features, slice(i, i + PREDICT_ROWS)))
                                     for i in range(0, rows, PREDICT_ROWS)])
        if self.source.task == "regression":
            return Outputs(values=values)
        return Outputs(probabilities=values)
