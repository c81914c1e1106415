"""The manifest schema refuses what a device could not run safely, and names the field."""

from __future__ import annotations

from typing import Any

import pytest

from edgefleet.bundle import build_bundle_bytes, read_bundle
from edgefleet.errors import ManifestError
from edgefleet.manifest import Manifest
from tests.unit.core.helpers import bundle_files, manifest_fields


def _manifest(**overrides: Any) -> Manifest:
    return read_bundle(build_bundle_bytes(manifest_fields(**overrides), bundle_files())).manifest


def test_round_trips() -> None:
    manifest = _manifest()
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    assert manifest.output("probabilities") is not None
    assert manifest.input.width == 2


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"format": "pt"}, "format 'pt'"),
        ({"task": "ranking"}, "task 'ranking'"),
        ({"version": "1.0"}, "semantic version"),
        ({"name": "Bad Name"}, "model name"),
        ({"profiles": []}, "profiles"),
        ({"class_labels": None}, "class_labels"),
        ({"schema_version": 2}, "schema_version 2"),
        ({"surprise": 1}, "unknown field"),
        ({"inputs": [{"name": "x", "dtype": "complex64", "shape": [-1, 2]}]}, "dtype 'complex64'"),
        ({"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 3], "feature_names": ["a", "b"]}]}, "names 2 features"),
        ({"outputs": [{"name": "y", "dtype": "float32", "shape": [-1], "role": "value"}]}, "'probabilities' or 'label'"),
        ({"health_check": {"min_agreement": 2, "max_rel_error": 0.1, "latency_budget_ms": 5}}, "min_agreement"),
        ({"health_check": {"min_agreement": True, "max_rel_error": 0.1, "latency_budget_ms": 5}}, "boolean"),
    ],
)
def test_rejects_bad_fields(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        _manifest(**overrides)


def test_quantized_tensor_needs_positive_scale() -> None:
    spec = {"name": "x", "dtype": "int8", "shape": [-1, 2], "quantization": {"scale": 0.0, "zero_point": 0}}
    with pytest.raises(ManifestError, match="scale"):
        _manifest(inputs=[spec])
