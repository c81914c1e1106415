"""Server-side inference for the hybrid path: the registry's bundles run with ONNX Runtime.

Devices without a model, or an operator comparing edge and cloud answers, send the same
inputs the agent's local API takes (docs/contracts.md, "Predict input") to
``POST /api/v1/models/{name}/predict`` and get the same answer shape back; a CSV or NPY file
upload gets a CSV back. The server runs the very bundle the devices download (its TUF target),
on the CPU execution provider, and keeps the last few sessions loaded (an LRU).

Input is parsed by the agent's own parser, ``edgefleet.inputs`` (in the core package, which
both sides may import), so the server accepts and refuses exactly what the agent does:
``parse_feeds`` takes a request body for any model (records by column name for a model with
named column inputs), ``parse_inputs`` a body or an array for a one-tensor model; both turn the
parser's refusals into ``PredictInputError``; a binary body (.npy, .npz, raw little-endian with
``X-Edgefleet-Shape``/``X-Edgefleet-Dtype``) comes as an ``edgefleet.inputs.Body``, read by the
same parser. ``read_table`` reads uploads
into what that parser takes, streaming, with each limit applied before the work it guards (an
.npy header's claimed size; CSV rows, values and line length counted as they are read), so a
hostile upload costs a few MB before it is refused (issue 14). ``read_feeds`` reads an upload
for any model: ``read_table`` for a one-tensor model; for a model with named columns, CSV with
a header naming them (the stdlib ``csv`` module, cells by ``edgefleet.cells.column_value`` as the
agent's batch reader does, under the same limits, text counted by its bytes) or Parquet when
pyarrow is installed (its row count and uncompressed size checked from the footer before a
value is read); for a model with tensor inputs, .npy (one input) or .npz (one array per input
name), read whole under ``max_bytes``. ``read_images`` reads an upload of images for a model whose
one input is an image (``is_image_upload``: a zipped folder, or one PNG/JPEG), through the
shared parser's ``image_feeds``. The server extra has no pandas, and needs none for this.

Only ONNX bundles are served (TFLite bundles are built for devices); this module knows nothing
of HTTP (the routes are in ``fleet_server.telemetry.api``).

    ServerError (fleet_server.errors)
    └── InvalidInputError
        └── PredictInputError     the request's inputs do not fit the model (HTTP 422, 413 for too many rows)
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from edgefleet.cells import column_value, is_number
from edgefleet.errors import InputError
from edgefleet.images import SUFFIXES as IMAGE_SUFFIXES
from edgefleet.inputs import (
    DEFAULT_MAX_ROWS,
    NPY,
    NPZ,
    Body,
    Feeds,
    expected_width,
    image_feeds,
    is_matrix,
    npy_header,
    shape_text,
    to_feeds,
    to_matrix,
)
from edgefleet.manifest import Manifest, TensorSpec
from edgefleet.onnx_options import exact_int8
from fleet_server.errors import InvalidInputError, ServerError
from fleet_server.registry.bundle_cache import BundleCache
from fleet_server.registry.served import default_version, served_counts

DEFAULT_MAX_SESSIONS = 4
DEFAULT_MAX_TABLE_BYTES = 32 << 20
"""An upload's values may take at most this much memory (8M float32 or 4M float64 values),
checked before they are read: with the conversion to float32 the parser does, a refused upload
costs the server well under 64 MB."""
MAX_CSV_LINE_BYTES = 1 << 20
_NPY_MAGIC = b"\x93NUMPY"
_NPY_FIX = "save a 2-D numeric array: np.save(path, rows.astype('float32'))"
_SPLIT_FIX = "split it into smaller files (on a device, `edgefleet agent predict` takes files of any length)"


class PredictInputError(InvalidInputError):
    """The inputs of a predict request do not fit the model."""

    def __init__(self, message: str, *, fix: str | None = None, status: int = 422) -> None:
        super().__init__(message, fix=fix)
        self.status_code = status


# ---- inputs (pure) ------------------------------------------------------------------------------

def parse_inputs(payload: Any, spec: TensorSpec, *, max_rows: int = DEFAULT_MAX_ROWS,
                 source: str | None = None) -> np.ndarray:
    """A decoded JSON body (or an array) as checked float32 rows: ``edgefleet.inputs.to_matrix``.

    Its refusals become ``PredictInputError`` with the same message and fix: 413 where it says
    413 (too many rows), else 422 like every other request this server finds unacceptable (the
    agent answers the same refusals with 400). ``source``, an upload's file name, leads the message.
    """
    try:
        return to_matrix(payload, spec, max_rows=max_rows)
    except InputError as exc:
        raise _refused(exc, source) from exc


def parse_feeds(payload: Any, inputs: Sequence[TensorSpec], *, max_rows: int = DEFAULT_MAX_ROWS) -> Feeds:
    """A decoded JSON body as one checked array per model input: ``edgefleet.inputs.to_feeds``,
    refusals as in ``parse_inputs``. For a one-tensor model it is ``{name: parse_inputs(...)}``."""
    try:
        return to_feeds(payload, inputs, max_rows=max_rows)
    except InputError as exc:
        raise _refused(exc, None) from exc


def _refused(exc: InputError, source: str | None) -> PredictInputError:
    message = f"{source}: {exc.message}" if source else exc.message
    return PredictInputError(message, fix=exc.fix, status=exc.status if exc.status in (413, 415) else 422)


def read_table(source: bytes | BinaryIO, filename: str, spec: TensorSpec, *, max_rows: int = DEFAULT_MAX_ROWS,
               max_bytes: int = DEFAULT_MAX_TABLE_BYTES) -> np.ndarray:
    """An uploaded ``.npy`` (2-D numeric) or CSV (a header naming the features, or bare numbers) as rows.

    ``source`` is the upload's bytes or a seekable binary file (the route passes the spooled
    upload itself, so the file is never read whole). Every limit is applied before the work it
    guards: an .npy header's claimed size against the bytes sent and against ``max_bytes``, and
    CSV is parsed a line at a time with ``max_rows`` (and ``max_bytes`` of float32 values, and
    ``MAX_CSV_LINE_BYTES`` a line) counted as it goes, so a file over a limit is refused after
    reading no more than the limit.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    start = stream.tell()
    magic = stream.read(len(_NPY_MAGIC))
    stream.seek(start)
    if filename.lower().endswith(".npy") or magic == _NPY_MAGIC:
        array = _npy_array(stream, filename, spec, max_rows=max_rows, max_bytes=max_bytes)
    else:
        array = _csv_array(stream, filename, spec, max_rows=max_rows, max_bytes=max_bytes)
    return parse_inputs(array, spec, max_rows=max_rows, source=filename)


