"""Reading calibration and validation data: CSV, NPY, NPZ and Parquet into float32 rows or named columns.

A ``Dataset`` is a 2-D float32 feature matrix, optional labels and optional feature names.
For a model whose inputs are named columns (a DataFrame pipeline), ``load_dataset(...,
columns=source.inputs)`` reads CSV or Parquet with pandas, by column name, strings kept as
strings: ``Dataset.columns`` holds one ``[rows, 1]`` array per column in the column's dtype,
and ``features`` only the numeric columns (what the drift reference bins). Matrix models keep
the hand-written CSV reader below, so their data, and the bundles built from it, do not change.
CSV headers are detected: a first row that is not all numbers (``edgefleet.cells.is_number``)
is a header. ``labels_column`` names the label column (by header name, or by 0-based index:
headerless CSV, NPY); a file that lacks it is taken as features only, so one option serves
both the labelled validation file and an unlabelled calibration file.

This module does not sample, scale or otherwise change the data: what the user gave is what
the models see.

For a model with named tensor inputs (an ONNX model with N-D or several inputs), the data is
NPY (one input) or NPZ (one array per input name, plus the labels under ``--labels`` or a
conventional name such as ``y``): ``Dataset.columns`` holds the arrays by input name, checked
by the same parser as a device's requests (``edgefleet.inputs.to_feeds``: shapes, dtypes,
finite values), and ``features`` is empty. An image input (``converter.image_inputs``) also takes
a folder of PNG/JPEG images (labels from subfolder names); its arrays are kept as 8-bit pixels
in ``Dataset.pixels`` and preprocessed by ``edgefleet.images`` into ``columns``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converter.errors import DataError, DataShapeError
from converter.image_inputs import as_pixels, image_specs, load_image_folder
from converter.image_inputs import tensors as image_tensors
from converter.predictors import Batch
from edgefleet.cells import is_number
from edgefleet.manifest import TensorSpec

if TYPE_CHECKING:
    from converter.source_model import SourceModel

SUFFIXES = (".csv", ".npy", ".npz", ".parquet")
# NPZ archives written by numpy.savez use these names by convention; the first hit wins.
_NPZ_FEATURES = ("X", "x", "features", "inputs", "data")
_NPZ_LABELS = ("y", "labels", "label", "target", "targets")


@dataclass(frozen=True)
class Dataset:
    """Feature rows (float32, [rows, features]) with optional labels and feature names."""

    features: np.ndarray
    labels: np.ndarray | None = None
    feature_names: tuple[str, ...] | None = None
    source: str = ""
    columns: Mapping[str, np.ndarray] | None = None
    """Models with named inputs only: input name -> [rows, 1] array in the column's dtype (strings
    as objects), or [rows, ...] array of a tensor input."""
    pixels: Mapping[str, np.ndarray] | None = None
    """Image inputs only: input name -> 8-bit pixels [rows, height, width, channels], of which the
    input's array in ``columns`` is the preprocessed form (``converter.image_inputs``)."""

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.features.shape[0] == 0:
            raise DataError(f"{self.source or 'data'} must hold at least one row of features (got shape {self.features.shape})",
                            fix="give a non-empty table with one row per sample")
        if self.labels is not None and len(self.labels) != len(self.features):
            raise DataError(f"{self.source}: {len(self.labels)} labels for {len(self.features)} rows")
        if self.feature_names is not None and len(self.feature_names) != self.features.shape[1]:
            raise DataError(f"{self.source}: {len(self.feature_names)} feature names for {self.features.shape[1]} columns")
        for name, column in (self.columns or {}).items():
            if column.ndim < 2 or column.shape[0] != self.rows:
                raise DataError(f"{self.source}: input {name!r} has shape {column.shape}, expected ({self.rows}, ...)")
        _check_finite(self.features, self.labels, self.feature_names, self.source)

    @property
    def batch(self) -> Batch:
        """What a predictor takes: the columns by name for a column model, else the feature matrix."""
        return dict(self.columns) if self.columns is not None else self.features

    def check_inputs(self, source: SourceModel) -> None:
        """Raise DataShapeError unless the data fits the model's inputs (columns or matrix width)."""
        if source.inputs is None:
            self.check_width(source.n_features)
            return
        missing = [spec.name for spec in source.inputs if self.columns is None or spec.name not in self.columns]
        if missing:
            raise DataShapeError(f"{self.source} has no column(s) {', '.join(map(repr, missing[:5]))}, which the model takes",
                                 fix="give a CSV or Parquet file with a header naming every column the model was fitted on")

    @property
    def width(self) -> int:
        return int(self.features.shape[1])

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])

    def check_width(self, expected: int) -> None:
        """Raise DataShapeError unless the rows have ``expected`` feature columns."""
        if self.width != expected:
            hint = (" (is the label column still in the file? name it with --labels)" if self.width == expected + 1 else "")
            raise DataShapeError(
                f"{self.source} has {self.width} feature columns but the model takes {expected}{hint}",
                fix=f"give a file with exactly {expected} feature columns, in the order the model was trained on",
            )


