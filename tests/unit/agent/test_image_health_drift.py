"""An image bundle on the agent's side (issue 12, slice 4): the health check replays golden.npz's
8-bit pixels through edgefleet.images (and reports golden samples that are not pixels as
malformed, never raising); the drift window counts a request's image statistics exactly as the
converter counted the reference, and needs the image spec to do so."""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from agent.drift import DriftError, DriftWindow
from agent.health import check_health
from agent.runtime import load_session
from agent.slots import ModelStore
from agent.state import StateDir
from converter import ConvertOptions, convert
from edgefleet.bundle import read_bundle
from edgefleet.images import normalize
from edgefleet.profiles import load_profile
from tests.support.tensor_models import image_classifier, image_folder


@functools.cache
def bundle() -> Path:
    d = Path(tempfile.mkdtemp(prefix="edgefleet-image-health-"))
    return convert(ConvertOptions(image_classifier(d / "camera.onnx"), "generic-x86_64", "camera", "1.0.0", d,
                                  quantize="none", validation=image_folder(d / "photos", count=24),
                                  images={"image": {"color": "BGR", "mean": [0.4, 0.5, 0.6]}})).bundle_path


def test_the_health_check_replays_golden_pixels_and_reports_foreign_ones(tmp_path: Path) -> None:
    slot = ModelStore(StateDir(tmp_path / "state").ensure()).stage(read_bundle(bundle()))
    session = load_session(slot, load_profile("generic-x86_64"))
    golden = slot.golden()
    report = check_health(session, slot.manifest, golden, latency_runs=3)
    assert report.passed and report.agreement == 1.0 and report.rows == 24
    as_tensors = {**golden, "inputs": {"image": normalize(golden["inputs"]["image"], slot.manifest.inputs[0].image)}}
    refused = check_health(session, slot.manifest, as_tensors, latency_runs=3)
    assert not refused.passed and refused.reason == "golden_malformed"
    assert "not 8-bit pixels [n, 32, 32, 3]" in refused.message
    session.close()


def test_the_drift_window_counts_validation_images_as_the_reference_does() -> None:
    loaded = read_bundle(bundle())
    spec = loaded.manifest.inputs[0]
    assert spec.image is not None
    with pytest.raises(DriftError, match="image description was not given"):
        DriftWindow(loaded.reference())
    window = DriftWindow(loaded.reference(), images={"image": spec.image})
    # The golden samples are all 24 validation images: the reference's own counts come back.
    pixels = loaded.golden()["inputs"]["image"]
    window.observe({"image": normalize(pixels, spec.image)}, now=1.0)
    counts, _ = window.window_counts(2.0)
    assert [c.tolist() for c in counts] == [list(f.counts) for f in window.reference.features]
    assert all(s.psi == pytest.approx(0.0, abs=1e-9) for s in window.scores(2.0))
    brighter = normalize(np.clip(pixels.astype(int) + 90, 0, 255).astype(np.uint8), spec.image)
    window.observe({"image": brighter}, now=3.0)
    scores = {s.feature: s for s in window.scores(4.0)}
    assert scores["image.brightness"].band == "drift"


def test_loading_an_image_model_warms_up_the_decoders_before_its_first_request(tmp_path: Path) -> None:
    # A fresh interpreter, as an agent is: Pillow's decoders are imported by load_session, not by
    # the first picture a client sends (which probation would count against the latency budget).
    slot = ModelStore(StateDir(tmp_path / "state").ensure()).stage(read_bundle(bundle()))
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from agent.runtime import load_session\n"
        "from agent.slots import ModelStore\n"
        "from agent.state import StateDir\n"
        "from edgefleet.profiles import load_profile\n"
        "before = 'PIL.PngImagePlugin' in sys.modules\n"
        f"slot = ModelStore(StateDir(Path({str(tmp_path / 'state')!r}))).slot({slot.name!r}, {slot.sha256!r})\n"
        "load_session(slot, load_profile('generic-x86_64')).close()\n"
        "print(before, 'PIL.PngImagePlugin' in sys.modules, 'PIL.JpegImagePlugin' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["False", "True", "True"]