def _npy_array(stream: BinaryIO, filename: str, spec: TensorSpec, *, max_rows: int, max_bytes: int) -> np.ndarray:
    """The array of an uploaded .npy, read only once its header's claims are checked: ``np.load``
    allocates whatever shape the header claims before reading, so a forged 330-byte upload could
    ask for terabytes; here the claimed size must match the bytes actually sent and fit ``max_bytes``."""
    try:
        shape, fortran, dtype = npy_header(stream)
        offset = stream.tell()
        sent = stream.seek(0, io.SEEK_END) - offset
        stream.seek(offset)
        claimed = math.prod(shape) * dtype.itemsize  # Python ints: no overflow, however large the claim
        if claimed > sent:
            raise ValueError(f"its header claims shape {shape} of {dtype}, {claimed} bytes, but {sent} bytes follow it")
    except (ValueError, TypeError) as exc:  # numpy reports a malformed header as these
        raise PredictInputError(f"{filename} is not a readable .npy file: {exc}", fix=_NPY_FIX) from exc
    rows = shape[0] if len(shape) > 1 else 1
    if rows > max_rows:
        # A zero-width array of the claimed rows costs nothing and lets the shared parser refuse
        # it (413) in its own words, as it would the full array, before a value is read.
        parse_inputs(np.empty((rows, 0), dtype=dtype), spec, max_rows=max_rows, source=filename)
    if claimed > max_bytes:
        raise PredictInputError(f"{filename}: its header claims {claimed} bytes of values (shape {shape}, {dtype}), "
                                f"over the limit of {max_bytes} bytes an upload", fix=_SPLIT_FIX, status=413)
    array = np.frombuffer(stream.read(claimed), dtype=dtype, count=math.prod(shape))
    return array.reshape(shape, order="F" if fortran else "C")


