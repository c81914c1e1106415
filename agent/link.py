"""The agent's MQTT link to the fleet: presence, reported state, desired assignments, commands.

One paho-mqtt 2 client (``CallbackAPIVersion.VERSION2``, MQTT 3.1.1 so it also works with
small embedded brokers) with client id = device id and a persistent session
(``clean_session=False``), QoS 1 everywhere. The last will, retained on the ``reported``
topic, is ``{"device_id", "online": false}``, so the broker marks the device offline when it
dies; ``reported`` is published retained on every connect and whenever it changes.
``mqtts://`` URLs turn TLS on (CA from the state directory's ca.pem, else the system's).

The link runs its own thread and reconnects with jittered exponential backoff (``Backoff``,
``edgefleet.backoff``: pure, so it is tested without sleeping). Given several brokers (``mqtt://a:1883,b:1883``, or a
list: ``edgefleet.brokers``) it moves to the next one at every failed or lost connection, so a
dead node costs one backoff step; its persistent session (client id = device id) carries on
there where the nodes share sessions (a cluster), and starts afresh on an independent broker,
where the retained ``desired`` still reaches it. Nothing waits on it: ``start()`` returns at once and
inference never touches it, so the agent serves with the broker down and connects when it
comes up. Incoming ``desired`` and ``commands`` messages are handed to callbacks on a separate
dispatcher thread, so a slow handler (the update path downloading a bundle) cannot stall
keepalives. It does not verify assignments or run commands: its callbacks' owners do.

Every SUBACK is checked. A broker may refuse a subscription (return code 0x80) and keep the
connection: a NATS cluster's MQTT gateway does when the JetStream consumer behind it takes
longer than ``js_api_timeout`` in a connect burst, an ACL that denies the topic does on
Mosquitto. Unchecked, the device stays connected and deaf to its assignments. The link counts
each refusal (``suback_refusals``, the agent's ``/metrics``), logs the topic and the fix, and
subscribes again to what was refused after a jittered backoff (``edgefleet.backoff.suback_backoff``,
5-60 s; the simulator's light devices use the same). ``subscribed`` is set once both
subscriptions are granted on the current connection.

What is published to ``desired`` while a SUBSCRIBE waits for its consumer reaches the device
neither as a retained message (taken when the SUBSCRIBE arrives) nor live (the consumer does
not exist yet). So once ``desired`` is granted on a session the broker did not resume, or after
a refusal, the link publishes ``reported`` again: it names the assignment the agent holds
(``assignment_counter``, docs/contracts.md), and a server that issued a newer one publishes
that device's ``desired`` again.

Durable delivery (the telemetry outbox) runs ON the link thread: ``on_tick`` is called after
every network loop pass while connected, and may call ``publish_bytes``; ``on_puback(mid)``
reports each broker acknowledgement. Publishing and acknowledging on one thread means a
PUBACK can never arrive before the caller has recorded the mid it got (paho calls
on_publish under its own message lock, so a second thread would also risk a lock-order
deadlock). paho keeps unacknowledged QoS 1 messages across a reconnect and sends them again
with the same mid, so a mid the caller recorded stays meaningful after a reconnect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.errors import LinkError
from agent.state import Credentials
from edgefleet import topics
from edgefleet.backoff import Backoff, refused_topics
from edgefleet.backoff import suback_backoff as edgefleet_suback_backoff
from edgefleet.brokers import BrokerAddress, Rotation, parse_broker_urls
from edgefleet.errors import BrokerUrlError

log = logging.getLogger("agent.link")

__all__ = ["Backoff", "Link", "parse_brokers"]  # Backoff lives in edgefleet.backoff, shared with the simulator

MAX_QUEUED = 1000
DesiredHandler = Callable[[bytes], None]
CommandHandler = Callable[[dict[str, Any]], None]
TickHandler = Callable[[], None]
PubackHandler = Callable[[int], None]


def parse_brokers(urls: str | Sequence[str]) -> tuple[BrokerAddress, ...]:
    """The brokers of ``urls`` (a list, or ``mqtt://a:1883,b:1883``); LinkError naming the bad item."""
    try:
        return parse_broker_urls(urls)
    except BrokerUrlError as exc:
        raise LinkError(exc.message, fix=f"{exc.fix}; set broker_url in agent.toml or re-enroll the device") from exc


class Link:
    """The MQTT link of one device. ``start()``/``stop()``; callbacks may be set before start."""

    def __init__(self, device_id: str, broker_url: str | Sequence[str], *, credentials: Credentials | None = None,
                 ca_file: Path | None = None, keepalive: int = 30, backoff: Backoff | None = None,
                 on_desired: DesiredHandler | None = None, on_command: CommandHandler | None = None,
                 clock: Callable[[], float] = time.time, suback_backoff: Backoff | None = None) -> None:
        # lazy: the batch command and the API never need paho
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.device_id = topics.check_device_id(device_id)
        self.rotation = Rotation(parse_brokers(broker_url))
        self.on_desired = on_desired
        self.on_command = on_command
        self.on_tick: TickHandler | None = None
        self.on_puback: PubackHandler | None = None
        self.keepalive = keepalive
        self._mqtt = mqtt
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._topic_reported = topics.reported(device_id)
        self._topic_desired = topics.desired(device_id)
        self._topic_commands = topics.commands(device_id)
        self._lock = threading.Lock()
        self._reported: dict[str, Any] = {}
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inbox: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._dispatcher: threading.Thread | None = None
        self.connects = 0
        # Subscriptions (link thread only, but for the counters others read): the topics of each
        # SUBSCRIBE awaiting its SUBACK by mid, the refused ones and when to ask for them again.
        self.suback_refusals = 0  # SUBACKs that refused at least one topic, since start
        self.subscribed = threading.Event()  # desired and commands both granted on this connection
        self._suback_backoff = suback_backoff or edgefleet_suback_backoff()
        self._pending: dict[int, tuple[str, ...]] = {}
        self._granted: set[str] = set()
        self._refused: tuple[str, ...] = ()
        self._resubscribe_at: float | None = None
        self._report_on_grant = False

        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=device_id,
                             clean_session=False, protocol=mqtt.MQTTv311)
        client.will_set(self._topic_reported, self._offline_payload(), qos=1, retain=True)
        # QoS 1 messages published while offline wait in paho's memory until the broker is
        # back; bound that so a device offline for weeks cannot grow without limit (durable
        # store-and-forward of telemetry is the outbox's job, not this queue's).
        client.max_queued_messages_set(MAX_QUEUED)
        if credentials is not None:
            client.username_pw_set(credentials.mqtt_username, credentials.mqtt_password or None)
        if self.rotation.current.tls:  # one scheme for every broker (edgefleet.brokers)
            try:
                client.tls_set(ca_certs=str(ca_file) if ca_file and ca_file.exists() else None)
            except (OSError, ValueError) as exc:
                raise LinkError(f"cannot set up TLS for {broker_url}: {exc}",
                                fix="put the broker's CA certificate in STATE_DIR/ca.pem") from exc
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        self._client = client

    def _offline_payload(self) -> bytes:
        return json.dumps({"device_id": self.device_id, "online": False}, sort_keys=True).encode()

    # -- public -------------------------------------------------------------------------------
    @property
    def address(self) -> BrokerAddress:
        """The broker connected to now, or tried next."""
        return self.rotation.current

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._dispatcher = threading.Thread(target=self._dispatch, name="edgefleet-link-dispatch", daemon=True)
        self._dispatcher.start()
        self._thread = threading.Thread(target=self._run, name="edgefleet-link", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish offline (a clean disconnect sends no last will), disconnect and join."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._inbox.put(None)
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)
            self._dispatcher = None

    def set_reported(self, document: Mapping[str, Any]) -> None:
        """Set the reported state; published (retained) now if it changed and we are connected,
        else on the next connect."""
        with self._lock:
            changed = dict(document) != self._reported
            self._reported = dict(document)
        if changed and self.connected:
            self._publish_reported()

    def report_now(self) -> None:
        """Publish the reported state again even if unchanged (the server's "report" command)."""
        if self.connected:
            self._publish_reported()

    def publish(self, kind: str, document: Mapping[str, Any], *, retain: bool = False) -> bool:
        """Publish to one of this device's outgoing topics (events, telemetry). QoS 1; paho
        queues it while offline and sends it after reconnecting. Returns False if refused."""
        topic = topics.device_topic(self.device_id, kind)
        info = self._client.publish(topic, json.dumps(dict(document), sort_keys=True), qos=1, retain=retain)
        return info.rc in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN)

    def publish_bytes(self, kind: str, payload: bytes) -> int | None:
        """Publish raw bytes at QoS 1 to one of this device's outgoing topics; the message id
        whose PUBACK ``on_puback`` will report, or None if paho refused it (queue full).

        Call it from ``on_tick`` (the link thread): see the module docstring for why."""
        topic = topics.device_topic(self.device_id, kind)
        info = self._client.publish(topic, payload, qos=1)
        if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
            return None
        return int(info.mid)

    # -- paho callbacks (on the link thread) --------------------------------------------------
    def _publish_reported(self) -> None:
        with self._lock:
            document = dict(self._reported)
        document.update({"device_id": self.device_id, "online": True, "ts": self._clock()})
        self._client.publish(self._topic_reported, json.dumps(document, sort_keys=True), qos=1, retain=True)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("broker %s:%s refused the connection: %s", self.address.host, self.address.port, reason_code)
            return
        self._backoff.reset()
        self.connects += 1
        # The session is persistent, but subscribing again is cheap and covers a broker that
        # lost its session store. A session the broker did not resume had no subscription: what
        # was published to it before the SUBACK may be lost, so report again once granted. A
        # refusal not yet followed by a grant stays pending: a resumed session lacks what was refused.
        self._report_on_grant = self._report_on_grant or not getattr(flags, "session_present", False)
        self._pending.clear()
        self._granted.clear()
        self._refused, self._resubscribe_at = (), None
        self.subscribed.clear()
        self._subscribe((self._topic_desired, self._topic_commands))
        self._connected.set()
        self._publish_reported()
        log.info("connected to broker %s:%s", self.address.host, self.address.port)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self._connected.is_set():
            log.warning("disconnected from broker %s:%s (%s)", self.address.host, self.address.port, reason_code)
        self._connected.clear()
        self.subscribed.clear()

    def _subscribe(self, wanted: tuple[str, ...]) -> None:
        result, mid = self._client.subscribe([(topic, 1) for topic in wanted])
        if result == self._mqtt.MQTT_ERR_SUCCESS and mid is not None:
            self._pending[int(mid)] = wanted
        # else the connection is gone: the next CONNACK subscribes to everything again

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        wanted = self._pending.pop(int(mid), None)
        if wanted is None:
            return  # the SUBACK of a SUBSCRIBE sent on an earlier connection
        refused = refused_topics(wanted, [bool(getattr(code, "is_failure", False)) for code in reason_codes])
        granted = tuple(t for t in wanted if t not in refused)
        self._granted.update(granted)
        if refused:
            self.suback_refusals += 1
            self._granted.difference_update(refused)
            self._report_on_grant = self._report_on_grant or self._topic_desired in refused
            delay = self._suback_backoff.next()
            self._refused = tuple(dict.fromkeys((*self._refused, *refused)))
            self._resubscribe_at = time.monotonic() + delay
            log.warning("broker %s:%s refused the subscription to %s (SUBACK 0x80, refusal %d); subscribing "
                        "again in %.1f s. The device hears nothing on that topic until granted. Fix: on a NATS "
                        "cluster the JetStream consumer took longer than mqtt.js_api_timeout (a connect burst; "
                        "docs/deployment.md 'The consumer limit'); elsewhere check that the broker's ACL lets "
                        "this device read its own desired and commands",
                        self.address.host, self.address.port, ", ".join(refused), self.suback_refusals, delay)
        if self._topic_desired in granted and self._report_on_grant and self._connected.is_set():
            # Granted late or on a fresh session: tell the server which assignment we hold, so it
            # publishes `desired` again if a newer one went out while we could not hear it.
            self._report_on_grant = False
            self._publish_reported()
        if {self._topic_desired, self._topic_commands} <= self._granted:
            self._suback_backoff.reset()
            self.subscribed.set()

    def _retry_subscriptions(self) -> None:
        if self._resubscribe_at is None or time.monotonic() < self._resubscribe_at or not self._connected.is_set():
            return
        refused, self._refused, self._resubscribe_at = self._refused, (), None
        log.info("subscribing again to %s", ", ".join(refused))
        self._subscribe(refused)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._inbox.put((message.topic, bytes(message.payload)))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if self.on_puback is not None:
            try:
                self.on_puback(int(mid))
            except Exception:  # paho would swallow it silently; say so instead
                log.exception("handling the PUBACK of message %s failed", mid)

    def _tick(self) -> None:
        if self.on_tick is not None and self._connected.is_set():
            try:
                self.on_tick()
            except Exception:
                log.exception("link tick failed")

    # -- threads --------------------------------------------------------------------------------
    def _run(self) -> None:
        mqtt = self._mqtt
        while not self._stop.is_set():
            address = self.address
            try:
                # connect(), not reconnect(): it may be another node than last time. paho keeps
                # the unacknowledged QoS 1 messages either way and sends them on the new link.
                self._client.connect(address.host, address.port, keepalive=self.keepalive)
            except (OSError, ValueError) as exc:
                self._next_broker(f"unreachable ({exc})")
                continue
            while not self._stop.is_set():
                if self._client.loop(timeout=0.2) != mqtt.MQTT_ERR_SUCCESS:
                    break
                self._retry_subscriptions()
                self._tick()
            self._connected.clear()
            if not self._stop.is_set():
                self._next_broker("lost or refused the connection")
        self._goodbye()

    def _next_broker(self, why: str) -> None:
        """Wait one jittered backoff step, then try the next broker of the list (the same if only one).

        Rotating at every failure means a dead node costs one step, never the whole backoff
        ladder; the ladder grows only while every node fails, and resets at the next CONNACK.
        """
        delay = self._backoff.next()
        failed = self.address
        following = self.rotation.failed()
        log.info("broker %s:%s %s; trying %s:%s in %.1fs", failed.host, failed.port, why,
                 following.host, following.port, delay)
        self._stop.wait(delay)

    def _goodbye(self) -> None:
        if not self._client.is_connected():
            return
        with contextlib.suppress(Exception):
            info = self._client.publish(self._topic_reported, self._offline_payload(), qos=1, retain=True)
            deadline = time.monotonic() + 2.0
            while not info.is_published() and time.monotonic() < deadline:
                self._client.loop(timeout=0.05)
            self._client.disconnect()
            self._client.loop(timeout=0.05)
        self._connected.clear()

    def _dispatch(self) -> None:
        while (item := self._inbox.get()) is not None:
            topic, payload = item
            try:
                if topic == self._topic_desired:
                    if self.on_desired is not None:
                        self.on_desired(payload)
                elif topic == self._topic_commands and self.on_command is not None:
                    command = json.loads(payload)
                    if not isinstance(command, dict) or not isinstance(command.get("command"), str):
                        raise ValueError("a command must be an object with a 'command' string")
                    self.on_command(command)
            except Exception:  # a bad message or a failing handler must not end the link
                log.exception("handling a message on %s failed", topic)
