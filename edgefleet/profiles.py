"""Firmware profiles: what a device target is and what a model for it must satisfy.

A profile is a TOML file (``firmware_profiles/<name>.toml``) read by the converter (what to
produce and which tolerance to prove) and by the agent (which runtime and execution providers
to use). Profiles are looked up in ``$EDGEFLEET_PROFILES_DIR`` first, then in the profiles
shipped with the package. Parsing is strict: an unknown or missing field is an error that
names the file, the field and the fix, because a typo in a profile would otherwise silently
ship the wrong model to a whole fleet.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from edgefleet.errors import ProfileError

FORMATS = ("onnx", "tflite")
RUNTIMES = ("onnxruntime", "litert")
QUANTIZATIONS = ("none", "fp16", "int8-dynamic", "int8-static", "int8")
ARCHITECTURES = ("aarch64", "armv7l", "x86_64")


@dataclass(frozen=True)
class Tolerance:
    """How close a converted model must stay to the original.

    min_agreement: share of rows whose top-1 class matches the original (classifiers).
    max_rel_error: mean absolute error divided by the original outputs' standard deviation
        (regressors).
    max_accuracy_drop: accuracy points (0..1) the conversion may lose against labels.
    """

    min_agreement: float
    max_rel_error: float
    max_accuracy_drop: float


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    architecture: str
    cores: int
    ram_mb: int
    accelerator: str
    runtime: str
    execution_providers: tuple[str, ...]
    intra_op_threads: int
    inter_op_threads: int
    allowed_formats: tuple[str, ...]
    default_format: str
    default_quantization: str
    max_model_bytes: int
    storage_budget_bytes: int
    latency_budget_ms: float
    tolerance: Tolerance
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["execution_providers"] = list(self.execution_providers)
        data["allowed_formats"] = list(self.allowed_formats)
        data.pop("source")
        return data

    def to_toml(self) -> str:
        """Render back to the file format (used when the server ships a profile to a device)."""
        lines = [
            f"name = {_toml_str(self.name)}",
            f"description = {_toml_str(self.description)}",
            "",
            "[hardware]",
            f"architecture = {_toml_str(self.architecture)}",
            f"cores = {self.cores}",
            f"ram_mb = {self.ram_mb}",
            f"accelerator = {_toml_str(self.accelerator)}",
            "",
            "[runtime]",
            f"preference = {_toml_str(self.runtime)}",
            "execution_providers = [" + ", ".join(_toml_str(p) for p in self.execution_providers) + "]",
            f"intra_op_threads = {self.intra_op_threads}",
            f"inter_op_threads = {self.inter_op_threads}",
            "",
            "[models]",
            "allowed_formats = [" + ", ".join(_toml_str(f) for f in self.allowed_formats) + "]",
            f"default_format = {_toml_str(self.default_format)}",
            f"default_quantization = {_toml_str(self.default_quantization)}",
            f"max_model_bytes = {self.max_model_bytes}",
            f"storage_budget_bytes = {self.storage_budget_bytes}",
            "",
            "[budget]",
            f"latency_ms = {self.latency_budget_ms!r}",
            "",
            "[tolerance]",
            f"min_agreement = {self.tolerance.min_agreement!r}",
            f"max_rel_error = {self.tolerance.max_rel_error!r}",
            f"max_accuracy_drop = {self.tolerance.max_accuracy_drop!r}",
            "",
        ]
        return "\n".join(lines)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# section -> field -> (python type, required)
_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "": {"name": str, "description": str},
    "hardware": {"architecture": str, "cores": int, "ram_mb": int, "accelerator": str},
    "runtime": {
        "preference": str,
        "execution_providers": list,
        "intra_op_threads": int,
        "inter_op_threads": int,
    },
    "models": {
        "allowed_formats": list,
        "default_format": str,
        "default_quantization": str,
        "max_model_bytes": int,
        "storage_budget_bytes": int,
    },
    "budget": {"latency_ms": (int, float)},
    "tolerance": {"min_agreement": (int, float), "max_rel_error": (int, float), "max_accuracy_drop": (int, float)},
}


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, problem: str, fix: str) -> ProfileError:
        return ProfileError(f"profile {self.source}: field '{field}' {problem}", fix=fix)

    def section(self, data: Mapping[str, Any], section: str) -> Mapping[str, Any]:
        if section == "":
            return data
        value = data.get(section)
        if not isinstance(value, dict):
            raise self.fail(section, "is missing or not a table", f"add a [{section}] table")
        return value

    def check(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        known_top = set(_SCHEMA[""]) | {s for s in _SCHEMA if s}
        for key in data:
            if key not in known_top:
                raise self.fail(key, "is not a known field", f"remove it, or use one of: {', '.join(sorted(known_top))}")
        for section, fields in _SCHEMA.items():
            table = self.section(data, section)
            for key in table:
                if key not in fields and section:
                    raise self.fail(f"{section}.{key}", "is not a known field",
                                    f"remove it, or use one of: {', '.join(sorted(fields))}")
            for key, expected in fields.items():
                dotted = f"{section}.{key}" if section else key
                if key not in table:
                    raise self.fail(dotted, "is missing", f"add `{key} = ...` to the [{section or 'top'}] table")
                value = table[key]
                if isinstance(value, bool) or not isinstance(value, expected):
                    names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
                    raise self.fail(dotted, f"is {type(value).__name__} {value!r}", f"make it a {names}")
                out[dotted] = value
        return out


def parse_profile(text: str, source: str = "<string>") -> Profile:
    """Parse and validate a profile's TOML text. ``source`` names the file in errors."""
    chk = _Checker(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {source} is not valid TOML: {exc}", fix="fix the TOML syntax at that line") from exc
    v = chk.check(data)

    def choice(field: str, allowed: tuple[str, ...]) -> str:
        if v[field] not in allowed:
            raise chk.fail(field, f"is {v[field]!r}", f"use one of: {', '.join(allowed)}")
        return str(v[field])

    def positive(field: str) -> Any:
        if v[field] <= 0:
            raise chk.fail(field, f"is {v[field]!r}", "make it a positive number")
        return v[field]

    def fraction(field: str) -> float:
        if not 0 <= v[field] <= 1:
            raise chk.fail(field, f"is {v[field]!r}", "make it a number between 0 and 1")
        return float(v[field])

    def str_list(field: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
        items = v[field]
        if not items or not all(isinstance(i, str) for i in items):
            raise chk.fail(field, "is empty or holds a non-string", "list at least one string")
        if allowed:
            for item in items:
                if item not in allowed:
                    raise chk.fail(field, f"holds {item!r}", f"use only: {', '.join(allowed)}")
        return tuple(items)

    name = v["name"]
    expected_name = Path(source).stem if source.endswith(".toml") else name
    if name != expected_name:
        raise chk.fail("name", f"is {name!r} but the file is {Path(source).name}", f"set name = \"{expected_name}\" or rename the file")
    formats = str_list("models.allowed_formats", FORMATS)
    default_format = choice("models.default_format", FORMATS)
    if default_format not in formats:
        raise chk.fail("models.default_format", f"is {default_format!r}, which allowed_formats does not list", "add it to allowed_formats or pick a listed one")
    providers = str_list("runtime.execution_providers")
    runtime = choice("runtime.preference", RUNTIMES)
    if runtime == "onnxruntime" and "CPUExecutionProvider" not in providers:
        raise chk.fail("runtime.execution_providers", "does not end in CPUExecutionProvider", "append \"CPUExecutionProvider\" so inference can always fall back to the CPU")
    return Profile(
        name=name,
        description=v["description"],
        architecture=choice("hardware.architecture", ARCHITECTURES),
        cores=positive("hardware.cores"),
        ram_mb=positive("hardware.ram_mb"),
        accelerator=v["hardware.accelerator"],
        runtime=runtime,
        execution_providers=providers,
        intra_op_threads=positive("runtime.intra_op_threads"),
        inter_op_threads=positive("runtime.inter_op_threads"),
        allowed_formats=formats,
        default_format=default_format,
        default_quantization=choice("models.default_quantization", QUANTIZATIONS),
        max_model_bytes=positive("models.max_model_bytes"),
        storage_budget_bytes=positive("models.storage_budget_bytes"),
        latency_budget_ms=float(positive("budget.latency_ms")),
        tolerance=Tolerance(
            min_agreement=fraction("tolerance.min_agreement"),
            max_rel_error=float(positive("tolerance.max_rel_error")),
            max_accuracy_drop=fraction("tolerance.max_accuracy_drop"),
        ),
        source=source,
    )


def load_profile_file(path: str | os.PathLike[str]) -> Profile:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ProfileError(f"profile file {p} does not exist", fix="check the path") from exc
    return parse_profile(text, str(p))


def _search_dirs() -> list[Path]:
    dirs: list[Path] = []
    extra = os.environ.get("EDGEFLEET_PROFILES_DIR")
    if extra:
        dirs.extend(Path(d) for d in extra.split(os.pathsep) if d)
    dirs.append(Path(str(resources.files("firmware_profiles"))))
    return dirs


def profile_names() -> list[str]:
    names: set[str] = set()
    for d in _search_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


def load_profile(name_or_path: str) -> Profile:
    """Load a profile by name (``rpi4-64``) or by path to a TOML file."""
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        return load_profile_file(name_or_path)
    for d in _search_dirs():
        candidate = d / f"{name_or_path}.toml"
        if candidate.is_file():
            return load_profile_file(candidate)
    known = ", ".join(profile_names()) or "none found"
    raise ProfileError(f"no firmware profile named {name_or_path!r}", fix=f"use one of: {known} (see `edgefleet profiles list`)")


def all_profiles() -> list[Profile]:
    return [load_profile(n) for n in profile_names()]