def _check_finite(features: np.ndarray, labels: np.ndarray | None, names: tuple[str, ...] | None, source: str) -> None:
    """Refuse NaN and infinity, naming the first row: a bundle's inputs take finite numbers only
    (its specs never allow NaN), so such rows prove nothing a device will see, and the original
    model would otherwise fail on them with its own traceback (scikit-learn's "Input X contains NaN")."""
    bad = ~np.isfinite(features)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        where = repr(names[column]) if names else str(column + 1)
        what = "NaN (a missing value)" if np.isnan(features[row, column]) else "infinite (or beyond float32's range)"
        others = int(bad.any(axis=1).sum()) - 1
        more = f", as are values in {others} more row(s)" if others else ""
        raise DataError(f"{source or 'data'}: data row {row + 1}, column {where} is {what}{more}; "
                        "models take finite numbers only",
                        fix="drop or fill in the rows with missing values before converting "
                            "(e.g. pandas: df.dropna() or df.fillna(...))")
    if labels is not None and labels.dtype.kind == "f" and not np.isfinite(labels).all():
        row = int(np.flatnonzero(~np.isfinite(labels))[0])
        raise DataError(f"{source or 'data'}: the label of data row {row + 1} is {labels[row]}",
                        fix="drop the rows without a label before converting")


def load_dataset(path: str | Path, *, labels_column: str | None = None,
                 columns: Sequence[TensorSpec] | None = None) -> Dataset:
    """Read ``path`` (by suffix) into a Dataset, taking ``labels_column`` out if present.

    With ``columns`` (a column model's input specs), read those columns by name with pandas.
    """
    p = Path(path)
    if p.is_dir() and columns is not None and any(spec.kind == "image" for spec in columns):
        return _load_image_folder(p, columns)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist", fix="check the path given to --calibration / --validation")
    suffix = p.suffix.lower()
    if columns is not None and any(spec.kind != "column" for spec in columns):
        return _load_tensors(p, suffix, labels_column, columns)
    if columns is not None:
        return _load_columns(p, suffix, labels_column, columns)
    if suffix == ".csv":
        return _load_csv(p, labels_column)
    if suffix == ".npy":
        return _split(_np_load(p), None, labels_column, str(p))
    if suffix == ".npz":
        return _load_npz(p, labels_column)
    if suffix == ".parquet":
        return _load_parquet(p, labels_column)
    raise DataError(f"data file {p} has an unknown type {suffix!r}", fix=f"use one of {', '.join(SUFFIXES)}")


def _load_csv(path: Path, labels_column: str | None) -> Dataset:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.reader(handle) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read CSV {path}: {exc}", fix="save the data as UTF-8 CSV") from exc
    if not rows:
        raise DataError(f"CSV {path} is empty", fix="give at least one row of data")
    header: list[str] | None = None
    if not all(is_number(c) for c in rows[0]):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    width = len(header) if header else len(rows[0]) if rows else 0
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DataShapeError(f"CSV {path} row {i + 1 + (header is not None)} has {len(row)} columns, expected {width}",
                                 fix="make every row as long as the first one")
    label_values: list[str] | None = None
    if labels_column is not None:
        index = _column_index(labels_column, header, width)
        if index is not None:
            label_values = [r[index] for r in rows]
            rows = [r[:index] + r[index + 1:] for r in rows]
            if header:
                header = header[:index] + header[index + 1:]
    try:
        features = np.array(rows, dtype=np.float32).reshape(len(rows), -1)
    except ValueError as exc:
        raise DataError(f"CSV {path} holds a value that is not a number ({exc})",
                        fix="encode categorical features as numbers, or name the label column with --labels") from exc
    labels = _labels_array(label_values) if label_values is not None else None
    return Dataset(features, labels, tuple(header) if header else None, str(path))


