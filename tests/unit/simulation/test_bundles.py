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


def test_demo_models_reuse_what_an_earlier_run_in_the_directory_trained_and_converted(tmp_path: Path) -> None:
    from simulation.bundles import PIPELINE_KIND, PIPELINE_TARGET, DemoModels

    first = DemoModels(tmp_path / "models").convert(PIPELINE_TARGET, "1.0.0", kind=PIPELINE_KIND)
    moved = tmp_path / "moved"
    (tmp_path / "models").rename(moved)  # the records name files relative to the directory
    again = DemoModels(moved)
    reused = again.convert(PIPELINE_TARGET, "1.0.0", kind=PIPELINE_KIND)
    assert again.reports[-1]["reused"] is True and reused.sha256 == first.sha256
    assert reused.report == first.report and reused.manifest == read_bundle(reused.bundle_path).manifest
    assert again.validation_records()  # the trained example is read back, not trained again
    # A bundle whose bytes changed since (another conversion under its name) is converted again.
    reused.bundle_path.write_bytes(b"not the recorded bundle")
    third = DemoModels(moved)
    converted = third.convert(PIPELINE_TARGET, "1.0.0", kind=PIPELINE_KIND)
    assert third.reports[-1]["reused"] is False and converted.sha256 == first.sha256
