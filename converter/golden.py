"""Golden samples and the drift reference profile that travel in every bundle.

``golden_document`` picks a fixed, seeded subset of rows and records the ORIGINAL model's
outputs for them: the device checks a staged model against these before it serves. Inputs
are a list of rows for a matrix model (schema 1) and a mapping of input name to ``[rows, 1]``
values for a model with named columns (schema 2), strings included.
A model with tensor inputs keeps them in ``golden.npz`` (``golden_npz``, ``edgefleet.golden``),
each input in its own dtype, with fewer samples where they are large (``GOLDEN_MAX_BYTES``).
``reference_document`` records per-feature quantile bins and the output distribution, the
baseline the device's drift scores compare live traffic with; ``column_reference_document`` does
the same for a model with named columns, one feature per column in input order: numeric columns
as quantile bins, string columns as category counts (the spec's training categories, then one
"unseen" count for values outside them). ``summary_reference_document`` describes tensor inputs
by per-sample summary statistics (``edgefleet.summaries``), one binned feature per input and
statistic, named ``INPUT.STATISTIC``. Shapes: docs/contracts.md.

Pure functions over arrays; they neither run models nor write files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from converter.predictors import Batch, Outputs, batch_rows
from edgefleet.golden import encode
from edgefleet.images import image_statistics, statistic_names
from edgefleet.manifest import ImageSpec, TensorSpec
from edgefleet.summaries import TENSOR_STATISTICS, feature_name, statistics

GOLDEN_ROWS = 32
# golden.npz of a tensor model keeps at most about this many bytes of inputs (and at least
# GOLDEN_MIN_ROWS samples): 32 audio windows of 16,000 float32 would be 2 MB in every bundle.
GOLDEN_MAX_BYTES = 1 << 20
GOLDEN_MIN_ROWS = 4
GOLDEN_SEED = 20240611
REFERENCE_BINS = 10
# A string column without training categories (its encoder kept none) is described by the data's
# most frequent values, at most this many; rarer ones count as unseen, so the reference and the
# telemetry stay small whatever the column holds.
MAX_REFERENCE_CATEGORIES = 64


def golden_rows(total: int, count: int = GOLDEN_ROWS, seed: int = GOLDEN_SEED) -> np.ndarray:
    """Indices of the golden rows: the same for the same data, sorted, at most ``count``."""
    if total <= count:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def _plain(values: np.ndarray) -> list[Any]:
    return [v.item() if hasattr(v, "item") else v for v in np.asarray(values, dtype=object).reshape(-1)]


def _golden_outputs(picked: Outputs, task: str, class_labels: Sequence[Any] | None) -> dict[str, Any]:
    outputs: dict[str, Any]
    if task == "regression":
        outputs = {"value": picked.regression().reshape(len(picked.regression()), -1)[:, 0].tolist()}
    else:
        outputs = {"label": _plain(picked.top1(class_labels))}
        if picked.probabilities is not None:
            outputs["probabilities"] = np.asarray(picked.probabilities, dtype=np.float64).tolist()
    return outputs


def golden_document(features: Batch, original: Outputs, task: str,
                    class_labels: Sequence[Any] | None) -> dict[str, Any]:
    rows = golden_rows(batch_rows(features))
    outputs = _golden_outputs(original.take(rows), task, class_labels)
    inputs: Any
    if isinstance(features, Mapping):
        inputs = {name: _column_values(np.asarray(column)[rows]) for name, column in features.items()}
    else:
        inputs = np.asarray(features[rows], dtype=np.float32).tolist()
    return {"inputs": inputs, "outputs": outputs}


def _column_values(column: np.ndarray) -> list[Any]:
    # Strings stay strings; numbers go through float32, as the converted model reads them.
    if column.dtype == object:
        return column.tolist()
    return np.asarray(column, dtype=np.float32).tolist()


def _bins(values: np.ndarray) -> tuple[list[float], list[int]]:
    edges = np.unique(np.quantile(values.astype(np.float64), np.linspace(0.0, 1.0, REFERENCE_BINS + 1)))
    if len(edges) == 1:  # a constant feature: one bin around its value
        edges = np.array([edges[0], edges[0]])
    # First and last bins are open-ended (docs/contracts.md), so count with inner edges only.
    counts = np.bincount(np.searchsorted(edges[1:-1], values, side="right"), minlength=len(edges) - 1)
    return [float(e) for e in edges], [int(c) for c in counts]


def _categories(values: np.ndarray, categories: Sequence[str] | None) -> tuple[list[str], list[int]]:
    """Counts per category in the listed order, then the count of values outside them (unseen)."""
    texts = [str(v) for v in np.asarray(values, dtype=object).reshape(-1)]
    if categories:
        names = list(categories)
    else:
        frequency: dict[str, int] = {}
        for text in texts:
            frequency[text] = frequency.get(text, 0) + 1
        # Most frequent first, ties by name, so the same data always gives the same reference.
        names = sorted(sorted(frequency, key=lambda c: (-frequency[c], c))[:MAX_REFERENCE_CATEGORIES])
    index = {name: i for i, name in enumerate(names)}
    counts = [0] * (len(names) + 1)
    for text in texts:
        counts[index.get(text, len(names))] += 1
    return names, counts


def _outputs_document(original: Outputs, task: str, class_labels: Sequence[Any] | None) -> dict[str, Any]:
    if task == "regression":
        edges, counts = _bins(original.regression()[:, 0])
        return {"kind": "bins", "edges": edges, "counts": counts}
    labels = list(class_labels or [])
    predicted = [str(v) for v in original.top1(labels)]
    return {"kind": "classes", "labels": labels, "counts": [predicted.count(str(c)) for c in labels]}


def reference_document(features: np.ndarray, feature_names: Sequence[str] | None, original: Outputs,
                       task: str, class_labels: Sequence[Any] | None) -> dict[str, Any]:
    names = list(feature_names) if feature_names else [f"f{i}" for i in range(features.shape[1])]
    per_feature = []
    for i, name in enumerate(names):
        edges, counts = _bins(features[:, i])
        per_feature.append({"name": name, "edges": edges, "counts": counts})
    return {"rows": len(features), "features": per_feature, "outputs": _outputs_document(original, task, class_labels)}


def column_reference_document(columns: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec], original: Outputs,
                              task: str, class_labels: Sequence[Any] | None) -> dict[str, Any]:
    """The reference of a model with named column inputs: one feature per input, named after it."""
    per_feature: list[dict[str, Any]] = []
    for spec in inputs:
        values = np.asarray(columns[spec.name]).reshape(-1)
        if spec.dtype == "string":
            names, counts = _categories(values, spec.categories)
            per_feature.append({"name": spec.name, "kind": "categories", "categories": names, "counts": counts})
        else:
            edges, bin_counts = _bins(values.astype(np.float64))
            per_feature.append({"name": spec.name, "edges": edges, "counts": bin_counts})
    rows = len(np.asarray(columns[inputs[0].name])) if inputs else 0
    return {"rows": rows, "features": per_feature, "outputs": _outputs_document(original, task, class_labels)}


def golden_indices(features: Batch, *, compact: bool) -> np.ndarray:
    """The rows the golden file keeps: ``golden_rows``, fewer for a compact (golden.npz) file of
    large samples. The converter checks its converted model on exactly these, as a device will."""
    total = batch_rows(features)
    if not compact:
        return golden_rows(total)
    arrays = features.values() if isinstance(features, Mapping) else [features]
    sample_bytes = sum(int(np.asarray(a)[:1].nbytes) for a in arrays) or 1
    return golden_rows(total, max(GOLDEN_MIN_ROWS, min(GOLDEN_ROWS, GOLDEN_MAX_BYTES // sample_bytes)))


def golden_npz(arrays: Mapping[str, np.ndarray], original: Outputs, task: str,
               class_labels: Sequence[Any] | None, *, rows: np.ndarray | None = None) -> bytes:
    """golden.npz for a model with tensor inputs: seeded samples in their own dtype (an image
    input's as 8-bit pixels), and the original model's outputs for them. ``rows``: the samples to
    keep (default ``golden_indices`` of ``arrays``)."""
    rows = golden_indices(arrays, compact=True) if rows is None else rows
    inputs = {name: np.asarray(values)[rows] for name, values in arrays.items()}
    return encode(inputs, _golden_outputs(original.take(rows), task, class_labels))


def summary_reference_document(arrays: Mapping[str, np.ndarray], original: Outputs, task: str,
                               class_labels: Sequence[Any] | None,
                               images: Mapping[str, ImageSpec] | None = None) -> dict[str, Any]:
    """The reference of a model with tensor inputs: each input's per-sample statistics, binned;
    an image input's are image statistics (``edgefleet.images.image_statistics``: brightness,
    contrast, saturation, channel means) of the tensors the model ran on."""
    per_feature: list[dict[str, Any]] = []
    for name, values in arrays.items():
        image = (images or {}).get(name)
        names = statistic_names(image) if image is not None else TENSOR_STATISTICS
        summary = (image_statistics(np.asarray(values), image, names) if image is not None
                   else statistics(np.asarray(values), TENSOR_STATISTICS))
        for j, statistic in enumerate(names):
            edges, counts = _bins(summary[:, j])
            per_feature.append({"name": feature_name(name, statistic), "edges": edges, "counts": counts,
                                "input": name, "statistic": statistic})
    return {"rows": batch_rows(arrays), "features": per_feature,
            "outputs": _outputs_document(original, task, class_labels)}