def _csv_lines(stream: BinaryIO, filename: str) -> Iterator[str]:
    """The upload's lines, decoded one at a time; a line over ``MAX_CSV_LINE_BYTES`` is refused
    before it is decoded or split (one long line of ``1,1,1,...`` would be millions of cells)."""
    number = 0
    while line := stream.readline(MAX_CSV_LINE_BYTES + 1):
        number += 1
        if len(line) > MAX_CSV_LINE_BYTES:
            raise PredictInputError(f"{filename}: line {number} is longer than {MAX_CSV_LINE_BYTES} bytes",
                                    fix=f"upload one row of numbers a line, or a .npy file; {_SPLIT_FIX}", status=413)
        try:
            yield line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise PredictInputError(f"{filename} is not UTF-8 CSV: {exc}", fix="upload a CSV or .npy file") from exc


def _csv_array(stream: BinaryIO, filename: str, spec: TensorSpec, *, max_rows: int, max_bytes: int) -> np.ndarray:
    """CSV rows as a float32 matrix in the model's feature order, refused as soon as a limit is passed."""
    rows = (line for line in csv.reader(_csv_lines(stream, filename)) if line)  # a blank line is no row
    try:
        first = next(rows, None)
        if first is None:
            raise PredictInputError(f"{filename} is empty", fix="upload one row of features a line")
        header: list[str] | None = None
        columns: list[int] | None = None
        if any(cell.strip() and not is_number(cell) for cell in first):  # empty: a missing value, not a name
            header = first
            if not spec.feature_names:
                raise PredictInputError(f"{filename} has a header but this model's input has no feature names",
                                        fix="upload the numbers without a header, in the model's column order")
            # Columns the model does not take (ids, a label) are skipped, as `edgefleet agent
            # predict` skips them. The shared parser judges the names the model does take once, as
            # it would a first instance (a missing one is named there); the rows then go by
            # column number rather than as a dict each.
            known = set(spec.feature_names)
            parse_inputs({"instances": [dict.fromkeys((n for n in header if n in known), 0.0)]}, spec, source=filename)
            position = {name: j for j, name in enumerate(header)}  # a repeated name: the last one wins
            columns = [position[name] for name in spec.feature_names]
        width = len(header if header is not None else first)
        kept: list[np.ndarray] = []
        values = 0
        for i, line in enumerate(itertools.chain(() if header is not None else (first,), rows)):
            if i == max_rows:
                raise PredictInputError(f"{filename} holds more than {max_rows} rows, over the limit of {max_rows} "
                                        "rows a request", fix=_SPLIT_FIX, status=413)
            if len(line) != width:
                raise PredictInputError(
                    f"{filename}: data row {i + 1} has {len(line)} cells, the header names {width}" if header is not None
                    else f"{filename}: inputs[{i}] has {len(line)} values but inputs[0] has {width}",
                    fix="give every row one cell per header column" if header is not None
                    else "make every row the same length")
            used = range(len(line)) if columns is None else columns
            numbers = [_csv_number(line[j], filename, i, j) for j in used]
            values += len(numbers)
            if values * 4 > max_bytes:
                raise PredictInputError(f"{filename} holds more than {max_bytes // 4} values, over the limit of "
                                        f"{max_bytes} bytes an upload", fix=_SPLIT_FIX, status=413)
            # float32 now, as the parser would make it (beyond its range: infinity, refused there).
            with np.errstate(over="ignore"):
                kept.append(np.array(numbers, dtype=np.float32))
    except csv.Error as exc:
        raise PredictInputError(f"{filename} is not a readable CSV file: {exc}", fix="upload a CSV or .npy file") from exc
    return np.stack(kept) if kept else np.empty((0, len(columns) if columns is not None else width), dtype=np.float32)


