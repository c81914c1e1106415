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

import numpy as np
import onnx

from edgefleet.bundle import bundle_filename, read_bundle, write_bundle


def make_shifted_bundle(good: Path, directory: Path, version: str, *, limit: float = 16.0) -> Path:
    bundle = read_bundle(good)
    manifest = bundle.manifest
    graph_model = onnx.load_from_string(bundle.model_bytes)
    graph = graph_model.graph
    source = graph.input[0].name
    guarded = f"{source}_shifted"
    for node in graph.node:
        node.input[:] = [guarded if name == source else name for name in node.input]
    width = manifest.inputs[0].shape[-1]
    helper, proto = onnx.helper, onnx.TensorProto
    graph.initializer.extend([
        helper.make_tensor("shift_limit", proto.FLOAT, [], [limit]),
        helper.make_tensor("shift_reverse", proto.INT64, [width], list(range(width - 1, -1, -1))),
    ])
    guard = [
        helper.make_node("ReduceMax", [source], ["shift_max"], axes=[1], keepdims=1),
        helper.make_node("Greater", ["shift_max", "shift_limit"], ["shift_live"]),
        helper.make_node("Gather", [source, "shift_reverse"], ["shift_reversed"], axis=1),
        helper.make_node("Where", ["shift_live", "shift_reversed", source], [guarded]),
    ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(guard + nodes)
    onnx.checker.check_model(graph_model)
    files = dict(bundle.files)
    files[manifest.model_file] = graph_model.SerializeToString()
    fields = manifest.to_dict()
    fields.pop("files")
    fields["version"] = version
    path = directory / bundle_filename(manifest.name, version)
    write_bundle(path, fields, files)
    return path


def live_rows(golden_inputs: list[list[float]], n: int, *, gain: float = 1.5, seed: int = 0) -> list[list[float]]:
    """Rows like the golden ones as a sensor with ``gain`` more sends them (features past the golden range)."""
    rng = np.random.default_rng(seed)
    base = np.asarray(golden_inputs, dtype=np.float64)
    picked = base[rng.integers(0, len(base), size=n)] * gain
    return [[float(v) for v in row] for row in picked]
