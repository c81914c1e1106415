"""The bundle manifest: what a model version is and how to run and check it.

``Manifest.from_dict`` is the schema: every field is checked, an unknown field is refused
(a typo would otherwise be ignored on a thousand devices), and the error names the field.
The manifest is written inside the bundle as ``manifest.json`` and, once the bundle is
published, is what the server, the agent and ``edgefleet bundle inspect`` all read.

Schema versions 1 and 2 are read (see docs/contracts.md for the prose version). Version 2
adds three fields to an input's TensorSpec: ``kind`` ("tensor", "column" or "image"),
``categories`` (a string column's training categories) and ``image`` (an ``ImageSpec``: layout,
size, colour order and preprocessing). A schema-1 document may not hold them. Writers use the
lowest schema that expresses the bundle (``Manifest.lowest_schema``), so a bundle with one 2-D
tensor input keeps its schema-1 bytes and reads on agents that predate version 2. Golden
samples in ``golden.npz`` (``edgefleet.golden``: tensor inputs, wide windows) need schema 2 too.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.errors import ManifestError, VersionError
from edgefleet.version import ModelVersion, check_model_name

SCHEMA_VERSION = 2
"""The newest schema this edgefleet reads and writes."""
SCHEMA_VERSIONS = (1, 2)
AGENT_READS_SINCE: Mapping[int, str] = {1: "0.0.0", 2: "0.1.0"}
"""The first edgefleet release whose agent reads each schema version. The server assigns a bundle
only to a device whose reported agent_version is at least this (``agent_reads``), so an old agent
is never sent a manifest it would refuse. Schema 2 came without a release bump (agents before and
after it report 0.1.0): raise this entry together with ``edgefleet.__version__`` at the next
release, so that the guard can tell them apart."""
FORMATS = ("onnx", "tflite")
TASKS = ("classification", "regression")
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int32", "int64", "string", "bool")
ROLES = ("probabilities", "label", "value", "other")
KINDS = ("tensor", "column", "image")
COLUMN_DTYPES = ("float32", "int64", "bool", "string")
IMAGE_DTYPES = ("float32", "uint8", "int8")
LAYOUTS = ("NHWC", "NCHW")
COLORS = ("RGB", "BGR", "GRAY")
RESIZES = ("bilinear", "nearest", "area", "none")
_V1_SPEC_FIELDS = frozenset({"name", "dtype", "shape", "role", "feature_names", "quantization", "allow_nan"})
_V2_SPEC_FIELDS = _V1_SPEC_FIELDS | {"kind", "categories", "image"}
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


def _optional(data: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    """An optional top-level field: ``default`` when absent or null, else it must be a ``kind``
    (``bundle inspect`` and the server read these as objects and strings)."""
    return default if data.get(key) is None else _need(data, key, kind, "")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)


def _only(data: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ManifestError(f"manifest has unknown field(s) {', '.join(where + u for u in unknown)}",
                            fix="this bundle was written by a newer or foreign tool; rebuild it with this edgefleet")


def agent_reads(agent_version: str, schema_version: int) -> bool:
    """Whether an agent reporting ``agent_version`` reads manifests of ``schema_version``.

    Schema 1 is read by every agent, whatever it reports. For a later schema the version must be
    a semantic version at or above ``AGENT_READS_SINCE``: an agent that reports none, or something
    else, is not trusted to read it.
    """
    since = AGENT_READS_SINCE.get(schema_version)
    if since is None:
        return False
    if schema_version == 1:
        return True
    try:
        return ModelVersion.parse(agent_version) >= ModelVersion.parse(since)
    except VersionError:  # no version reported, or not a semantic one
        return False


def _check_schema(version: int) -> None:
    if version not in SCHEMA_VERSIONS:
        raise ManifestError(f"manifest schema_version {version} is not supported "
                            f"(this edgefleet reads {', '.join(map(str, SCHEMA_VERSIONS))})",
                            fix="upgrade edgefleet on this machine")


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


def _numbers(data: Mapping[str, Any], key: str, where: str) -> tuple[float, ...]:
    values = _need(data, key, list, where)
    if not all(type(v) in (int, float) for v in values):
        raise ManifestError(f"manifest field '{where}{key}' must be a list of numbers")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class ImageSpec:
    """How an image input is laid out and preprocessed (schema 2).

    ``layout`` orders the axes after the batch (NHWC: height, width, channels). A decoded image
    is converted to ``color``, resized to ``height`` x ``width`` with ``resize`` (``none``: an
    image of another size is refused), then each value becomes ``(pixel * scale - mean[c]) /
    std[c]`` per channel ``c``. ``edgefleet.images`` is the one implementation of these steps.
    """

    layout: str
    height: int
    width: int
    channels: int
    color: str
    resize: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ManifestError(f"image layout {self.layout!r} is not known", fix=f"use one of {', '.join(LAYOUTS)}")
        if self.height <= 0 or self.width <= 0:
            raise ManifestError(f"image size {self.height}x{self.width} must be positive")
        if self.channels not in (1, 3):
            raise ManifestError(f"image channels must be 1 or 3, got {self.channels}")
        if self.color not in COLORS:
            raise ManifestError(f"image color {self.color!r} is not known", fix=f"use one of {', '.join(COLORS)}")
        if (self.color == "GRAY") != (self.channels == 1):
            raise ManifestError(f"image color {self.color} does not fit {self.channels} channel(s)",
                                fix="use GRAY with 1 channel, RGB or BGR with 3")
        if self.resize not in RESIZES:
            raise ManifestError(f"image resize {self.resize!r} is not known", fix=f"use one of {', '.join(RESIZES)}")
        if not self.scale > 0:
            raise ManifestError(f"image scale must be positive, got {self.scale}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ManifestError(f"image mean and std need one value per channel ({self.channels})")
        if not all(s > 0 for s in self.std):
            raise ManifestError("image std values must be positive")

    def shape(self) -> tuple[int, ...]:
        """The tensor shape this image spec implies, batch first (-1)."""
        if self.layout == "NHWC":
            return (-1, self.height, self.width, self.channels)
        return (-1, self.channels, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        return {"layout": self.layout, "height": self.height, "width": self.width, "channels": self.channels,
                "color": self.color, "resize": self.resize, "scale": self.scale, "mean": list(self.mean),
                "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ImageSpec:
        if not isinstance(data, Mapping):
            raise ManifestError(f"manifest field '{where.rstrip('.')}' must be an object")
        _only(data, {"layout", "height", "width", "channels", "color", "resize", "scale", "mean", "std"}, where)
        return cls(
            layout=_need(data, "layout", str, where), height=_need(data, "height", int, where),
            width=_need(data, "width", int, where), channels=_need(data, "channels", int, where),
            color=_need(data, "color", str, where), resize=_need(data, "resize", str, where),
            scale=float(_need(data, "scale", (int, float), where)),
            mean=_numbers(data, "mean", where), std=_numbers(data, "std", where),
        )


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. ``shape`` uses -1 for a dynamic dimension (the batch).

    ``kind`` says what an input is (schema 2): a ``tensor`` (any array; every schema-1 input),
    a ``column`` (one tabular field, shape [-1, 1]; a string column may list the training
    ``categories``) or an ``image`` (described by ``image``). Outputs are always tensors.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    role: str = "other"
    feature_names: tuple[str, ...] | None = None
    quantization: Quantization | None = None
    allow_nan: bool = False
    kind: str = "tensor"
    categories: tuple[str, ...] | None = None
    image: ImageSpec | None = None

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
        self._check_kind()

    def _check_kind(self) -> None:
        if self.kind not in KINDS:
            raise ManifestError(f"input {self.name!r} has kind {self.kind!r}", fix=f"use one of {', '.join(KINDS)}")
        if self.kind == "column":
            if self.shape != (-1, 1):
                raise ManifestError(f"column {self.name!r} has shape {list(self.shape)}; a column's shape is [-1, 1]")
            if self.feature_names is not None:
                raise ManifestError(f"column {self.name!r} lists feature_names; a column is one feature, named by its name")
            if self.dtype not in COLUMN_DTYPES:
                raise ManifestError(f"column {self.name!r} has dtype {self.dtype!r}", fix=f"use one of {', '.join(COLUMN_DTYPES)}")
        if self.categories is not None:
            if self.kind != "column" or self.dtype != "string":
                raise ManifestError(f"input {self.name!r} lists categories, which only a string column may")
            if not all(isinstance(c, str) for c in self.categories):
                raise ManifestError(f"column {self.name!r} has a category that is not a string")
            if len(set(self.categories)) != len(self.categories):
                raise ManifestError(f"column {self.name!r} lists a category twice")
        if self.kind == "image":
            if self.image is None:
                raise ManifestError(f"image input {self.name!r} has no image description",
                                    fix="give layout, height, width, channels, color, resize, scale, mean and std")
            if self.dtype not in IMAGE_DTYPES:
                raise ManifestError(f"image {self.name!r} has dtype {self.dtype!r}", fix=f"use one of {', '.join(IMAGE_DTYPES)}")
            if self.shape != self.image.shape():
                raise ManifestError(f"image {self.name!r} has shape {list(self.shape)} but its {self.image.layout} "
                                    f"description implies {list(self.image.shape())}")
        elif self.image is not None:
            raise ManifestError(f"input {self.name!r} has an image description but kind {self.kind!r}")

    @property
    def is_v1(self) -> bool:
        """True when schema 1 can express this spec (no kind, categories or image of its own)."""
        return self.kind == "tensor" and self.categories is None and self.image is None

    @property
    def width(self) -> int | None:
        """Features per row for a 2-D [batch, features] tensor, else None."""
        if len(self.shape) == 2 and self.shape[1] > 0:
            return self.shape[1]
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "role": self.role,
            "feature_names": list(self.feature_names) if self.feature_names is not None else None,
            "quantization": self.quantization.to_dict() if self.quantization else None,
            "allow_nan": self.allow_nan,
        }
        # Schema-2 fields only when set: a spec schema 1 can express keeps its schema-1 bytes.
        if self.kind != "tensor":
            out["kind"] = self.kind
        if self.categories is not None:
            out["categories"] = list(self.categories)
        if self.image is not None:
            out["image"] = self.image.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str, schema_version: int = SCHEMA_VERSION) -> TensorSpec:
        if not isinstance(data, Mapping):
            raise ManifestError(f"manifest field '{where.rstrip('.')}' must be an object")
        _only(data, _V1_SPEC_FIELDS if schema_version == 1 else _V2_SPEC_FIELDS, where)
        names = data.get("feature_names")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise ManifestError(f"manifest field '{where}feature_names' must be a list of strings")
        categories = data.get("categories")
        if categories is not None and (not isinstance(categories, list) or not all(isinstance(c, str) for c in categories)):
            raise ManifestError(f"manifest field '{where}categories' must be a list of strings")
        kind = data.get("kind", "tensor")
        if not isinstance(kind, str):
            raise ManifestError(f"manifest field '{where}kind' must be str, got {type(kind).__name__}")
        image = data.get("image")
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
            kind=kind,
            categories=tuple(categories) if categories is not None else None,
            image=ImageSpec.from_dict(image, where + "image.") if image is not None else None,
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
        _check_schema(self.schema_version)
        if self.format not in FORMATS:
            raise ManifestError(f"manifest format {self.format!r} is not supported", fix=f"use one of {', '.join(FORMATS)}")
        if self.task not in TASKS:
            raise ManifestError(f"manifest task {self.task!r} is not supported", fix=f"use one of {', '.join(TASKS)}")
        if not self.inputs or not self.outputs:
            raise ManifestError("a manifest needs at least one input and one output")
        self._check_specs()
        if self.schema_version == 1 and self.golden_file.endswith(".npz"):
            # A schema-1 reader (an agent before schema 2) reads golden samples as JSON only.
            raise ManifestError(f"golden_file {self.golden_file!r} is an .npz archive, which schema_version 1 "
                                "cannot hold", fix="write schema_version 2")
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

    def _check_specs(self) -> None:
        for i, spec in enumerate(self.inputs):
            if self.schema_version == 1 and not spec.is_v1:
                raise ManifestError(f"input {spec.name!r} (inputs[{i}]) has kind {spec.kind!r}, categories or an image "
                                    "description, which schema_version 1 cannot hold", fix="write schema_version 2")
            if self.schema_version >= 2 and (not spec.shape or spec.shape[0] != -1):
                raise ManifestError(f"input {spec.name!r} has shape {list(spec.shape)}; in schema 2 every input's "
                                    "first dimension is the batch, -1")
        if len({spec.name for spec in self.inputs}) != len(self.inputs):
            raise ManifestError("two inputs share a name")
        for spec in self.outputs:
            if not spec.is_v1:
                raise ManifestError(f"output {spec.name!r} has kind {spec.kind!r}, categories or an image description; "
                                    "outputs are plain tensors")

    @staticmethod
    def lowest_schema(inputs: Sequence[TensorSpec]) -> int:
        """The lowest schema version that expresses these inputs: 1 for one 2-D tensor, else 2.

        Writers use it, so every bundle schema 1 can describe keeps its schema-1 bytes (and its
        sha256), and only new kinds of model need a schema-2 reader on the device.
        """
        if len(inputs) == 1 and inputs[0].is_v1 and len(inputs[0].shape) == 2:
            return 1
        return 2

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
        """The one input of a single-input model (every schema-1 bundle the converter makes).

        Raises ManifestError for a model with several inputs, so a caller that predates them
        fails loudly instead of feeding input 0 alone.
        """
        if len(self.inputs) != 1:
            names = ", ".join(repr(s.name) for s in self.inputs[:5]) + (", ..." if len(self.inputs) > 5 else "")
            raise ManifestError(f"{self.ref} has {len(self.inputs)} inputs ({names}); use manifest.inputs",
                                fix="this code path handles single-input models only; upgrade it to read every input")
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
        schema = _need(data, "schema_version", int, "")
        _check_schema(schema)  # before the specs: their allowed fields depend on it
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
            schema_version=schema,
            name=_need(data, "name", str, ""),
            version=_need(data, "version", str, ""),
            format=_need(data, "format", str, ""),
            task=_need(data, "task", str, ""),
            quantization=_need(data, "quantization", str, ""),
            runtime=_optional(data, "runtime", dict, {}),
            inputs=tuple(TensorSpec.from_dict(t, f"inputs[{i}].", schema)
                         for i, t in enumerate(_need(data, "inputs", list, ""))),
            outputs=tuple(TensorSpec.from_dict(t, f"outputs[{i}].", schema)
                          for i, t in enumerate(_need(data, "outputs", list, ""))),
            class_labels=tuple(labels) if labels is not None else None,
            profiles=tuple(profiles),
            source=_optional(data, "source", dict, {}),
            report=_optional(data, "report", dict, {}),
            health_check=HealthCheck.from_dict(_need(data, "health_check", dict, "")),
            golden_file=_optional(data, "golden_file", str, "golden.json"),
            reference_file=_optional(data, "reference_file", str, "reference.json"),
            files=files,
            created_by=_optional(data, "created_by", str, ""),
        )