def _column_index(column: str, header: list[str] | None, width: int) -> int | None:
    if header is not None and column in header:
        return header.index(column)
    # A 0-based index works with or without a header (a header name wins when both match).
    if column.isdigit() and int(column) < width:
        return int(column)
    return None


def _labels_array(values: list[str]) -> np.ndarray:
    # Numeric labels stay numbers so that they compare equal to a classifier's integer classes.
    if all(is_number(v) for v in values):
        numbers = np.array([float(v) for v in values])
        if np.all(numbers == np.round(numbers)):
            return numbers.astype(np.int64)
        return numbers
    return np.array(values, dtype=object)


def _np_load(path: Path) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as a NumPy array: {exc}", fix="save it with numpy.save (no pickled objects)") from exc


def _split(table: np.ndarray, labels: np.ndarray | None, labels_column: str | None, source: str) -> Dataset:
    if table.ndim == 1:
        table = table.reshape(1, -1)
    if table.ndim != 2:
        raise DataShapeError(f"{source} holds a {table.ndim}-D array", fix="give a 2-D array of [rows, features]")
    if labels is None and labels_column is not None and labels_column.isdigit() and int(labels_column) < table.shape[1]:
        index = int(labels_column)
        labels = table[:, index]
        table = np.delete(table, index, axis=1)
    if labels is not None and np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    try:
        features = table.astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{source} holds values that are not numbers", fix="give numeric features") from exc
    return Dataset(features, labels, None, source)


def _load_npz(path: Path, labels_column: str | None) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: np.asarray(archive[k]) for k in archive.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as a NumPy .npz archive: {exc}", fix="save it with numpy.savez") from exc
    if not arrays:
        raise DataError(f"{path} holds no arrays", fix="save the features as X (and labels as y) with numpy.savez")
    feature_key = next((k for k in _NPZ_FEATURES if k in arrays), next(iter(arrays)))
    label_keys = ((labels_column,) if labels_column else ()) + _NPZ_LABELS
    label_key = next((k for k in label_keys if k in arrays and k != feature_key), None)
    labels = arrays[label_key] if label_key else None
    return _split(arrays[feature_key], labels, None, str(path))


def _load_parquet(path: Path, labels_column: str | None) -> Dataset:
    from edgefleet.extras import require

    pq = require("pyarrow.parquet", "test", "reading Parquet data")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/OSError family
        raise DataError(f"cannot read {path} as Parquet: {exc}", fix="check the file, or give CSV/NPY instead") from exc
    names = [str(n) for n in table.column_names]
    labels = None
    if labels_column is not None and labels_column in names:
        labels = np.asarray(table.column(labels_column).to_numpy(zero_copy_only=False))
        names.remove(labels_column)
    try:
        columns = [np.asarray(table.column(n).to_numpy(zero_copy_only=False), dtype=np.float32) for n in names]
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path} has a column that is not numeric ({exc})", fix="encode it as numbers or name it with --labels") from exc
    features = np.stack(columns, axis=1) if columns else np.zeros((table.num_rows, 0), np.float32)
    if labels is not None and np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    return Dataset(features, labels, tuple(names), str(path))


def _load_columns(path: Path, suffix: str, labels_column: str | None, specs: Sequence[TensorSpec]) -> Dataset:
    from edgefleet.extras import require

    pd = require("pandas", "convert", "reading data for a model with named columns")
    strings = [spec.name for spec in specs if spec.dtype == "string"]
    try:
        if suffix == ".csv":
            # object, not pandas' own string dtype: cells stay Python str, "01234" stays "01234".
            as_text = {name: object for name in [*strings, *([labels_column] if labels_column else [])]}
            frame = pd.read_csv(path, dtype=as_text)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            raise DataError(f"{path}: this model takes named columns, which a {suffix} file does not have",
                            fix="give CSV (with a header) or Parquet data for a model fitted on a DataFrame")
    except DataError:
        raise
    except Exception as exc:  # pandas and pyarrow raise their own ParserError/ArrowInvalid families
        raise DataError(f"cannot read {path}: {exc}", fix="check the file, or save it again as UTF-8 CSV or Parquet") from exc
    present = {str(c) for c in frame.columns}
    missing = [spec.name for spec in specs if spec.name not in present]
    if missing:
        raise DataShapeError(f"{path} has no column(s) {', '.join(map(repr, missing[:5]))}, which the model takes",
                             fix="give a file with a header naming every column the model was fitted on")
    if len(frame) == 0:
        raise DataError(f"{path} holds no rows", fix="give at least one row of data")
    labels = None
    if labels_column is not None and labels_column in present:
        labels = _labels_array([str(v) for v in frame[labels_column].tolist()])
    columns = {spec.name: _column(frame[spec.name], spec, path) for spec in specs}
    numeric = [spec.name for spec in specs if spec.dtype != "string"]
    features = (np.concatenate([columns[n].astype(np.float32) for n in numeric], axis=1) if numeric
                else np.zeros((len(frame), 0), np.float32))
    return Dataset(features, labels, tuple(numeric), str(path), columns)


