"""Request input to model feeds, checked against the model's input specs.

The one parser of predict input: the agent's local API (``agent.serving``) and the server's
predict endpoint (``fleet_server.registry.predict``) both call it, so a body one accepts the
other accepts, and a body one refuses the other refuses for the same reason. It lives in the
core package because neither side may import the other. It needs only numpy, which the agent's
and the server's extras install (the core's CLI never imports this module), so the agent
install stays small.

``to_feeds(payload, manifest.inputs)`` returns one array per model input, batch first. The
payload is a decoded JSON body, an array, or a ``Body`` (bytes and their media type) that is
not JSON. Three families of model, three families of body (docs/contracts.md, "Predict input"):

* **One 2-D tensor** (every schema-1 bundle): ``to_matrix`` below, unchanged; also
  ``{"inputs": {name: rows}}``, and a binary body holding the matrix.
* **Named columns** (schema 2, a DataFrame pipeline): records by column name, each column an
  ``[n, 1]`` array of its dtype::

      {"instances": [{"alcohol": 13.2, "region": "east"}, ...]}

  A numeric column takes JSON numbers (``null`` as NaN where the column has ``allow_nan``), an
  int64 column integers, a bool column true/false, a string column strings. A category the
  model never saw is accepted: answering it is the model's business, counting it is drift's.
* **N-D tensors** (schema 2: images as arrays, audio and sensor windows, several named inputs):
  ``{"inputs": {name: nested lists, ...}}`` (one input may also come as ``{"inputs": nested}``),
  or a binary body: ``application/x-npy`` (one input), ``application/x-npz`` (one array per
  input name) or ``application/octet-stream`` with ``X-Edgefleet-Shape: 2,3,32,32`` and
  ``X-Edgefleet-Dtype: float32`` headers (one input, raw little-endian values in C order).
  Each array must have the input's shape (a fixed dimension exactly, the batch any length; one
  sample without the batch axis is a batch of one) and values its dtype takes: numbers for a
  float input (and for an int8/uint8 input that carries a quantization: the runtime quantizes
  real values), integers in range for an integer input, booleans for a bool input. A refusal
  names the input (``InputError.field``) and the shape it expects.

* **Images** (schema 2, an input of kind ``image``): ``image/png`` or ``image/jpeg`` (a model
  whose one input is an image; one image), or ``multipart/form-data`` (several images, one part
  each; for a model with several inputs, image parts named after the image input and a part per
  other input, JSON nested lists or .npy). Each image goes through ``edgefleet.images`` (decode
  with a pixel bound, colour, resize, scale/mean/std, layout, dtype): the same code the converter
  ran on its calibration and validation images. The preprocessed array still feeds an image
  input as a tensor (JSON, .npy). Not an image, a damaged one, the wrong size where the input
  does not resize, an unknown part or a missing input: 400 naming the input; too many pixels or
  parts: 413; an image for a model without an image input: 415.

``to_matrix`` accepts these shapes for one 2-D float input:

    {"inputs": [[1.0, 2.0], [3.0, 4.0]]}       rows
    {"inputs": [1.0, 2.0]}                      one row
    {"instances": [{"f1": 1.0, "f2": 2.0}]}     named features, in any order
    {"instances": [[1.0, 2.0]]}                 rows under the other key

A bare list or a numpy array is taken as ``inputs``. Everything else raises ``InputError``
naming the problem and the fix: wrong width, a non-number (booleans and numeric strings
included: silently coercing them hides client bugs), NaN or infinity where the spec does not
allow NaN (``null`` is read as NaN where it does), an unknown or missing feature, no rows, or
more rows than ``max_rows`` (413). A binary body of a media type this parser does not read is
a 415; a malformed one (a forged .npy header, a shape header that does not match the bytes) a
400. Binary bodies are read without pickle and only after their claimed sizes are checked
against the bytes actually sent.

Pure: no I/O, no runtime. It does not know about HTTP: callers map ``InputError.status``
(and may show ``InputError.field``, the input or column at fault), and build a ``Body`` from
a request's Content-Type and ``X-Edgefleet-*`` headers (``Body.from_headers``).
"""

from __future__ import annotations

