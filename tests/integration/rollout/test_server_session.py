"""The server's broker session outlives the server (issue 19, hole 2), against a real Mosquitto.

Threat model: device events published while the server is down were dropped (a clean session
under a random client id), so a rollout never learned outcomes reached meanwhile. Now each
replica connects with a persistent session under its own stable client id, and the broker
queues what it missed. Also here: reading retained reports for the engine's reconciliation.
"""

from __future__ import annotations

import json
import threading

import pytest

from edgefleet import topics
from fleet_server.broker.connection import FleetMqtt, replica_client_id
from fleet_server.errors import ConfigError
from simulation.fleet import MosquittoProcess, wait_until
from tests.integration.rollout.mqtt_tools import Recorder


class Inbox:
    """A server-side handler that keeps every message it is handed."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    def __call__(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages.append((topic, payload))

    def events(self) -> list[str]:
        with self._lock:
            return sorted(json.loads(p)["event_id"] for t, p in self.messages if t.endswith("/events"))


def connect(mosquitto: MosquittoProcess, inbox: Inbox, client_id: str | None, *, persistent: bool,
            kinds: tuple[str, ...] = ("reported", "events")) -> FleetMqtt:
    connection = FleetMqtt(mosquitto.url, handler=inbox, shared=True, client_id=client_id, persistent=persistent,
                           kinds=kinds)
    connection.start()
    assert connection.wait_connected(10)
    return connection


def publish_events(mosquitto: MosquittoProcess, count: int, prefix: str) -> list[str]:
    ids = [f"{prefix}-{i:02d}" for i in range(count)]
    with Recorder(mosquitto.url, "unused/topic") as device:
        for i, event_id in enumerate(ids):
            device_id = f"dev-{i % 3}"
            device.publish(topics.events(device_id), json.dumps(
                {"device_id": device_id, "event_id": event_id, "event": "committed", "model": "digits",
                 "version": "2.0.0"}).encode())
    return ids


def test_events_published_while_the_server_is_down_arrive_when_it_returns(mosquitto: MosquittoProcess) -> None:
    first = Inbox()
    server = connect(mosquitto, first, replica_client_id(None, 8080), persistent=True)
    server.stop()  # the server goes away; its session stays with the broker
    sent = publish_events(mosquitto, 12, "while-down")
    again = Inbox()
    restarted = connect(mosquitto, again, replica_client_id(None, 8080), persistent=True)  # the same id again
    try:
        wait_until(lambda: again.events() == sent, 10, "the events published while the server was down",
                   explain=lambda: str(again.events()))
    finally:
        restarted.stop()
    assert first.events() == []


def test_a_clean_session_under_a_random_id_loses_them_as_the_old_server_did(mosquitto: MosquittoProcess) -> None:
    """The control for the test above: the connection before issue 19."""
    server = connect(mosquitto, Inbox(), None, persistent=False)
    server.stop()
    publish_events(mosquitto, 5, "lost")
    again = Inbox()
    restarted = connect(mosquitto, again, None, persistent=False)
    try:
        sent = publish_events(mosquitto, 1, "after")  # a message after it returned does arrive...
        wait_until(lambda: again.events() == sent, 10, "the event published after the restart")
    finally:
        restarted.stop()
    assert again.events() == sent  # ...and nothing from while it was down


def test_two_replicas_keep_their_own_ids_and_between_them_receive_everything_once(
        mosquitto: MosquittoProcess) -> None:
    ids = [replica_client_id(None, port) for port in (8080, 8081)]  # two replicas on one host
    assert ids[0] != ids[1]
    assert [replica_client_id(None, port) for port in (8080, 8081)] == ids  # stable across starts
    inboxes = [Inbox(), Inbox()]
    replicas = [connect(mosquitto, inbox, client_id, persistent=True) for inbox, client_id in zip(inboxes, ids,
                                                                                                   strict=True)]
    for replica in replicas:
        replica.stop()  # both down (a deploy)
    sent = publish_events(mosquitto, 20, "both-down")
    back = [Inbox(), Inbox()]
    replicas = [connect(mosquitto, inbox, client_id, persistent=True) for inbox, client_id in zip(back, ids,
                                                                                                   strict=True)]
    try:
        wait_until(lambda: sorted(back[0].events() + back[1].events()) == sent, 10,
                   "every event, split between the replicas")
    finally:
        for replica in replicas:
            replica.stop()
    assert back[0].events() and back[1].events()  # the shared subscription dealt to both sessions


def test_the_replica_id_comes_from_the_config_else_the_host_and_port() -> None:
    assert replica_client_id("fleet-a", 8080) == "edgefleet-server-fleet-a"
    made = replica_client_id(None, 8443)
    assert made.startswith("edgefleet-server-") and made.endswith("-8443")
    assert made == replica_client_id(None, 8443) != replica_client_id(None, 8444)
    with pytest.raises(ConfigError, match="not a replica id"):
        replica_client_id("two words", 8080)


def test_a_persistent_session_needs_a_client_id(mosquitto: MosquittoProcess) -> None:
    from fleet_server.errors import BrokerError

    with pytest.raises(BrokerError, match="stable client id"):
        FleetMqtt(mosquitto.url, handler=Inbox(), persistent=True)


def test_retained_reads_the_retained_message_of_each_topic_named(mosquitto: MosquittoProcess) -> None:
    devices = [f"dev-{i:04d}" for i in range(1200)]  # more than one SUBSCRIBE's worth
    with Recorder(mosquitto.url, "unused/topic") as device_side:
        for device_id in devices[:-1]:  # the last one never reported
            device_side.publish(topics.reported(device_id), json.dumps({"device_id": device_id}).encode(), retain=True)
        device_side.publish(topics.reported(devices[5]), b"", retain=True)  # a cleared topic holds nothing
    inbox = Inbox()
    server = connect(mosquitto, inbox, None, persistent=False, kinds=("events",))
    try:
        found = server.retained([topics.reported(d) for d in devices], timeout=20)
    finally:
        server.stop()
    expected = {topics.reported(d) for d in devices[:-1]} - {topics.reported(devices[5])}
    assert set(found) == expected
    assert all(json.loads(found[topics.reported(d)])["device_id"] == d for d in devices[:5])
    assert inbox.messages == []  # read on a connection of its own, never through the handler


def test_a_bad_replica_id_in_the_config_is_refused_with_a_fix() -> None:
    from fleet_server.config import load_config

    assert load_config({"replica_id": "fleet-a"}, env={}).replica_id == "fleet-a"
    assert load_config(env={"EDGEFLEET_REPLICA_ID": "fleet-b"}).replica_id == "fleet-b"
    with pytest.raises(ConfigError, match="not a replica id") as refused:
        load_config({"replica_id": "fleet/a"}, env={})
    assert refused.value.fix
