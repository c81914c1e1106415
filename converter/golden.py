"""Golden samples and the drift reference profile that travel in every bundle.

``golden_document`` picks a fixed, seeded subset of rows and records the ORIGINAL model's
outputs for them: the device checks a staged model against these before it serves. Inputs
are a list of rows for a matrix model (schema 1) and a mapping of input name to ``[rows, 1]``
values for a model with named columns (schema 2), strings included.
``reference_document`` records per-feature quantile bins and the output distribution, the
baseline the device's drift scores compare live traffic with. Shapes: docs/contracts.md.

Pure functions over arrays; they neither run models nor write files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from converter.predictors import Batch, Outputs, batch_rows

GOLDEN_ROWS = 32
GOLDEN_SEED = 20240611
REFERENCE_BINS = 10


def golden_rows(total: int, count: int = GOLDEN_ROWS, seed: int = GOLDEN_SEED) -> np.ndarray:
    """Indices of the golden rows: the same for the same data, sorted, at most ``count``."""
    if total <= count:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def _plain(values: np.ndarray) -> list[Any]:
    return [v.item() if hasattr(v, "item") else v for v in np.asarray(values, dtype=object).reshape(-1)]


def golden_document(features: Batch, original: Outputs, task: str,
                    class_labels: Sequence[Any] | None) -> dict[str, Any]:
    rows = golden_rows(batch_rows(features))
    picked = original.take(rows)
    outputs: dict[str, Any]
    if task == "regression":
        outputs = {"value": picked.regression().reshape(len(rows), -1)[:, 0].tolist()}
    else:
        outputs = {"label": _plain(picked.top1(class_labels))}
        if picked.probabilities is not None:
            outputs["probabilities"] = np.asarray(picked.probabilities, dtype=np.float64).tolist()
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


def reference_document(features: np.ndarray, feature_names: Sequence[str] | None, original: Outputs,
                       task: str, class_labels: Sequence[Any] | None) -> dict[str, Any]:
    names = list(feature_names) if feature_names else [f"f{i}" for i in range(features.shape[1])]
    per_feature = []
    for i, name in enumerate(names):
        edges, counts = _bins(features[:, i])
        per_feature.append({"name": name, "edges": edges, "counts": counts})
    outputs: dict[str, Any]
    if task == "regression":
        edges, counts = _bins(original.regression()[:, 0])
        outputs = {"kind": "bins", "edges": edges, "counts": counts}
    else:
        labels = list(class_labels or [])
        predicted = [str(v) for v in original.top1(labels)]
        outputs = {"kind": "classes", "labels": labels, "counts": [predicted.count(str(c)) for c in labels]}
    return {"rows": len(features), "features": per_feature, "outputs": outputs}
