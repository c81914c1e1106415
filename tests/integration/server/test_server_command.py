"""`edgefleet server` as a new user runs it: no options, embedded broker, admin token shown once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet import topics
from tests.integration.server.harness import free_port

ROOT = Path(__file__).resolve().parents[3]


def start(cwd: Path, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEFLEET_PORT": str(port)}
    env.pop("EDGEFLEET_TOKEN", None)
    return subprocess.Popen([sys.executable, "-m", "edgefleet.cli", "server"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_healthy(url: str, proc: subprocess.Popen[str]) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            health = httpx.get(f"{url}/healthz", timeout=1)
            if health.status_code == 200 and health.json()["mqtt_connected"]:
                return dict(health.json())
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become healthy")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    return out


def test_first_start_with_no_options(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(tmp_path, port)
    try:
        wait_healthy(url, proc)
        data = tmp_path / "edgefleet-data"
        token = (data / "admin-token").read_text().strip()
        assert (data / "admin-token").stat().st_mode & 0o777 == 0o600
        admin = {"Authorization": f"Bearer {token}"}
        enrollment = httpx.post(f"{url}/api/v1/devices/enrollment-tokens", json={"profile": "rpi4-64"}, headers=admin)
        grant = httpx.post(f"{url}/api/v1/enroll", json={"token": enrollment.json()["token"]}).json()
        assert grant["broker_url"].startswith("mqtt://127.0.0.1:")
        # The embedded broker carries presence to the server.
        device = mqtt.Client(CallbackAPIVersion.VERSION2)
        device.username_pw_set(grant["mqtt_username"], grant["mqtt_password"])
        port_mqtt = int(grant["broker_url"].rsplit(":", 1)[1])
        device.connect("127.0.0.1", port_mqtt)
        device.loop_start()
        device.publish(topics.reported(grant["device_id"]),
                       json.dumps({"device_id": grant["device_id"], "online": True}), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while not httpx.get(f"{url}/api/v1/devices/{grant['device_id']}", headers=admin).json()["online"]:
            assert time.monotonic() < deadline, "presence never arrived through the embedded broker"
            time.sleep(0.1)
        device.disconnect()
        device.loop_stop()
    finally:
        first_log = stop(proc)
    assert token in first_log and "shown once" in first_log
    assert "WARNING" in first_log and "offline-root-keys" in first_log
    assert "embedded MQTT broker" in first_log
    proc = start(tmp_path, port)
    try:
        wait_healthy(url, proc)
    finally:
        second_log = stop(proc)
    assert token not in second_log
    assert "edgefleet-data" in second_log  # says where everything is
