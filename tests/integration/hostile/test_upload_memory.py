"""Hostile uploads to a real `edgefleet server` (PostgreSQL, embedded broker) cost it no memory
before they are refused, and are refused with a 4xx that names the problem (issue 14).

The server runs in its own process, warmed up by the same kinds of request with small inputs
(so its sessions, imports and error paths exist); then each hostile request is watched with
``PeakWatch``: psutil samples every few milliseconds and the kernel's exact high-water mark
(VmHWM, reset before the request). Before the fixes the bomb took the server 517 MB above its
idle RSS, the 4 MiB CSV 170 MB, and the forged .npy got a 500.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from simulation.databases import postgres_available, postgres_database
from simulation.fleet import free_port, wait_until
from tests.integration.hostile.bombs import csv_over_the_row_limit, forged_npy, write_gzip_bomb
from tests.integration.hostile.memory import MIB, REPO, PeakWatch
from tests.integration.server.harness import make_bundle

BOUND = 64 * MIB


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    log: Path

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}/api/v1{path}", headers={"Authorization": f"Bearer {self.token}"},
                             timeout=60, **kwargs)

    def predict_file(self, name: str, data: bytes) -> httpx.Response:
        return self.call("POST", "/models/digits/predict/batch", files={"file": (name, data)})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not postgres_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (see scripts/test for how to start it)")
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    log = root / "server.log"
    with postgres_database() as database, log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "server", "--data-dir", str(root / "data"),
                                 "--port", str(port), "--database", database], stdout=out, stderr=subprocess.STDOUT,
                                cwd=root, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"

            def healthy() -> bool:
                assert proc.poll() is None, log.read_text(errors="replace")
                try:
                    return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(healthy, 90, "the fleet server to answer /healthz", every=0.2)
            token = (root / "data" / "admin-token").read_text().strip()
            yield _warm(Server(proc, url, token, log))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _warm(server: Server) -> Server:
    """Every kind of request once, good and refused, with small inputs: what is left is the input's cost."""
    bundle = make_bundle()
    assert server.call("POST", "/models", files={"bundle": ("digits-1.0.0.tar.gz", bundle)}).status_code in (200, 201)
    assert server.call("POST", "/models", files={"bundle": ("x.tar.gz", bundle[:-40])}).status_code == 422
    assert server.predict_file("ok.csv", b"1,2,3\n4,5,6\n").status_code == 200, server.log.read_text()
    assert server.predict_file("ok.npy", _npy(np.ones((2, 3), dtype=np.float32))).status_code == 200
    assert server.predict_file("bad.csv", b"1,2,3\n1,x,3\n").status_code == 422
    assert server.predict_file("bad.npy", _npy(np.ones((2, 2)))).status_code == 422
    return server


def _refused_within_bound(server: Server, send: Any, status: int, words: str) -> None:
    with PeakWatch(server.proc.pid) as watch:
        answer = send()
    assert answer.status_code == status, answer.text
    assert words in answer.text, answer.text
    assert watch.growth < BOUND, watch.describe()


def test_gzip_bomb_upload_is_refused_within_64_mb(server: Server, tmp_path: Path) -> None:
    bomb = write_gzip_bomb(tmp_path / "bomb.tar.gz").read_bytes()
    _refused_within_bound(server, lambda: server.call("POST", "/models", files={"bundle": ("b.tar.gz", bomb)}),
                          422, "manifest.json claims 536870912 bytes, over the 1048576-byte limit")


def test_csv_over_the_row_limit_is_refused_while_reading_within_64_mb(server: Server) -> None:
    data = csv_over_the_row_limit()
    assert len(data) > 4 * MIB
    _refused_within_bound(server, lambda: server.predict_file("rows.csv", data),
                          413, "rows.csv holds more than 10000 rows")


def test_npy_claiming_2_40_by_2_40_is_refused_from_its_header(server: Server) -> None:
    data = forged_npy((2**40, 2**40))
    assert len(data) < 400
    _refused_within_bound(server, lambda: server.predict_file("forged.npy", data),
                          422, "its header claims shape (1099511627776, 1099511627776)")
    # Honest about its size but over the limits: refused from the header too, before reading.
    rows = forged_npy((50_000, 3))
    _refused_within_bound(server, lambda: server.predict_file("rows.npy", rows + bytes(50_000 * 24)),
                          413, "the request holds 50000 rows")
