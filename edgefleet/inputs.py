"""Request input to model feeds, checked against the model's input specs.

The one parser of predict input: the agent's local API (``agent.serving``) and the server's
predict endpoint (``fleet_server.registry.predict``) both call it, so a body one accepts the
other accepts, and a body one refuses the other refuses for the same reason. It lives in the
core package because neither side may import the other. It needs only numpy, which the agent's
and the server's extras install (the core's CLI never imports this module), so the agent
install stays small.

``to_feeds(payload, manifest.inputs)`` returns one array per model input, batch first. For a
model with one tensor input (every schema-1 bundle) that is ``to_matrix`` below, unchanged.
For a model whose inputs are columns (schema 2: a DataFrame pipeline), the body is records
by column name, and each column becomes an ``[n, 1]`` array of its dtype:

    {"instances": [{"alcohol": 13.2, "region": "east"}, ...]}

A numeric column takes JSON numbers (``null`` as NaN where the column has ``allow_nan``), an
int64 column integers, a bool column true/false, a string column strings. A category the model
never saw is accepted: answering it is the model's business, counting it is drift's. Image and
N-D tensor bodies are not read yet (issue 12, later slices): such a model is refused with a
message saying so.

``to_matrix`` accepts these shapes for one 2-D float input (docs/contracts.md, "Predict input"):

    {"inputs": [[1.0, 2.0], [3.0, 4.0]]}       rows
    {"inputs": [1.0, 2.0]}                      one row
    {"instances": [{"f1": 1.0, "f2": 2.0}]}     named features, in any order
    {"instances": [[1.0, 2.0]]}                 rows under the other key

A bare list or a numpy array is taken as ``inputs``. Everything else raises ``InputError``
naming the problem and the fix: wrong width, a non-number (booleans and numeric strings
included: silently coercing them hides client bugs), NaN or infinity where the spec does not
allow NaN (``null`` is read as NaN where it does), an unknown or missing feature, no rows, or
more rows than ``max_rows`` (413).

Pure: no I/O, no runtime. It does not know about HTTP: callers map ``InputError.status``
(and may show ``InputError.field``, the input or column at fault).
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgefleet.errors import InputError
from edgefleet.manifest import TensorSpec

DEFAULT_MAX_ROWS = 10_000
Feeds = dict[str, np.ndarray]
"""Model input name -> array, batch first, in the dtype of the input's spec (strings as objects)."""
_NUMBER = (int, float)
_NUMBER_TYPES = frozenset(_NUMBER)
# Bounded: a bad value is shown in the message, and a deeply nested or huge one must neither blow
# the stack nor the answer's size (attributes, not keywords: Repr takes those from Python 3.12).
_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother = 2, 4, 4, 40, 40


def expected_width(spec: TensorSpec) -> int | None:
    """Values per row the spec asks for (its width, else its feature count); None: any width."""
    if spec.width is not None:
        return spec.width
    return len(spec.feature_names) if spec.feature_names else None


def to_matrix(payload: Any, spec: TensorSpec, *, max_rows: int = DEFAULT_MAX_ROWS) -> np.ndarray:
    """Turn a request body (already JSON-decoded) or an array into a checked float32 matrix."""
    if isinstance(payload, np.ndarray):
        return _check_array(payload, spec, max_rows)
    if isinstance(payload, Mapping):
        keys = set(payload)
        if keys == {"inputs"}:
            return _rows(payload["inputs"], spec, max_rows, "inputs")
        if keys == {"instances"}:
            return _instances(payload["instances"], spec, max_rows)
        unknown = sorted(map(str, keys - {"inputs", "instances"}))
        if not keys:
            what = "no 'inputs' and no 'instances': the rows to predict are missing"
        elif unknown:
            what = "unknown field(s) " + ", ".join(repr(k[:40]) for k in unknown[:5])
        else:
            what = "both 'inputs' and 'instances': send one of them"
        raise InputError(f"request body has {what}",
                         fix='send {"inputs": [[...], ...]} or {"instances": [{"feature": value, ...}]}')
    if isinstance(payload, list):
        return _rows(payload, spec, max_rows, "inputs")
    raise InputError(f"request body is a JSON {type(payload).__name__}, not an object",
                     fix='send {"inputs": [[...], ...]} or {"instances": [{"feature": value, ...}]}')


