"""Fixtures for the converter's tests: trained examples (cached per session) and a converter call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from converter import ConversionResult, ConvertOptions, ExampleFiles, convert
from tests.support.bundles import example


@pytest.fixture
def digits() -> ExampleFiles:
    """MLPClassifier(256, 128) on digits: the issue's acceptance model."""
    return example("digits-mlp")


ConvertExample = Callable[..., ConversionResult]


@pytest.fixture
def convert_example(tmp_path: Path) -> ConvertExample:
    """Convert a cached example into tmp_path; keyword arguments override ConvertOptions fields."""

    def run(kind: str = "digits-mlp", **overrides: Any) -> ConversionResult:
        files = example(kind)
        fields: dict[str, Any] = {
            "model_path": files.model_path, "profile": "generic-x86_64", "name": kind, "version": "1.0.0",
            "output_dir": tmp_path / "out", "calibration": files.calibration_csv,
            "validation": files.validation_csv, "labels": files.labels_column,
        }
        fields.update(overrides)
        return convert(ConvertOptions(**fields))

    return run
