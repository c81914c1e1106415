"""A small MQTT 3.1.1 test client that records what it receives, on a broker at 127.0.0.1.

``MqttProbe`` connects in its constructor and waits for the CONNACK, which must accept it
(``refused=False``), refuse it (``True``), or either (``None``: read ``accepted``). It is for
asserting what a broker grants, keeps and delivers (Mosquitto's ACLs, the NATS gateway across
nodes); the fleet's own clients (the agent's link, the server's ``FleetMqtt``) are tested
through the fleet, not through it.
"""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from simulation.fleet import wait_until


class MqttProbe:
    """An MQTT 3.1.1 client on one broker (or NATS node) that keeps every message it gets: (topic, payload, retain)."""

    def __init__(self, port: int, client_id: str, *, clean_session: bool = True,
                 will: tuple[str, bytes] | None = None, login: tuple[str, str] | None = None,
                 refused: bool | None = False, connack_timeout: float = 10.0) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.session_present: bool | None = None
        self._connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=clean_session)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        if login is not None:
            self.client.username_pw_set(*login)
        self.refused = refused  # expect the CONNACK to refuse (None: either); ``refusal`` holds why
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.disconnected = threading.Event()
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.client.on_subscribe = self._on_subscribe
        self._subacks: dict[int, list[bool]] = {}
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        if not self._connected.wait(connack_timeout):
            self.client.loop_stop()  # its thread must not outlive the test
            raise AssertionError(f"MQTT client {client_id} got no CONNACK from port {port}")
        if refused is not None and (self.refusal is not None) != refused:
            self.client.loop_stop()
            raise AssertionError(f"MQTT client {client_id}: CONNACK {self.refusal or 'Success'}")

    @property
    def accepted(self) -> bool:
        """Whether the broker accepted the connection (its CONNACK said Success)."""
        return self.refusal is None

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason_code: Any, _p: Any) -> None:
        self.refusal = str(reason_code) if reason_code.is_failure else None
        self.session_present = bool(flags.session_present)
        self._connected.set()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        self._subacks[mid] = [not code.is_failure for code in codes]

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def subscribe(self, *topics: str) -> list[bool]:
        """Subscribe at QoS 1 and wait for the SUBACK (a message published before it would be missed);
        per topic, whether the broker granted it."""
        _, mid = self.client.subscribe([(t, 1) for t in topics])
        assert mid is not None
        wait_until(lambda: mid in self._subacks, 10, f"SUBACK for {topics}")
        return self._subacks[mid]

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
