"""On-device drift: live inputs and outputs counted in the bundle's reference bins.

Each served model version gets a ``DriftWindow`` built from its bundle's ``reference.json``.
``observe(rows, outputs, now)`` runs after every prediction. It only copies the rows into a
preallocated buffer (and the outputs into a list): binning one row at a time costs about as much
as the whole rest of a prediction, so rows are binned ``BUFFER_ROWS`` at a time (every feature of
every row at once, numpy, no Python loop), when the buffer is full, when a row falls in another
time bucket, and before any count is read. Counts are therefore always exact when read.
``observe_many`` takes several requests at once (the reporter queues served calls and hands them
over in bulk): each run of them in one time bucket is joined and observed once. The binned
counts go to

* a sliding window (``window_s``, kept as ``buckets`` time buckets) for local scores: per-feature
  PSI against the reference counts and its band (``edgefleet.telemetry.band``: <0.1 stable,
  0.1-0.25 moderate, >0.25 drift), and the PSI of the output distribution;
* interval counters that ``take_interval`` hands to telemetry and resets. Counts travel, not
  scores, so the server can add devices together; feature counts may be taken less often
  than outputs (``include_features=False`` keeps accumulating them) because they are most of a
  batch's bytes.

Binning follows docs/contracts.md: k bins have k+1 edges and the outer bins are open-ended,
so a value's bin is the number of inner edges at or below it (what the converter used to
count the reference). NaN inputs are not counted for that feature.

A model with named column inputs is observed by its feeds (input name -> ``[n, 1]`` array):
each reference feature takes the column of its name. A numeric column is binned as above; a
string column (a ``categories`` feature) is counted by category, with every value outside the
reference's categories in the last, "unseen", count. Strings are turned into their category's
index when observed (one dict lookup each) and then counted by the same vectorised binner, with
edges half-way between the indices, so both kinds share the buffer, the buckets and the
interval counters, and the telemetry stays one count list per feature.

An image input (``images``: its ImageSpec by input name, from the manifest) is counted by image
statistics (``edgefleet.images.image_statistics``: brightness, contrast, saturation, intensity histograms and the mean
of each channel, over the pixels the tensor the model ran on came from), the function the
converter used for the reference. A tensor input (an image array, an audio or sensor window) is counted by per-sample summary
statistics (``edgefleet.summaries``: mean, std, min, max of each sample): the reference's
features that name an ``input`` and a ``statistic`` take that statistic of that input's samples,
computed once per input and request, then binned like any number. A one-matrix model too wide
to bin per feature is summarised the same way, its matrix being its one input.

Pure: time is an argument, nothing is read or written. It does not decide when to report
(the daemon does) and does not raise alerts (the server does).

    AgentError (agent.errors)
    └── DriftError      rows, feeds or outputs do not fit the reference (wrong width, a missing
                        column, unknown kind)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.errors import AgentError
from edgefleet.images import IMAGE_STATISTICS, image_statistics
from edgefleet.manifest import ImageSpec
from edgefleet.summaries import TENSOR_STATISTICS, statistics
from edgefleet.telemetry import FeatureReference, ReferenceProfile, band, psi

DEFAULT_WINDOW_S = 3600.0
DEFAULT_BUCKETS = 12
# Rows held before they are binned: large enough that binning costs under a microsecond a row,
# small enough (256 x 64 float64 = 128 KiB for the digits model) to keep per version.
BUFFER_ROWS = 256
_SMALL_BATCH = 16
_SCALAR = (int, float)


class DriftError(AgentError):
    """Rows or outputs do not fit the reference profile they are counted against."""


@dataclass(frozen=True)
class DriftScore:
    """One feature's (or the output's) PSI over the window, with its band and row count."""

    feature: str
    psi: float
    band: str
    rows: int


class _Binner:
    """Vectorised bin lookup for many features with their own edges."""

    def __init__(self, edges: Sequence[Sequence[float]]) -> None:
        self.bins = np.array([max(len(e) - 1, 1) for e in edges], dtype=np.int64)
        width = max((len(e) - 2 for e in edges), default=0)
        # Inner edges padded with NaN: x >= NaN is False, so padding never moves a value up a bin.
        inner = np.full((len(edges), max(width, 1)), np.nan)
        for i, e in enumerate(edges):
            inner[i, : max(len(e) - 2, 0)] = e[1:-1]
        self.inner = inner
        self.offsets = (np.cumsum(self.bins) - self.bins).astype(np.int64)
        self.total = int(self.bins.sum())

    def count(self, values: np.ndarray) -> np.ndarray:
        """Flat bin counts of ``values`` (rows x features): feature i's bins start at offsets[i]."""
        with np.errstate(invalid="ignore"):
            if values.shape[0] <= _SMALL_BATCH:
                # One broadcast compare: the fewest numpy calls, which is what a single row costs.
                index = (values[:, :, None] >= self.inner[None, :, :]).sum(axis=2) + self.offsets
            else:
                # Feature-major, one pass per inner edge: about half the time per row of the
                # broadcast once batches are large (measured in docs/telemetry.md).
                columns = np.ascontiguousarray(values.T)
                index = np.repeat(self.offsets[:, None], columns.shape[1], axis=1)
                for k in range(self.inner.shape[1]):
                    index += columns >= self.inner[:, k : k + 1]
                index = index.T
        valid = ~np.isnan(values)
        flat = index.ravel() if valid.all() else index[valid]
        return np.bincount(flat, minlength=self.total)

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        return [flat[o : o + b] for o, b in zip(self.offsets, self.bins, strict=True)]


