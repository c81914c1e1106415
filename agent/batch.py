"""Batch prediction over files: ``edgefleet agent predict --model NAME --input F --output F``.

For a model with one ``[batch, features]`` tensor it reads CSV (a header row of feature names is
matched to the manifest's feature order and other columns, such as ids or labels, are skipped;
without a header, columns are taken in order), NPY (memory-mapped) or Parquet (needs pyarrow).
For a model with named column inputs (a DataFrame pipeline) it reads CSV with a header naming
the columns (strings stay strings; other columns are skipped) or Parquet (needs pyarrow, with
column types the model takes), never NPY, which has no column names. Both go in chunks through
a session, and the predictions stream out as CSV, NPY, Parquet or JSON Lines, chosen by the
output file's extension. Memory stays at one chunk whatever the file size. Every chunk goes
through ``edgefleet.inputs`` (the API's parser too) so a bad cell is reported with its row.

The agent's install stays small: CSV is read with the stdlib ``csv`` module (cells of named
columns by ``edgefleet.cells.column_value``, as the server reads uploads), never pandas; Parquet
needs pyarrow, and says so when it is missing. For a model with N-D or several tensor inputs it
reads NPY (one input, memory-mapped) or NPZ (one array per input name, as ``numpy.savez`` writes
them); a one-tensor model reads NPZ too.

For a model whose one input is an image (``kind: image``) the input may be a folder: every PNG
and JPEG under it, in sorted path order, decoded and preprocessed by the shared parser
(``edgefleet.inputs.image_feeds``: the API's own path), in chunks of at most 64 MB of tensors;
CSV, JSON Lines and Parquet outputs then lead with a ``file`` column (the path in the folder).

It needs no daemon: the CLI loads the active slot from the state directory itself. Outputs
are written to a temporary file and renamed at the end, so a failed run leaves no half file.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BatchInputError
from agent.runtime import ModelSession
from edgefleet import errors as core_errors
from edgefleet.cells import column_value, is_number
from edgefleet.console import Progress
from edgefleet.images import SUFFIXES as IMAGE_SUFFIXES
from edgefleet.inputs import Feeds, image_feeds, is_matrix, to_feeds, to_matrix
from edgefleet.manifest import Manifest, TensorSpec

DEFAULT_CHUNK_ROWS = 4096
INPUT_SUFFIXES = (".csv", ".npy", ".npz", ".parquet")
OUTPUT_SUFFIXES = (".csv", ".npy", ".parquet", ".jsonl")


@dataclass(frozen=True)
class BatchSummary:
    model: str
    version: str
    rows: int
    seconds: float
    output: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "rows": self.rows, "seconds": round(self.seconds, 3),
                "rows_per_s": round(self.rows / self.seconds, 1) if self.seconds > 0 else None, "output": self.output}


def _pyarrow(module: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BatchInputError(f"{purpose} needs pyarrow, which is not installed", fix="pip install pyarrow, or use CSV or NPY") from exc


def _suffix(path: Path, allowed: Sequence[str], what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise BatchInputError(f"{what} file {path} has an unsupported extension {suffix or '(none)'}",
                         fix=f"use one of: {', '.join(allowed)}")
    return suffix


# -- readers ----------------------------------------------------------------------------------------
def _csv_columns(header: list[str], spec: TensorSpec) -> list[int] | None:
    """Column order for the manifest's features, from a header row (None: no header)."""
    if all(is_number(cell) for cell in header):
        return None
    names = spec.feature_names
    if not names:
        return list(range(len(header)))  # a header, but nothing to match it against
    position = {name.strip(): i for i, name in enumerate(header)}
    missing = [n for n in names if n not in position]
    if missing:
        raise BatchInputError(f"the CSV header lacks feature(s) {', '.join(missing[:5])}",
                         fix=f"name the columns {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
    # Columns are picked by name, so extra ones (ids, labels) cannot shift the features: skip them.
    return [position[n] for n in names]


def _count_csv_rows(path: Path) -> int:
    # Blank lines are skipped when reading, so they are not counted; numeric CSV has no
    # quoted newlines, so lines are rows.
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def _read_csv(path: Path, spec: TensorSpec, chunk_rows: int) -> tuple[int, Iterator[np.ndarray]]:
    with open(path, newline="", encoding="utf-8") as handle:
        first = next(csv.reader(handle), None)
    if first is None:
        raise BatchInputError(f"{path} is empty", fix="give a CSV with one row per prediction")
    columns = _csv_columns(first, spec)
    total = _count_csv_rows(path) - (1 if columns is not None else 0)

    def chunks() -> Iterator[np.ndarray]:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            if columns is not None:
                next(reader)
            done = 0  # data rows already predicted
            block: list[list[str]] = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(first):
                    raise BatchInputError(f"CSV data row {done + len(block) + 1} has {len(row)} columns, the first row has "
                                     f"{len(first)}", fix="make every row the same width")
                block.append([row[i] for i in columns] if columns is not None else row)
                if len(block) == chunk_rows:
                    yield _parse_block(block, done, spec)
                    done += len(block)
                    block = []
            if block:
                yield _parse_block(block, done, spec)
    return total, chunks()


def _parse_block(block: list[list[str]], first_line: int, spec: TensorSpec) -> np.ndarray:
    try:
        matrix = np.array(block, dtype=np.float32)
    except ValueError:
        for i, row in enumerate(block):
            for j, cell in enumerate(row):
                if not is_number(cell) and not (cell == "" and spec.allow_nan):
                    raise BatchInputError(f"CSV data row {first_line + i + 1}, column {j + 1} is {cell!r}, not a number",
                                     fix="give every feature as a number") from None
        matrix = np.array([[c if c else "nan" for c in row] for row in block], dtype=np.float32)
    return _check_chunk(matrix, spec, first_line)


def _check_chunk(matrix: np.ndarray, spec: TensorSpec, first_row: int) -> np.ndarray:
    try:
        return to_matrix(matrix, spec, max_rows=len(matrix))
    except core_errors.InputError as exc:  # the shared parser raises the core class, not the agent's
        raise BatchInputError(f"rows {first_row + 1}-{first_row + len(matrix)}: {exc.message}", fix=exc.fix) from exc


def _read_npy(path: Path, spec: TensorSpec, chunk_rows: int) -> tuple[int, Iterator[np.ndarray]]:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim == 1:
        array = array.reshape(1, -1)

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, array.shape[0], chunk_rows):
            yield _check_chunk(np.asarray(array[start:start + chunk_rows]), spec, start)
    return int(array.shape[0]), chunks()