import io
import math
import reprlib
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from edgefleet.errors import InputError
from edgefleet.images import MEDIA_TYPES as IMAGE_MEDIA_TYPES
from edgefleet.images import is_image_media, normalize, pixels, sniff
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


_F32_MAX = float(np.finfo(np.float32).max)


def _plain_rows(payload: Any, spec: TensorSpec, max_rows: int) -> np.ndarray | None:
    """The matrix of the commonest body, ``{"inputs": [[numbers], ...]}`` (or one row), when every
    value is a finite JSON number within float32's range; None for anything else, which then
    takes the full path (``_rows``) and gets its answer or its refusal from there.

    The same matrix the full path makes, for less: one C-level type pass per row, and
    ``math.hypot`` per row in place of numpy's isfinite and an errstate (a NaN or infinity makes
    the hypot NaN or infinite; a hypot within float32's range bounds every value of the row, so
    the float32 cast below cannot overflow). Every request to a matrix model comes through here.
    """
    if type(payload) is not dict or len(payload) != 1:
        return None
    value = payload.get("inputs")
    if type(value) is not list or not value:
        return None
    rows = value if type(value[0]) is list else [value]
    width = len(rows[0])
    expected = expected_width(spec)
    if not width or (expected is not None and width != expected) or len(rows) > max_rows:
        return None
    numbers, hypot, limit = _NUMBER_TYPES.issuperset, math.hypot, _F32_MAX
    try:
        for row in rows:
            # type() rather than isinstance: bool is an int subclass and must be refused (full path).
            if type(row) is not list or len(row) != width or not numbers(map(type, row)) or not hypot(*row) <= limit:
                return None
    except OverflowError:  # an integer too big for a float: the full path names it
        return None
    return np.array(rows, dtype=np.float32)


def to_matrix(payload: Any, spec: TensorSpec, *, max_rows: int = DEFAULT_MAX_ROWS) -> np.ndarray:
    """Turn a request body (already JSON-decoded) or an array into a checked float32 matrix."""
    plain = _plain_rows(payload, spec, max_rows)
    if plain is not None:
        return plain
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


@dataclass(frozen=True)
class Body:
    """A request body that is not (yet) decoded: its bytes, media type and the headers that
    describe a raw tensor. ``media_type`` is lower-case without parameters; ``params`` holds
    the Content-Type's parameters (a multipart boundary)."""

    data: bytes
    media_type: str
    shape: str | None = None
    dtype: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_headers(cls, data: bytes, content_type: str | None, headers: Mapping[str, str] | None = None) -> Body:
        """A body from its Content-Type and headers (names lower-case: ``x-edgefleet-shape``...)."""
        media, _, rest = (content_type or JSON).partition(";")
        params = {}
        for part in rest.split(";"):
            key, sep, value = part.partition("=")
            if sep:
                params[key.strip().lower()] = value.strip().strip('"')
        headers = headers or {}
        return cls(data, media.strip().lower() or JSON, headers.get(SHAPE_HEADER), headers.get(DTYPE_HEADER), params)


JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
RAW = "application/octet-stream"
SHAPE_HEADER = "x-edgefleet-shape"
DTYPE_HEADER = "x-edgefleet-dtype"
MULTIPART = "multipart/form-data"
TENSOR_MEDIA_TYPES = (JSON, NPY, NPZ, RAW)
MEDIA_TYPES = (*TENSOR_MEDIA_TYPES, *IMAGE_MEDIA_TYPES, MULTIPART)
"""Every request body type this parser reads; images and multipart only for image inputs."""
RAW_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool")
MAX_NPZ_BYTES = 256 << 20
"""What the arrays of one .npz body may take once unpacked: a zip's members may be compressed,
so its own size bounds nothing; each member's declared size is checked before it is read."""


FORM = "application/x-www-form-urlencoded"


def is_json(media_type: str) -> bool:
    """Whether a body of this media type is JSON (``application/json``, ``+json`` types, text/json)."""
    return media_type in (JSON, "text/json") or media_type.endswith("+json")