def _csv_number(cell: str, filename: str, row: int, column: int) -> float:
    # An empty cell is a missing value: NaN, which the parser takes only where the spec allows NaN.
    if not cell.strip():
        return math.nan
    try:
        return float(cell)
    except ValueError:
        raise PredictInputError(f"{filename}: data row {row + 1}, column {column + 1} is {cell[:40]!r}, not a number",
                                fix="every cell after the header must be a number") from None


def read_feeds(source: bytes | BinaryIO, filename: str, inputs: Sequence[TensorSpec], *,
               max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_TABLE_BYTES) -> Feeds:
    """An uploaded file as one checked array per model input (see the module docstring).

    A one-tensor model: ``{name: read_table(...)}``. Named columns: CSV with a header, or
    Parquet (``.parquet`` or its ``PAR1`` magic); the rows become records for the shared parser,
    so its refusals (and ``instances[i]``, the i-th data row) are the ones a JSON body gets.
    """
    if is_matrix(inputs):
        return {inputs[0].name: read_table(source, filename, inputs[0], max_rows=max_rows, max_bytes=max_bytes)}
    if inputs and all(spec.kind != "column" for spec in inputs):
        return _tensor_upload(source, filename, inputs, max_rows=max_rows, max_bytes=max_bytes)
    if not inputs or not all(spec.kind == "column" for spec in inputs):
        shown = ", ".join(f"{spec.name!r} ({spec.kind}, shape {list(spec.shape)})" for spec in inputs[:4])
        raise PredictInputError(f"this model takes inputs {shown}, which batch uploads cannot feed yet",
                                fix="upload files for models with one [batch, features] tensor or with named columns")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    start = stream.tell()
    magic = stream.read(len(_PARQUET_MAGIC))
    stream.seek(start)
    if filename.lower().endswith(".parquet") or magic == _PARQUET_MAGIC:
        records = _parquet_records(stream, filename, inputs, max_rows=max_rows, max_bytes=max_bytes)
    else:
        records = _csv_records(stream, filename, inputs, max_rows=max_rows, max_bytes=max_bytes)
    try:
        return to_feeds({"instances": records}, inputs, max_rows=max_rows)
    except InputError as exc:
        raise _refused(exc, filename) from exc


