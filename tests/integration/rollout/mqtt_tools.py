"""A real paho client for tests: records what crosses the broker and publishes like a server would."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from simulation.fleet import wait_until


class Recorder:
    """Subscribes to topic filters and keeps every message (topic, payload, retain flag)."""

    def __init__(self, broker_url: str, *filters: str, username: str | None = None,
                 password: str | None = None) -> None:
        parsed = urlparse(broker_url)
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        if username:
            self._client.username_pw_set(username, password)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_connect = lambda c, *a: c.subscribe([(f, 1) for f in filters])
        self._client.connect(parsed.hostname or "127.0.0.1", parsed.port or 1883)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("recorder did not subscribe in 10 s")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def json_on(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t == topic and p]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        wait_until(predicate, timeout, "a condition on the recorded messages", every=0.02,
                   explain=lambda: f"{len(self.messages)} messages recorded")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
