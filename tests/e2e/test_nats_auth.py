"""Per-device permissions on the NATS cluster: the fleet server answers the nodes' auth callout.

A real server (PostgreSQL) on a three-node cluster whose nodes ask it at every CONNECT; a real
agent enrolled through the API. What a device may do is checked with its own credentials over
MQTT against another node than the server's: its own topics only, its own client id only, and
nothing once revoked (its open connection closed at once). Enrolling wrote nothing to the cluster.
"""

from __future__ import annotations

import json
import time

from edgefleet import topics
from simulation.fleet import AgentProcess, wait_until
from tests.support.mqtt import MqttProbe
from tests.support.nats import NatsStack


def login(agent: AgentProcess) -> tuple[str, str]:
    document = json.loads((agent.state_dir / "credentials.json").read_text())
    return str(document["mqtt_username"]), str(document["mqtt_password"])


def test_a_device_gets_its_own_topics_only_and_nothing_once_revoked(nats_stack: NatsStack) -> None:
    first, second = nats_stack.add_agents(2)  # online: their MQTT logins passed the callout
    port = nats_stack.cluster.nodes[1].ports.mqtt
    user, password = login(first)
    MqttProbe(port, first.device_id, login=(user, "wrong-password"), refused=True)
    MqttProbe(port, second.device_id, login=(user, password), refused=True)  # another device's session
    MqttProbe(port, "nobody", refused=True)  # anonymous
    first.stop()  # the probe takes the device's place (one session per client id)
    probe = MqttProbe(port, first.device_id, login=(user, password))
    assert probe.subscribe(topics.desired(first.device_id), topics.commands(first.device_id)) == [True, True]
    assert probe.subscribe(topics.desired(second.device_id)) == [False]
    assert probe.subscribe(topics.telemetry(first.device_id)) == [False]  # what devices send is the server's
    # What it may not publish never reaches the server: another device's reported.
    server = MqttProbe(nats_stack.cluster.nodes[2].ports.mqtt, "test-server-view", login=nats_stack.server_login())
    server.subscribe(topics.reported(second.device_id), topics.events(first.device_id))
    probe.publish(topics.reported(second.device_id), b'{"spoofed": true}')
    probe.publish(topics.events(first.device_id), b"own")
    server.wait_for(topics.events(first.device_id), b"own")
    assert b'{"spoofed": true}' not in server.payloads(topics.reported(second.device_id))
    # Revoked: its live connection is closed (the server's system login kicks it on its node),
    # and it is refused when it comes back.
    revoked = time.monotonic()
    nats_stack.admin.request("POST", f"/api/v1/devices/{first.device_id}/revoke")
    wait_until(probe.disconnected.is_set, 10, "the revoked device's connection to be closed")
    print(f"revoked device disconnected {time.monotonic() - revoked:.2f} s after the revoke call")
    probe.client.loop_stop()
    MqttProbe(port, first.device_id, login=(user, password), refused=True)
    child = nats_stack.server.child
    assert child is not None
    wait_until(lambda: "refused NATS mqtt login" in child.log(), 10, "the refusal in the server's log")
    server.close()