def _tensor_upload(source: bytes | BinaryIO, filename: str, inputs: Sequence[TensorSpec], *, max_rows: int,
                   max_bytes: int) -> Feeds:
    """An uploaded .npy (one input) or .npz (one array per input name) for a model with tensor
    inputs, read whole only when it fits ``max_bytes``, then checked by the shared parser (whose
    readers check .npy headers and .npz member sizes before allocating)."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PredictInputError(f"{filename} is over the limit of {max_bytes} bytes an upload", fix=_SPLIT_FIX,
                                status=413)
    media = NPZ if filename.lower().endswith(".npz") or data[:4] == b"PK\x03\x04" else NPY
    if media == NPY and not data.startswith(_NPY_MAGIC):
        shown = ", ".join(f"{spec.name} {shape_text(spec.shape)}" for spec in inputs[:4])
        raise PredictInputError(f"{filename}: this model takes tensors ({shown}), which only an .npy or .npz upload "
                                "can feed", fix="upload an .npz file with one array per input name (numpy.savez), "
                                "or an .npy file for a model with one input")
    try:
        return to_feeds(Body(data, media), inputs, max_rows=max_rows)
    except InputError as exc:
        raise _refused(exc, filename) from exc


IMAGE_UPLOAD_SUFFIXES = (".zip", *IMAGE_SUFFIXES)


def is_image_upload(filename: str, inputs: Sequence[TensorSpec]) -> bool:
    """Whether an upload is read as images: a model with an image input, and a .zip (a zipped folder)
    or a single .png/.jpg/.jpeg file."""
    return any(spec.kind == "image" for spec in inputs) and filename.lower().endswith(IMAGE_UPLOAD_SUFFIXES)


def read_images(source: bytes | BinaryIO, filename: str, inputs: Sequence[TensorSpec], *,
                max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_TABLE_BYTES) -> tuple[Feeds, list[str]]:
    """An uploaded folder of images (a .zip: every PNG/JPEG member, sorted by path, through the
    shared parser's ``image_feeds``, as `edgefleet agent predict FOLDER` reads one) or one image, for
    a model whose one input is an image; with the members' paths. The archive's member count and
    declared sizes are checked against ``max_rows`` and ``max_bytes`` before a member is inflated,
    and each member's inflated size against its declaration (a zip bomb costs nothing)."""
    images = [spec for spec in inputs if spec.kind == "image"]
    if len(inputs) != 1 or len(images) != 1:
        raise PredictInputError(f"{filename}: an upload of images feeds a model whose one input is an image; this "
                                f"model takes {', '.join(f'{s.name} {shape_text(s.shape)}' for s in inputs[:4])}",
                                fix="send each request to POST /models/NAME/predict as multipart/form-data, one "
                                    "part per image and per other input")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PredictInputError(f"{filename} is over the limit of {max_bytes} bytes an upload", fix=_SPLIT_FIX,
                                status=413)
    if filename.lower().endswith(".zip"):
        names, sent = _zipped_images(data, filename, max_rows=max_rows, max_bytes=max_bytes)
    else:
        names, sent = [filename], [data]
    try:
        return image_feeds({images[0].name: sent}, inputs, max_rows=max_rows), names
    except InputError as exc:
        found = re.search(r"image for '[^']*' (\d+)", exc.message)
        at = names[int(found.group(1))] if found is not None and int(found.group(1)) < len(names) else \
            names[0] if len(names) == 1 else None
        raise _refused(exc, f"{filename}: {at}" if at and at != filename else filename) from exc


def _zipped_images(data: bytes, filename: str, *, max_rows: int, max_bytes: int) -> tuple[list[str], list[bytes]]:
    fix = "zip a folder of .png, .jpg or .jpeg images (zip -r photos.zip photos/)"
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir() and m.filename.lower().endswith(IMAGE_SUFFIXES)
                   and not m.filename.startswith("__MACOSX/") and not m.filename.rsplit("/", 1)[-1].startswith("._")]
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise PredictInputError(f"{filename} is not a readable .zip archive: {exc}", fix=fix) from None
    if not members:
        raise PredictInputError(f"{filename} holds no PNG or JPEG images", fix=fix)
    if len(members) > max_rows:
        raise PredictInputError(f"{filename} holds {len(members)} images, over the limit of {max_rows} an upload",
                                fix=_SPLIT_FIX, status=413)
    if sum(m.file_size for m in members) > max_bytes:
        raise PredictInputError(f"{filename} unpacks to more than {max_bytes} bytes of images", fix=_SPLIT_FIX,
                                status=413)
    members.sort(key=lambda m: m.filename)
    sent = []
    for member in members:
        try:
            with archive.open(member) as handle:
                raw = handle.read(member.file_size + 1)
        except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
            raise PredictInputError(f"{filename}: member {member.filename[:80]!r} cannot be read: {exc}", fix=fix) from None
        if len(raw) != member.file_size:
            raise PredictInputError(f"{filename}: member {member.filename[:80]!r} is not the size its entry declares",
                                    fix=fix)
        sent.append(raw)
    return [m.filename for m in members], sent


_PARQUET_MAGIC = b"PAR1"
_VALUE_BYTES = 8  # what a number or a cell's bookkeeping counts against max_bytes, beside a string's own bytes


def _columns_hint(inputs: Sequence[TensorSpec]) -> str:
    names = [spec.name for spec in inputs]
    return ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")