def to_feeds(payload: Any, inputs: Sequence[TensorSpec], *, max_rows: int = DEFAULT_MAX_ROWS) -> Feeds:
    """Turn a request body (decoded JSON, an array, or a ``Body``) into one checked array per model input.

    One 2-D tensor input: ``{name: to_matrix(payload, spec)}``, the same bodies, arrays and
    messages as always. Column inputs: records by column name. Other inputs: N-D tensors by
    input name (module docstring).
    """
    if type(payload) is dict and is_matrix(inputs):
        plain = _plain_rows(payload, inputs[0], max_rows)
        if plain is not None:
            return {inputs[0].name: plain}
    if isinstance(payload, Body):
        if is_image_media(payload.media_type) or payload.media_type == MULTIPART:
            return _image_body(payload, inputs, max_rows)
        payload = _read_body(payload, inputs)
    if is_matrix(inputs):
        spec = inputs[0]
        if isinstance(payload, Mapping) and set(payload) == {"inputs"} and isinstance(payload["inputs"], Mapping):
            payload = _by_name(payload["inputs"], inputs, "inputs")[spec.name]
        elif _arrays(payload):
            payload = _by_name(payload, inputs, "the archive")[spec.name]
        return {spec.name: to_matrix(payload, spec, max_rows=max_rows)}
    if inputs and all(spec.kind == "column" for spec in inputs):
        if isinstance(payload, np.ndarray) or _arrays(payload):
            raise InputError("this model takes named columns, which a binary array body cannot carry",
                             fix='send JSON records: {"instances": [{"column": value, ...}, ...]}', status=415)
        return _records(payload, inputs, max_rows)
    if any(spec.kind == "column" for spec in inputs) or any(spec.dtype == "string" for spec in inputs):
        shown = ", ".join(f"{spec.name!r} ({spec.kind}, {spec.dtype})" for spec in inputs[:4])
        raise InputError(f"this model takes inputs {shown}, which this edgefleet cannot read from a request",
                         fix="serve a model whose inputs are tensors, or named columns only")
    return _tensors(payload, inputs, max_rows)


def is_matrix(inputs: Sequence[TensorSpec]) -> bool:
    """One 2-D tensor input of real numbers (float, or an integer input that carries a
    quantization): the ``[batch, features]`` matrix every schema-1 bundle takes."""
    if len(inputs) != 1 or inputs[0].kind != "tensor" or len(inputs[0].shape) != 2:
        return False
    return array_dtype(inputs[0]).kind == "f"


def _arrays(payload: Any) -> bool:
    return isinstance(payload, Mapping) and bool(payload) and all(isinstance(v, np.ndarray) for v in payload.values())


def _by_name(values: Mapping[Any, Any], inputs: Sequence[TensorSpec], where: str) -> Mapping[str, Any]:
    """``values`` keyed by exactly the model's input names; a missing or unknown one is named."""
    names = [spec.name for spec in inputs]
    unknown = sorted(str(k) for k in values if k not in names)
    if unknown:
        raise InputError(f"{where} names unknown input(s) {', '.join(map(repr, unknown[:5]))}",
                         fix=f"name the model's inputs: {_inputs_hint(inputs)}", field=unknown[0])
    missing = [n for n in names if n not in values]
    if missing:
        raise InputError(f"{where} lacks input(s) {', '.join(map(repr, missing[:5]))}",
                         fix=f"send every input the model takes: {_inputs_hint(inputs)}", field=missing[0])
    return values


def _inputs_hint(inputs: Sequence[TensorSpec]) -> str:
    shown = ", ".join(f"{spec.name} {shape_text(spec.shape)}" for spec in inputs[:6])
    return shown + (f", ... ({len(inputs)} in all)" if len(inputs) > 6 else "")


def shape_text(shape: Sequence[int]) -> str:
    """A spec's shape as a person reads it: the batch (and any dynamic dimension) as ``n``."""
    return "[" + ", ".join("n" if d == -1 else str(d) for d in shape) + "]"


# -- N-D tensors ------------------------------------------------------------------------------------

_TENSOR_FIX = 'send {"inputs": {"<input>": [...], ...}}, an .npz body with one array per input, or .npy for one input'


