"""Enrollment against the real fleet server (create_app under uvicorn, SQLite, a real Mosquitto
with per-device passwords and ACLs), then the enrolled agent connecting and being seen online."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.state import StateDir
from simulation.fleet import MosquittoProcess
from tests.integration.agent.harness import AgentProcess, cli, eventually
from tests.integration.server.harness import RunningServer, server_config
from tests.unit.agent.models import make_linear_bundle

ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture
def server(tmp_path: Path, mosquitto_auth: MosquittoProcess) -> Iterator[RunningServer]:
    assert mosquitto_auth.proc is not None
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{mosquitto_auth.proc.pid}\n")
    config = server_config(tmp_path / "data", f"sqlite:///{tmp_path}/fleet.sqlite", broker_url=mosquitto_auth.url,
                           mosquitto_dir=mosquitto_auth.directory, mosquitto_pid_file=pid_file)
    with RunningServer(config) as running:
        assert running.ctx.mqtt.wait_connected(10), "the server could not log in to Mosquitto"
        yield running


def token(server: RunningServer, profile: str = "generic-x86_64") -> str:
    response = httpx.post(f"{server.url}/api/v1/devices/enrollment-tokens", json={"profile": profile,
                          "labels": {"site": "lab"}}, headers=ADMIN)
    assert response.status_code == 201, response.text
    value: str = response.json()["token"]
    return value


def device(server: RunningServer, device_id: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{server.url}/api/v1/devices/{device_id}", headers=ADMIN).json()
    return document


def test_enroll_stores_the_trust_bundle_privately_then_the_agent_goes_online(tmp_path: Path, server: RunningServer) -> None:
    state = StateDir(tmp_path / "device")
    secret = token(server)
    done = cli("agent", "enroll", "--server", server.url, f"--token={secret}", "--state-dir", str(state.path),
               "--hostname", "pi-17", "--json")
    assert done.returncode == 0, done.stderr
    device_id = json.loads(done.stdout)["device_id"]
    identity = state.load_identity()
    assert identity.device_id == device_id and identity.profile == "generic-x86_64"
    assert identity.labels == {"site": "lab"} and identity.server_url == server.url
    assert identity.tuf_metadata_url == f"{server.url}/tuf/metadata/"
    creds = state.load_credentials()
    assert creds is not None and creds.mqtt_username == device_id and creds.mqtt_password and creds.api_token
    for secret_file in (state.identity_file, state.credentials_file):
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700
    assert len(state.director_public_key()) == 32
    assert base64.b64encode(state.director_public_key()).decode() == server.ctx.keys.director.public_b64
    assert json.loads(state.tuf_root_file.read_text())["signed"]["_type"] == "root"
    assert state.profile().name == "generic-x86_64"
    assert device(server, device_id)["hostname"] == "pi-17"

    again = cli("agent", "enroll", "--server", server.url, f"--token={secret}", "--state-dir", str(tmp_path / "other"))
    assert again.returncode == 1 and "refused the enrollment token" in again.stderr and "already used" in again.stderr

    bundle = tmp_path / "iris.tar.gz"
    bundle.write_bytes(make_linear_bundle())
    assert cli("agent", "install", str(bundle), "--state-dir", str(state.path)).returncode == 0
    with AgentProcess(state.path) as agent:
        assert agent.predict([[5.1, 3.5, 1.4, 0.2]]).status_code == 200
        assert eventually(lambda: device(server, device_id)["online"] is True, timeout=20), agent.log()
        reported = device(server, device_id)["reported"]
        assert reported["models"]["iris"]["version"] == "1.0.0" and reported["profile"] == "generic-x86_64"
        assert agent.terminate() == 0
    assert eventually(lambda: device(server, device_id)["online"] is False, timeout=15)


def test_enroll_errors_name_the_fix(tmp_path: Path, server: RunningServer) -> None:
    unknown = cli("agent", "enroll", "--server", server.url, "--token=not-a-token", "--state-dir", str(tmp_path / "a"))
    assert unknown.returncode == 1 and "not known to the server" in unknown.stderr
    nowhere = cli("agent", "enroll", "--server", "http://127.0.0.1:9", "--token=x", "--state-dir", str(tmp_path / "b"))
    assert nowhere.returncode == 1 and "cannot reach the server" in nowhere.stderr and "check --server" in nowhere.stderr
    assert not (tmp_path / "a" / "identity.json").exists()
    state = tmp_path / "c"
    assert cli("agent", "enroll", "--server", server.url, f"--token={token(server)}", "--state-dir", str(state)).returncode == 0
    twice = cli("agent", "enroll", "--server", server.url, f"--token={token(server)}", "--state-dir", str(state))
    assert twice.returncode == 1 and "already enrolled" in twice.stderr and "--force" in twice.stderr
