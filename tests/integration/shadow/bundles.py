"""A candidate that passes its golden samples and still disagrees on live inputs (issue 18's case).

``make_shifted_bundle`` takes a real converted bundle and puts a guard in front of its model:
a row whose largest feature is within the range the golden samples hold (the digits' pixels,
0..16) goes through unchanged, so every golden sample gives the original answer and the health
check passes; a row with a feature above ``limit`` (what a recalibrated sensor with more gain
sends) has its features reversed first, which is what a model retrained on differently laid out
data would do with it. The serving version, given the same live rows, answers otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefleet.manifest import Manifest
from tests.support.bundles import with_input_guard


def make_shifted_bundle(good: Path, directory: Path, version: str, *, limit: float = 16.0) -> Path:
    def guard(manifest: Manifest, source: str, guarded: str) -> tuple[list[Any], list[Any]]:
        width = manifest.inputs[0].shape[-1]
        helper, proto = onnx.helper, onnx.TensorProto
        initializers = [
            helper.make_tensor("shift_limit", proto.FLOAT, [], [limit]),
            helper.make_tensor("shift_reverse", proto.INT64, [width], list(range(width - 1, -1, -1))),
        ]
        return initializers, [
            helper.make_node("ReduceMax", [source], ["shift_max"], axes=[1], keepdims=1),
            helper.make_node("Greater", ["shift_max", "shift_limit"], ["shift_live"]),
            helper.make_node("Gather", [source, "shift_reverse"], ["shift_reversed"], axis=1),
            helper.make_node("Where", ["shift_live", "shift_reversed", source], [guarded]),
        ]

    return with_input_guard(good, directory, version, guard)


def live_rows(golden_inputs: list[list[float]], n: int, *, gain: float = 1.5, seed: int = 0) -> list[list[float]]:
    """Rows like the golden ones as a sensor with ``gain`` more sends them (features past the golden range)."""
    rng = np.random.default_rng(seed)
    base = np.asarray(golden_inputs, dtype=np.float64)
    picked = base[rng.integers(0, len(base), size=n)] * gain
    return [[float(v) for v in row] for row in picked]
