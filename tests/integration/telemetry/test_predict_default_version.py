"""Cloud predict without ?version= answers from the version the fleet serves (issue 17), through the real API.

Two published versions of the digits model, a device that reports serving the older one: a
predict and a batch predict without ``?version=`` run the older one (the answer names it);
with no device reporting, the server asks the caller to choose (409 with the fix).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet_server.app import create_app
from fleet_server.registry import predict
from fleet_server.registry.presence import PresenceUpdate
from tests.integration.server.harness import server_config
from tests.support.bundles import make_onnx_bundle

ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture
def client(tmp_path: Path, digits_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(predict, "SERVED_TTL_S", 0.0)  # read the reports at every call here
    app = create_app(server_config(tmp_path / "data"), mqtt=False)
    app.state.ctx.registry.push(digits_bundle)  # digits 1.0.0
    app.state.ctx.registry.push(make_onnx_bundle(tmp_path / "newer", version="1.1.0"))
    with TestClient(app) as test_client:
        yield test_client


def report_serving(client: TestClient, version: str) -> None:
    devices = client.app.state.ctx.devices  # type: ignore[attr-defined]
    token = devices.create_token("rpi4-64", {}, timedelta(minutes=5)).token
    device = devices.enroll(token).device_id
    assert devices.record_presence(PresenceUpdate(device, datetime.now(UTC), True,
                                                  {"models": {"digits": {"version": version}}}))


def test_without_a_fleet_the_caller_chooses(client: TestClient) -> None:
    answer = client.post("/api/v1/models/digits/predict", json={"inputs": [[0.0] * 64]}, headers=ADMIN)
    assert answer.status_code == 409, answer.text
    assert "several" in answer.json()["detail"] and "?version=1.1.0" in answer.json()["fix"]
    pinned = client.post("/api/v1/models/digits/predict", params={"version": "1.1.0"},
                         json={"inputs": [[0.0] * 64]}, headers=ADMIN)
    assert pinned.status_code == 200 and pinned.json()["version"] == "1.1.0"


def test_the_version_the_fleet_serves_answers(client: TestClient) -> None:
    report_serving(client, "1.0.0")
    answer = client.post("/api/v1/models/digits/predict", json={"inputs": [[0.0] * 64]}, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == "1.0.0"
    batch = client.post("/api/v1/models/digits/predict/batch", headers=ADMIN,
                        files={"file": ("rows.csv", ("\n".join(",".join(["0"] * 64) for _ in range(3)) + "\n").encode())})
    assert batch.status_code == 200, batch.text
    assert batch.headers["X-Edgefleet-Model"] == "digits@1.0.0"
    # Two devices move to 1.1.0: the majority wins.
    report_serving(client, "1.1.0")
    report_serving(client, "1.1.0")
    deadline = time.monotonic() + 10
    while client.post("/api/v1/models/digits/predict", json={"inputs": [[0.0] * 64]},
                      headers=ADMIN).json()["version"] != "1.1.0":
        assert time.monotonic() < deadline
