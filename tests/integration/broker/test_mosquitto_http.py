"""Device accounts through the edgefleet Mosquitto plugin asking the fleet server (``mosquitto-http``).

The plugin is compiled here from the repository's C source (``fleet_server.broker.plugin.build``)
and loaded by a real Mosquitto 2.0; the server is the real app (its broker-auth endpoint, its
registry) served by uvicorn. Enrollment writes nothing at the broker, yet the device logs in at
once, on its own client id only, and reaches only its own topics. Revocation closes its live
session within 2 s; with the server away new connections are refused and open ones carry on.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edgefleet import topics
from fleet_server.app import create_app
from fleet_server.broker.mosquitto_http import CONTROL_TOPIC
from fleet_server.config import load_config
from fleet_server.context import ServerContext
from fleet_server.errors import BrokerError
from simulation.brokers import SERVER_PASSWORD, SERVER_USER, PluginMosquitto, ServedApp
from simulation.fleet import free_port
from tests.integration.broker.test_dynsec import Session

pytestmark = pytest.mark.mosquitto
TOKEN = "broker-token-for-the-tests-0123456789"
REVOKE_WITHIN_S = 2.0


@dataclass
class Stack:
    ctx: ServerContext
    server: ServedApp
    broker: PluginMosquitto

    def enroll(self) -> Any:
        devices = self.ctx.devices
        return devices.enroll(devices.create_token("generic-x86_64", {}, timedelta(hours=1)).token)

    def session(self, username: str, password: str, client_id: str) -> Session:
        return Session(self.broker, username, password, client_id)  # type: ignore[arg-type]

    def server_session(self) -> Session:
        return self.session(SERVER_USER, SERVER_PASSWORD, f"edgefleet-server-{free_port()}")


@pytest.fixture
def stack(tmp_path: Path, database_url: str, plugin: Path) -> Iterator[Stack]:
    broker_port = free_port()
    config = load_config({"data_dir": tmp_path / "data", "database_url": database_url,
                          "broker_url": f"mqtt://127.0.0.1:{broker_port}", "broker_accounts": "mosquitto-http",
                          "mqtt_username": SERVER_USER, "mqtt_password": SERVER_PASSWORD,
                          "broker_auth_token": TOKEN, "admin_token": "test-admin-token"}, env={})
    ctx = ServerContext.open(config)
    served = ServedApp(create_app(config, context=ctx, mqtt=False)).start()
    broker = PluginMosquitto(tmp_path / "mosquitto", plugin=plugin, server_url=served.url, token=TOKEN,
                             port=broker_port, timeout_ms=1000)
    try:
        with broker:
            yield Stack(ctx, served, broker)
    finally:
        served.stop()
        ctx.close()


def received(session: Session, topic: str, timeout: float = 5.0) -> list[str]:
    """Topics ``session`` got until one on ``topic`` (a marker published after what is checked)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got, _ = session.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(got)
        if got == topic:
            return seen
    raise AssertionError(f"nothing on {topic} within {timeout} s (got {seen})")


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_an_enrolled_device_logs_in_at_once_on_its_own_client_id_only(stack: Stack) -> None:
    one, other = stack.enroll(), stack.enroll()
    device = stack.session(one.mqtt_username, one.mqtt_password, one.device_id)
    assert not device.reason.is_failure  # nothing was written at the broker
    device.close()
    for username, password, client_id in [(one.mqtt_username, "not-the-password", one.device_id),
                                          (one.mqtt_username, one.mqtt_password, other.device_id),
                                          ("dev-nobody", one.mqtt_password, "dev-nobody")]:
        refused = stack.session(username, password, client_id)
        assert refused.reason.is_failure, (username, client_id)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_device_reaches_only_its_own_topics(stack: Stack) -> None:
    one, other = stack.enroll(), stack.enroll()
    server = stack.server_session()
    assert not server.reason.is_failure
    assert server.subscribe(f"$share/{topics.SHARE_GROUP}/{topics.PREFIX}/devices/+/telemetry").value == 1
    assert server.subscribe(f"{topics.PREFIX}/devices/+/events").value == 1
    device = stack.session(one.mqtt_username, one.mqtt_password, one.device_id)
    assert device.subscribe(topics.desired(one.device_id)).value == 1
    assert device.subscribe(topics.commands(one.device_id)).value == 1
    for forbidden in (topics.desired(other.device_id), f"{topics.PREFIX}/devices/+/desired", "#",
                      topics.telemetry(one.device_id)):
        assert device.subscribe(forbidden).is_failure, forbidden
    # Publishes it may not make are dropped by the broker (MQTT 3.1.1 has no refusal to show):
    # the server sees the allowed one that follows them, never them.
    device.client.publish(topics.telemetry(other.device_id), b"x", qos=1).wait_for_publish(5)
    device.client.publish(topics.desired(one.device_id), b"x", qos=1).wait_for_publish(5)
    device.client.publish(topics.events(one.device_id), b"ok", qos=1).wait_for_publish(5)
    assert received(server, topics.events(one.device_id)) == [topics.events(one.device_id)]
    # The server's account writes a device's desired; the device reads it.
    server.client.publish(topics.desired(one.device_id), b"assignment", qos=1).wait_for_publish(5)
    assert received(device, topics.desired(one.device_id)) == [topics.desired(one.device_id)]
    device.close()
    server.close()


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_revocation_ends_the_live_session_within_two_seconds(stack: Stack) -> None:
    grant = stack.enroll()
    device = stack.session(grant.mqtt_username, grant.mqtt_password, grant.device_id)
    assert not device.reason.is_failure
    started = time.monotonic()
    stack.ctx.devices.revoke(grant.device_id)
    device.gone.get(timeout=REVOKE_WITHIN_S)
    took = time.monotonic() - started
    device.client.loop_stop()
    assert took < REVOKE_WITHIN_S
    print(f"revocation to disconnect: {1000 * took:.0f} ms")
    again = stack.session(grant.mqtt_username, grant.mqtt_password, grant.device_id)
    assert again.reason.is_failure


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_with_the_server_away_new_connections_are_refused_and_open_ones_carry_on(stack: Stack) -> None:
    one, two = stack.enroll(), stack.enroll()
    server = stack.server_session()
    assert server.subscribe(f"{topics.PREFIX}/devices/+/telemetry").value == 1
    device = stack.session(one.mqtt_username, one.mqtt_password, one.device_id)
    assert not device.reason.is_failure
    stack.server.stop()
    late = stack.session(two.mqtt_username, two.mqtt_password, two.device_id)
    assert late.reason.is_failure
    device.client.publish(topics.telemetry(one.device_id), b"still here", qos=1).wait_for_publish(5)
    assert received(server, topics.telemetry(one.device_id)) == [topics.telemetry(one.device_id)]
    assert device.gone.empty()
    stack.server.start()
    back = stack.session(two.mqtt_username, two.mqtt_password, two.device_id)
    assert not back.reason.is_failure
    for session in (device, back, server):
        session.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_device_cannot_revoke_another_through_the_control_topic(stack: Stack) -> None:
    attacker, victim, revoked = stack.enroll(), stack.enroll(), stack.enroll()
    sessions = {g.device_id: stack.session(g.mqtt_username, g.mqtt_password, g.device_id)
                for g in (attacker, victim, revoked)}
    kick = f'{{"commands":[{{"command":"kickDevice","username":"{victim.mqtt_username}"}}]}}'
    sessions[attacker.device_id].client.publish(CONTROL_TOPIC, kick, qos=1).wait_for_publish(5)
    # Its PUBACK came after the broker handled (and refused) the command; a real revocation
    # after it shows the control topic still works, and the victim is still there.
    stack.ctx.devices.revoke(revoked.device_id)
    sessions[revoked.device_id].gone.get(timeout=REVOKE_WITHIN_S)
    assert sessions[victim.device_id].gone.empty()
    sessions[victim.device_id].close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_kick_that_could_not_be_sent_is_sent_when_the_control_connection_comes_back(stack: Stack) -> None:
    grant = stack.enroll()
    device = stack.session(grant.mqtt_username, grant.mqtt_password, grant.device_id)
    assert not device.reason.is_failure
    # The server's own control login is checked over HTTP too: with the endpoint away it cannot
    # connect, so the kick is owed (the device's open session carries on meanwhile).
    stack.server.stop()
    with pytest.raises(BrokerError, match="live session was not closed") as refused:
        stack.ctx.devices.revoke(grant.device_id)
    assert "sent again" in (refused.value.fix or "")
    assert device.gone.empty()
    stack.server.start()
    device.gone.get(timeout=15)  # paho's reconnect backoff (at most 10 s), then the owed kick
    device.client.loop_stop()
    again = stack.session(grant.mqtt_username, grant.mqtt_password, grant.device_id)
    assert again.reason.is_failure


def test_a_server_that_does_not_answer_costs_a_connect_its_timeout_not_more(tmp_path: Path, plugin: Path) -> None:
    import socket
    import threading

    # Accepts and never answers: what a hung server looks like to the plugin (a refused connection
    # costs nothing; this is the case plugin_opt_timeout_ms bounds).
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    with PluginMosquitto(tmp_path / "mosquitto", plugin=plugin, token=TOKEN, timeout_ms=300,
                         server_url=f"http://127.0.0.1:{listener.getsockname()[1]}") as broker:
        started = time.monotonic()
        refused = Session(broker, "dev-a", "whatever", "dev-a")  # type: ignore[arg-type]
        took = time.monotonic() - started
    listener.close()
    for connection in held:
        connection.close()
    assert refused.reason.is_failure
    assert 0.25 <= took < 2.0, took
