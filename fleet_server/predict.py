"""Server-side inference for the hybrid path: the registry's bundles run with ONNX Runtime.

Devices without a model, or an operator comparing edge and cloud answers, send the same
inputs the agent's local API takes (docs/contracts.md, "Local agent API") to
``POST /api/v1/models/{name}/predict`` and get the same answer shape back; a CSV or NPY file
upload gets a CSV back. The server runs the very bundle the devices download (its TUF target),
on the CPU execution provider, and keeps the last few sessions loaded (an LRU).

Input parsing is the server's own (``to_matrix``): the agent's parser lives in agent/, which
the server must not import. The rules are the agent's: rows or named features, every value a
finite number (booleans and numeric strings are refused, ``null`` is NaN only where the input
spec allows NaN), the spec's width, at most ``max_rows`` rows.

Only ONNX bundles are served (TFLite bundles are built for devices); this module knows nothing
of HTTP (the routes are in ``fleet_server.fleet_api``).

    ServerError (fleet_server.errors)
    └── InvalidInputError
        └── PredictInputError     the request's inputs do not fit the model (HTTP 422, 413 for too many rows)
"""

from __future__ import annotations

import csv
import io
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.manifest import Manifest, TensorSpec
from fleet_server.bundle_cache import BundleCache
from fleet_server.errors import InvalidInputError, ServerError

DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_SESSIONS = 4


class PredictInputError(InvalidInputError):
    """The inputs of a predict request do not fit the model."""

    def __init__(self, message: str, *, fix: str | None = None, status: int = 422) -> None:
        super().__init__(message, fix=fix)
        self.status_code = status


# ---- inputs (pure) ------------------------------------------------------------------------------

def _width(spec: TensorSpec) -> int | None:
    if spec.width is not None:
        return spec.width
    return len(spec.feature_names) if spec.feature_names else None


def _value(value: Any, spec: TensorSpec, where: str) -> float:
    if value is None and spec.allow_nan:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PredictInputError(f"{where} is {value!r}, not a number", fix="send numbers (not strings or booleans)")
    if not math.isfinite(value):
        raise PredictInputError(f"{where} is {value!r}", fix="send finite numbers")
    return float(value)


def _check_rows(n: int, max_rows: int) -> None:
    if n == 0:
        raise PredictInputError("no rows to predict", fix='send {"inputs": [[...], ...]} with at least one row')
    if n > max_rows:
        raise PredictInputError(f"{n} rows is over the limit of {max_rows} a request",
                                fix="split the request, or upload a file to .../predict/batch", status=413)


def to_matrix(payload: Any, spec: TensorSpec, *, max_rows: int = DEFAULT_MAX_ROWS) -> np.ndarray:
    """A JSON body (``{"inputs": rows | row}`` or ``{"instances": [{name: value}] | rows}``) as float32 rows."""
    if not isinstance(payload, Mapping) or len(payload) != 1 or next(iter(payload)) not in ("inputs", "instances"):
        raise PredictInputError("the body must be an object with one key, 'inputs' or 'instances'",
                                fix='e.g. {"inputs": [[0.1, 0.2]]} or {"instances": [{"f1": 0.1, "f2": 0.2}]}')
    key, rows = next(iter(payload.items()))
    if not isinstance(rows, list):
        raise PredictInputError(f"'{key}' must be a list of rows")
    if key == "inputs" and rows and not isinstance(rows[0], (list, dict)):
        rows = [rows]  # one row
    _check_rows(len(rows), max_rows)
    width = _width(spec)
    names = spec.feature_names
    matrix: list[list[float]] = []
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):
            if not names:
                raise PredictInputError("this model's input has no feature names", fix="send rows of numbers instead")
            unknown = sorted(set(row) - set(names))
            missing = [n for n in names if n not in row]
            if unknown or missing:
                raise PredictInputError(f"row {i}: unknown feature(s) {unknown[:5]}, missing {missing[:5]}",
                                        fix=f"the features are {list(names)[:10]}{'...' if len(names) > 10 else ''}")
            matrix.append([_value(row[n], spec, f"row {i} feature {n!r}") for n in names])
        elif isinstance(row, list):
            if width is not None and len(row) != width:
                raise PredictInputError(f"row {i} has {len(row)} values; the model takes {width}",
                                        fix=f"send {width} numbers a row")
            matrix.append([_value(v, spec, f"row {i} column {j}") for j, v in enumerate(row)])
        else:
            raise PredictInputError(f"row {i} is neither a list of numbers nor an object of features")
    if len({len(r) for r in matrix}) > 1:
        raise PredictInputError("rows have different lengths", fix="send the same number of values in every row")
    return np.asarray(matrix, dtype=np.float32)