def _column(series: Any, spec: TensorSpec, path: Path) -> np.ndarray:
    if spec.dtype == "string":
        values = series.to_numpy(dtype=object)
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            raise DataError(f"{path}: column {spec.name!r} row {bad + 1} is empty or not text ({values[bad]!r})",
                            fix="fill missing categories (e.g. with 'unknown') before converting")
        return values.reshape(-1, 1)
    try:
        return np.asarray(series.to_numpy(), dtype=spec.dtype).reshape(-1, 1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: column {spec.name!r} holds a value that is not a number ({exc})",
                        fix=f"give numbers in {spec.name!r}, the model was fitted on a numeric column there") from exc


def _load_tensors(path: Path, suffix: str, labels_column: str | None, specs: Sequence[TensorSpec]) -> Dataset:
    """NPY (a model with one input) or NPZ (one array per input name, labels under their own name)."""
    from edgefleet.errors import InputError
    from edgefleet.inputs import to_feeds

    names = [spec.name for spec in specs]
    labels = None
    if suffix == ".npy":
        if len(specs) != 1:
            raise DataShapeError(f"{path} holds one array but the model takes {len(specs)} inputs ({', '.join(names)})",
                                 fix="save one array per input name in an .npz file: numpy.savez(path, "
                                     + ", ".join(f"{n}=..." for n in names[:4]) + ", y=labels)")
        arrays = {names[0]: _np_load(path)}
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                stored = {k: np.asarray(archive[k]) for k in archive.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path} as a NumPy .npz archive: {exc}", fix="save it with numpy.savez") from exc
        label_key = next((k for k in ((labels_column,) if labels_column else ()) + _NPZ_LABELS
                          if k in stored and k not in names), None)
        labels = stored.pop(label_key) if label_key else None
        if len(specs) == 1 and names[0] not in stored:  # one input: its array may go by a conventional name
            key = next((k for k in _NPZ_FEATURES if k in stored), None)
            if key is not None:
                stored[names[0]] = stored.pop(key)
        arrays = stored
    else:
        raise DataError(f"{path}: this model takes tensors ({', '.join(names)}), which a {suffix} file does not hold",
                        fix="give an .npy file (one input) or an .npz file with one array per input name")
    if labels is not None and np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    images = image_specs(specs)
    pixels = {name: as_pixels(name, arrays[name], spec, str(path)) for name, spec in images.items() if name in arrays}
    arrays = {**arrays, **image_tensors(pixels, images)}  # what a device makes of these pixels
    rows = {name: len(a) if a.ndim else 0 for name, a in arrays.items() if name in names}
    try:
        feeds = to_feeds(arrays, specs, max_rows=max(max(rows.values(), default=1), 1))
    except InputError as exc:  # the refusal a device would give these samples, with the file's name
        raise DataShapeError(f"{path}: {exc.message}", fix=exc.fix) from exc
    n = len(next(iter(feeds.values())))
    return Dataset(np.zeros((n, 0), np.float32), labels, None, str(path), feeds, pixels or None)


def _load_image_folder(path: Path, specs: Sequence[TensorSpec]) -> Dataset:
    """A folder of PNG/JPEG images for a model whose one input is an image (labels: subfolder names)."""
    pixels, names, n = load_image_folder(path, specs)
    labels = _labels_array(names) if names is not None else None
    return Dataset(np.zeros((n, 0), np.float32), labels, None, str(path), image_tensors(pixels, image_specs(specs)),
                   pixels)
