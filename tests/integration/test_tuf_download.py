"""A real TUF client (tuf.ngclient over HTTP) against the fleet server's repository.

The repository directory is served by a plain HTTP server exactly as docs/contracts.md lays
it out (``/tuf/metadata/``, ``/tuf/targets/``); the client starts from the root.json that
enrollment hands a device, downloads a real bundle (a scikit-learn model converted with
skl2onnx), follows two root rotations, and refuses tampered targets and metadata.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import Updater

from edgefleet.bundle import build_bundle_bytes, read_bundle
from fleet_server.trust.keys import KeyStore, init_keys
from fleet_server.trust.rotation import rotate_root
from fleet_server.trust.tuf_repo import TufRepository


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server over ``tmp_path/www``; yields (base URL, directory)."""
    www = tmp_path / "www"
    www.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www
    server.shutdown()
    server.server_close()


def make_bundle(version: str) -> bytes:
    """A real, tiny ONNX classifier bundle (LogisticRegression on 2 features)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 2)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = LogisticRegression().fit(x, y)
    onx = to_onnx(model, x[:1], options={id(model): {"zipmap": False}},
                  target_opset={"": 17, "ai.onnx.ml": 3})
    golden_x = x[:8]
    golden = {"inputs": golden_x.tolist(),
              "outputs": {"label": model.predict(golden_x).tolist(),
                          "probabilities": model.predict_proba(golden_x).tolist()}}
    fields = {
        "schema_version": 1, "name": "tiny", "version": version, "format": "onnx",
        "task": "classification", "quantization": "none",
        "runtime": {"opset": 17, "domains": ["", "ai.onnx.ml"]},
        "inputs": [{"name": onx.graph.input[0].name, "dtype": "float32", "shape": [-1, 2],
                    "feature_names": ["a", "b"]}],
        "outputs": [{"name": "label", "dtype": "int64", "shape": [-1], "role": "label"},
                    {"name": "probabilities", "dtype": "float32", "shape": [-1, 2], "role": "probabilities"}],
        "class_labels": [0, 1],
        "profiles": ["generic-x86_64"],
        "health_check": {"min_agreement": 0.98, "max_rel_error": 0.05, "latency_budget_ms": 50.0},
    }
    files = {"model.onnx": onx.SerializeToString(), "golden.json": json.dumps(golden).encode(),
             "reference.json": json.dumps({"rows": 60, "features": []}).encode()}
    return build_bundle_bytes(fields, files)


def updater(base: str, client: Path, bootstrap: bytes | None) -> Updater:
    (client / "tuf").mkdir(parents=True, exist_ok=True)
    (client / "downloads").mkdir(parents=True, exist_ok=True)
    return Updater(metadata_dir=str(client / "tuf"), metadata_base_url=f"{base}/tuf/metadata/",
                   target_dir=str(client / "downloads"), target_base_url=f"{base}/tuf/targets/",
                   bootstrap=bootstrap)


def download(client: Updater, target_path: str) -> bytes:
    client.refresh()
    info = client.get_targetinfo(target_path)
    assert info is not None, f"{target_path} is not in the targets metadata"
    return Path(client.download_target(info)).read_bytes()


@pytest.fixture
def repo(tmp_path: Path, served: tuple[str, Path]) -> TufRepository:
    init_keys(tmp_path / "data" / "keys", tmp_path / "offline-root")
    return TufRepository.create(served[1] / "tuf", KeyStore.load(tmp_path / "data" / "keys"), tmp_path / "offline-root")


def test_device_downloads_a_real_bundle_and_follows_root_rotation(
    tmp_path: Path, served: tuple[str, Path], repo: TufRepository
) -> None:
    base, _ = served
    bundle = make_bundle("1.0.0")
    info = repo.add_target("tiny/tiny-1.0.0.tar.gz", bundle)
    enrolled_root = repo.root_json()  # what enrollment gives the device

    data = download(updater(base, tmp_path / "device", enrolled_root), "tiny/tiny-1.0.0.tar.gz")
    assert hashlib.sha256(data).hexdigest() == info.sha256 == hashlib.sha256(bundle).hexdigest()
    opened = read_bundle(data)
    session = ort.InferenceSession(opened.model_bytes, providers=["CPUExecutionProvider"])
    golden = opened.golden()
    labels = session.run(["label"], {session.get_inputs()[0].name: np.asarray(golden["inputs"], np.float32)})[0]
    assert labels.tolist() == golden["outputs"]["label"]

    # Two rotations (1 key -> 2-of-2 -> 1 key); the device only ever saw root v1.
    rotate_root(tmp_path / "data" / "keys", tmp_path / "offline-root", repo, new_root_key_count=2, new_threshold=2)
    assert rotate_root(tmp_path / "data" / "keys", tmp_path / "offline-root", repo) == 3
    newer = make_bundle("1.1.0")
    repo.add_target("tiny/tiny-1.1.0.tar.gz", newer)
    restarted = updater(base, tmp_path / "device", None)  # a restart: trusts its cached root.json
    assert download(restarted, "tiny/tiny-1.1.0.tar.gz") == newer
    trusted = json.loads((tmp_path / "device" / "tuf" / "root.json").read_bytes())
    assert trusted["signed"]["version"] == 3


def test_a_tampered_target_file_is_refused(tmp_path: Path, served: tuple[str, Path], repo: TufRepository) -> None:
    base, _ = served
    bundle = make_bundle("1.0.0")
    info = repo.add_target("tiny/tiny-1.0.0.tar.gz", bundle)
    stored = repo.targets_dir / info.stored_name
    evil = bytearray(bundle)
    evil[len(evil) // 2] ^= 0xFF  # same length, one byte flipped
    stored.write_bytes(bytes(evil))
    client = updater(base, tmp_path / "device", repo.root_json())
    with pytest.raises(tuf_errors.LengthOrHashMismatchError):
        download(client, "tiny/tiny-1.0.0.tar.gz")
    assert not list((tmp_path / "device" / "downloads").rglob("*.tar.gz"))


def test_targets_metadata_rewritten_without_the_key_is_refused(
    tmp_path: Path, served: tuple[str, Path], repo: TufRepository
) -> None:
    base, _ = served
    repo.add_target("tiny/tiny-1.0.0.tar.gz", make_bundle("1.0.0"))
    # The attacker controls the web server's files but not the targets key.
    evil = b"arbitrary package"
    evil_sha = hashlib.sha256(evil).hexdigest()
    (repo.targets_dir / "tiny" / f"{evil_sha}.tiny-1.0.0.tar.gz").write_bytes(evil)
    targets_file = repo.metadata_dir / "2.targets.json"
    document = json.loads(targets_file.read_bytes())
    document["signed"]["targets"]["tiny/tiny-1.0.0.tar.gz"] = {"length": len(evil), "hashes": {"sha256": evil_sha}}
    targets_file.write_text(json.dumps(document))
    client = updater(base, tmp_path / "device", repo.root_json())
    with pytest.raises(tuf_errors.UnsignedMetadataError):
        download(client, "tiny/tiny-1.0.0.tar.gz")


def test_a_replayed_old_timestamp_is_refused(tmp_path: Path, served: tuple[str, Path], repo: TufRepository) -> None:
    base, _ = served
    repo.add_target("tiny/tiny-1.0.0.tar.gz", b"one")
    old_timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()
    repo.add_target("tiny/tiny-1.1.0.tar.gz", b"two")
    assert download(updater(base, tmp_path / "device", repo.root_json()), "tiny/tiny-1.1.0.tar.gz") == b"two"
    (repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)  # a mirror rolls the device back
    with pytest.raises(tuf_errors.BadVersionNumberError):
        updater(base, tmp_path / "device", None).refresh()


def test_an_expired_timestamp_is_refused_until_the_server_refreshes_it(
    tmp_path: Path, served: tuple[str, Path]
) -> None:
    base, www = served
    init_keys(tmp_path / "keys", tmp_path / "root")
    keys = KeyStore.load(tmp_path / "keys")
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    stale = TufRepository.create(www / "tuf", keys, tmp_path / "root", clock=lambda: two_days_ago)
    with pytest.raises(tuf_errors.ExpiredMetadataError):
        updater(base, tmp_path / "device", stale.root_json()).refresh()
    live = TufRepository(www / "tuf", keys)  # the real clock, as the server runs it
    assert live.refresh_timestamp(min_remaining=timedelta(hours=12)) is True
    updater(base, tmp_path / "device", None).refresh()