def _edges(feature: FeatureReference) -> tuple[float, ...]:
    """The bin edges a feature is counted with: its own, or for k categories k+2 edges half-way
    between the indices 0..k (k is "unseen"), so index i lands in bin i."""
    if feature.kind == "categories":
        k = len(feature.categories)
        return (-0.5, *(i + 0.5 for i in range(k)), k + 0.5)
    return feature.edges


def _joined(run: Sequence[tuple[Any, Sequence[Any] | np.ndarray | None, float]]
            ) -> tuple[Any, list[Any]] | None:
    """Several requests' rows and outputs as one request's: matrices stacked, feeds stacked by
    input name, outputs in one flat list; None where they cannot be joined as they are (then
    each is observed alone, which also says which one does not fit)."""
    first = run[0][0]
    outputs: list[Any] = []
    for _rows, out, _now in run:
        if out is None:
            continue
        if not isinstance(out, list):
            return None
        outputs += out
    try:
        if isinstance(first, np.ndarray):
            if first.ndim != 2 or not all(type(r) is np.ndarray and r.ndim == 2 for r, _, _ in run):
                return None
            return np.concatenate([r for r, _, _ in run]), outputs
        if isinstance(first, Mapping):
            names = list(first)
            if not all(isinstance(r, Mapping) and list(r) == names for r, _, _ in run):
                return None
            return {name: np.concatenate([np.asarray(r[name]) for r, _, _ in run]) for name in names}, outputs
    except (ValueError, TypeError):  # shapes or kinds that do not stack
        return None
    return None


