"""The bundle manifest: what a model version is and how to run and check it.

``Manifest.from_dict`` is the schema: every field is checked, an unknown field is refused
(a typo would otherwise be ignored on a thousand devices), and the error names the field.
The manifest is written inside the bundle as ``manifest.json`` and, once the bundle is
published, is what the server, the agent and ``edgefleet bundle inspect`` all read.

Schema version 1 (see docs/contracts.md for the prose version):

    name, version              model name and semantic version
    format                     "onnx" | "tflite"; model_file is model.<format>
    task                       "classification" | "regression"
    quantization               what the converter did ("none", "fp16", "int8-dynamic", ...)
    runtime                    opset, op domains, execution providers the model may use
    inputs / outputs           TensorSpec lists (outputs carry a role)
    class_labels               labels for classifiers, in probability column order
    profiles                   firmware profiles the bundle was validated for
    source                     framework, sha256 and size of the original model
    report                     the conversion report's summary
    health_check               tolerance and latency budget for the on-device check
    golden_file, reference_file  file names inside the bundle
    files                      sha256 and size of every other file in the bundle
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.errors import ManifestError
from edgefleet.version import ModelVersion, check_model_name

SCHEMA_VERSION = 1
FORMATS = ("onnx", "tflite")
TASKS = ("classification", "regression")
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int32", "int64", "string", "bool")
ROLES = ("probabilities", "label", "value", "other")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _need(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ManifestError(f"manifest field '{where}{key}' is missing", fix="rebuild the bundle with `edgefleet convert`")
    value = data[key]
    if isinstance(value, bool) and kind is not bool and (kind is int or (isinstance(kind, tuple) and bool not in kind)):
        raise ManifestError(f"manifest field '{where}{key}' must be {_kind_name(kind)}, not a boolean")
    if not isinstance(value, kind):
        raise ManifestError(f"manifest field '{where}{key}' must be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)


def _only(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ManifestError(f"manifest has unknown field(s) {', '.join(where + u for u in unknown)}",
                            fix="this bundle was written by a newer or foreign tool; rebuild it with this edgefleet")


@dataclass(frozen=True)
class Quantization:
    """Affine int8/uint8 quantization of a tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ManifestError(f"quantization scale must be positive, got {self.scale}")

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Quantization:
        _only(data, {"scale", "zero_point"}, where)
        return cls(float(_need(data, "scale", (int, float), where)), _need(data, "zero_point", int, where))


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``shape`` uses -1 for a dynamic dimension (the batch)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    role: str = "other"
    feature_names: tuple[str, ...] | None = None
    quantization: Quantization | None = None
    allow_nan: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ManifestError("a tensor spec has an empty name")
        if self.dtype not in DTYPES:
            raise ManifestError(f"tensor {self.name!r} has dtype {self.dtype!r}", fix=f"use one of {', '.join(DTYPES)}")
        if any((not isinstance(d, int)) or d < -1 or d == 0 for d in self.shape):
            raise ManifestError(f"tensor {self.name!r} has shape {list(self.shape)}: dimensions must be positive or -1")
        if self.role not in ROLES:
            raise ManifestError(f"tensor {self.name!r} has role {self.role!r}", fix=f"use one of {', '.join(ROLES)}")
        if self.feature_names is not None:
            if len(set(self.feature_names)) != len(self.feature_names):
                raise ManifestError(f"tensor {self.name!r} lists a feature name twice")
            if self.shape and self.shape[-1] not in (-1, len(self.feature_names)):
                raise ManifestError(f"tensor {self.name!r} names {len(self.feature_names)} features but its last dimension is {self.shape[-1]}")

    @property
    def width(self) -> int | None:
        """Features per row for a 2-D [batch, features] tensor, else None."""
        if len(self.shape) == 2 and self.shape[1] > 0:
            return self.shape[1]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "role": self.role,
            "feature_names": list(self.feature_names) if self.feature_names is not None else None,
            "quantization": self.quantization.to_dict() if self.quantization else None,
            "allow_nan": self.allow_nan,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> TensorSpec:
        if not isinstance(data, Mapping):
            raise ManifestError(f"manifest field '{where.rstrip('.')}' must be an object")
        _only(data, {"name", "dtype", "shape", "role", "feature_names", "quantization", "allow_nan"}, where)
        names = data.get("feature_names")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise ManifestError(f"manifest field '{where}feature_names' must be a list of strings")
        quant = data.get("quantization")
        shape = _need(data, "shape", list, where)
        return cls(
            name=_need(data, "name", str, where),
            dtype=_need(data, "dtype", str, where),
            shape=tuple(shape),
            role=data.get("role", "other"),
            feature_names=tuple(names) if names is not None else None,
            quantization=Quantization.from_dict(quant, where + "quantization.") if quant is not None else None,
            allow_nan=bool(data.get("allow_nan", False)),
        )