def _tensors(payload: Any, inputs: Sequence[TensorSpec], max_rows: int) -> Feeds:
    if isinstance(payload, np.ndarray) or (isinstance(payload, list) and len(inputs) == 1):
        if len(inputs) != 1:
            raise InputError(f"this model takes {len(inputs)} inputs ({_inputs_hint(inputs)}); one array feeds one",
                             fix="send an .npz body with one array per input name, or JSON "
                                 '{"inputs": {"<input>": [...], ...}}')
        values: Mapping[str, Any] = {inputs[0].name: payload}
    elif _arrays(payload):
        values = _by_name(payload, inputs, "the archive")
    elif isinstance(payload, Mapping) and set(payload) == {"inputs"}:
        named = payload["inputs"]
        if isinstance(named, list) and len(inputs) == 1:
            values = {inputs[0].name: named}
        elif isinstance(named, Mapping):
            values = _by_name(named, inputs, "inputs")
        else:
            raise InputError(f"'inputs' must be an object of arrays by input name, got {type(named).__name__}",
                             fix=_TENSOR_FIX)
    else:
        what = (f"a JSON object with field(s) {', '.join(map(repr, sorted(map(str, payload))[:5]))}"
                if isinstance(payload, Mapping) else f"a {type(payload).__name__}")
        raise InputError(f"this model takes tensors ({_inputs_hint(inputs)}); the request body is {what}", fix=_TENSOR_FIX)
    feeds = {spec.name: _tensor(values[spec.name], spec, max_rows) for spec in inputs}
    rows = {name: len(array) for name, array in feeds.items()}
    if len(set(rows.values())) > 1:
        shown = ", ".join(f"{name} {n}" for name, n in rows.items())
        raise InputError(f"the inputs hold different numbers of rows ({shown})",
                         fix="send the same number of samples for every input")
    return feeds


def array_dtype(spec: TensorSpec) -> np.dtype[Any]:
    """The dtype the parser hands on for a tensor input: float32 for a float input and for an
    integer one that carries a quantization (real values; the runtime quantizes them), else the
    input's own dtype."""
    if spec.dtype.startswith("float") or (spec.quantization is not None and spec.dtype in ("int8", "uint8")):
        return np.dtype(np.float32)
    return np.dtype(spec.dtype)


def _tensor(value: Any, spec: TensorSpec, max_rows: int) -> np.ndarray:
    """One input's value (nested lists or an array) as a checked array of its shape and dtype."""
    target = array_dtype(spec)
    name = spec.name
    array = _from_array(value, spec, target) if isinstance(value, np.ndarray) else _from_nested(value, spec, target)
    if array.ndim == len(spec.shape) - 1 and _fits(array.shape, spec.shape[1:]):
        array = array[None, ...]  # one sample: a batch of one
    if array.ndim != len(spec.shape) or not _fits(array.shape, spec.shape):
        raise InputError(f"input {name!r} has shape {list(array.shape)} but the model takes {shape_text(spec.shape)}",
                         fix=f"send {name} as an array of shape {shape_text(spec.shape)} (n samples)", field=name)
    _check_rows_count(array.shape[0], max_rows)
    if target.kind == "f":
        bad = _not_accepted(array, spec)
        if bad is not None:
            index, what = bad
            raise InputError(f"input {name!r} at {list(index)} is {what}, which this model does not accept",
                             fix="send finite numbers", field=name)
    return array


def _fits(shape: Sequence[int], wanted: Sequence[int]) -> bool:
    return len(shape) == len(wanted) and all(w == -1 or s == w for s, w in zip(shape, wanted, strict=True))


def _takes(spec: TensorSpec, target: np.dtype[Any]) -> str:
    if target.kind == "f":
        return "numbers"
    if target.kind == "b":
        return "booleans"
    info = np.iinfo(target)
    return f"integers from {info.min} to {info.max} ({spec.dtype})"


def _from_array(array: np.ndarray, spec: TensorSpec, target: np.dtype[Any]) -> np.ndarray:
    """A binary body's array in the dtype the input takes: numbers widen or narrow to a float
    input; an integer or bool input takes only integers (in range) or booleans."""
    name = spec.name
    kind = array.dtype.kind
    refused = (kind not in "fiu") if target.kind == "f" else (kind != "b") if target.kind == "b" else (kind not in "iu")
    if refused:
        raise InputError(f"input {name!r} was sent as {array.dtype} values; it takes {_takes(spec, target)}",
                         fix=f"send {name} as {target.name if target.kind != 'f' else 'float32'} values", field=name)
    if target.kind in "iu" and array.size:
        _check_range(int(array.min()), int(array.max()), spec, target)
    with np.errstate(over="ignore"):  # beyond float32's range becomes infinity, refused by the caller
        return np.ascontiguousarray(array, dtype=target)


