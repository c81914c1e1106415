"""Test helpers for the fleet server: tiny real bundles, configs, and a server running under uvicorn.

``make_bundle`` builds a small real ONNX bundle (scikit-learn LogisticRegression through skl2onnx,
golden outputs from the original model) and caches it; a ``seed`` gives different bytes for the
same name+version, which the duplicate-push tests need. The acceptance test uses the converter's
own bundles (tests/support/bundles.py) instead.
``RunningServer`` runs ``create_app`` under uvicorn in a thread on a free port, for clients that
need a real socket (tuf.ngclient, the CLI, Range requests).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from edgefleet.bundle import build_bundle_bytes
from fleet_server.app import create_app
from fleet_server.config import ServerConfig
from simulation.fleet import free_port


@functools.lru_cache(maxsize=16)
def make_bundle(name: str = "digits", version: str = "1.0.0", seed: int = 0) -> bytes:
    """A real, valid ONNX classifier bundle; different ``seed`` gives different bytes."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = LogisticRegression().fit(x, y)
    onnx_model = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset=17)
    golden_x = x[:5]
    files = {
        "model.onnx": onnx_model.SerializeToString(),
        "golden.json": json.dumps({"inputs": golden_x.tolist(), "outputs": {
            "label": model.predict(golden_x).tolist(),
            "probabilities": model.predict_proba(golden_x).tolist()}}).encode(),
        "reference.json": json.dumps({"rows": 60, "features": [], "outputs": {
            "kind": "classes", "labels": [0, 1], "counts": np.bincount(y, minlength=2).tolist()}}).encode(),
    }
    manifest: dict[str, Any] = {
        "schema_version": 1, "name": name, "version": version, "format": "onnx", "task": "classification",
        "quantization": "none", "runtime": {"opset": 17, "domains": ["", "ai.onnx.ml"]},
        "inputs": [{"name": "X", "dtype": "float32", "shape": [-1, 3]}],
        "outputs": [{"name": "label", "dtype": "int64", "shape": [-1], "role": "label"},
                    {"name": "probabilities", "dtype": "float32", "shape": [-1, 2], "role": "probabilities"}],
        "class_labels": [0, 1], "profiles": ["generic-x86_64", "rpi4-64"],
        "health_check": {"min_agreement": 0.98, "max_rel_error": 0.05, "latency_budget_ms": 50.0},
        "source": {"framework": "sklearn", "seed": seed},
    }
    return build_bundle_bytes(manifest, files)


def server_config(data_dir: Path, database_url: str | None = None, **overrides: Any) -> ServerConfig:
    values: dict[str, Any] = {"data_dir": data_dir, "database_url": database_url, "port": free_port(),
                              "admin_token": "test-admin-token"}
    values.update(overrides)
    return ServerConfig(**values)


class RunningServer:
    """``create_app(config)`` served by uvicorn on 127.0.0.1:config.port in a background thread."""

    def __init__(self, config: ServerConfig, **app_kwargs: Any) -> None:
        self.config = config
        self.app = create_app(config, **app_kwargs)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=config.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.port}"

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fleet server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