def _csv_records(stream: BinaryIO, filename: str, inputs: Sequence[TensorSpec], *, max_rows: int,
                 max_bytes: int) -> list[dict[str, Any]]:
    """CSV rows of named columns as records, refused as soon as a limit is passed (as ``_csv_array``)."""
    rows = (line for line in csv.reader(_csv_lines(stream, filename)) if line)
    records: list[dict[str, Any]] = []
    try:
        header = next(rows, None)
        if header is None:
            raise PredictInputError(f"{filename} is empty", fix="upload a header row naming the columns, then one row a line")
        position = {name.strip(): j for j, name in enumerate(header)}
        missing = [spec.name for spec in inputs if spec.name not in position]
        if missing:
            raise PredictInputError(f"{filename}: the header lacks column(s) {', '.join(map(repr, missing[:5]))}, "
                                    "which the model takes by name",
                                    fix=f"start the file with a header row naming the columns: {_columns_hint(inputs)}")
        picked = [(spec, position[spec.name]) for spec in inputs]
        kept = 0
        for i, line in enumerate(rows):
            if i == max_rows:
                raise PredictInputError(f"{filename} holds more than {max_rows} rows, over the limit of {max_rows} "
                                        "rows a request", fix=_SPLIT_FIX, status=413)
            if len(line) != len(header):
                raise PredictInputError(f"{filename}: data row {i + 1} has {len(line)} cells, the header names "
                                        f"{len(header)}", fix="give every row one cell per header column")
            record: dict[str, Any] = {}
            for spec, j in picked:
                cell = line[j]
                kept += _VALUE_BYTES + (len(cell.encode()) if spec.dtype == "string" else 0)
                try:
                    record[spec.name] = column_value(cell, spec.dtype, allow_nan=spec.allow_nan)
                except ValueError as exc:
                    raise PredictInputError(f"{filename}: data row {i + 1}, column {spec.name!r} {exc}",
                                            fix=f"every row needs a value of {spec.dtype} in {spec.name}") from None
            if kept > max_bytes:
                raise PredictInputError(f"{filename} holds more than {max_bytes} bytes of values, over the limit of "
                                        f"{max_bytes} bytes an upload", fix=_SPLIT_FIX, status=413)
            records.append(record)
    except csv.Error as exc:
        raise PredictInputError(f"{filename} is not a readable CSV file: {exc}", fix="upload a CSV or Parquet file") from exc
    return records


def _parquet_records(stream: BinaryIO, filename: str, inputs: Sequence[TensorSpec], *, max_rows: int,
                     max_bytes: int) -> list[dict[str, Any]]:
    """Parquet rows of named columns as records; the footer's row count and uncompressed size are
    checked against the limits before any value is read."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise PredictInputError(f"{filename}: reading Parquet needs pyarrow, which this server does not have",
                                fix="upload the rows as CSV with a header, or install pyarrow on the server") from exc
    try:
        handle = pq.ParquetFile(stream)
        metadata = handle.metadata
        names = handle.schema_arrow.names
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/OSError family for a bad file
        raise PredictInputError(f"{filename} is not a readable Parquet file: {exc}",
                                fix="upload a Parquet file written by pandas or pyarrow, or CSV") from exc
    missing = [spec.name for spec in inputs if spec.name not in names]
    if missing:
        raise PredictInputError(f"{filename} lacks column(s) {', '.join(map(repr, missing[:5]))}, which the model "
                                "takes by name", fix=f"name the columns {_columns_hint(inputs)}")
    if metadata.num_rows > max_rows:
        raise PredictInputError(f"{filename} holds {metadata.num_rows} rows, over the limit of {max_rows} rows a "
                                "request", fix=_SPLIT_FIX, status=413)
    size = sum(metadata.row_group(g).total_byte_size for g in range(metadata.num_row_groups))
    if size > max_bytes:
        raise PredictInputError(f"{filename} holds {size} bytes of values uncompressed, over the limit of {max_bytes} "
                                "bytes an upload", fix=_SPLIT_FIX, status=413)
    columns = [spec.name for spec in inputs]
    try:
        table = handle.read(columns=columns)
    except Exception as exc:
        raise PredictInputError(f"{filename} is not a readable Parquet file: {exc}",
                                fix="upload a Parquet file written by pandas or pyarrow, or CSV") from exc
    values = [table.column(name).to_pylist() for name in columns]
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)]


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

    def to_csv(self, files: Sequence[str] | None = None) -> str:
        """The answer as CSV: prediction, then one column per class probability; ``files`` (an
        upload of images) leads each row with the image's path."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["file"] if files is not None else []
        header += ["prediction"]
        if self.probabilities is not None:
            header += [f"p_{label}" for label in (self.labels or range(len(self.probabilities[0])))]
        writer.writerow(header)
        for i, value in enumerate(self.predictions):
            writer.writerow([*([files[i]] if files is not None else []), value,
                             *(self.probabilities[i] if self.probabilities is not None else [])])
        return buffer.getvalue()


