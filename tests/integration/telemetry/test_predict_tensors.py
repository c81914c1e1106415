"""The server's predict routes for a model with N-D named inputs (issue 12, slice 3): JSON by input
name, .npz and raw bodies, and an .npz batch upload, answered as the agent's serving table
answers them; refusals name the input and the shape it takes (422, 415 for other media types),
through the real app."""

from __future__ import annotations

import functools
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from agent.runtime import load_session
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from converter import ConvertOptions, convert
from edgefleet.bundle import read_bundle
from edgefleet.inputs import Body
from edgefleet.profiles import load_profile
from fleet_server.app import create_app
from tests.integration.server.harness import server_config
from tests.support.tensor_models import (
    audio_window,
    image_and_metadata,
    image_samples,
    save_samples,
    window_samples,
)

ADMIN = {"Authorization": "Bearer test-admin-token"}


@functools.cache
def bundles() -> dict[str, Path]:
    d = Path(tempfile.mkdtemp(prefix="edgefleet-server-tensors-"))
    image = save_samples(d / "image.npz", image_samples(40))
    audio = save_samples(d / "audio.npz", window_samples(20))
    return {name: convert(ConvertOptions(model, "generic-x86_64", name, "1.0.0", d, quantize="none",
                                         validation=data)).bundle_path
            for name, model, data in (("vision", image_and_metadata(d / "vision.onnx"), image),
                                      ("audio", audio_window(d / "audio.onnx"), audio))}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(server_config(tmp_path / "data"), mqtt=False)
    for path in bundles().values():
        app.state.ctx.registry.push(path)
    with TestClient(app) as test_client:
        yield test_client


def agent_answer(name: str, payload: object) -> list[object]:
    slot = ModelStore(StateDir(Path(tempfile.mkdtemp()) / "state").ensure()).stage(read_bundle(bundles()[name]))
    table = ServingTable()
    table.swap(name, load_session(slot, load_profile("generic-x86_64")))
    return table.predict(name, payload).predictions


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_tensor_bodies_are_answered_as_the_agent_answers_them(client: TestClient) -> None:
    vision = image_samples(4, seed=21)
    expected = agent_answer("vision", Body(npz(**vision), "application/x-npz"))
    url = "/api/v1/models/vision/predict"
    as_json = client.post(url, json={"inputs": {k: v.tolist() for k, v in vision.items()}}, headers=ADMIN)
    as_npz = client.post(url, content=npz(**vision), headers={**ADMIN, "Content-Type": "application/x-npz"})
    for answer in (as_json, as_npz):
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == expected

    windows = window_samples(2, seed=22)["window"]
    raw = client.post("/api/v1/models/audio/predict", content=windows.tobytes(), headers={
        **ADMIN, "Content-Type": "application/octet-stream", "X-Edgefleet-Shape": "2,16000", "X-Edgefleet-Dtype": "float32"})
    assert raw.status_code == 200, raw.text
    np.testing.assert_allclose(raw.json()["predictions"], agent_answer("audio", {"inputs": windows.tolist()}), atol=1e-5)

    batch = client.post("/api/v1/models/vision/predict/batch", headers=ADMIN,
                        files={"file": ("samples.npz", npz(**vision))})
    assert batch.status_code == 200, batch.text
    assert [int(line.split(",")[0]) for line in batch.text.splitlines()[1:]] == expected


def test_a_bad_tensor_is_refused_naming_the_input_and_its_shape(client: TestClient) -> None:
    vision = image_samples(2, seed=23)
    url = "/api/v1/models/vision/predict"
    wrong = client.post(url, json={"inputs": {"image": vision["image"].tolist(), "metadata": [[1.0] * 3] * 2}},
                        headers=ADMIN)
    assert wrong.status_code == 422
    assert "input 'metadata' has shape [2, 3] but the model takes [n, 8]" in wrong.json()["detail"]
    missing = client.post("/api/v1/models/vision/predict/batch", headers=ADMIN,
                          files={"file": ("samples.npz", npz(image=vision["image"]))})
    assert missing.status_code == 422 and "samples.npz: the archive lacks input(s) 'metadata'" in missing.json()["detail"]
    gif = client.post(url, content=b"GIF89a", headers={**ADMIN, "Content-Type": "image/gif"})
    assert gif.status_code == 415
