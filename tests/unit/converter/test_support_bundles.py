"""The bundles other parts test with: real, readable, and (for the broken one) wrong on purpose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgefleet.bundle import read_bundle
from tests.support.bundles import make_broken_bundle, make_onnx_bundle


def _labels(model_bytes: bytes, rows: list[list[float]]) -> list[int]:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(["label"], {"input": np.asarray(rows, np.float32)})[0].tolist()


def test_onnx_bundle_golden_samples_match_its_model(tmp_path: Path) -> None:
    bundle = read_bundle(make_onnx_bundle(tmp_path, name="digits", version="2.0.0"))
    assert bundle.manifest.ref == "digits@2.0.0" and bundle.manifest.profiles == ("generic-x86_64",)
    golden = bundle.golden()
    assert _labels(bundle.model_bytes, golden["inputs"]) == golden["outputs"]["label"]


def test_broken_bundle_verifies_but_its_golden_samples_disagree_everywhere(tmp_path: Path) -> None:
    path = make_broken_bundle(tmp_path)
    assert list(tmp_path.iterdir()) == [tmp_path / "digits-broken-1.0.0.tar.gz"]
    bundle = read_bundle(path)  # hashes and manifest are all fine
    golden = bundle.golden()
    predicted = _labels(bundle.model_bytes, golden["inputs"])
    assert all(p != g for p, g in zip(predicted, golden["outputs"]["label"], strict=True))