class _Loaded:
    def __init__(self, manifest: Manifest, model: bytes) -> None:
        import onnxruntime as ort

        self.manifest = manifest
        options = exact_int8(ort.SessionOptions())  # the products the converter's proof computed
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors on a bad graph
            raise ServerError(f"{manifest.ref} does not load in ONNX Runtime: {exc}",
                              fix="convert the model again with `edgefleet convert`") from exc


# A predict without ?version= reads the devices' reports at most this often per model.
SERVED_TTL_S = 5.0


class Predictor:
    """Loads bundles from the registry on demand and runs them; thread-safe (ORT sessions are)."""

    def __init__(self, bundles: BundleCache, *, max_sessions: int = DEFAULT_MAX_SESSIONS,
                 max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.bundles = bundles
        self.max_sessions = max_sessions
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._sessions: OrderedDict[tuple[str, str], _Loaded] = OrderedDict()
        self._served: dict[str, tuple[float, Mapping[str, int]]] = {}

    def resolve(self, name: str, version: str | None,
                fleet: Callable[[], Iterable[Mapping[str, Any] | None]] | None = None) -> str:
        """``version``, else what the fleet serves (``fleet_server.registry.served``; ``fleet`` gives the
        devices' reports, read at most every ``SERVED_TTL_S`` seconds per model)."""
        if version:
            return version
        served: Mapping[str, int] = {}
        if fleet is not None:
            now = time.monotonic()
            with self._lock:
                cached = self._served.get(name)
            if cached is None or now - cached[0] > SERVED_TTL_S:
                cached = (now, served_counts(fleet(), name))
                with self._lock:
                    self._served[name] = cached
            served = cached[1]
        return default_version(name, served=served, published=self.bundles.published(name))

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

    def predict(self, name: str, version: str, matrix: np.ndarray | Mapping[str, np.ndarray], *,
                request_id: str | None = None) -> Prediction:
        """Run checked rows: a matrix for a one-tensor model, or feeds by input name (``parse_feeds``)."""
        loaded = self._load(name, version)
        manifest = loaded.manifest
        if isinstance(matrix, Mapping):
            if len(manifest.inputs) == 1 and manifest.inputs[0].name in matrix:
                matrix = matrix[manifest.inputs[0].name]  # one tensor: the matrix path below
            else:
                return self._run_feeds(loaded, matrix, request_id)
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
                                    fix=f"send rows of {expected_width(spec) or 'the model’s'} numbers") from exc
        outputs = dict(zip(names, raw, strict=True))
        return self._shape(manifest, outputs, matrix.shape[0], request_id or uuid.uuid4().hex)

    def _run_feeds(self, loaded: _Loaded, feeds: Mapping[str, np.ndarray], request_id: str | None) -> Prediction:
        manifest = loaded.manifest
        # onnxruntime takes strings as object arrays of str, every other column in its own dtype.
        ready = {spec.name: np.asarray(feeds[spec.name], dtype=object) if spec.dtype == "string"
                 else np.ascontiguousarray(feeds[spec.name], dtype=np.dtype(spec.dtype)) for spec in manifest.inputs}
        names = [o.name for o in manifest.outputs]
        try:
            raw = loaded.session.run(names, ready)
        except Exception as exc:  # onnxruntime's errors carry no stable type
            raise PredictInputError(f"{manifest.ref} could not run on these inputs: {str(exc).splitlines()[0]}",
                                    fix="send every input the model lists") from exc
        rows = len(next(iter(ready.values())))
        return self._shape(manifest, dict(zip(names, raw, strict=True)), rows, request_id or uuid.uuid4().hex)

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
