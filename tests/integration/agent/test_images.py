"""Image models on a real agent (issue 12, slice 4): ONNX models with an NCHW image input declared
with --image, converted from a folder of PNG/JPEG pictures (labels from subfolders) or an .npz,
installed by `edgefleet agent install` (the health check replays golden.npz's 8-bit pixels
through edgefleet.images), and served from image/png, image/jpeg, multipart and .npy bodies. The
agent's answers equal the converted model run in-process on the same preprocessed array. Bad
images are 4xx naming what is expected; `edgefleet agent predict` takes a folder of images."""

from __future__ import annotations

import csv
import functools
import io
import json
import struct
import tempfile
import zlib
from pathlib import Path

import httpx
import numpy as np

from converter import ConvertOptions, convert
from converter.predictors import OnnxPredictor, Outputs
from edgefleet.bundle import read_bundle
from edgefleet.golden import read_golden
from edgefleet.images import preprocess
from tests.integration.agent.harness import AgentProcess, cli, dev_state
from tests.support.tensor_models import (
    image_and_metadata,
    image_classifier,
    image_folder,
    image_samples,
    save_samples,
)

LABELS = (0, 1, 2, 3)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@functools.cache
def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgefleet-agent-images-"))


@functools.cache
def bundles() -> dict[str, Path]:
    d = workdir()
    photos = image_folder(d / "photos")
    vision_data = save_samples(d / "vision.npz", image_samples(120))
    camera = ConvertOptions(image_classifier(d / "camera.onnx"), "generic-x86_64", "camera", "1.0.0", d,
                            quantize="none", validation=photos,
                            images={"image": {"mean": list(MEAN), "std": list(STD)}})
    vision = ConvertOptions(image_and_metadata(d / "vision.onnx"), "generic-x86_64", "vision", "1.0.0", d,
                            quantize="none", validation=vision_data, images={"image": {}})
    return {"camera": convert(camera).bundle_path, "vision": convert(vision).bundle_path}


def in_process(name: str, feeds: dict[str, np.ndarray]) -> Outputs:
    loaded = read_bundle(bundles()[name])
    return OnnxPredictor(loaded.model_bytes, {o.name: o.role for o in loaded.manifest.outputs}).predict(feeds)


def pictures() -> list[Path]:
    return sorted(p for p in (workdir() / "photos").rglob("*") if p.is_file())


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def multipart(parts: list[tuple[str, str, bytes]], boundary: str = "edgefleet-test") -> tuple[bytes, str]:
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
                    f"Content-Type: {media}\r\n\r\n".encode() + data + b"\r\n" for name, media, data in parts)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_the_bundle_describes_the_image_and_keeps_golden_pixels() -> None:
    loaded = read_bundle(bundles()["camera"])
    spec = loaded.manifest.inputs[0]
    assert spec.kind == "image" and spec.image is not None
    assert (spec.image.layout, spec.image.height, spec.image.width, spec.image.color) == ("NCHW", 32, 32, "RGB")
    assert spec.image.mean == MEAN and spec.image.std == STD
    golden = read_golden(loaded.manifest.golden_file, loaded.files[loaded.manifest.golden_file])
    assert golden["inputs"]["image"].dtype == np.uint8 and golden["inputs"]["image"].shape == (32, 32, 32, 3)
    reference = json.loads(loaded.files["reference.json"])
    assert [f["name"] for f in reference["features"]] == [
        "image.brightness", "image.contrast", "image.saturation", "image.mean.R", "image.mean.G", "image.mean.B",
        *(f"image.hist.{c}.{k}" for c in "RGB" for k in range(4))]
    assert loaded.manifest.report["accuracy_original"] is not None  # labels from the subfolders


