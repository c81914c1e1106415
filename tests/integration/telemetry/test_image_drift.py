"""A brightness shift on one site's images fires the drift alert for that site only (issue 12, slice 4).

The converter makes an image bundle from a folder of 200 pictures (--image, a reference of image
statistics: brightness, contrast, saturation, the channel means and per-channel intensity
histograms); two real agent processes
serve it, connected to a real server through a real Mosquitto. Site a's camera sends fresh
pictures of the same kind as PNG; site b's sends the same kind of pictures 80 levels brighter
(an exposure fault). The server's drift view by site shows site b drifting on brightness, and
the drift rule fires for site b only (its webhook too).
"""

from __future__ import annotations

import functools
import io
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from agent.install import install_bundle
from converter import ConvertOptions, convert
from edgefleet.profiles import load_profile
from fleet_server.telemetry.alerts import AlertConfig, Rule
from simulation.fleet import MosquittoProcess
from tests.integration.agent.harness import AgentProcess, dev_state, eventually
from tests.integration.server.harness import RunningServer, server_config
from tests.integration.telemetry.conftest import Webhook
from tests.integration.telemetry.fleet import add_device
from tests.support.tensor_models import image_classifier, image_folder

ADMIN = {"Authorization": "Bearer test-admin-token"}
ROWS = 240  # the drift rule judges a group from 200 merged rows (its default min_rows)
BOUNDARY = "camera-frames"


@functools.cache
def camera_bundle() -> Path:
    d = Path(tempfile.mkdtemp(prefix="edgefleet-image-drift-"))
    return convert(ConvertOptions(image_classifier(d / "camera.onnx"), "generic-x86_64", "camera", "1.0.0", d,
                                  quantize="none", validation=image_folder(d / "photos", count=200, seed=31),
                                  images={"image": {}})).bundle_path


def frames(seed: int, brighter: int = 0) -> list[bytes]:
    """Fresh pictures of the validation data's kind as PNG, ``brighter`` levels brighter."""
    folder = image_folder(Path(tempfile.mkdtemp(prefix="frames-")), count=ROWS, seed=seed)
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.int64) + brighter
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def send(url: str, pictures: list[bytes]) -> None:
    for start in range(0, len(pictures), 40):  # several images a request: multipart
        body = b"".join(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{i}.png"\r\n'
                        "Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
                        for i, data in enumerate(pictures[start:start + 40]))
        answer = httpx.post(url, content=body + f"--{BOUNDARY}--\r\n".encode(), timeout=30,
                            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        assert answer.status_code == 200, answer.text


@pytest.fixture
def server(tmp_path: Path, mosquitto: MosquittoProcess, webhook: Webhook) -> Iterator[RunningServer]:
    alerts = AlertConfig(rules=(Rule.from_dict({"name": "camera-drift", "kind": "drift", "band": "drift",
                                                "match": "camera@1.0.0 site=*"}),),
                         webhook=webhook.url, evaluate_every_s=3600)
    config = server_config(tmp_path / "server", f"sqlite:///{tmp_path}/server.sqlite", broker_url=mosquitto.url,
                           alerts=alerts)
    with RunningServer(config) as running:
        running.ctx.registry.push(camera_bundle())
        assert running.ctx.mqtt.wait_connected(10)
        yield running


def _agent(tmp_path: Path, name: str, broker: MosquittoProcess) -> AgentProcess:
    state = dev_state(tmp_path / name, device_id=name, broker_url=broker.url)
    install_bundle(state, camera_bundle(), load_profile("generic-x86_64"))  # health check replays golden pixels
    toml = tmp_path / f"{name}.toml"
    toml.write_text("telemetry_interval_s = 0.4\ntelemetry_drift_every = 1\n")
    return AgentProcess(state.path, "--config", str(toml))


def test_a_brightness_shift_at_one_site_fires_the_drift_alert_for_that_site_only(
        tmp_path: Path, server: RunningServer, mosquitto: MosquittoProcess, webhook: Webhook) -> None:
    add_device(server.ctx.db, "cam-site-a", labels={"site": "a"})
    add_device(server.ctx.db, "cam-site-b", labels={"site": "b"})
    agents = [_agent(tmp_path, "cam-site-a", mosquitto), _agent(tmp_path, "cam-site-b", mosquitto)]
    try:
        site_a, site_b = (a.wait_ready() for a in agents)
        send(f"{site_a.url}/v1/models/camera/predict", frames(seed=41))
        send(f"{site_b.url}/v1/models/camera/predict", frames(seed=42, brighter=80))

        def drift_view() -> dict[str, Any] | None:
            view: dict[str, Any] = httpx.get(f"{server.url}/api/v1/models/camera/1.0.0/drift",
                                             params={"by": "label:site"}, headers=ADMIN).json()
            groups = {g["group"]: g for g in view["groups"]}
            seen = {name: max((f["rows"] for f in g["features"]), default=0) for name, g in groups.items()}
            return view if seen.get("site=a") == ROWS and seen.get("site=b") == ROWS else None

        assert eventually(drift_view, timeout=60), (site_b.log()[-2000:], server.ctx.ingest.counts())
        view = drift_view()
        assert view is not None
        groups = {g["group"]: g for g in view["groups"]}
        features = {f["feature"]: f for f in groups["site=b"]["features"]}
        assert set(features) == {"image.brightness", "image.contrast", "image.saturation", "image.mean.R",
                                 "image.mean.G", "image.mean.B",
                                 *(f"image.hist.{c}.{k}" for c in "RGB" for k in range(4))}
        assert groups["site=b"]["band"] == "drift" and features["image.brightness"]["band"] == "drift"
        assert groups["site=a"]["band"] != "drift", groups["site=a"]
        assert groups["site=a"]["max_psi"] < 0.25 < features["image.brightness"]["psi"]

        events = server.ctx.monitor.evaluate(now=time.time())
        assert [(e.subject, e.state) for e in events if e.rule.name == "camera-drift"] == [
            ("camera@1.0.0 site=b", "firing")]
        assert [(h["subject"], h["state"]) for h in webhook.received] == [("camera@1.0.0 site=b", "firing")]
    finally:
        for agent in agents:
            if agent.proc.poll() is None:
                agent.terminate()