def _read_parquet(path: Path, spec: TensorSpec, chunk_rows: int) -> tuple[int, Iterator[np.ndarray]]:
    pq = _pyarrow("pyarrow.parquet", "reading Parquet files")
    handle = pq.ParquetFile(path)
    names = list(spec.feature_names) if spec.feature_names else None
    if names:
        missing = [n for n in names if n not in handle.schema_arrow.names]
        if missing:
            raise BatchInputError(f"{path} lacks column(s) {', '.join(missing[:5])}", fix="name the columns after the model's features")

    def chunks() -> Iterator[np.ndarray]:
        start = 0
        for batch in handle.iter_batches(batch_size=chunk_rows, columns=names):
            matrix = np.column_stack([col.to_numpy(zero_copy_only=False) for col in batch.columns]).astype(np.float32)
            yield _check_chunk(matrix, spec, start)
            start += len(matrix)
    return int(handle.metadata.num_rows), chunks()


_READERS: dict[str, Callable[[Path, TensorSpec, int], tuple[int, Iterator[np.ndarray]]]] = {
    ".csv": _read_csv, ".npy": _read_npy, ".parquet": _read_parquet}


# -- readers of named columns -----------------------------------------------------------------------
def _names_hint(specs: Sequence[TensorSpec]) -> str:
    names = [spec.name for spec in specs]
    return ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")


def _column_feeds(records: list[dict[str, Any]], specs: Sequence[TensorSpec], first_row: int) -> Feeds:
    """One chunk's records through the shared parser (what the API does with a request)."""
    try:
        return to_feeds({"instances": records}, specs, max_rows=len(records))
    except core_errors.InputError as exc:  # the parser counts rows from 0 within the chunk
        raise BatchInputError(f"data rows {first_row + 1}-{first_row + len(records)}: {exc.message}",
                              fix=exc.fix) from exc


