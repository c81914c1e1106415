"""N-D tensor models on a real agent (issue 12, slice 3): an ONNX model with an NCHW image input
and a named metadata vector, and a 1-D convolution over [batch, 16000] windows, built with
onnx.helper, converted, installed (the health check runs golden.npz), and served from JSON by
input name, .npz, .npy and raw little-endian bodies, answering as the converter's in-process
ONNX run does; a wrong shape or dtype is a 400 naming the input and the shape it takes."""

from __future__ import annotations

import functools
import io
import tempfile
from pathlib import Path

import httpx
import numpy as np

from converter import ConvertOptions, convert
from converter.predictors import OnnxPredictor, Outputs
from edgefleet.bundle import read_bundle
from tests.integration.agent.harness import AgentProcess, cli, dev_state
from tests.support.tensor_models import (
    audio_window,
    image_and_metadata,
    image_samples,
    save_samples,
    window_samples,
)


@functools.cache
def bundles() -> dict[str, Path]:
    d = Path(tempfile.mkdtemp(prefix="edgefleet-agent-tensors-"))
    image = save_samples(d / "image.npz", image_samples(200))
    audio = save_samples(d / "audio.npz", window_samples(40))
    return {
        "vision": convert(ConvertOptions(image_and_metadata(d / "vision.onnx"), "generic-x86_64", "vision", "1.0.0", d,
                                         quantize="int8-static", calibration=image, validation=image)).bundle_path,
        "audio": convert(ConvertOptions(audio_window(d / "audio.onnx"), "generic-x86_64", "audio", "1.0.0", d,
                                        quantize="none", validation=audio)).bundle_path,
    }


def in_process(name: str, feeds: dict[str, np.ndarray]) -> Outputs:
    loaded = read_bundle(bundles()[name])
    return OnnxPredictor(loaded.model_bytes, {o.name: o.role for o in loaded.manifest.outputs}).predict(feeds)


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_the_agent_serves_nd_tensor_models_from_every_body_form(tmp_path: Path) -> None:
    state = dev_state(tmp_path / "state")
    for bundle in bundles().values():
        installed = cli("agent", "install", str(bundle), "--state-dir", str(state.path), "--json")
        assert installed.returncode == 0, installed.stderr  # the health check ran golden.npz
    vision = image_samples(5, seed=11)
    windows = window_samples(3, seed=12)["window"]
    expected = in_process("vision", vision)
    expected_values = in_process("audio", {"window": windows}).regression()[:, 0]
    assert expected.probabilities is not None
    with AgentProcess(state.path, "--no-mqtt") as agent:
        url = f"{agent.url}/v1/models/vision/predict"
        as_json = httpx.post(url, json={"inputs": {name: a.tolist() for name, a in vision.items()}}, timeout=30)
        as_npz = httpx.post(url, content=npz(**vision), headers={"Content-Type": "application/x-npz"}, timeout=30)
        for answer in (as_json, as_npz):
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["predictions"] == expected.top1((0, 1, 2, 3)).tolist()
            np.testing.assert_allclose(body["probabilities"], expected.probabilities, rtol=0, atol=1e-6)

        audio = f"{agent.url}/v1/models/audio/predict"
        raw = httpx.post(audio, content=windows.astype("<f4").tobytes(), timeout=30, headers={
            "Content-Type": "application/octet-stream", "X-Edgefleet-Shape": "3,16000", "X-Edgefleet-Dtype": "float32"})
        as_npy = httpx.post(audio, content=npy(windows), headers={"Content-Type": "application/x-npy"}, timeout=30)
        one = httpx.post(audio, json={"inputs": windows[0].tolist()}, timeout=30)
        for answer, want in ((raw, expected_values), (as_npy, expected_values), (one, expected_values[:1])):
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(answer.json()["predictions"], want, rtol=1e-5, atol=1e-5)

        wrong = httpx.post(url, json={"inputs": {"image": vision["image"][:, :, :16].tolist(),
                                                 "metadata": vision["metadata"].tolist()}}, timeout=30)
        assert wrong.status_code == 400
        problem = wrong.json()
        assert problem["field"] == "image"
        assert "input 'image' has shape [5, 3, 16, 32] but the model takes [n, 3, 32, 32]" in problem["detail"]
        missing = httpx.post(url, content=npz(image=vision["image"]), headers={"Content-Type": "application/x-npz"},
                             timeout=30)
        assert missing.status_code == 400 and missing.json()["field"] == "metadata"
        assert "metadata [n, 8]" in missing.json()["fix"]
        booleans = httpx.post(url, content=npz(image=vision["image"], metadata=vision["metadata"] > 0),
                              headers={"Content-Type": "application/x-npz"}, timeout=30)
        assert booleans.status_code == 400 and "input 'metadata' was sent as bool values" in booleans.json()["detail"]
        short = httpx.post(audio, content=b"\0" * 100, timeout=30, headers={
            "Content-Type": "application/octet-stream", "X-Edgefleet-Shape": "1,16000", "X-Edgefleet-Dtype": "float32"})
        assert short.status_code == 400 and "needs 64000 bytes, the body has 100" in short.json()["detail"]
        narrow = httpx.post(audio, json={"inputs": [[0.0] * 100]}, timeout=30)
        assert narrow.status_code == 400 and "takes 16000" in narrow.json()["detail"]
        gif = httpx.post(audio, content=b"GIF89a", headers={"Content-Type": "image/gif"}, timeout=30)
        assert gif.status_code == 415

        described = httpx.get(f"{agent.url}/v1/models/vision", timeout=10).json()
        assert [(i["name"], i["shape"]) for i in described["inputs"]] == [("image", [-1, 3, 32, 32]),
                                                                        ("metadata", [-1, 8])]