@dataclass(frozen=True)
class HealthCheck:
    """What the agent checks on a staged model before it serves anything."""

    min_agreement: float
    max_rel_error: float
    latency_budget_ms: float

    def __post_init__(self) -> None:
        if not 0 <= self.min_agreement <= 1:
            raise ManifestError(f"health_check.min_agreement must be in [0, 1], got {self.min_agreement}")
        if self.max_rel_error < 0 or self.latency_budget_ms <= 0:
            raise ManifestError("health_check tolerances must be positive")

    def to_dict(self) -> dict[str, Any]:
        return {"min_agreement": self.min_agreement, "max_rel_error": self.max_rel_error,
                "latency_budget_ms": self.latency_budget_ms}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthCheck:
        _only(data, {"min_agreement", "max_rel_error", "latency_budget_ms"}, "health_check.")
        w = "health_check."
        return cls(float(_need(data, "min_agreement", (int, float), w)), float(_need(data, "max_rel_error", (int, float), w)),
                   float(_need(data, "latency_budget_ms", (int, float), w)))


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int

    def __post_init__(self) -> None:
        if not _SHA256.fullmatch(self.sha256) or self.size < 0:
            raise ManifestError("a file entry has a malformed sha256 or size")


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    format: str
    task: str
    quantization: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profiles: tuple[str, ...]
    health_check: HealthCheck
    files: Mapping[str, FileEntry]
    class_labels: tuple[str | int, ...] | None = None
    runtime: Mapping[str, Any] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)
    report: Mapping[str, Any] = field(default_factory=dict)
    golden_file: str = "golden.json"
    reference_file: str = "reference.json"
    created_by: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        try:
            check_model_name(self.name)
            ModelVersion.parse(self.version)
        except Exception as exc:
            raise ManifestError(str(exc)) from exc
        if self.schema_version != SCHEMA_VERSION:
            raise ManifestError(f"manifest schema_version {self.schema_version} is not supported (this edgefleet reads {SCHEMA_VERSION})",
                                fix="upgrade edgefleet on this machine")
        if self.format not in FORMATS:
            raise ManifestError(f"manifest format {self.format!r} is not supported", fix=f"use one of {', '.join(FORMATS)}")
        if self.task not in TASKS:
            raise ManifestError(f"manifest task {self.task!r} is not supported", fix=f"use one of {', '.join(TASKS)}")
        if not self.inputs or not self.outputs:
            raise ManifestError("a manifest needs at least one input and one output")
        if not self.profiles:
            raise ManifestError("a manifest must list the profiles it was validated for")
        for name in (self.model_file, self.golden_file, self.reference_file):
            if not _FILE.fullmatch(name):
                raise ManifestError(f"file name {name!r} is not allowed in a bundle")
            if name not in self.files:
                raise ManifestError(f"manifest does not list {name!r} in files", fix="rebuild the bundle with `edgefleet convert`")
        roles = {o.role for o in self.outputs}
        if self.task == "classification":
            if "probabilities" not in roles and "label" not in roles:
                raise ManifestError("a classifier's outputs need a 'probabilities' or 'label' role")
            if not self.class_labels:
                raise ManifestError("a classifier's manifest must list class_labels")
        elif "value" not in roles:
            raise ManifestError("a regressor's outputs need a 'value' role")

    @property
    def model_file(self) -> str:
        return f"model.{self.format}"

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def parsed_version(self) -> ModelVersion:
        return ModelVersion.parse(self.version)

    def output(self, role: str) -> TensorSpec | None:
        return next((o for o in self.outputs if o.role == role), None)

    @property
    def input(self) -> TensorSpec:
        return self.inputs[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "task": self.task,
            "quantization": self.quantization,
            "runtime": dict(self.runtime),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "class_labels": list(self.class_labels) if self.class_labels is not None else None,
            "profiles": list(self.profiles),
            "source": dict(self.source),
            "report": dict(self.report),
            "health_check": self.health_check.to_dict(),
            "golden_file": self.golden_file,
            "reference_file": self.reference_file,
            "files": {k: {"sha256": v.sha256, "size": v.size} for k, v in sorted(self.files.items())},
            "created_by": self.created_by,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, Mapping):
            raise ManifestError("manifest.json is not a JSON object")
        allowed = {"schema_version", "name", "version", "format", "task", "quantization", "runtime", "inputs", "outputs",
                   "class_labels", "profiles", "source", "report", "health_check", "golden_file", "reference_file",
                   "files", "created_by"}
        _only(data, allowed, "")
        files_raw = _need(data, "files", dict, "")
        files: dict[str, FileEntry] = {}
        for fname, entry in files_raw.items():
            if not isinstance(entry, Mapping):
                raise ManifestError(f"manifest field 'files.{fname}' must be an object")
            files[fname] = FileEntry(_need(entry, "sha256", str, f"files.{fname}."), _need(entry, "size", int, f"files.{fname}."))
        labels = data.get("class_labels")
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in labels)):
            raise ManifestError("manifest field 'class_labels' must be a list of strings or integers")
        profiles = _need(data, "profiles", list, "")
        if not all(isinstance(p, str) for p in profiles):
            raise ManifestError("manifest field 'profiles' must be a list of strings")
        return cls(
            schema_version=_need(data, "schema_version", int, ""),
            name=_need(data, "name", str, ""),
            version=_need(data, "version", str, ""),
            format=_need(data, "format", str, ""),
            task=_need(data, "task", str, ""),
            quantization=_need(data, "quantization", str, ""),
            runtime=data.get("runtime") or {},
            inputs=tuple(TensorSpec.from_dict(t, f"inputs[{i}].") for i, t in enumerate(_need(data, "inputs", list, ""))),
            outputs=tuple(TensorSpec.from_dict(t, f"outputs[{i}].") for i, t in enumerate(_need(data, "outputs", list, ""))),
            class_labels=tuple(labels) if labels is not None else None,
            profiles=tuple(profiles),
            source=data.get("source") or {},
            report=data.get("report") or {},
            health_check=HealthCheck.from_dict(_need(data, "health_check", dict, "")),
            golden_file=data.get("golden_file", "golden.json"),
            reference_file=data.get("reference_file", "reference.json"),
            files=files,
            created_by=data.get("created_by", ""),
        )