class DriftWindow:
    """Reference-bin counts of one model version's traffic: a sliding window plus interval deltas."""

    def __init__(self, reference: ReferenceProfile | Mapping[str, Any], *, window_s: float = DEFAULT_WINDOW_S,
                 buckets: int = DEFAULT_BUCKETS, images: Mapping[str, ImageSpec] | None = None) -> None:
        self.reference = reference if isinstance(reference, ReferenceProfile) else ReferenceProfile.from_dict(reference)
        if window_s <= 0 or buckets < 1:
            raise DriftError(f"drift window of {window_s} s in {buckets} buckets is not usable",
                             fix="use a positive window and at least one bucket")
        self.window_s = float(window_s)
        self.bucket_s = self.window_s / buckets
        self._buckets = buckets
        self._features = _Binner([_edges(f) for f in self.reference.features])
        # Per feature: category -> index for a categorical one (index len(...) is "unseen"), else None.
        self._codes: list[dict[str, int] | None] = [
            {c: i for i, c in enumerate(f.categories)} if f.kind == "categories" else None
            for f in self.reference.features]
        # Input name -> the statistics its summary features count, in first-seen order.
        self._summaries: dict[str, list[str]] = {}
        self._images = dict(images or {})
        for f in self.reference.features:
            if f.input is not None and f.statistic is not None:
                if f.statistic in IMAGE_STATISTICS and f.statistic not in TENSOR_STATISTICS:
                    if f.input not in self._images:
                        raise DriftError(f"reference feature {f.name!r} counts image statistic {f.statistic!r} of "
                                         f"input {f.input!r}, whose image description was not given",
                                         fix="build the window with images= from the manifest's image inputs")
                elif f.statistic not in TENSOR_STATISTICS:
                    raise DriftError(f"reference feature {f.name!r} counts statistic {f.statistic!r}, which this agent "
                                     f"does not compute ({', '.join(TENSOR_STATISTICS)})",
                                     fix="upgrade the agent, or rebuild the bundle with this edgefleet")
                self._summaries.setdefault(f.input, []).append(f.statistic)
        ref = self.reference
        self._labels: dict[str, int] = {str(label): i for i, label in enumerate(ref.output_labels)}
        self._out_bins = _Binner([ref.output_edges]) if ref.output_kind == "bins" else None
        self._n_out = len(ref.output_counts)
        # time bucket index -> (feature counts, output counts)
        self._ring: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._interval_features = np.zeros(self._features.total, dtype=np.int64)
        self._interval_outputs = np.zeros(self._n_out, dtype=np.int64)
        # Rows and outputs observed but not binned yet, all in the time bucket ``_held_key``.
        self._width = len(self.reference.features)
        self._held_rows = np.empty((BUFFER_ROWS, self._width), dtype=np.float64)
        self._held_n = 0
        self._held_outputs: list[Any] = []
        self._held_key: int | None = None
        # Serving threads observe while the reporter takes: numpy's += is not atomic, and the
        # buffer is shared.
        self._lock = threading.Lock()

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.reference.feature_names

    def _bucket(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        return self._bucket_at(math.floor(now / self.bucket_s))

    def _bucket_at(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        for old in [k for k in self._ring if k <= key - self._buckets]:
            del self._ring[old]
        if key not in self._ring:
            self._ring[key] = (np.zeros(self._features.total, dtype=np.int64), np.zeros(self._n_out, dtype=np.int64))
        return self._ring[key]

    def observe(self, rows: Any, outputs: Sequence[Any] | np.ndarray | None = None, *, now: float) -> None:
        """Count one request's rows and its predictions.

        ``rows`` is the input matrix (rows x features, real values) of a one-tensor model, or the
        feeds of a model with named inputs (a mapping of input name to ``[n, 1]`` column), which
        are counted by reference feature name. They are checked here (a misfit raises now, not
        when the buffer is binned); counting them may wait until ``BUFFER_ROWS`` are held or a
        count is read.
        """
        if isinstance(rows, Mapping):
            rows = self._project(rows)
        elif self._summaries:
            if len(self._summaries) != 1:
                raise DriftError("a reference summarising several inputs counts named feeds, not a matrix",
                                 fix="observe the request's feeds (input name -> array)")
            rows = self._project({next(iter(self._summaries)): np.asarray(rows)})
        elif any(codes is not None for codes in self._codes):
            raise DriftError("a reference with categorical features counts named columns, not a matrix",
                             fix="observe the request's feeds (input name -> column)")
        if isinstance(rows, np.ndarray) and rows.dtype.kind == "f":
            matrix = rows  # copied into the buffer (as float64) below, not here
        else:
            matrix = np.asarray(rows, dtype=np.float64)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if not self._width:
            matrix = np.zeros((matrix.shape[0] if matrix.ndim == 2 else 1, 0))  # outputs are still counted
        elif matrix.ndim != 2 or matrix.shape[1] != self._width:
            raise DriftError(f"rows of shape {list(matrix.shape)} do not fit a reference of "
                             f"{self._width} features",
                             fix="count the same input matrix the model ran on")
        held_outputs = self._checked_outputs(outputs)
        key = math.floor(now / self.bucket_s)
        n = matrix.shape[0]
        with self._lock:
            if self._held_key != key:
                self._bin_held()
                self._held_key = key
            if self._held_n + n > BUFFER_ROWS:
                self._bin_held()
                if n > BUFFER_ROWS:  # a large batch is binned at once; holding it would not save anything
                    features = (self._features.count(matrix.astype(np.float64, copy=False)) if self._width
                                else np.zeros(self._features.total, np.int64))
                    self._add(key, features, self._output_counts(held_outputs))
                    return
            if self._width:
                self._held_rows[self._held_n : self._held_n + n] = matrix
            self._held_n += n
            if held_outputs:
                self._held_outputs.extend(held_outputs)
            if self._held_n >= BUFFER_ROWS:
                self._bin_held()

    def observe_many(self, items: Sequence[tuple[Any, Sequence[Any] | np.ndarray | None, float]]
                     ) -> list[tuple[int, Exception]]:
        """``observe`` for several requests' (rows, outputs, now), in bulk: each run of items in
        one time bucket is joined (matrices or feeds by input name concatenated, outputs put in
        one list) and observed once, so the checks, the lock and the copy into the buffer are
        paid once per run instead of once per request. A run that cannot be joined, or whose
        joined rows do not fit, is observed item by item; the items that do not fit come back
        with their error (a ``DriftError``, or whatever numpy raised), by index, and the others
        are counted.
        """
        failed: list[tuple[int, Exception]] = []
        start = 0
        while start < len(items):
            key = math.floor(items[start][2] / self.bucket_s)
            end = start + 1
            while end < len(items) and math.floor(items[end][2] / self.bucket_s) == key:
                end += 1
            run = items[start:end]
            joined = _joined(run) if len(run) > 1 else None
            if joined is not None:
                try:
                    self.observe(joined[0], joined[1], now=run[-1][2])
                    start = end
                    continue
                except Exception:  # checks come before any count: nothing was counted
                    pass  # one of them does not fit: find which, one by one
            for offset, (rows, outputs, now) in enumerate(run):
                try:
                    self.observe(rows, outputs, now=now)
                except Exception as exc:  # one misfit must not cost the others their counts
                    failed.append((start + offset, exc))
            start = end
        return failed

    def _project(self, feeds: Mapping[str, Any]) -> np.ndarray:
        """Feeds by input name as rows x reference features: numbers as they are, strings as
        their category's index (unseen: one past the last)."""
        if not self._codes:
            first = next(iter(feeds.values()), None)
            return np.zeros((0 if first is None else len(first), 0))
        columns: list[np.ndarray] = []
        n = -1
        summarised = self._summarise(feeds)
        for feature, codes in zip(self.reference.features, self._codes, strict=True):
            if feature.input is not None and feature.statistic is not None:
                stats, names = summarised[feature.input]
                summary = stats[:, names.index(feature.statistic)][:, None]
                if n >= 0 and summary.shape[0] != n:
                    raise DriftError(f"input {feature.input!r} holds {summary.shape[0]} samples, the other inputs {n}",
                                     fix="count the feeds the model ran on")
                n = summary.shape[0]
                columns.append(summary)
                continue
            column = feeds.get(feature.name)
            if column is None:
                raise DriftError(f"the request has no input {feature.name!r}, which the drift reference counts",
                                 fix="count the feeds the model ran on; the bundle's reference names its inputs")
            column = np.asarray(column)
            if column.ndim == 1:
                column = column[:, None]
            if column.ndim != 2 or column.shape[1] != 1 or (n >= 0 and column.shape[0] != n):
                raise DriftError(f"input {feature.name!r} has shape {list(column.shape)}; drift counts one value "
                                 "a row in every column", fix="count the [rows, 1] columns the model ran on")
            n = column.shape[0]
            if codes is not None:
                unseen = len(codes)
                column = np.fromiter((codes.get(v, unseen) for v in column[:, 0].tolist()), np.float64, n)[:, None]
            elif column.dtype.kind not in "fiub":
                raise DriftError(f"input {feature.name!r} holds {column.dtype} values; its drift feature counts numbers",
                                 fix="count the checked feeds the model ran on")
            columns.append(column)
        # One copy into float64 for every column at once: per-column assignment cost more than the binning.
        return np.concatenate(columns, axis=1, dtype=np.float64)

    def _summarise(self, feeds: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, list[str]]]:
        """Each summarised input's statistics, ``[samples, statistics]``, computed once per request."""
        out: dict[str, tuple[np.ndarray, list[str]]] = {}
        for name, wanted in self._summaries.items():
            samples = feeds.get(name)
            if samples is None:
                raise DriftError(f"the request has no input {name!r}, which the drift reference summarises",
                                 fix="count the feeds the model ran on; the bundle's reference names its inputs")
            samples = np.asarray(samples)
            if samples.ndim < 1 or samples.dtype.kind not in "fiub":
                raise DriftError(f"input {name!r} holds {samples.dtype} values of shape {list(samples.shape)}; "
                                 "its drift features summarise numbers", fix="count the checked feeds the model ran on")
            if samples.ndim == 1:
                samples = samples[:, None]
            image = self._images.get(name)
            out[name] = (image_statistics(samples, image, wanted) if image is not None else statistics(samples, wanted),
                         wanted)
        return out

    def _checked_outputs(self, outputs: Sequence[Any] | np.ndarray | None) -> list[Any]:
        """The outputs to hold, flat; for value bins, raises now if they are not numbers."""
        if outputs is None or self._n_out == 0:
            return []
        if isinstance(outputs, list) and (not outputs or type(outputs[0]) in _SCALAR or type(outputs[0]) is str):
            flat: list[Any] = outputs  # the common case: one scalar per row, as serving gives them
        else:
            flat = np.asarray(outputs).reshape(-1).tolist()
        if self._out_bins is not None and not all(type(v) in _SCALAR for v in flat):
            flat = np.asarray(flat, dtype=np.float64).reshape(-1).tolist()  # raises on what is not a number
        return flat

    def _bin_held(self) -> None:
        """Bin the held rows and outputs into their bucket and the interval; the caller holds the lock."""
        if self._held_key is None or (not self._held_n and not self._held_outputs):
            return
        features = (self._features.count(self._held_rows[: self._held_n]) if self._width and self._held_n
                    else np.zeros(self._features.total, np.int64))
        self._add(self._held_key, features, self._output_counts(self._held_outputs))
        self._held_n = 0
        self._held_outputs = []

    def _add(self, key: int, features: np.ndarray, outputs: np.ndarray | None) -> None:
        bucket_features, bucket_outputs = self._bucket_at(key)
        bucket_features += features
        self._interval_features += features
        if outputs is not None:
            bucket_outputs += outputs
            self._interval_outputs += outputs

    def _output_counts(self, outputs: list[Any]) -> np.ndarray | None:
        if not outputs or self._n_out == 0:
            return None
        if self._out_bins is not None:
            return self._out_bins.count(np.asarray(outputs, dtype=np.float64).reshape(-1, 1))
        # Labels compare as strings, as the converter counted them (ints and "3" alike).
        labels = self._labels
        known = [i for i in (labels.get(str(v), -1) for v in outputs) if i >= 0]
        return np.bincount(np.asarray(known, dtype=np.int64), minlength=self._n_out)

    def window_counts(self, now: float) -> tuple[list[np.ndarray], np.ndarray]:
        """Per-feature bin counts and output counts over the last ``window_s`` seconds."""
        features = np.zeros(self._features.total, dtype=np.int64)
        outputs = np.zeros(self._n_out, dtype=np.int64)
        with self._lock:
            self._bin_held()
            self._bucket(now)  # evicts expired buckets
            for f, o in self._ring.values():
                features += f
                outputs += o
        return self._features.split(features), outputs

    def scores(self, now: float) -> list[DriftScore]:
        """PSI per feature over the window against the reference counts."""
        per_feature, _ = self.window_counts(now)
        out = []
        for ref, counts in zip(self.reference.features, per_feature, strict=True):
            value = psi(counts.tolist(), ref.counts)
            out.append(DriftScore(ref.name, value, band(value), int(counts.sum())))
        return out

    def output_score(self, now: float) -> DriftScore | None:
        """PSI of the predicted class (or value bin) distribution against the reference's."""
        if self._n_out == 0:
            return None
        _, outputs = self.window_counts(now)
        value = psi(outputs.tolist(), self.reference.output_counts)
        return DriftScore("output", value, band(value), int(outputs.sum()))

    def take_interval(self, *, include_features: bool = True) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
        """Counts since the last take, for a telemetry record: (per-feature bins, outputs).

        With ``include_features=False`` the feature counts are returned empty and keep
        accumulating for a later take, so nothing is lost when they are sent less often.
        """
        with self._lock:
            self._bin_held()
            outputs = tuple(int(v) for v in self._interval_outputs)
            self._interval_outputs[:] = 0
            if not include_features:
                return (), outputs
            split = self._features.split(self._interval_features)
            features = tuple(tuple(int(v) for v in f) for f in split)
            self._interval_features[:] = 0
        return features, outputs
