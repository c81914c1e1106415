"""python-tuf's own client, pointed at the running server's /tuf/, trusts what enrollment hands a device."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
from tuf.ngclient import Updater

from edgefleet.cli import main
from tests.integration.server.harness import RunningServer, make_bundle, server_config
from tests.support.bundles import make_onnx_bundle

ADMIN = {"Authorization": "Bearer test-admin-token"}


def _enroll(server: RunningServer) -> dict:
    token = httpx.post(f"{server.url}/api/v1/devices/enrollment-tokens", json={"profile": "rpi4-64"},
                       headers=ADMIN).json()["token"]
    response = httpx.post(f"{server.url}/api/v1/enroll", json={"token": token, "hostname": "pi"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _updater(grant: dict, state: Path) -> Updater:
    metadata = state / "tuf"
    metadata.mkdir(parents=True, exist_ok=True)
    if not (metadata / "root.json").exists():
        (metadata / "root.json").write_bytes(json.dumps(grant["tuf_root"]).encode())
    downloads = state / "downloads"
    downloads.mkdir(exist_ok=True)
    return Updater(metadata_dir=str(metadata), metadata_base_url=grant["tuf_metadata_url"],
                   target_base_url=grant["tuf_targets_url"], target_dir=str(downloads),
                   bootstrap=None)  # trust the root.json written above (what the agent stores)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> RunningServer:
    with RunningServer(server_config(tmp_path / "data", database_url), mqtt=False) as running:
        yield running


def test_ngclient_downloads_the_pushed_bundle_with_the_enrollment_root(server: RunningServer, tmp_path: Path) -> None:
    # The acceptance path: a bundle made by the converter, pushed, fetched with python-tuf.
    data = make_onnx_bundle(tmp_path / "bundles", name="digits", version="1.0.0").read_bytes()
    pushed = httpx.post(f"{server.url}/api/v1/models", files={"bundle": ("b.tar.gz", data)}, headers=ADMIN)
    assert pushed.status_code == 201
    grant = _enroll(server)
    updater = _updater(grant, tmp_path / "device")
    updater.refresh()
    info = updater.get_targetinfo("digits/digits-1.0.0.tar.gz")
    assert info is not None
    path = updater.download_target(info)
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert info.hashes["sha256"] == pushed.json()["sha256"]


def test_device_follows_a_root_rotation(server: RunningServer, tmp_path: Path) -> None:
    grant = _enroll(server)  # the device trusts root v1
    assert grant["tuf_root"]["signed"]["version"] == 1
    _updater(grant, tmp_path / "device").refresh()
    data_dir = str(server.config.data_dir)
    assert main(["keys", "rotate-root", "--data-dir", data_dir, "--root-keys", "2", "--root-threshold", "2"]) == 0
    httpx.post(f"{server.url}/api/v1/models", files={"bundle": ("b.tar.gz", make_bundle("digits", "2.0.0"))},
               headers=ADMIN)
    updater = _updater(grant, tmp_path / "device")  # a fresh client from the stored (v1) root
    updater.refresh()
    trusted = json.loads((tmp_path / "device" / "tuf" / "root.json").read_bytes())
    assert trusted["signed"]["version"] == 2
    assert trusted["signed"]["roles"]["root"]["threshold"] == 2
    assert updater.get_targetinfo("digits/digits-2.0.0.tar.gz") is not None
    # New enrollments get the new root.
    assert _enroll(server)["tuf_root"]["signed"]["version"] == 2
