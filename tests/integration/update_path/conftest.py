"""Bundles (built once per session by the real converter) and a fleet in real processes per test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest

from edgefleet.bundle import read_bundle
from edgefleet.manifest import Manifest
from simulation.fleet import mosquitto_binary
from tests.support.bundles import example, make_broken_bundle, make_onnx_bundle, with_input_guard
from tests.support.fleet import Fleet, fleet

MODEL = "digits"


@dataclass(frozen=True)
class Bundles:
    v1: Path            # good
    v2: Path            # good
    broken: Path        # fails its golden samples (health check)
    nan: Path           # passes its health check, serves NaN for a negative pixel (fails probation)
    other_profile: Path  # validated for rpi4-64 only
    rows: list[list[float]]  # real digits rows for the load


def make_nan_bundle(good: Path, directory: Path, version: str) -> Path:
    """``good``'s model behind a guard that is exactly 1 for pixels > -1 and NaN below.

    X * (sqrt(X + 1) / sqrt(X + 1)) is X itself for every pixel the golden samples hold (0..16),
    so the health check passes; a request with a pixel of -2 gets NaN probabilities, which is
    what probation's output watch is for.
    """
    def guard(manifest: Manifest, source: str, guarded: str) -> tuple[list[Any], list[Any]]:
        one = onnx.helper.make_tensor("guard_one", onnx.TensorProto.FLOAT, [], [1.0])
        return [one], [
            onnx.helper.make_node("Add", [source, "guard_one"], ["guard_shifted"]),
            onnx.helper.make_node("Sqrt", ["guard_shifted"], ["guard_root"]),
            onnx.helper.make_node("Div", ["guard_root", "guard_root"], ["guard_unit"]),
            onnx.helper.make_node("Mul", [source, "guard_unit"], [guarded]),
        ]

    return with_input_guard(good, directory, version, guard)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    directory = tmp_path_factory.mktemp("update-path-bundles")
    v1 = make_onnx_bundle(directory, name=MODEL, version="1.0.0")
    rpi = directory / "rpi"
    rpi.mkdir()
    rows = [[float(v) for v in row] for row in read_bundle(v1).golden()["inputs"][:2]]
    assert example().model_path.exists()
    return Bundles(
        v1=v1,
        v2=make_onnx_bundle(directory, name=MODEL, version="2.0.0"),
        broken=make_broken_bundle(directory, name=MODEL, version="2.1.0"),
        nan=make_nan_bundle(v1, directory, "2.2.0"),
        other_profile=make_onnx_bundle(rpi, name=MODEL, version="2.3.0", profile="rpi4-64"),
        rows=rows,
    )


@pytest.fixture
def running_fleet(tmp_path: Path) -> Iterator[Fleet]:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (scripts/test does this)")
    yield from fleet(tmp_path)