def _read_csv_columns(path: Path, specs: Sequence[TensorSpec], chunk_rows: int) -> tuple[int, Iterator[Feeds]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        # Rows counted by the csv module, not by lines: a quoted string may hold a newline.
        total = sum(1 for row in reader if row)
    if header is None:
        raise BatchInputError(f"{path} is empty", fix="give a CSV with a header row and one row per prediction")
    position = {name.strip(): i for i, name in enumerate(header)}
    missing = [spec.name for spec in specs if spec.name not in position]
    if missing:
        raise BatchInputError(f"the CSV header lacks column(s) {', '.join(map(repr, missing[:5]))}, which the model "
                              "takes by name",
                              fix=f"start the file with a header row naming the columns: {_names_hint(specs)}")
    picked = [(spec, position[spec.name]) for spec in specs]

    def record(row: list[str], number: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for spec, index in picked:
            try:
                out[spec.name] = column_value(row[index], spec.dtype, allow_nan=spec.allow_nan)
            except ValueError as exc:
                raise BatchInputError(f"CSV data row {number}, column {spec.name!r} {exc}",
                                      fix=f"give {spec.name} as {_DTYPE_WORDS.get(spec.dtype, spec.dtype)} in every "
                                          "row (fill in missing values first)") from None
        return out

    def chunks() -> Iterator[Feeds]:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            next(reader)
            done = 0
            block: list[dict[str, Any]] = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise BatchInputError(f"CSV data row {done + len(block) + 1} has {len(row)} columns, the header "
                                          f"names {len(header)}", fix="make every row as wide as the header")
                block.append(record(row, done + len(block) + 1))
                if len(block) == chunk_rows:
                    yield _column_feeds(block, specs, done)
                    done += len(block)
                    block = []
            if block:
                yield _column_feeds(block, specs, done)
    return total, chunks()


_DTYPE_WORDS = {"string": "text", "float32": "a number", "int64": "an integer", "bool": "true or false"}


def _arrow_fits(pa: Any, arrow_type: Any, spec: TensorSpec) -> bool:
    """Whether a Parquet column of ``arrow_type`` holds values the records parser takes for ``spec``."""
    types = pa.types
    if types.is_dictionary(arrow_type):  # pandas' category dtype is written as a dictionary
        arrow_type = arrow_type.value_type
    if spec.dtype == "string":
        return bool(types.is_string(arrow_type) or types.is_large_string(arrow_type))
    if spec.dtype == "bool":
        return bool(types.is_boolean(arrow_type))
    if spec.dtype == "int64":
        return bool(types.is_integer(arrow_type))
    return bool(types.is_integer(arrow_type) or types.is_floating(arrow_type))


def _read_parquet_columns(path: Path, specs: Sequence[TensorSpec], chunk_rows: int) -> tuple[int, Iterator[Feeds]]:
    pa = _pyarrow("pyarrow", "reading Parquet files")
    pq = _pyarrow("pyarrow.parquet", "reading Parquet files")
    handle = pq.ParquetFile(path)
    schema = handle.schema_arrow
    names = [spec.name for spec in specs]
    missing = [n for n in names if n not in schema.names]
    if missing:
        raise BatchInputError(f"{path} lacks column(s) {', '.join(map(repr, missing[:5]))}, which the model takes by name",
                              fix=f"name the columns {_names_hint(specs)}")
    for spec in specs:
        arrow_type = schema.field(spec.name).type
        if not _arrow_fits(pa, arrow_type, spec):
            raise BatchInputError(f"{path}: column {spec.name!r} holds {arrow_type} values, the model takes "
                                  f"{_DTYPE_WORDS.get(spec.dtype, spec.dtype)} there",
                                  fix=f"write {spec.name} as {spec.dtype} (pandas: df[{spec.name!r}].astype(...))")

    def chunks() -> Iterator[Feeds]:
        start = 0
        for batch in handle.iter_batches(batch_size=chunk_rows, columns=names):
            columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            records = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
            yield _column_feeds(records, specs, start)
            start += len(records)
    return int(handle.metadata.num_rows), chunks()


def _refuse_npy_columns(path: Path, specs: Sequence[TensorSpec], chunk_rows: int) -> tuple[int, Iterator[Feeds]]:
    raise BatchInputError(f"{path}: an .npy array has no column names, and this model takes named columns "
                          f"({_names_hint(specs)})",
                          fix="give a CSV with a header row, or a Parquet file, naming the columns")


_COLUMN_READERS: dict[str, Callable[[Path, Sequence[TensorSpec], int], tuple[int, Iterator[Feeds]]]] = {
    ".csv": _read_csv_columns, ".npy": _refuse_npy_columns, ".npz": _refuse_npy_columns,
    ".parquet": _read_parquet_columns}


def _read_tensors(path: Path, specs: Sequence[TensorSpec], chunk_rows: int) -> tuple[int, Iterator[Feeds]]:
    """NPY (one input, memory-mapped) or NPZ (one array per input name) in chunks of samples, each
    checked by the shared parser (shapes, dtypes, values), a refusal naming the chunk's samples."""
    names = [spec.name for spec in specs]
    try:
        if path.suffix.lower() == ".npy":
            if len(specs) != 1:
                raise BatchInputError(f"{path} holds one array and {names[0]!r} is one of {len(specs)} inputs "
                                      f"({_names_hint(specs)})", fix="give an .npz file with one array per input name "
                                      "(numpy.savez(path, " + ", ".join(f"{n}=..." for n in names[:4]) + "))")
            arrays = {names[0]: np.load(path, mmap_mode="r", allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: np.asarray(archive[k]) for k in archive.files}
    except (OSError, ValueError) as exc:
        raise BatchInputError(f"cannot read {path}: {exc}", fix="save it with numpy.save or numpy.savez") from exc
    unknown = [k for k in arrays if k not in names]
    missing = [n for n in names if n not in arrays]
    if unknown or missing:
        raise BatchInputError(f"{path} holds array(s) {', '.join(map(repr, sorted(arrays)))}; the model takes "
                              f"{_names_hint(specs)}", fix="name one array after each input (numpy.savez(path, name=array))")
    total = min(len(a) if a.ndim else 0 for a in arrays.values())
    if len({len(a) if a.ndim else 0 for a in arrays.values()}) > 1:
        raise BatchInputError(f"{path}: the arrays hold different numbers of samples",
                              fix="give every input the same number of samples")

    def chunks() -> Iterator[Feeds]:
        for start in range(0, total, chunk_rows):
            part = {name: np.asarray(a[start:start + chunk_rows]) for name, a in arrays.items()}
            try:
                yield to_feeds(part, specs, max_rows=chunk_rows)
            except core_errors.InputError as exc:
                raise BatchInputError(f"samples {start + 1}-{start + len(next(iter(part.values())))}: {exc.message}",
                                      fix=exc.fix) from exc
    return total, chunks()


IMAGE_CHUNK_BYTES = 64 << 20
"""Preprocessed images held at once: a chunk of 4,096 224x224 RGB images would be 2.4 GB of float32."""


def _read_images(path: Path, manifest: Manifest, chunk_rows: int) -> tuple[int, Iterator[tuple[Feeds, list[str]]]]:
    """A folder of PNG/JPEG images (sorted by path, subfolders included) for a model whose one input
    is an image: each chunk decoded and preprocessed by the shared parser (``edgefleet.inputs.
    image_feeds``, the API's), with the files' paths relative to the folder."""
    inputs = manifest.inputs
    if len(inputs) != 1 or inputs[0].kind != "image" or inputs[0].image is None:
        raise BatchInputError(f"{path} is a folder, which `edgefleet agent predict` reads as images; {manifest.ref} "
                              f"takes {_names_hint(inputs)}, not one image input",
                              fix="give a file (CSV, Parquet, NPY or NPZ) for this model")
    spec = inputs[0]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BatchInputError(f"{path} holds no PNG or JPEG files", fix="give a folder of .png, .jpg or .jpeg images")
    image = spec.image
    assert image is not None  # checked above
    per_chunk = max(1, min(chunk_rows, IMAGE_CHUNK_BYTES // (image.height * image.width * image.channels * 4)))

    def chunks() -> Iterator[tuple[Feeds, list[str]]]:
        for start in range(0, len(files), per_chunk):
            part = files[start:start + per_chunk]
            names = [str(p.relative_to(path)) for p in part]
            try:
                sent = [p.read_bytes() for p in part]
            except OSError as exc:
                raise BatchInputError(f"cannot read {exc.filename}: {exc.strerror}", fix="check the folder") from exc
            try:
                yield image_feeds({spec.name: sent}, inputs, max_rows=len(sent)), names
            except core_errors.InputError as exc:
                at = _image_at(exc.message, names)
                raise BatchInputError(f"{at}{exc.message}", fix=exc.fix) from exc
    return len(files), chunks()


def _image_at(message: str, names: list[str]) -> str:
    """The file a refusal of image N of a chunk is about, to prefix the message with."""
    import re

    found = re.search(r"image for '[^']*' (\d+)", message)
    if found is not None and int(found.group(1)) < len(names):
        return f"{names[int(found.group(1))]}: "
    return f"{names[0]}: " if len(names) == 1 else ""


def _chunks(path: Path, suffix: str, manifest: Manifest, chunk_rows: int) -> tuple[int, Iterator[np.ndarray | Feeds]]:
    """The file's rows in chunks: matrices for a one-tensor model, feeds for named columns."""
    inputs = manifest.inputs
    if is_matrix(inputs) and suffix != ".npz":
        total, matrices = _READERS[suffix](path, inputs[0], chunk_rows)
        return total, iter(matrices)
    if inputs and all(spec.kind == "column" for spec in inputs):
        total, feeds = _COLUMN_READERS[suffix](path, inputs, chunk_rows)
        return total, iter(feeds)
    if inputs and all(spec.kind != "column" for spec in inputs):
        if suffix not in (".npy", ".npz"):
            raise BatchInputError(f"{manifest.ref} takes tensors ({_names_hint(inputs)}), which a {suffix} file "
                                  "does not hold", fix="give an .npz file with one array per input name, or .npy "
                                  "for a model with one input")
        total, feeds = _read_tensors(path, inputs, chunk_rows)
        return total, iter(feeds)
    shown = ", ".join(f"{spec.name!r} ({spec.kind}, shape {list(spec.shape)})" for spec in inputs[:4])
    raise BatchInputError(f"{manifest.ref} takes inputs {shown}; `edgefleet agent predict` cannot read files for "
                          "a model mixing named columns and tensors",
                          fix="send this model's inputs one request at a time to the agent's API")


# -- writers ----------------------------------------------------------------------------------------
class _Writer:
    """Streams predictions to ``tmp``; subclasses per format."""

    def __init__(self, tmp: Path, manifest: Manifest, total: int) -> None:
        self.tmp, self.manifest, self.total = tmp, manifest, total
        self.labels = [str(c) for c in manifest.class_labels] if manifest.class_labels else []

    def write(self, predictions: np.ndarray, probabilities: np.ndarray | None, files: list[str] | None = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _CsvWriter(_Writer):
    def __init__(self, tmp: Path, manifest: Manifest, total: int) -> None:
        super().__init__(tmp, manifest, total)
        self.handle: io.TextIOWrapper = open(tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self.csv = csv.writer(self.handle)
        self.header = False

    def write(self, predictions: np.ndarray, probabilities: np.ndarray | None, files: list[str] | None = None) -> None:
        if not self.header:
            probs = [f"p_{label}" for label in self.labels] if probabilities is not None else []
            self.csv.writerow([*(["file"] if files is not None else []), "prediction", *probs])
            self.header = True
        lead = [[f] for f in files] if files is not None else [[] for _ in range(len(predictions))]
        if probabilities is None:
            self.csv.writerows([*k, p] for k, p in zip(lead, predictions.tolist(), strict=True))
        else:
            self.csv.writerows([*k, p, *(f"{v:.6g}" for v in row)]
                               for k, p, row in zip(lead, predictions.tolist(), probabilities.tolist(), strict=True))

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


class _JsonlWriter(_CsvWriter):
    def write(self, predictions: np.ndarray, probabilities: np.ndarray | None, files: list[str] | None = None) -> None:
        probs = probabilities.tolist() if probabilities is not None else [None] * len(predictions)
        names: list[str | None] = list(files) if files is not None else [None] * len(predictions)
        for name, p, row in zip(names, predictions.tolist(), probs, strict=True):
            record: dict[str, Any] = {"file": name} if name is not None else {}
            record["prediction"] = p
            if row is not None:
                record["probabilities"] = row
            self.handle.write(json.dumps(record) + "\n")


class _NpyWriter(_Writer):
    """Predictions as a 1-D array (class labels or values), preallocated and memory-mapped."""

    def __init__(self, tmp: Path, manifest: Manifest, total: int) -> None:
        super().__init__(tmp, manifest, total)
        self.array: Any = None
        self.at = 0

    def write(self, predictions: np.ndarray, probabilities: np.ndarray | None, files: list[str] | None = None) -> None:
        if self.array is None:
            dtype = predictions.dtype if predictions.dtype.kind in "iuf" else np.dtype(f"<U{max(map(len, self.labels or ['x']))}")
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=(self.total,))
        self.array[self.at:self.at + len(predictions)] = predictions
        self.at += len(predictions)

    def close(self) -> None:
        if self.array is None:
            np.save(self.tmp, np.empty((0,), dtype=np.float32))
            return
        self.array.flush()
        del self.array


class _ParquetWriter(_Writer):
    def __init__(self, tmp: Path, manifest: Manifest, total: int) -> None:
        super().__init__(tmp, manifest, total)
        self.pa = _pyarrow("pyarrow", "writing Parquet files")
        self.pq = _pyarrow("pyarrow.parquet", "writing Parquet files")
        self.writer: Any = None

    def write(self, predictions: np.ndarray, probabilities: np.ndarray | None, files: list[str] | None = None) -> None:
        columns: dict[str, Any] = {"file": files} if files is not None else {}
        columns["prediction"] = predictions.tolist()
        if probabilities is not None:
            for i, label in enumerate(self.labels):
                columns[f"p_{label}"] = probabilities[:, i]
        table = self.pa.table(columns)
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(str(self.tmp), table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


_WRITERS: dict[str, type[_Writer]] = {".csv": _CsvWriter, ".jsonl": _JsonlWriter, ".npy": _NpyWriter,
                                      ".parquet": _ParquetWriter}


def predict_file(session: ModelSession, input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], *,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, progress: bool = True,
                 clock: Callable[[], float] = time.perf_counter) -> BatchSummary:
    """Predict every row of ``input_path`` into ``output_path`` (formats by extension)."""
    source, target = Path(input_path), Path(output_path)
    writer_class = _WRITERS[_suffix(target, OUTPUT_SUFFIXES, "output")]
    manifest = session.manifest
    start = clock()
    chunks: Iterator[tuple[np.ndarray | Feeds, list[str] | None]]
    if source.is_dir():  # a folder of images
        total, images = _read_images(source, manifest, chunk_rows)
        chunks = iter(images)
    else:
        suffix = _suffix(source, INPUT_SUFFIXES, "input")
        if not source.is_file():
            raise BatchInputError(f"input file {source} does not exist", fix="check --input")
        total, parts = _chunks(source, suffix, manifest, chunk_rows)
        chunks = ((part, None) for part in parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    rows = 0
    try:
        writer = writer_class(tmp, manifest, total)
        with Progress(f"predict {manifest.ref}", total, enabled=progress) as bar:
            key = "label" if manifest.task == "classification" else "value"
            for chunk, files in chunks:
                if isinstance(chunk, np.ndarray):
                    roles, n = session.run_roles(chunk), len(chunk)  # the matrix path wrappers know
                else:
                    roles, n = session.run_feeds(chunk), len(next(iter(chunk.values())))
                writer.write(roles[key], roles.get("probabilities"), files)
                rows += n
                bar.update(n)
        writer.close()
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return BatchSummary(manifest.name, manifest.version, rows, clock() - start, str(target))
