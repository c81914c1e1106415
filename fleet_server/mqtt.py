"""The server's MQTT connection: paho-mqtt 2, ingest of device presence, and publishing.

``FleetMqtt`` connects to ``mqtt://`` or ``mqtts://`` (TLS with the system CAs or a given CA
file) with the server's own credentials, reconnects by itself (paho's loop thread with a
1-30 s backoff), and on every (re)connect subscribes to the devices' ``reported`` and
``events`` topics. With ``shared`` (the default for an external broker) it uses MQTT shared
subscriptions, so several server replicas split the ingest instead of each handling every
message. Each message goes to ``handler(topic, payload)``; the presence ingest
(``PresenceIngest``) parses it (``fleet_server.presence``) and stores it (``Devices``).

This module does not parse payloads itself and keeps no device state.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from edgefleet.topics import server_subscription
from fleet_server.credentials import safe_url
from fleet_server.devices import Devices
from fleet_server.errors import BrokerError
from fleet_server.presence import PresenceMessageError, parse_message

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
INGESTED_KINDS = ("reported", "events")


class FleetMqtt:
    def __init__(self, url: str, *, handler: Handler, username: str | None = None, password: str | None = None,
                 shared: bool = True, ca_file: str | None = None, client_id: str | None = None,
                 keepalive: int = 30) -> None:
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

    # paho runs these on its loop thread.
    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker %s refused the server: %s", self.url, reason_code)
            return
        # Subscriptions are not kept across a clean-session reconnect, so renew them every time.
        client.subscribe([(server_subscription(kind, shared=self.shared), 1) for kind in INGESTED_KINDS])
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


class PresenceIngest:
    """The MQTT handler that stores device presence."""

    def __init__(self, devices: Devices, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.devices = devices
        self.clock = clock

    def __call__(self, topic: str, payload: bytes) -> None:
        try:
            update = parse_message(topic, payload, self.clock())
        except PresenceMessageError as exc:
            log.warning("dropped MQTT message: %s", exc)
            return
        if update is not None and not self.devices.record_presence(update):
            log.info("message from unknown or revoked device %s ignored", update.device_id)
