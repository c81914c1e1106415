"""Running models side by side: one ``Predictor`` seam, one implementation per runtime.

Every predictor takes a ``Batch`` and returns ``Outputs`` in the same shape (labels,
probabilities or regression values), so the proof compares like with like whatever ran the
model. A batch is float32 rows ``[n, features]``, or for a model with named inputs a mapping of
input name to array: ``[n, 1]`` columns (strings as objects) or N-D tensors ``[n, ...]``;
``batch_rows`` and ``take`` work on both. Quantized TFLite tensors are quantized and dequantized here: callers see real
numbers.

This module runs models; it does not judge them (see ``proof``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from converter.errors import ConverterError
from edgefleet.onnx_options import exact_int8


@dataclass(frozen=True)
class Outputs:
    """What a model returned for a batch. Classifiers fill labels and/or probabilities."""

    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    values: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.labels is None and self.probabilities is None and self.values is None:
            raise ConverterError("the model returned none of labels, probabilities or values")

    def top1(self, class_labels: Sequence[Any] | None) -> np.ndarray:
        """The predicted class per row, from the probabilities when there are any."""
        if self.probabilities is not None and class_labels:
            return np.asarray(list(class_labels), dtype=object)[np.argmax(self.probabilities, axis=1)]
        if self.labels is not None:
            return np.asarray(self.labels, dtype=object).reshape(-1)
        raise ConverterError("the model returned neither labels nor probabilities",
                             fix="a classifier must output class labels or a [batch, classes] probabilities tensor")

    def regression(self) -> np.ndarray:
        if self.values is None:
            raise ConverterError("the model returned no regression value")
        return np.asarray(self.values, dtype=np.float64).reshape(len(self.values), -1)

    def take(self, rows: np.ndarray) -> Outputs:
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a)[rows]
        return Outputs(pick(self.labels), pick(self.probabilities), pick(self.values))


Batch = np.ndarray | Mapping[str, np.ndarray]
"""Rows for a predictor: a float32 [n, features] matrix, or [n, 1] arrays by column name."""


def batch_rows(batch: Batch) -> int:
    """How many rows a batch holds."""
    if isinstance(batch, Mapping):
        return len(next(iter(batch.values())))
    return len(batch)


def take(batch: Batch, rows: np.ndarray | slice) -> Batch:
    """The given rows of a batch (indices or a slice), of either form."""
    if isinstance(batch, Mapping):
        return {name: np.asarray(values)[rows] for name, values in batch.items()}
    return batch[rows]


class Predictor(Protocol):
    def predict(self, features: Batch) -> Outputs: ...


class EstimatorPredictor:
    """A scikit-learn-compatible estimator (also LightGBM's and XGBoost's sklearn wrappers).

    It predicts with one BLAS thread. OpenBLAS splits a matrix product differently with one
    thread than with several, and the last bits of the result move: the digits MLP's
    probabilities in golden.json differed in the 7th digit between OPENBLAS_NUM_THREADS=1 and 2,
    so the bundle's sha256 followed the machine's core count, the environment, or a thread
    limit another library left in the process. One thread is also what the reported host
    latency claims.
    """

    def __init__(self, estimator: Any, task: str) -> None:
        from threadpoolctl import ThreadpoolController  # a scikit-learn dependency

        self.estimator = estimator
        self.task = task
        # Made once, after the estimator's libraries are loaded: a limit through it costs about
        # 20 µs a call (threadpool_limits() looks the libraries up again each time, about 500 µs).
        self._threads = ThreadpoolController()

    def predict(self, features: Batch) -> Outputs:
        with self._threads.limit(limits=1, user_api="blas"):
            return self._predict(features)

    def _predict(self, features: Batch) -> Outputs:
        if isinstance(features, Mapping):
            # A model fitted on a DataFrame selects its columns by name: give it one.
            from edgefleet.extras import require

            pd = require("pandas", "convert", "running a model fitted on a DataFrame")
            features = pd.DataFrame({name: np.asarray(column).reshape(-1) for name, column in features.items()})
        if self.task == "regression":
            return Outputs(values=np.asarray(self.estimator.predict(features), dtype=np.float64))
        labels = np.asarray(self.estimator.predict(features))
        probabilities = None
        if hasattr(self.estimator, "predict_proba"):
            try:
                probabilities = np.asarray(self.estimator.predict_proba(features), dtype=np.float64)
            except AttributeError:  # e.g. SVC(probability=False) exposes the method but refuses it
                probabilities = None
        return Outputs(labels=labels, probabilities=probabilities)


class OnnxPredictor:
    """onnxruntime on the CPU, one thread: host numbers that are fair to a small device.

    Int8 products are exact on every x86 host (``edgefleet.onnx_options``), as on a device: with
    onnxruntime's default they saturate on x86 without VNNI, and the proof's figures, which the
    bundle holds, followed the host's CPU (audio window model: rel_error 0.051 against 0.0105;
    digits MLP: 450/450 against 449/450).
    """

    def __init__(self, model_bytes: bytes, roles: Mapping[str, str]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        exact_int8(options)
        try:
            self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ConverterError(f"onnxruntime cannot load the model: {exc}",
                                 fix="check that the model's opset and ops are supported by onnxruntime") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.input_types = {i.name: _ORT_TYPES.get(i.type, np.dtype(np.float32)) for i in self.session.get_inputs()}
        self.roles = dict(roles)

    def predict(self, features: Batch) -> Outputs:
        names = list(self.roles)
        if isinstance(features, Mapping):
            # Only the graph's inputs: an exporter drops columns the model never reads.
            feeds = {name: _feed(features[name], dtype) for name, dtype in self.input_types.items()}
        else:
            feeds = {self.input_name: np.ascontiguousarray(features, dtype=np.float32)}
        results = self.session.run(names, feeds)
        by_role = {self.roles[n]: np.asarray(r) for n, r in zip(names, results, strict=True)}
        return Outputs(labels=by_role.get("label"), probabilities=by_role.get("probabilities"), values=by_role.get("value"))


# onnxruntime's names for input types -> the numpy dtype it takes (strings: an object array of str).
_ORT_TYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32), "tensor(double)": np.dtype(np.float64), "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64), "tensor(int32)": np.dtype(np.int32), "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8), "tensor(bool)": np.dtype(np.bool_), "tensor(string)": np.dtype(object)}


def _feed(column: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    if dtype.kind == "O":
        return np.asarray(column, dtype=object)
    return np.ascontiguousarray(column, dtype=dtype)


class TflitePredictor:
    """ai_edge_litert's Interpreter; the batch dimension is resized to fit each call.

    A matrix model takes a ``[n, features]`` array. A model with named tensor inputs takes them by
    name, matched to the interpreter's inputs through the file's ``serving_default`` signature
    (TensorFlow's converter keeps the Keras input names there), else by position.
    """

    def __init__(self, model_bytes: bytes, task: str) -> None:
        from edgefleet.extras import require

        litert = require("ai_edge_litert.interpreter", "litert", "running TFLite models")
        try:
            self.interpreter = litert.Interpreter(model_content=model_bytes, num_threads=1)
        except (ValueError, RuntimeError) as exc:
            raise ConverterError(f"LiteRT cannot load the converted model: {exc}") from exc
        self.task = task
        self._batch = -1

    def input_details(self) -> dict[str, dict[str, Any]]:
        """The interpreter's input details by signature input name (positional names without one)."""
        details = self.interpreter.get_input_details()
        by_index = {d["index"]: d for d in details}
        signatures = self.interpreter.get_signature_list()
        if len(signatures) == 1:
            runner_inputs = self.interpreter.get_signature_runner(next(iter(signatures))).get_input_details()
            if len(runner_inputs) == len(details):
                return {name: by_index[d["index"]] for name, d in runner_inputs.items()}
        return {d["name"]: d for d in details}

    def _resize(self, rows: int) -> None:
        if rows != self._batch:
            for detail in self.interpreter.get_input_details():
                shape = [rows, *(int(d) for d in detail["shape"][1:])]
                self.interpreter.resize_tensor_input(detail["index"], shape, strict=False)
            self.interpreter.allocate_tensors()
            self._batch = rows

    def predict(self, features: Batch) -> Outputs:
        self._resize(batch_rows(features))
        if isinstance(features, Mapping):
            details = self.input_details()
            if len(features) == len(details) and set(features) != set(details):  # positional: the input order
                details = dict(zip(features, self.interpreter.get_input_details(), strict=True))
            for name, detail in details.items():
                if name not in features:
                    raise ConverterError(f"internal: the TFLite model takes an input {name!r} the data lacks",
                                         fix="report this as a bug")
                self.interpreter.set_tensor(detail["index"], quantize(np.asarray(features[name]), detail))
        else:
            detail = self.interpreter.get_input_details()[0]
            self.interpreter.set_tensor(detail["index"], quantize(features, detail))
        self.interpreter.invoke()
        out = self.interpreter.get_output_details()[0]
        result = dequantize(self.interpreter.get_tensor(out["index"]), out)
        if self.task == "regression":
            return Outputs(values=result)
        return Outputs(probabilities=result)


def _scale(detail: Mapping[str, Any]) -> tuple[float, int] | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        return float(scale), int(zero_point)
    return None


def quantize(features: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    params = _scale(detail)
    if params is None:
        return np.ascontiguousarray(features, dtype=detail["dtype"])
    scale, zero_point = params
    info = np.iinfo(detail["dtype"])
    q = np.clip(np.round(features / scale) + zero_point, info.min, info.max)
    return np.ascontiguousarray(q.astype(detail["dtype"]))


def dequantize(values: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    params = _scale(detail)
    if params is None:
        return np.asarray(values, dtype=np.float32)
    scale, zero_point = params
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)
