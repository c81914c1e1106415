"""The server against a real Mosquitto: per-device credentials and ACLs, revocation, presence ingest.

The server writes Mosquitto's password and ACL files into the broker's directory and SIGHUPs it,
exactly as in production; devices connect with the credentials enrollment gave them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet import topics
from simulation.fleet import MosquittoProcess, wait_until
from tests.integration.server.harness import RunningServer, server_config
from tests.support.mqtt import MqttProbe

ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture
def server(tmp_path: Path, database_url: str, mosquitto_auth: MosquittoProcess) -> Iterator[RunningServer]:
    assert mosquitto_auth.proc is not None
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{mosquitto_auth.proc.pid}\n")
    config = server_config(tmp_path / "data", database_url, broker_url=mosquitto_auth.url,
                           mosquitto_dir=mosquitto_auth.directory, mosquitto_pid_file=pid_file)
    with RunningServer(config) as running:
        assert running.ctx.mqtt.wait_connected(10), "the server could not log in to Mosquitto"
        yield running


def enroll(server: RunningServer) -> dict[str, Any]:
    token = httpx.post(f"{server.url}/api/v1/devices/enrollment-tokens", json={"profile": "rpi4-64"},
                       headers=ADMIN).json()["token"]
    grant: dict[str, Any] = httpx.post(f"{server.url}/api/v1/enroll", json={"token": token}).json()
    return grant


def connect(broker: MosquittoProcess, grant: dict[str, Any]) -> MqttProbe:
    """A client with ``grant``'s credentials and the contract's last will, accepted or not (see ``accepted``)."""
    device_id = grant["device_id"]
    will = json.dumps({"device_id": device_id, "online": False}).encode()
    return MqttProbe(broker.port, f"{grant['mqtt_username']}-{time.monotonic_ns()}",
                     login=(grant["mqtt_username"], grant["mqtt_password"]), will=(topics.reported(device_id), will),
                     refused=None)


def connects(broker: MosquittoProcess, grant: dict[str, Any]) -> bool:
    """Whether a fresh connection with ``grant``'s credentials is accepted now."""
    device = connect(broker, grant)
    try:
        return device.accepted
    finally:
        device.close()


def device_state(server: RunningServer, device_id: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{server.url}/api/v1/devices/{device_id}", headers=ADMIN).json()
    return state


def test_device_touches_only_its_own_topics(server: RunningServer, mosquitto_auth: MosquittoProcess) -> None:
    a, b = enroll(server), enroll(server)
    dev_a, dev_b = connect(mosquitto_auth, a), connect(mosquitto_auth, b)
    try:
        assert dev_a.accepted and dev_b.accepted
        assert a["broker_url"] == mosquitto_auth.url
        dev_a.subscribe(topics.desired(b["device_id"]))
        dev_a.subscribe(topics.desired(a["device_id"]))
        dev_b.subscribe(topics.desired(b["device_id"]))
        server.ctx.mqtt.publish(topics.desired(b["device_id"]), b'{"for": "b"}', retain=True)
        server.ctx.mqtt.publish(topics.desired(a["device_id"]), b'{"for": "a"}', retain=True)
        dev_b.wait_for(topics.desired(b["device_id"]), b'{"for": "b"}', 8)
        dev_a.wait_for(topics.desired(a["device_id"]), b'{"for": "a"}', 8)
        assert dev_a.payloads(topics.desired(b["device_id"])) == []
        # A writing B's telemetry is dropped by the broker; B's own write arrives.
        observer = MqttProbe(mosquitto_auth.port, f"{server.config.mqtt_username}-{time.monotonic_ns()}",
                             login=(server.config.mqtt_username, server.ctx.mqtt_password))
        observer.subscribe(f"{topics.PREFIX}/devices/+/telemetry")
        forged = {"device_id": b["device_id"], "seq": 1, "forged": True}
        dev_a.publish(topics.telemetry(b["device_id"]), json.dumps(forged).encode())
        dev_b.publish(topics.telemetry(b["device_id"]), json.dumps({"device_id": b["device_id"], "seq": 2}).encode())
        wait_until(lambda: any(b'"seq": 2' in p for _, p, _ in observer.messages), 8, "B's own telemetry")
        assert not any(b"forged" in p for _, p, _ in observer.messages)
        observer.close()
    finally:
        dev_a.close()
        dev_b.close()


def test_devices_enrolling_together_can_all_connect(server: RunningServer, mosquitto_auth: MosquittoProcess) -> None:
    # Each enrollment rewrites the password file from the registry; one that read the registry
    # before another committed must not be the last to write, or that other device is locked out.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        grants = list(pool.map(lambda _i: enroll(server), range(16)))
    passwd = (mosquitto_auth.directory / "passwd").read_text()
    assert [g["mqtt_username"] for g in grants if f"{g['mqtt_username']}:" not in passwd] == []
    # Mosquitto handles SIGHUP asynchronously: poll until it has re-read the files.
    wait_until(lambda: all(connects(mosquitto_auth, g) for g in grants), 10, "every enrolled device to connect")
    devices = [connect(mosquitto_auth, g) for g in grants]
    try:
        assert [d.accepted for d in devices] == [True] * len(grants)
    finally:
        for device in devices:
            device.close()


def test_revoked_device_cannot_connect(server: RunningServer, mosquitto_auth: MosquittoProcess) -> None:
    grant = enroll(server)
    first = connect(mosquitto_auth, grant)
    assert first.accepted
    first.close()
    response = httpx.post(f"{server.url}/api/v1/devices/{grant['device_id']}/revoke", headers=ADMIN)
    assert response.status_code == 200
    assert grant["mqtt_username"] not in (mosquitto_auth.directory / "passwd").read_text()
    # Mosquitto handles SIGHUP asynchronously: poll until it has re-read the files.
    wait_until(lambda: not connects(mosquitto_auth, grant), 10, "the broker to refuse the revoked device")
    again = connect(mosquitto_auth, grant)
    try:
        assert not again.accepted
    finally:
        again.close()


def test_presence_from_reported_and_last_will(server: RunningServer, mosquitto_auth: MosquittoProcess) -> None:
    grant = enroll(server)
    device_id = grant["device_id"]
    device = connect(mosquitto_auth, grant)
    assert device.accepted
    device.publish(topics.reported(device_id), json.dumps({
        "device_id": device_id, "online": True, "agent_version": "0.1.0", "profile": "rpi4-64",
        "models": {"digits": {"version": "1.0.0", "sha256": "0" * 64}}, "update": {"state": "idle"}, "ts": 1,
    }).encode(), retain=True)
    wait_until(lambda: device_state(server, device_id)["online"] is True, 8, "the device online")
    state = device_state(server, device_id)
    assert state["reported"]["models"]["digits"]["version"] == "1.0.0"
    assert state["agent_version"] == "0.1.0" and state["last_seen"] is not None
    device.drop()
    wait_until(lambda: device_state(server, device_id)["online"] is False, 15, "the last will to mark it offline")
    assert device_state(server, device_id)["reported"]["models"]["digits"]["version"] == "1.0.0"


def test_server_writes_its_own_broker_user(server: RunningServer, mosquitto_auth: MosquittoProcess) -> None:
    acl = (mosquitto_auth.directory / "acl").read_text()
    assert f"user {server.config.mqtt_username}\ntopic readwrite {topics.PREFIX}/#" in acl
    assert (mosquitto_auth.directory / "passwd").stat().st_mode & 0o777 == 0o640  # Mosquitto's group reads it


def test_rollout_engine_runs_with_the_broker(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/api/v1/rollouts", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert server.ctx.rollouts is not None
