"""Rollouts across real process and broker failures: every test runs Mosquitto, `edgefleet server`
and `edgefleet agent` processes, and breaks one of them mid-rollout."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.state import StateDir
from simulation.fleet import ServerProcess, wait_until
from tests.e2e.stack import Stack

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    made = Stack(tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_broker_restart_during_a_rollout_still_completes(stack: Stack) -> None:
    stack.add_agents(3)
    stack.push("1.0.0")
    rollout = stack.rollout("1.0.0", waves=(34.0, 100.0), bake_s=2.0)
    wait_until(lambda: stack.view(rollout["id"])["devices"].get("committed", 0) >= 1, 60, "the first commit")
    stack.broker.restart(down_s=1.0)
    done = stack.wait_state(rollout["id"], "completed", timeout=120)
    assert done["devices"] == {"committed": 3}
    assert set(stack.versions().values()) == {"1.0.0"}


def test_offline_agents_catch_up_when_they_return(stack: Stack) -> None:
    agents = stack.add_agents(3)
    stack.push("1.0.0")
    away = agents[0]
    away.stop()
    wait_until(lambda: stack.online() == 2, 30, "the server to see the device offline")
    rollout = stack.rollout("1.0.0")
    wait_until(lambda: stack.view(rollout["id"])["devices"].get("committed", 0) == 2, 60, "the online devices")
    time.sleep(2.0)
    view = stack.view(rollout["id"])
    assert view["state"] == "running"  # the offline device holds the wave; it is not failed
    assert {r["device_id"]: r["status"] for r in view["device_records"]}[away.device_id] == "assigned"
    away.start()
    stack.wait_state(rollout["id"], "completed", timeout=90)
    assert stack.versions()[away.device_id] == "1.0.0"


def test_server_sigkilled_mid_rollout_finishes_from_its_database(stack: Stack) -> None:
    stack.add_agents(3)
    stack.push("1.0.0")
    rollout = stack.rollout("1.0.0", waves=(34.0, 100.0), bake_s=3.0)
    wait_until(lambda: stack.view(rollout["id"])["devices"].get("committed", 0) >= 1, 60, "the first commit")
    assert stack.server.child is not None
    stack.server.child.signal(signal.SIGKILL)
    stack.server.child.proc.wait(10)
    time.sleep(1.0)
    # Same data dir, database and port: everything it knows comes from disk.
    stack.server = ServerProcess(stack.supervisor, stack.server.data_dir, broker=stack.broker,
                                 port=stack.server.port).start()
    done = stack.wait_state(rollout["id"], "completed", timeout=120)
    assert done["devices"] == {"committed": 3}
    assert set(stack.versions().values()) == {"1.0.0"}


def test_revoked_device_can_no_longer_connect(stack: Stack) -> None:
    (agent,) = stack.add_agents(1)
    credentials = StateDir(agent.state_dir).load_credentials()
    assert credentials is not None

    def connects() -> bool:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}")
        client.username_pw_set(credentials.mqtt_username, credentials.mqtt_password)
        try:
            client.connect("127.0.0.1", stack.broker.port, keepalive=5)
            client.loop_start()
            ok = bool(wait_until_or_false(client.is_connected, 3))
        finally:
            client.disconnect()
            client.loop_stop()
        return ok

    assert connects()  # the device's own credentials work before revocation
    stack.admin.revoke_device(agent.device_id)
    wait_until(lambda: not connects(), 15, "the broker to refuse the revoked device's credentials")
    # The agent itself is cut off too: the server marks it offline and it never comes back.
    wait_until(lambda: stack.online() == 0, 60, "the revoked agent to be offline")
    time.sleep(3.0)
    assert stack.online() == 0


def wait_until_or_false(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False
