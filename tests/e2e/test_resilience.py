"""Rollouts across real process and broker failures: every test runs Mosquitto, `edgefleet server`
and `edgefleet agent` processes, and breaks one of them mid-rollout."""

from __future__ import annotations

import signal
import socket
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.state import StateDir
from simulation.fleet import FleetError, ServerProcess, wait_until
from tests.e2e.stack import Stack

pytestmark = pytest.mark.mosquitto


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
    # For 2 s (several rollout ticks) the wave must neither finish nor fail the absent device:
    # polled throughout, so a change at any moment in that window is seen.
    with pytest.raises(FleetError):
        wait_until(lambda: (v := stack.view(rollout["id"]))["state"] != "running"
                   or {r["device_id"]: r["status"] for r in v["device_records"]}[away.device_id] != "assigned",
                   2.0, "the rollout to move on without the offline device", every=0.1)
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
    wait_until(lambda: not listening(stack.server.port), 10, "the killed server's port to close")
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
            ok = bool(wait_until(client.is_connected, 3, "the probe to connect", every=0.05))
        except FleetError:
            ok = False
        finally:
            client.disconnect()
            client.loop_stop()
        return ok

    assert connects()  # the device's own credentials work before revocation
    stack.admin.revoke_device(agent.device_id)
    wait_until(lambda: not connects(), 15, "the broker to refuse the revoked device's credentials")
    # The agent itself is cut off too: the server marks it offline and it never comes back.
    wait_until(lambda: stack.online() == 0, 60, "the revoked agent to be offline")
    # It stays offline: polled for 3 s, so a reconnect at any moment in that window is seen.
    with pytest.raises(FleetError):
        wait_until(lambda: stack.online() != 0, 3.0, "the revoked agent to come back", every=0.1)
    assert stack.online() == 0


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
