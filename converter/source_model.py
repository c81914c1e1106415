"""``SourceModel``: the original model, and what the converter needs to know about it.

A value and the file hash that names its bytes. Every loader (``source`` for scikit-learn,
LightGBM, XGBoost and ONNX files, ``tf_source`` for Keras and SavedModel) returns one, and the
exporters, builders and the original-model predictor take one. It lives apart from the loaders
so that ``source`` can dispatch to ``tf_source`` without the two importing each other. This
module loads, converts and runs nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.errors import NotAModelError
from edgefleet.manifest import TensorSpec

FRAMEWORKS = ("sklearn", "lightgbm", "xgboost", "onnx", "keras", "savedmodel")


@dataclass(frozen=True)
class SourceModel:
    """The original model and what the converter needs to know about it."""

    framework: str
    path: Path
    sha256: str
    size: int
    task: str
    n_features: int
    class_labels: tuple[str | int, ...] | None
    feature_names: tuple[str, ...] | None
    model: Any
    kind: str = ""
    inputs: tuple[TensorSpec, ...] | None = None
    """Named inputs (schema 2): columns for a model fitted on a DataFrame that selects columns by
    name, tensors for an ONNX model with several or N-D inputs (``n_features`` then counts the
    inputs); None for a ``[batch, n_features]`` matrix model (every other source)."""

    def __post_init__(self) -> None:
        if self.framework not in FRAMEWORKS:
            raise NotAModelError(f"unknown framework {self.framework!r}")
        if self.task not in ("classification", "regression"):
            raise NotAModelError(f"{self.path}: task {self.task!r} is neither classification nor regression")
        if self.n_features <= 0:
            raise NotAModelError(f"{self.path}: the model's input width is unknown",
                                 fix="fit the model on a 2-D array, or export it with a fixed feature dimension")
        if self.inputs is not None and len(self.inputs) != self.n_features:  # one feature a column, or a count of inputs
            raise NotAModelError(f"internal: {self.path} has {len(self.inputs)} column inputs for {self.n_features} features")


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, or of a directory's files (relative names and contents, sorted)."""
    digest = hashlib.sha256()
    if path.is_dir():
        size = 0
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            data = item.read_bytes()
            digest.update(str(item.relative_to(path)).encode() + b"\0" + hashlib.sha256(data).digest())
            size += len(data)
        return digest.hexdigest(), size
    data = path.read_bytes()
    digest.update(data)
    return digest.hexdigest(), len(data)


def has_tensor_inputs(source: SourceModel) -> bool:
    """Whether the source takes named tensors (N-D or several inputs), not a matrix or columns."""
    return source.inputs is not None and any(spec.kind != "column" for spec in source.inputs)
