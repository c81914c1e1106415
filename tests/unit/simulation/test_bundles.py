"""The demo's broken version: a valid, verifiable bundle whose golden samples disagree with its model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgefleet.bundle import read_bundle
from simulation.bundles import break_golden
from tests.support.bundles import make_onnx_bundle


def agreement(bundle_path: Path) -> float:
    bundle = read_bundle(bundle_path)  # every hash and the manifest schema are checked here
    golden = bundle.golden()
    session = ort.InferenceSession(bundle.files[bundle.manifest.model_file], providers=["CPUExecutionProvider"])
    x = np.asarray(golden["inputs"], dtype=np.float32)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: x}),
                       strict=True))
    predicted = [str(v) for v in np.asarray(outputs["label"]).ravel()]
    expected = [str(v) for v in golden["outputs"]["label"]]
    return sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(expected)


def test_broken_version_verifies_but_no_golden_row_agrees(tmp_path: Path) -> None:
    good = make_onnx_bundle(tmp_path / "good", profile="rpi4-64", quantize="none")
    broken = break_golden(good, tmp_path / "broken", version="2.0.0")
    assert broken.name == "digits-2.0.0.tar.gz"
    assert read_bundle(broken).manifest.version == "2.0.0"
    assert agreement(good) > 0.95
    assert agreement(broken) == 0.0