def test_the_agent_answers_png_jpeg_multipart_and_npy_as_the_model_in_process(tmp_path: Path) -> None:
    state = dev_state(tmp_path / "state")
    for bundle in bundles().values():
        installed = cli("agent", "install", str(bundle), "--state-dir", str(state.path), "--json")
        assert installed.returncode == 0, installed.stderr  # the health check replayed golden.npz's pixels
    files = pictures()[:6]
    png = next(p for p in files if p.suffix == ".png").read_bytes()
    jpeg = next(p for p in files if p.suffix == ".jpg").read_bytes()
    spec = read_bundle(bundles()["camera"]).manifest.inputs[0].image
    assert spec is not None
    tensors = preprocess([png, jpeg], spec)
    expected = in_process("camera", {"image": tensors})
    assert expected.probabilities is not None
    vision_spec = read_bundle(bundles()["vision"]).manifest.inputs[0].image
    assert vision_spec is not None
    metadata = np.random.default_rng(3).normal(0, 1, (2, 8)).astype(np.float32)
    vision_expected = in_process("vision", {"image": preprocess([png, jpeg], vision_spec), "metadata": metadata})
    assert vision_expected.probabilities is not None

    with AgentProcess(state.path, "--no-mqtt") as agent:
        url = f"{agent.url}/v1/models/camera/predict"
        as_png = httpx.post(url, content=png, headers={"Content-Type": "image/png"}, timeout=30)
        as_jpeg = httpx.post(url, content=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=30)
        body, content_type = multipart([("file", "image/png", png), ("file", "image/jpeg", jpeg)])
        as_parts = httpx.post(url, content=body, headers={"Content-Type": content_type}, timeout=30)
        as_npy = httpx.post(url, content=npy(tensors), headers={"Content-Type": "application/x-npy"}, timeout=30)
        for answer, rows in ((as_png, slice(0, 1)), (as_jpeg, slice(1, 2)), (as_parts, slice(0, 2)),
                             (as_npy, slice(0, 2))):
            assert answer.status_code == 200, answer.text
            got = answer.json()
            assert got["predictions"] == expected.top1(LABELS)[rows].tolist()
            np.testing.assert_allclose(got["probabilities"], expected.probabilities[rows], rtol=0, atol=1e-6)

        # A model with an image and a metadata vector: image parts by input name, metadata as JSON or .npy.
        vision = f"{agent.url}/v1/models/vision/predict"
        for meta_part in (("metadata", "application/json", json.dumps(metadata.tolist()).encode()),
                          ("metadata", "application/x-npy", npy(metadata))):
            body, content_type = multipart([("image", "image/png", png), meta_part, ("image", "image/jpeg", jpeg)])
            answer = httpx.post(vision, content=body, headers={"Content-Type": content_type}, timeout=30)
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(answer.json()["probabilities"], vision_expected.probabilities, rtol=0, atol=1e-6)

        refusals = [
            (url, b"GIF89a not a png", "image/png", 400, "is not a PNG or JPEG image"),
            (url, png[:80], "image/png", 400, "is a damaged PNG image"),
            (url, png_claiming(30_000, 2_000), "image/png", 413, "is 30000x2000 pixels, over the limit"),
            (vision, png, "image/png", 400, "takes 2 inputs"),
            (url, b"{}", "text/plain", 415, "not read here"),
            (url, b"{}", "application/x-www-form-urlencoded", 415, "curl -d's default"),  # the fix names the header
        ]
        for target, data, media, status, words in refusals:
            answer = httpx.post(target, content=data, headers={"Content-Type": media}, timeout=30)
            assert answer.status_code == status and words in answer.json()["detail"], (media, answer.text)
        body, content_type = multipart([("image", "image/png", png)])
        missing = httpx.post(vision, content=body, headers={"Content-Type": content_type}, timeout=30)
        assert missing.status_code == 400 and missing.json()["field"] == "metadata"
        assert "metadata [n, 8]" in missing.json()["fix"]
        assert httpx.get(f"{agent.url}/healthz", timeout=10).status_code == 200  # nothing broke


def test_agent_predict_reads_a_folder_of_images(tmp_path: Path) -> None:
    state = dev_state(tmp_path / "state")
    assert cli("agent", "install", str(bundles()["camera"]), "--state-dir", str(state.path)).returncode == 0
    out = tmp_path / "out.csv"
    ran = cli("agent", "predict", "--model", "camera", "--input", str(workdir() / "photos"), "--output", str(out),
              "--state-dir", str(state.path), "--chunk-rows", "5", "--no-progress")
    assert ran.returncode == 0, ran.stderr
    rows = list(csv.DictReader(out.open()))
    files = pictures()
    assert [r["file"] for r in rows] == [str(p.relative_to(workdir() / "photos")) for p in files]
    spec = read_bundle(bundles()["camera"]).manifest.inputs[0].image
    assert spec is not None
    expected = in_process("camera", {"image": preprocess([p.read_bytes() for p in files], spec)})
    assert [int(r["prediction"]) for r in rows] == expected.top1(LABELS).tolist()

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(files[0].read_bytes())
    (broken / "b.png").write_bytes(b"not an image at all")
    refused = cli("agent", "predict", "--model", "camera", "--input", str(broken), "--output", str(tmp_path / "x.csv"),
                  "--state-dir", str(state.path), "--no-progress")
    assert refused.returncode != 0 and "b.png" in refused.stderr and "not a PNG or JPEG image" in refused.stderr
    assert not (tmp_path / "x.csv").exists()
