"""The server's MQTT connection: paho-mqtt 2, subscribing to the devices' topics, and publishing.

``FleetMqtt`` connects to ``mqtt://`` or ``mqtts://`` (TLS with the system CAs or a given CA
file) with the server's own credentials, reconnects by itself (paho's loop thread with a
1-30 s backoff), and on every (re)connect subscribes to the device topics it was given
(``kinds``: ``reported`` and ``events`` by default; the server adds ``telemetry``). With ``shared`` (the default for an external broker) it uses MQTT shared
subscriptions, so several server replicas split the ingest instead of each handling every
message. Each message goes to ``handler(topic, payload)`` on paho's one network thread, the
thread that also reads the broker's PUBACKs, so a handler must be quick: the presence ingest
(``fleet_server.registry.presence.PresenceIngest``) and the telemetry ingest
(``fleet_server.telemetry.ingest``) only parse or route, and queue for their own writer threads.

``publish`` waits for one message's PUBACK; ``publish_all`` sends many and then waits for all
of them against one deadline, so a wave of assignments costs one round of broker latency
instead of one per device.

This module does not parse payloads itself and keeps no device state.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from edgefleet.topics import server_subscription
from fleet_server.credentials import safe_url
from fleet_server.errors import BrokerError

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
# What the rollout engine and presence need; the telemetry ingest adds "telemetry" (DEVICE_TO_SERVER).
INGESTED_KINDS = ("reported", "events")
# paho keeps 20 QoS 1 messages in flight by default and queues the rest until PUBACKs come
# back; a wave of assignments goes out faster with more in flight.
MAX_INFLIGHT = 200


class FleetMqtt:
    def __init__(self, url: str, *, handler: Handler, username: str | None = None, password: str | None = None,
                 shared: bool = True, ca_file: str | None = None, client_id: str | None = None,
                 keepalive: int = 30, kinds: Sequence[str] = INGESTED_KINDS) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise BrokerError(f"broker URL {url!r} is not an MQTT URL", fix="use mqtt://HOST:1883 or mqtts://HOST:8883")
        self.url = safe_url(url)  # for logs and errors: never the password
        self.host = parts.hostname
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.handler = handler
        self.shared = shared
        # server_subscription refuses a kind servers do not read, so a typo fails here, not silently.
        self.subscriptions = [(server_subscription(kind, shared=shared), 1) for kind in kinds]
        self.keepalive = keepalive
        self.connected = threading.Event()
        self._stopping = False
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"edgefleet-server-{secrets.token_hex(4)}",
                                   protocol=MQTTProtocolVersion.MQTTv311, clean_session=True)
        username = username or (unquote(parts.username) if parts.username else None)
        password = password or (unquote(parts.password) if parts.password else None)
        if username:
            self._client.username_pw_set(username, password)
        if parts.scheme == "mqtts":
            self._client.tls_set(ca_certs=ca_file)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.max_inflight_messages_set(MAX_INFLIGHT)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self) -> FleetMqtt:
        try:
            # connect_async: an unreachable broker at start is retried by the loop, not fatal.
            self._client.connect_async(self.host, self.port, keepalive=self.keepalive)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to the MQTT broker at {self.url}: {exc}") from exc
        self._client.loop_start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, timeout: float = 10.0) -> None:
        """Publish at QoS 1 and wait until the broker has it."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise BrokerError(f"publishing to {topic} failed: {exc}", fix="check the broker is reachable") from exc
        if not info.is_published():
            raise BrokerError(f"publishing to {topic} timed out after {timeout:.0f}s", fix="check the broker is reachable")

    def publish_all(self, messages: Sequence[tuple[str, bytes]], *, retain: bool = False,
                    timeout: float = 30.0) -> list[bool]:
        """Publish every (topic, payload) at QoS 1, then wait for all PUBACKs until one deadline.

        Returns, per message, whether the broker confirmed it. A message not confirmed may
        still arrive later (paho keeps it queued); the caller treats it as unsent and sends it
        again, which the retained topic and the device's counter check make harmless.
        """
        from paho.mqtt.client import MQTT_ERR_SUCCESS

        if not self.connected.is_set():
            # paho would queue them all until a reconnect; the caller's periodic re-send would
            # then pile up copies for as long as the outage lasts.
            return [False] * len(messages)
        infos = [self._client.publish(topic, payload, qos=1, retain=retain) for topic, payload in messages]
        deadline = time.monotonic() + timeout
        confirmed = []
        for info in infos:
            try:
                if info.rc == MQTT_ERR_SUCCESS and not info.is_published():
                    info.wait_for_publish(max(0.0, deadline - time.monotonic()))
                confirmed.append(info.rc == MQTT_ERR_SUCCESS and info.is_published())
            except (RuntimeError, ValueError):
                confirmed.append(False)
        if not all(confirmed):
            log.warning("the broker at %s confirmed %d of %d messages within %.0f s", self.url, sum(confirmed),
                        len(confirmed), timeout)
        return confirmed

    # paho runs these on its loop thread.
    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker %s refused the server: %s", self.url, reason_code)
            return
        # Subscriptions are not kept across a clean-session reconnect, so renew them every time.
        client.subscribe(self.subscriptions)
        self.connected.set()
        log.info("connected to MQTT broker %s (shared subscriptions: %s)", self.url, self.shared)

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        self.connected.clear()
        if not self._stopping:
            log.warning("disconnected from MQTT broker %s (%s); reconnecting", self.url, reason_code)

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            self.handler(message.topic, bytes(message.payload))
        except Exception:  # one bad message must not kill paho's loop thread
            log.exception("handling MQTT message on %s failed", message.topic)
