"""The converter checks its converted model on the very golden samples a device's health check
will run (issue 12, slice 3): a bundle that passes on the whole validation set but misses on the
golden samples would be refused by every device, so it is refused at conversion instead."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from agent.health import check_health
from agent.runtime import load_session
from agent.slots import ModelStore
from agent.state import StateDir
from converter import ConvertOptions, convert
from converter.errors import ToleranceError
from edgefleet.bundle import read_bundle
from edgefleet.profiles import load_profile
from tests.support.bundles import example


def test_a_bundle_its_golden_samples_would_fail_is_refused(tmp_path: Path) -> None:
    # The random forest example in float32 ONNX flips 2 of its 32 golden labels (float64 vote ties),
    # though it agrees on 98.6% of the 143 validation rows.
    files = example("breast-cancer-rf")
    options = ConvertOptions(files.model_path, "generic-x86_64", "forest", "1.0.0", tmp_path, quantize="none",
                             validation=files.validation_csv, labels=files.labels_column)
    with pytest.raises(ToleranceError) as caught:
        convert(options)
    assert "on the bundle's 32 golden samples, which a device's health check runs, top-1 agreement 0.9375" \
        in caught.value.message
    forced = convert(ConvertOptions(**{**options.__dict__, "force": True}))
    assert forced.report["passed"] is False and forced.report["agreement"] >= 0.98
    slot = ModelStore(StateDir(Path(tempfile.mkdtemp()) / "state").ensure()).stage(read_bundle(forced.bundle_path))
    health = check_health(load_session(slot, load_profile("generic-x86_64")), slot.manifest, slot.golden())
    assert not health.passed and health.agreement == 0.9375  # what the converter predicted
