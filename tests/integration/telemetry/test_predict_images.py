"""The server's predict routes for image models (issue 12, slice 4), through the real app: image/png,
image/jpeg and multipart bodies, and a zipped folder of images as a batch upload, answered as the
agent's serving table answers the same bytes; every refusal is the agent's, with the server's
status (422 for the agent's 400, 413 and 415 as they are), and nothing answers 500."""

from __future__ import annotations

import functools
import io
import json
import tempfile
import zipfile
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
from edgefleet.errors import InputError
from edgefleet.inputs import Body
from edgefleet.profiles import load_profile
from fleet_server.app import create_app
from tests.integration.server.harness import server_config
from tests.support.tensor_models import (
    image_and_metadata,
    image_classifier,
    image_folder,
    image_samples,
    save_samples,
)

ADMIN = {"Authorization": "Bearer test-admin-token"}
BOUNDARY = "server-images"


@functools.cache
def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgefleet-server-images-"))


@functools.cache
def bundles() -> dict[str, Path]:
    d = workdir()
    photos = image_folder(d / "photos", count=12)
    vision = save_samples(d / "vision.npz", image_samples(40))
    return {
        "camera": convert(ConvertOptions(image_classifier(d / "camera.onnx"), "generic-x86_64", "camera", "1.0.0", d,
                                         quantize="none", validation=photos, images={"image": {}})).bundle_path,
        "vision": convert(ConvertOptions(image_and_metadata(d / "vision.onnx"), "generic-x86_64", "vision", "1.0.0", d,
                                         quantize="none", validation=vision, images={"image": {}})).bundle_path,
    }


@functools.cache
def agent() -> ServingTable:
    table = ServingTable()
    for name, path in bundles().items():
        slot = ModelStore(StateDir(Path(tempfile.mkdtemp()) / "state").ensure()).stage(read_bundle(path))
        table.swap(name, load_session(slot, load_profile("generic-x86_64")))
    return table


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(server_config(tmp_path / "data"), mqtt=False)
    for path in bundles().values():
        app.state.ctx.registry.push(path)
    with TestClient(app) as test_client:
        yield test_client


def pictures() -> list[Path]:
    return sorted(p for p in (workdir() / "photos").rglob("*") if p.is_file())


def multipart(*parts: tuple[str, str, bytes]) -> bytes:
    return b"".join(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\nContent-Type: {media}\r\n\r\n'
                    .encode() + data + b"\r\n" for name, media, data in parts) + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def bodies() -> list[tuple[str, bytes, str]]:
    png = next(p for p in pictures() if p.suffix == ".png").read_bytes()
    jpeg = next(p for p in pictures() if p.suffix == ".jpg").read_bytes()
    meta = json.dumps(np.linspace(-1, 1, 16).reshape(2, 8).tolist()).encode()
    return [
        ("camera", png, "image/png"),
        ("camera", jpeg, "image/jpeg"),
        ("camera", multipart(("a", "image/png", png), ("b", "image/jpeg", jpeg)), MULTIPART),
        ("vision", multipart(("image", "image/png", png), ("image", "image/jpeg", jpeg),
                             ("metadata", "application/json", meta)), MULTIPART),
        # refusals
        ("camera", b"not an image", "image/png"),
        ("camera", png[:70], "image/png"),
        ("vision", png, "image/png"),
        ("vision", multipart(("image", "image/png", png)), MULTIPART),
        ("vision", multipart(("image", "image/png", png), ("colour", "application/json", b"[1]")), MULTIPART),
        ("camera", multipart(("image", "image/png", png)), "multipart/form-data"),
        ("camera", b"GIF89a", "image/gif"),
    ]


@pytest.mark.parametrize("index", range(11))
def test_image_bodies_are_answered_and_refused_as_the_agent_does(client: TestClient, index: int) -> None:
    name, data, content_type = bodies()[index]
    try:
        expected: object = agent().predict(name, Body.from_headers(data, content_type)).predictions
        status = 200
    except InputError as exc:
        expected, status = (exc.message, exc.fix), exc.status
    answer = client.post(f"/api/v1/models/{name}/predict", content=data, headers={**ADMIN, "Content-Type": content_type})
    assert answer.status_code == {200: 200, 400: 422, 413: 413, 415: 415}[status], answer.text
    if status == 200:
        assert answer.json()["predictions"] == expected
    else:
        assert (answer.json()["detail"], answer.json()["fix"]) == expected


def test_a_zipped_folder_of_images_is_a_batch_upload(client: TestClient) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in reversed(pictures()):
            archive.write(path, f"photos/{path.relative_to(workdir() / 'photos')}")
        archive.writestr("photos/README.txt", "not an image: skipped")
    batch = client.post("/api/v1/models/camera/predict/batch", headers=ADMIN,
                        files={"file": ("photos.zip", buffer.getvalue())})
    assert batch.status_code == 200, batch.text
    lines = batch.text.splitlines()
    assert lines[0] == "file,prediction,p_0,p_1,p_2,p_3"
    names = [f"photos/{p.relative_to(workdir() / 'photos')}" for p in pictures()]
    assert [line.split(",")[0] for line in lines[1:]] == names  # sorted by path
    expected = agent().predict("camera", Body.from_headers(
        multipart(*[("image", "image/png", p.read_bytes()) for p in pictures()]), MULTIPART)).predictions
    assert [int(line.split(",")[1]) for line in lines[1:]] == expected

    one = client.post("/api/v1/models/camera/predict/batch", headers=ADMIN,
                      files={"file": ("one.png", pictures()[1].read_bytes())})
    assert one.status_code == 200 and one.text.splitlines()[1].startswith("one.png,")

    broken = io.BytesIO()
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("a.png", pictures()[1].read_bytes())
        archive.writestr("b.png", b"garbage")
    refused = client.post("/api/v1/models/camera/predict/batch", headers=ADMIN,
                          files={"file": ("photos.zip", broken.getvalue())})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("photos.zip: b.png: ")
    not_zip = client.post("/api/v1/models/camera/predict/batch", headers=ADMIN,
                          files={"file": ("photos.zip", b"PK not really")})
    assert not_zip.status_code == 422 and "not a readable .zip archive" in not_zip.json()["detail"]
    vision = client.post("/api/v1/models/vision/predict/batch", headers=ADMIN,
                         files={"file": ("photos.zip", buffer.getvalue())})
    assert vision.status_code == 422 and "feeds a model whose one input is an image" in vision.json()["detail"]