def _check_rows_count(n: int, max_rows: int) -> None:
    if n == 0:
        raise InputError("the request holds no rows", fix="send at least one row")
    if n > max_rows:
        raise InputError(f"the request holds {n} rows, over the limit of {max_rows} rows a request",
                         fix="split it into smaller requests (on a device, `edgefleet agent predict` takes files "
                             "of any length)",
                         status=413)


def _check_values(matrix: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    width = expected_width(spec)
    if matrix.shape[1] == 0:
        raise InputError(f"{where} have rows with no values", fix=_width_fix(spec, width or 1))
    if width is not None and matrix.shape[1] != width:
        raise InputError(f"{where} have {matrix.shape[1]} values per row but model input {spec.name!r} takes {width}",
                         fix=_width_fix(spec, width))
    bad = _not_accepted(matrix, spec)
    if bad is not None:
        (row, column), what = bad
        raise InputError(f"{where}: row {row}, column {column} is {what}, which this model does not accept",
                         fix="impute missing values before sending them")
    return matrix


def _not_accepted(array: np.ndarray, spec: TensorSpec) -> tuple[tuple[int, ...], str] | None:
    """The index of the first value the spec refuses (infinity; NaN unless ``allow_nan``), and what it is."""
    finite = np.isfinite(array)
    if finite.all():
        return None
    for index in np.argwhere(~finite):
        value = array[tuple(index)]
        if not spec.allow_nan or not np.isnan(value):
            what = "NaN (or null)" if np.isnan(value) else "infinity (or beyond float32's range)"
            return tuple(int(i) for i in index), what
    return None


def _width_fix(spec: TensorSpec, width: int) -> str:
    if spec.feature_names:
        return f"send {width} values per row in this order: {_names_hint(spec.feature_names)}"
    return f"send {width} values per row"


def _check_array(array: np.ndarray, spec: TensorSpec, max_rows: int) -> np.ndarray:
    if array.dtype.kind not in "iuf":
        raise InputError(f"input array has dtype {array.dtype}, not numbers", fix="send numeric features")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise InputError(f"input array has {array.ndim} dimensions", fix="send a [rows, features] matrix")
    _check_rows_count(array.shape[0], max_rows)
    with np.errstate(over="ignore"):
        matrix = np.ascontiguousarray(array, dtype=np.float32)
    return _check_values(matrix, spec, "inputs")


def _number(value: Any, spec: TensorSpec, where: str, field: str | None = None) -> float:
    # ``type(...) in`` rather than isinstance: bool is an int subclass and must be refused.
    if type(value) in _NUMBER:
        try:
            return float(value)
        except OverflowError:  # an integer too big even for float64
            raise InputError(f"{where} is a number too large for float32", fix="scale the features",
                             field=field) from None
    if value is None and spec.allow_nan:
        return math.nan
    raise InputError(f"{where} is {_shown(value)}, not a number", fix="send every feature as a JSON number", field=field)


def _shown(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {_SHOW.repr(value)}"[:60]


def _rows(value: Any, spec: TensorSpec, max_rows: int, key: str) -> np.ndarray:
    if not isinstance(value, list):
        raise InputError(f"'{key}' must be a list of rows or one row, got {type(value).__name__}",
                         fix=f'send {{"{key}": [[...], ...]}}')
    if value and not isinstance(value[0], list):
        value = [value]  # one row
    _check_rows_count(len(value), max_rows)
    width = len(value[0])
    for i, row in enumerate(value):
        if not isinstance(row, list):
            raise InputError(f"{key}[{i}] is {type(row).__name__}, not a row (list of numbers)",
                             fix="make every row a list of the same length")
        if len(row) != width:
            raise InputError(f"{key}[{i}] has {len(row)} values but {key}[0] has {width}",
                             fix="make every row the same length")
        # One C-level pass over the row's types; the per-value loop only runs to name a bad value.
        if not _NUMBER_TYPES.issuperset(map(type, row)):
            for j, v in enumerate(row):
                if type(v) not in _NUMBER:
                    _number(v, spec, f"{key}[{i}][{j}]")  # raises unless it is a null the spec allows
    try:
        # Values beyond float32's range become infinity here and are refused just below.
        with np.errstate(over="ignore"):
            matrix = np.array(value, dtype=np.float32) if not spec.allow_nan else np.array(
                [[math.nan if v is None else v for v in row] for row in value], dtype=np.float32)
    except OverflowError as exc:  # an integer too big even for float64
        raise InputError(f"'{key}' holds a number too large for float32", fix="scale the features") from exc
    return _check_values(matrix, spec, key)


def _instances(value: Any, spec: TensorSpec, max_rows: int) -> np.ndarray:
    if not isinstance(value, list):
        raise InputError(f"'instances' must be a list, got {type(value).__name__}",
                         fix='send {"instances": [{"feature": value, ...}, ...]}')
    if not value or not isinstance(value[0], Mapping):
        return _rows(value, spec, max_rows, "instances")
    names = spec.feature_names
    if not names:
        raise InputError(f"model input {spec.name!r} does not name its features, so named instances cannot be mapped",
                         fix='send rows instead: {"inputs": [[...], ...]}')
    _check_rows_count(len(value), max_rows)
    index = {n: i for i, n in enumerate(names)}
    matrix = np.empty((len(value), len(names)), dtype=np.float32)
    for i, instance in enumerate(value):
        if not isinstance(instance, Mapping):
            raise InputError(f"instances[{i}] is {type(instance).__name__}, not an object of features",
                             fix="make every instance an object {feature: value}")
        _check_fields(instance, i, index, names)
        # Values beyond float32's range become infinity here and are refused by _check_values.
        with np.errstate(over="ignore"):
            for key, v in instance.items():
                matrix[i, index[key]] = _number(v, spec, f"instances[{i}].{key}", key)
    return _check_values(matrix, spec, "instances")


def _check_fields(instance: Mapping[Any, Any], i: int, index: Mapping[str, int], names: Sequence[str]) -> None:
    """Refuse an instance with a field the model does not know, or without one it needs."""
    unknown = [k for k in instance if k not in index]
    if unknown:
        shown = sorted(map(str, unknown))
        raise InputError(f"instances[{i}] has unknown feature(s) {', '.join(map(repr, shown[:5]))}",
                         fix=f"use the model's feature names: {_names_hint(names)}", field=shown[0])
    if len(instance) != len(names):
        missing = [n for n in names if n not in instance]
        raise InputError(f"instances[{i}] is missing feature(s) {', '.join(map(repr, missing[:5]))}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""),
                         fix=f"send every feature the model lists: {_names_hint(names)}", field=missing[0])


def to_feeds(payload: Any, inputs: Sequence[TensorSpec], *, max_rows: int = DEFAULT_MAX_ROWS) -> Feeds:
    """Turn a request body (already JSON-decoded) into one checked array per model input.

    One tensor input: ``{name: to_matrix(payload, spec)}``, the same bodies, arrays and messages
    as always. Column inputs: records by column name (module docstring).
    """
    if len(inputs) == 1 and inputs[0].kind == "tensor":
        spec = inputs[0]
        return {spec.name: to_matrix(payload, spec, max_rows=max_rows)}
    if inputs and all(spec.kind == "column" for spec in inputs):
        return _records(payload, inputs, max_rows)
    shown = ", ".join(f"{spec.name!r} ({spec.kind}, shape {list(spec.shape)})" for spec in inputs[:4])
    raise InputError(f"this model takes inputs {shown}, which this edgefleet cannot read from a request yet",
                     fix="serve a model whose inputs are one [batch, features] tensor or named columns")


def _records(payload: Any, columns: Sequence[TensorSpec], max_rows: int) -> Feeds:
    names = [spec.name for spec in columns]
    fix = f'send {{"instances": [{{"{names[0]}": ..., ...}}, ...]}} naming every column: {_names_hint(names)}'
    if not isinstance(payload, Mapping) or set(payload) != {"instances"}:
        what = (f"a JSON object with field(s) {', '.join(map(repr, sorted(map(str, payload))[:5]))}"
                if isinstance(payload, Mapping) and payload
                else "an empty JSON object: the records are missing" if isinstance(payload, Mapping)
                else f"a {type(payload).__name__}")
        raise InputError(f"this model takes named columns as records under 'instances'; the request body is {what}",
                         fix=fix)
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InputError(f"'instances' must be a list of records, got {type(instances).__name__}", fix=fix)
    _check_rows_count(len(instances), max_rows)
    index = {n: i for i, n in enumerate(names)}
    values: list[list[Any]] = [[None] * len(instances) for _ in names]  # column-major
    for i, instance in enumerate(instances):
        if not isinstance(instance, Mapping):
            raise InputError(f"instances[{i}] is {type(instance).__name__}, not a record of columns", fix=fix)
        _check_fields(instance, i, index, names)
        for key, v in instance.items():
            values[index[key]][i] = v
    return {spec.name: _column(column, spec) for spec, column in zip(columns, values, strict=True)}


def _column(values: list[Any], spec: TensorSpec) -> np.ndarray:
    """One column's values, from the records, as an [n, 1] array of the column's dtype."""
    name = spec.name
    if spec.dtype == "string":
        for i, v in enumerate(values):
            if type(v) is not str:
                raise InputError(f"instances[{i}].{name} is {_shown(v)}; column {name!r} takes strings",
                                 fix=f"send {name} as a JSON string", field=name)
        return np.array(values, dtype=object).reshape(-1, 1)
    if spec.dtype == "bool":
        for i, v in enumerate(values):
            if type(v) is not bool:
                raise InputError(f"instances[{i}].{name} is {_shown(v)}; column {name!r} takes true or false",
                                 fix=f"send {name} as a JSON boolean", field=name)
        return np.array(values, dtype=np.bool_).reshape(-1, 1)
    if spec.dtype == "int64":
        for i, v in enumerate(values):
            if type(v) is not int:
                raise InputError(f"instances[{i}].{name} is {_shown(v)}; column {name!r} takes integers",
                                 fix=f"send {name} as a JSON integer", field=name)
        try:
            return np.array(values, dtype=np.int64).reshape(-1, 1)
        except OverflowError as exc:
            raise InputError(f"column {name!r} holds an integer beyond int64's range", fix="send smaller integers",
                             field=name) from exc
    # float32 (the one numeric dtype left): a bool or a string is refused, never coerced.
    if not _NUMBER_TYPES.issuperset(map(type, values)):
        values = [_number(v, spec, f"instances[{i}].{name}", name) for i, v in enumerate(values)]
    try:
        with np.errstate(over="ignore"):  # beyond float32's range becomes infinity, refused just below
            column = np.array(values, dtype=np.float32).reshape(-1, 1)
    except OverflowError as exc:  # an integer too big even for float64
        raise InputError(f"column {name!r} holds a number too large for float32", fix="scale the features",
                         field=name) from exc
    bad = _not_accepted(column, spec)
    if bad is not None:
        (row, _), what = bad
        raise InputError(f"instances[{row}].{name} is {what}, which column {name!r} does not accept",
                         fix="impute missing values before sending them", field=name)
    return column


def _names_hint(names: Sequence[str]) -> str:
    shown = ", ".join(names[:8])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