def _check_range(low: int, high: int, spec: TensorSpec, target: np.dtype[Any]) -> None:
    info = np.iinfo(target)
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise InputError(f"input {spec.name!r} holds {bad}, outside {spec.dtype}'s range {info.min} to {info.max}",
                         fix=f"send {spec.name} as {_takes(spec, target)}", field=spec.name)


_FLOAT_TYPES = frozenset({int, float})
_FLOAT_OR_NULL = frozenset({int, float, type(None)})


def _from_nested(value: Any, spec: TensorSpec, target: np.dtype[Any]) -> np.ndarray:
    """JSON nested lists as an array in the input's dtype. Types are checked with one pass over
    the values (``set(map(type, ...))``): a bool among numbers, a string, or a list where a number
    belongs (rows of different lengths) is refused, never coerced."""
    name = spec.name
    if not isinstance(value, list):
        raise InputError(f"input {name!r} is a JSON {type(value).__name__}, not an array",
                         fix=f"send {name} as nested lists of shape {shape_text(spec.shape)}", field=name)
    try:
        cells = np.array(value, dtype=object)
    except ValueError as exc:  # numpy refuses some ragged nestings outright
        raise InputError(f"input {name!r} is ragged: its lists differ in length ({exc})",
                         fix=f"send {name} as nested lists of shape {shape_text(spec.shape)}", field=name) from None
    flat = cells.reshape(-1).tolist()
    types = set(map(type, flat))
    allowed = (_FLOAT_OR_NULL if spec.allow_nan else _FLOAT_TYPES) if target.kind == "f" else \
        frozenset({bool}) if target.kind == "b" else frozenset({int})
    if not types <= allowed:
        at = next(i for i, v in enumerate(flat) if type(v) not in allowed)  # by type: True == 1
        odd = flat[at]
        index = [int(i) for i in np.unravel_index(at, cells.shape)]
        what = "a list where a number belongs (are its lists of different lengths?)" if type(odd) is list else _shown(odd)
        raise InputError(f"input {name!r} at {index} is {what}; it takes {_takes(spec, target)}",
                         fix=f"send {name} as nested lists of {_takes(spec, target)}, shape {shape_text(spec.shape)}",
                         field=name)
    if target.kind == "b":
        return cells.astype(np.bool_)
    try:
        if target.kind == "f":
            if type(None) in types:
                cells[np.fromiter((v is None for v in flat), np.bool_, len(flat)).reshape(cells.shape)] = math.nan
            with np.errstate(over="ignore"):
                return cells.astype(np.float64).astype(np.float32)
        wide = cells.astype(np.int64)
    except OverflowError:  # an integer beyond int64 (or float64)
        raise InputError(f"input {name!r} holds a number too large for {spec.dtype}", fix="send smaller values",
                         field=name) from None
    if wide.size:
        _check_range(int(wide.min()), int(wide.max()), spec, target)
    return wide.astype(target)


# -- binary bodies ----------------------------------------------------------------------------------

def _read_body(body: Body, inputs: Sequence[TensorSpec]) -> Any:
    """A ``Body`` as what ``to_feeds`` takes: decoded JSON, one array, or arrays by name."""
    media = body.media_type
    if is_json(media):
        import json

        try:
            return json.loads(body.data)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the stack
            raise InputError(f"request body is not valid JSON ({exc})",
                             fix="send JSON with Content-Type: application/json") from exc
    if media == NPY:
        return read_npy(body.data, "the .npy body")
    if media == NPZ:
        return read_npz(body.data, "the .npz body")
    if media == RAW:
        return read_raw(body.data, body.shape, body.dtype)
    if media == FORM:  # what `curl -d` sends unless told otherwise
        raise InputError("a form-encoded body (application/x-www-form-urlencoded, curl -d's default) is not read here",
                         fix="send JSON with Content-Type: application/json (curl: add -H 'Content-Type: application/json')",
                         status=415)
    raise InputError(f"request bodies of type {media[:60]!r} are not read here",
                     fix=f"send one of {', '.join(_media_for(inputs))}", status=415)