def read_table(data: bytes, filename: str, spec: TensorSpec, *, max_rows: int = DEFAULT_MAX_ROWS) -> np.ndarray:
    """An uploaded ``.npy`` (2-D numeric) or CSV (a header naming the features, or bare numbers) as rows."""
    if filename.lower().endswith(".npy") or data[:6] == b"\x93NUMPY":
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise PredictInputError(f"{filename} is not a readable .npy file: {exc}") from exc
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if array.ndim != 2 or array.dtype.kind not in "iuf":
            raise PredictInputError(f"{filename} holds a {array.dtype} array of {array.ndim} dimensions",
                                    fix="save a 2-D numeric array: np.save(path, rows.astype('float32'))")
        return to_matrix({"inputs": array.astype(np.float64).tolist()}, spec, max_rows=max_rows)
    try:
        lines = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise PredictInputError(f"{filename} is not UTF-8 CSV: {exc}", fix="upload a CSV or .npy file") from exc
    lines = [line for line in lines if line]
    if not lines:
        raise PredictInputError(f"{filename} is empty")
    header: Sequence[str] | None = None
    if any(not _is_number(cell) for cell in lines[0]):
        header, lines = lines[0], lines[1:]
    try:
        rows = [[float(cell) if cell.strip() not in ("", "nan", "NaN") else None for cell in line] for line in lines]
    except ValueError as exc:
        raise PredictInputError(f"{filename}: {exc}", fix="every cell after the header must be a number") from exc
    if header is not None:
        if not spec.feature_names:
            raise PredictInputError(f"{filename} has a header but this model's input has no feature names",
                                    fix="upload the numbers without a header, in the model's column order")
        return to_matrix({"instances": [dict(zip(header, r, strict=False)) for r in rows]}, spec, max_rows=max_rows)
    return to_matrix({"inputs": rows}, spec, max_rows=max_rows)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


# ---- running ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    model: str
    version: str
    request_id: str
    predictions: list[Any]
    probabilities: list[list[float]] | None
    labels: list[Any] | None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "version": self.version, "request_id": self.request_id,
                               "predictions": self.predictions}
        if self.probabilities is not None:
            out["probabilities"] = self.probabilities
        return out

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["prediction"]
        if self.probabilities is not None:
            header += [f"p_{label}" for label in (self.labels or range(len(self.probabilities[0])))]
        writer.writerow(header)
        for i, value in enumerate(self.predictions):
            writer.writerow([value, *(self.probabilities[i] if self.probabilities is not None else [])])
        return buffer.getvalue()


class _Loaded:
    def __init__(self, manifest: Manifest, model: bytes) -> None:
        import onnxruntime as ort

        self.manifest = manifest
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors on a bad graph
            raise ServerError(f"{manifest.ref} does not load in ONNX Runtime: {exc}",
                              fix="convert the model again with `edgefleet convert`") from exc


class Predictor:
    """Loads bundles from the registry on demand and runs them; thread-safe (ORT sessions are)."""

    def __init__(self, bundles: BundleCache, *, max_sessions: int = DEFAULT_MAX_SESSIONS,
                 max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.bundles = bundles
        self.max_sessions = max_sessions
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._sessions: OrderedDict[tuple[str, str], _Loaded] = OrderedDict()

    def resolve(self, name: str, version: str | None) -> str:
        return version or self.bundles.latest(name)

    def manifest(self, name: str, version: str) -> Manifest:
        return self._load(name, version).manifest

    def _load(self, name: str, version: str) -> _Loaded:
        key = (name, version)
        with self._lock:
            if key in self._sessions:
                self._sessions.move_to_end(key)
                return self._sessions[key]
        bundle = self.bundles.get(name, version)
        if bundle.manifest.format != "onnx":
            raise PredictInputError(f"{name}@{version} is a {bundle.manifest.format} bundle; the server runs ONNX only",
                                    fix="convert an ONNX bundle of the model for server-side predictions")
        loaded = _Loaded(bundle.manifest, bundle.model_bytes)
        with self._lock:
            self._sessions[key] = loaded
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return loaded

    def predict(self, name: str, version: str, matrix: np.ndarray, *, request_id: str | None = None) -> Prediction:
        loaded = self._load(name, version)
        manifest = loaded.manifest
        spec = manifest.input
        feed = matrix
        if spec.quantization is not None and spec.dtype in ("int8", "uint8"):
            info = np.iinfo(np.dtype(spec.dtype))
            q = spec.quantization
            feed = np.clip(np.rint(matrix / q.scale + q.zero_point), info.min, info.max)
        feed = np.ascontiguousarray(feed, dtype=np.dtype(spec.dtype))
        names = [o.name for o in manifest.outputs]
        try:
            raw = loaded.session.run(names, {spec.name: feed})
        except Exception as exc:  # onnxruntime's errors carry no stable type
            raise PredictInputError(f"{manifest.ref} could not run on these inputs: {str(exc).splitlines()[0]}",
                                    fix=f"send rows of {_width(spec) or 'the model’s'} numbers") from exc
        outputs = dict(zip(names, raw, strict=True))
        return self._shape(manifest, outputs, matrix.shape[0], request_id or uuid.uuid4().hex)

    @staticmethod
    def _shape(manifest: Manifest, outputs: Mapping[str, Any], n: int, request_id: str) -> Prediction:
        roles: dict[str, np.ndarray] = {}
        for spec in manifest.outputs:
            value = np.asarray(outputs[spec.name])
            if spec.quantization is not None and value.dtype.kind in "iu":
                value = (value.astype(np.float32) - spec.quantization.zero_point) * spec.quantization.scale
            roles.setdefault(spec.role, value.reshape(n, -1) if spec.role == "probabilities" else value.reshape(n))
        labels = list(manifest.class_labels) if manifest.class_labels else None
        probabilities = roles.get("probabilities")
        if manifest.task == "classification":
            if "label" in roles:
                predictions = roles["label"].tolist()
            elif probabilities is not None and labels:
                predictions = [labels[int(i)] for i in np.argmax(probabilities, axis=1)]
            else:
                raise ServerError(f"{manifest.ref} produced neither a label nor probabilities",
                                  fix="rebuild the bundle: its output roles do not match the model")
        else:
            predictions = roles["value"].astype(np.float64).tolist()
        probs = None if probabilities is None else probabilities.astype(np.float64).round(6).tolist()
        return Prediction(manifest.name, manifest.version, request_id, predictions, probs, labels)
