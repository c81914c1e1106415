"""The Keras CNN of issue 12 on a real agent: the digits CNN with a ``(None, 32, 32, 3)`` input,
declared an image (``--image image``), converted to TFLite full int8 and to ONNX int8-static
(each checked >= 98% agreement and <= 30% of float32 by the converter's own proof and asserted
here), installed by `edgefleet agent install` (the health check replays the golden pixels), and
asked through the agent's HTTP API with PNG, JPEG and NPY bodies. Its answers equal the converted
model run in-process (converter.predictors, LiteRT / ONNX Runtime) on the same preprocessed array."""

from __future__ import annotations

import functools
import io
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from converter import ConvertOptions, convert
from converter.examples import digit_images
from converter.predictors import OnnxPredictor, Outputs, TflitePredictor
from edgefleet.bundle import read_bundle
from edgefleet.images import encode_png, preprocess
from tests.integration.agent.harness import AgentProcess, cli, dev_state
from tests.support.keras_models import image_example

pytestmark = pytest.mark.tflite
VARIANTS = {"digits-tflite": ("tflite", "int8"), "digits-onnx": ("onnx", "int8-static")}


@functools.cache
def bundles() -> dict[str, Path]:
    files = image_example()
    out = Path(tempfile.mkdtemp(prefix="edgefleet-keras-images-"))
    made = {}
    for name, (fmt, quantize) in VARIANTS.items():
        result = convert(ConvertOptions(files.model_path, "generic-x86_64", name, "1.0.0", out, format=fmt,
                                        quantize=quantize, calibration=files.calibration_npz,
                                        validation=files.validation_npz, labels=files.labels_key,
                                        images={"image": {}}))
        assert result.report["agreement"] >= 0.98 and result.report["size_ratio"] <= 0.30, result.report
        made[name] = result.bundle_path
    return made


def in_process(bundle: Path, tensor: np.ndarray) -> Outputs:
    loaded = read_bundle(bundle)
    if loaded.manifest.format == "tflite":
        return TflitePredictor(loaded.model_bytes, loaded.manifest.task).predict({"image": tensor})
    return OnnxPredictor(loaded.model_bytes, {o.name: o.role for o in loaded.manifest.outputs}).predict({"image": tensor})


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_the_keras_cnn_answers_png_jpeg_and_npy_as_the_converted_model_in_process(tmp_path: Path) -> None:
    images, labels = digit_images()
    pixels = np.round(images[-3:] * 255).astype(np.uint8)  # held-out digits, as a camera would store them
    png = encode_png(pixels[0])
    jpeg_buffer = io.BytesIO()
    Image.fromarray(pixels[1]).save(jpeg_buffer, format="JPEG", quality=95)
    jpeg = jpeg_buffer.getvalue()
    state = dev_state(tmp_path / "state")
    for bundle in bundles().values():
        installed = cli("agent", "install", str(bundle), "--state-dir", str(state.path), "--json", timeout=180)
        assert installed.returncode == 0, installed.stderr  # the health check passed on the golden pixels

    with AgentProcess(state.path, "--no-mqtt") as agent:
        for name, bundle in bundles().items():
            spec = read_bundle(bundle).manifest.inputs[0]
            assert spec.kind == "image" and spec.image is not None
            tensor = preprocess([png, jpeg], spec.image)  # float32, what the agent feeds (quantized by the manifest)
            expected = in_process(bundle, tensor)
            assert expected.probabilities is not None
            url = f"{agent.url}/v1/models/{name}/predict"
            answers = [
                (httpx.post(url, content=png, headers={"Content-Type": "image/png"}, timeout=30), slice(0, 1)),
                (httpx.post(url, content=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=30), slice(1, 2)),
                (httpx.post(url, content=npy(tensor), headers={"Content-Type": "application/x-npy"}, timeout=30),
                 slice(0, 2)),
            ]
            for answer, rows in answers:
                assert answer.status_code == 200, (name, answer.text)
                got = answer.json()
                np.testing.assert_allclose(got["probabilities"], expected.probabilities[rows], rtol=0, atol=1e-6)
                assert got["predictions"] == np.argmax(expected.probabilities[rows], axis=1).tolist()
            # The digits the camera saw: the model reads them right.
            assert answers[2][0].json()["predictions"] == labels[-3:-1].tolist()