def _media_for(inputs: Sequence[TensorSpec]) -> tuple[str, ...]:
    return MEDIA_TYPES if any(spec.kind == "image" for spec in inputs) else TENSOR_MEDIA_TYPES


def npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """An .npy stream's (shape, Fortran order, dtype), the stream left at the first value; a
    ValueError names what is wrong with the header. Only plain numbers pass (no pickled objects,
    no structured or empty dtypes, no negative dimensions); the caller checks the claimed size
    against what it has, before anything is allocated."""
    from numpy.lib import format as npy_format

    version = npy_format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
    else:  # 3.0 differs only for structured dtypes with non-Latin-1 names, never plain numbers
        raise ValueError(f"format version {version[0]}.{version[1]} is not supported")
    if dtype.hasobject or dtype.fields is not None:
        raise ValueError(f"its dtype {dtype} is not plain numbers")
    if dtype.itemsize == 0:
        raise ValueError(f"its dtype {dtype} has no size")
    if any(n < 0 for n in shape):
        raise ValueError(f"its header has a negative shape {shape}")
    return tuple(shape), bool(fortran), dtype


def read_npy(data: bytes, where: str) -> np.ndarray:
    """The array of an .npy file's bytes, read only once its header's claims are checked:
    ``np.load`` allocates whatever shape a header claims, so a forged header could ask for
    terabytes; here the claimed size must be exactly the bytes that follow the header."""
    stream = io.BytesIO(data)
    try:
        shape, fortran, dtype = npy_header(stream)
        offset = stream.tell()
        claimed = math.prod(shape) * dtype.itemsize  # Python ints: no overflow, whatever the claim
        if claimed != len(data) - offset:
            raise ValueError(f"its header claims shape {list(shape)} of {dtype}, {claimed} bytes, "
                             f"but {len(data) - offset} bytes follow it")
    except (ValueError, TypeError, EOFError) as exc:  # numpy reports a malformed header as these
        raise InputError(f"{where} is not a readable .npy array: {exc}",
                         fix="save the array with numpy.save (no pickled objects)") from None
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
    return array.reshape(shape, order="F" if fortran else "C")


def read_npz(data: bytes, where: str, *, max_bytes: int = MAX_NPZ_BYTES) -> dict[str, np.ndarray]:
    """The arrays of an .npz archive's bytes by name (``numpy.savez``: member ``NAME.npy``), each
    read by ``read_npy``; the members' declared sizes are checked against ``max_bytes`` first."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise InputError(f"{where} is not a readable .npz archive: {exc}",
                         fix="save the arrays with numpy.savez(path, name=array, ...)") from None
    if not members:
        raise InputError(f"{where} holds no arrays", fix="save one array per input name with numpy.savez")
    total = sum(m.file_size for m in members)
    if total > max_bytes:
        raise InputError(f"{where} unpacks to {total} bytes, over the limit of {max_bytes}",
                         fix="send fewer samples per request", status=413)
    arrays: dict[str, np.ndarray] = {}
    for member in members:
        name = member.filename[:-4] if member.filename.endswith(".npy") else member.filename
        try:
            raw = archive.read(member)
        except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise InputError(f"{where}: member {member.filename[:60]!r} cannot be read: {exc}",
                             fix="save the arrays with numpy.savez or numpy.savez_compressed") from None
        if len(raw) != member.file_size:
            raise InputError(f"{where}: member {member.filename[:60]!r} is not the size its entry declares",
                             fix="save the arrays with numpy.savez")
        arrays[name] = read_npy(raw, f"{where}: member {member.filename[:60]!r}")
    return arrays


def read_raw(data: bytes, shape: str | None, dtype: str | None) -> np.ndarray:
    """Raw little-endian values in C order, described by the ``X-Edgefleet-Shape`` (comma-separated
    dimensions, e.g. ``2,3,32,32``) and ``X-Edgefleet-Dtype`` (e.g. ``float32``) headers."""
    fix = ("send X-Edgefleet-Shape: d0,d1,... and X-Edgefleet-Dtype: one of "
           f"{', '.join(RAW_DTYPES)} with the raw little-endian bytes (C order)")
    if shape is None or dtype is None:
        raise InputError("a raw tensor body needs X-Edgefleet-Shape and X-Edgefleet-Dtype headers", fix=fix)
    if dtype.strip().lower() not in RAW_DTYPES:
        raise InputError(f"X-Edgefleet-Dtype {dtype[:24]!r} is not one of {', '.join(RAW_DTYPES)}", fix=fix)
    parts = [p.strip() for p in shape.split(",")]
    if not parts or len(parts) > 8 or not all(p.isascii() and p.isdigit() and len(p) <= 9 for p in parts):
        raise InputError(f"X-Edgefleet-Shape {shape[:40]!r} is not a list of dimensions like 2,3,32,32", fix=fix)
    dims = [int(p) for p in parts]
    kind = np.dtype(dtype.strip().lower()).newbyteorder("<")
    claimed = math.prod(dims) * kind.itemsize
    if claimed != len(data):
        raise InputError(f"X-Edgefleet-Shape {dims} of {kind.name} needs {claimed} bytes, the body has {len(data)}",
                         fix=fix)
    return np.frombuffer(data, dtype=kind).reshape(dims)


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


# -- images -----------------------------------------------------------------------------------------

MAX_PARTS = 1_024
"""Parts a multipart body may hold (besides the rows limit): each is parsed and may be decoded."""
_MULTIPART_FIX = ("send multipart/form-data with one part per image, named after the image input, and one part per "
                  "other input (JSON nested lists or .npy), e.g. curl -F image=@a.png -F 'metadata=[[0.1, ...]]'")


@dataclass(frozen=True)
class Part:
    """One part of a multipart/form-data body: its form name, media type and bytes."""

    name: str
    media_type: str
    data: bytes
    filename: str | None = None


def image_feeds(images: Mapping[str, Sequence[bytes]], inputs: Sequence[TensorSpec],
                others: Mapping[str, Any] | None = None, *, max_rows: int = DEFAULT_MAX_ROWS) -> Feeds:
    """Feeds from PNG/JPEG images by image input name (each run through ``edgefleet.images``) and,
    for a model with other inputs, their values by name (nested lists or arrays, as in
    ``{"inputs": {...}}``). Batch mode and the multipart parser both end here."""
    specs = {spec.name: spec for spec in inputs}
    values: dict[str, Any] = dict(others or {})
    for name, sent in images.items():
        spec = specs.get(name)
        if spec is None or spec.kind != "image" or spec.image is None:
            takes = _image_inputs(inputs)
            raise InputError(f"input {name!r} was sent as images, but "
                             + (f"it is not one of this model's inputs ({_inputs_hint(inputs)})" if spec is None
                                else f"it is a {spec.kind} {shape_text(spec.shape)}, not an image input"),
                             fix=(f"send images for {', '.join(map(repr, takes))}" if takes
                                  else "send tensors; this model was converted without an image input "
                                       "(edgefleet convert --image INPUT declares one)"),
                             status=415 if not takes else 400, field=name)
        _check_rows_count(len(sent), max_rows)
        where = f"the image for {name!r}"
        batch = np.stack([pixels(data, spec.image, where=f"{where} {i}" if len(sent) > 1 else where, field=name)
                          for i, data in enumerate(sent)])
        values[name] = normalize(batch, spec.image, array_dtype(spec))
    return _tensors({"inputs": values}, inputs, max_rows)


def _image_inputs(inputs: Sequence[TensorSpec]) -> list[str]:
    return [spec.name for spec in inputs if spec.kind == "image"]


def _image_body(body: Body, inputs: Sequence[TensorSpec], max_rows: int) -> Feeds:
    """An image/png or image/jpeg body (a model with one input, an image), or a multipart body."""
    takes = _image_inputs(inputs)
    if not takes:
        raise InputError(f"this model takes no image input ({_inputs_hint(inputs)}), so a {body.media_type} body "
                         "cannot feed it", fix=f"send one of {', '.join(TENSOR_MEDIA_TYPES)}; an image input is "
                         "declared when the model is converted (edgefleet convert --image INPUT)", status=415)
    if body.media_type != MULTIPART:
        if len(inputs) != 1:
            raise InputError(f"this model takes {len(inputs)} inputs ({_inputs_hint(inputs)}); one image body feeds "
                             "one of them", fix=_MULTIPART_FIX)
        return image_feeds({takes[0]: [body.data]}, inputs, max_rows=max_rows)
    parts = read_multipart(body.data, body.params.get("boundary"), max_parts=min(MAX_PARTS, max_rows + len(inputs)))
    names = {spec.name for spec in inputs}
    images: dict[str, list[bytes]] = {}
    others: dict[str, Any] = {}
    for i, part in enumerate(parts):
        name = part.name
        is_image = is_image_media(part.media_type) or sniff(part.data) is not None
        if name not in names and is_image and len(takes) == 1:
            name = takes[0]  # a model with one image input takes images under any part name (curl -F file=@a.png)
        if name not in names:
            raise InputError(f"multipart part {i} is named {part.name[:40]!r}, which is not one of this model's inputs "
                             f"({_inputs_hint(inputs)})", fix=_MULTIPART_FIX, field=part.name[:40])
        if name in takes:
            images.setdefault(name, []).append(part.data)
        elif name in others:
            raise InputError(f"input {name!r} was sent in two parts; an input that is not an image is sent once",
                             fix="send its samples as one array (nested lists or .npy)", field=name)
        else:
            others[name] = _part_value(part, name)
    if not images and not others:
        raise InputError("the multipart body holds no parts", fix=_MULTIPART_FIX)
    return image_feeds(images, inputs, others, max_rows=max_rows)


def _part_value(part: Part, name: str) -> Any:
    """A part feeding a tensor input: .npy bytes, or JSON nested lists (any other media type)."""
    if part.media_type == NPY or part.data.startswith(b"\x93NUMPY"):
        return read_npy(part.data, f"part {name!r}")
    import json

    try:
        return json.loads(part.data)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"part {name!r} is neither .npy nor JSON ({exc})",
                         fix=f"send {name} as JSON nested lists or as .npy (Content-Type: {NPY})", field=name) from None


def read_multipart(data: bytes, boundary: str | None, *, max_parts: int = MAX_PARTS) -> list[Part]:
    """The parts of a multipart/form-data body (RFC 7578): split on CRLF ``--boundary`` exactly,
    each part's headers read for its form name (Content-Disposition) and media type. A body
    without a boundary, a part without a name, or a missing closing delimiter is refused (400);
    more than ``max_parts`` parts is a 413, judged before any part is decoded."""
    if not boundary or len(boundary) > 70:
        raise InputError("a multipart body needs a boundary parameter in its Content-Type (at most 70 characters)",
                         fix=_MULTIPART_FIX)
    delimiter = b"\r\n--" + boundary.encode("latin-1", "replace")
    sections = (b"\r\n" + data).split(delimiter)
    # sections[0] is the preamble; the last one starts with "--" (the closing delimiter).
    if len(sections) < 2 or not sections[-1].startswith(b"--"):
        raise InputError("the multipart body is cut short: its closing boundary is missing", fix=_MULTIPART_FIX)
    if len(sections) - 2 > max_parts:
        raise InputError(f"the multipart body holds {len(sections) - 2} parts, over the limit of {max_parts}",
                         fix="send fewer images per request", status=413)
    parts = []
    for i, section in enumerate(sections[1:-1]):
        head, sep, content = section.partition(b"\r\n\r\n")
        if not sep or (head and not head.startswith(b"\r\n")):
            raise InputError(f"multipart part {i} has no blank line after its headers", fix=_MULTIPART_FIX)
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            key, colon, value = line.partition(":")
            if colon:
                headers[key.strip().lower()] = value.strip()
        name = _disposition(headers.get("content-disposition", ""), "name")
        if name is None:
            raise InputError(f"multipart part {i} has no name (Content-Disposition: form-data; name=...)",
                             fix=_MULTIPART_FIX)
        media = headers.get("content-type", "application/octet-stream").partition(";")[0].strip().lower()
        parts.append(Part(name, media, content, _disposition(headers.get("content-disposition", ""), "filename")))
    return parts


def _disposition(value: str, key: str) -> str | None:
    """A parameter of a Content-Disposition header (quoted or not)."""
    for item in value.split(";")[1:]:
        k, eq, v = item.strip().partition("=")
        if eq and k.strip().lower() == key:
            v = v.strip()
            return v[1:-1] if len(v) >= 2 and v[0] == v[-1] == '"' else v
    return None
