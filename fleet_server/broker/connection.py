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

**Failover.** ``url`` may name several brokers (``mqtt://a:1883,b:1883``, parsed by
``edgefleet.brokers``): after a lost or refused connection paho's next reconnect goes to the
next one, round the list, so a dead node costs one backoff step (1-30 s, paho's; the server is
one client, so it needs no jitter against a thundering herd). A persistent session carries on
only where the nodes share sessions (a cluster); independent Mosquittos each keep their own.

``publish`` waits for one message's PUBACK; ``publish_all`` sends many and then waits for all
of them against one deadline, so a wave of assignments costs one round of broker latency
instead of one per device.

**A session that outlives the server.** With ``persistent`` (the server uses it on an
external broker) the client connects with ``clean_session`` false (MQTT 3.1.1, as the agents
do: docs/contracts.md) under a client id that stays the same across the server's restarts,
so the broker keeps its subscriptions while it is down and queues the QoS 1 ``events``,
``reported`` and ``telemetry`` published meanwhile, then delivers them when it returns
(issue 19: an outcome reached while the server was down was never learned). Each replica
needs its own id, the same at every start: ``replica_client_id`` takes ``replica_id`` from
the config, else the host name and the HTTP port (two replicas on one host listen on two
ports). Not a file in the data directory: replicas may share that directory (the TUF
repository must be shared), and two replicas under one id would knock each other off the
broker at every reconnect. Mosquitto deals a shared subscription's messages round-robin to
the group's sessions, offline ones included, so a replica that is down holds its share until
it returns, and one gone for good holds it until the broker expires its session
(``persistent_client_expiration``). Limits: the broker
keeps a session's queue in memory (on disk too with ``persistence true``) and up to its
``max_queued_messages`` (Mosquitto: 1000 by default; raise it for the server's user), and
paho acknowledges a message when the handler returns, before the writers behind it store
it, so a server killed with messages in its queues loses those; the rollout engine makes up
for that by re-reading the devices' reports when it starts (``retained``).

``retained`` reads the retained message of each topic named, over a second, short-lived
clean session (shared subscriptions never get retained messages): the rollout engine reads
the retained ``reported`` of every device in flight when it starts.

This module does not parse payloads itself and keeps no device state.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from edgefleet.brokers import Rotation, parse_broker_urls
from edgefleet.errors import BrokerUrlError
from edgefleet.topics import PREFIX, server_subscription
from fleet_server.credentials import safe_url
from fleet_server.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
Ack = Callable[[], None]
# With ``manual_ack`` the handler is given the message's ack as a third argument, to call once
# the message is safely stored (or deliberately dropped): ``fleet_server.telemetry.ingest``.
AckingHandler = Callable[[str, bytes, Ack], None]
# What the rollout engine and presence need; the telemetry ingest adds "telemetry" (DEVICE_TO_SERVER).
INGESTED_KINDS = ("reported", "events")
# paho keeps 20 QoS 1 messages in flight by default and queues the rest until PUBACKs come
# back; a wave of assignments goes out faster with more in flight.
MAX_INFLIGHT = 200
CLIENT_ID_PREFIX = "edgefleet-server-"
# A replica id goes into the MQTT client id: letters, digits, '.', '_', '-' (64 at most).
REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RETAINED_CHUNK = 500  # topic filters per SUBSCRIBE when reading retained messages


def check_replica_id(value: str, where: str = "replica_id") -> str:
    if not REPLICA_ID.fullmatch(value):
        raise ConfigError(f"{where} {value!r} is not a replica id",
                          fix="use 1-64 letters, digits, '.', '_' or '-', e.g. fleet-a")
    return value


def replica_client_id(replica_id: str | None, port: int) -> str:
    """The MQTT client id of this server replica: the same at every start, its own among replicas.

    ``replica_id`` (the config's) wins; else ``HOSTNAME-PORT``, which stays put for a server
    on a host with a fixed name (a VM, a systemd unit, a Kubernetes StatefulSet) and differs
    between replicas. Where the host name changes at every start (a plain container), set
    ``replica_id``: a new id at each start would leave the old session's share of messages
    queued for a client that never returns.
    """
    if replica_id is None:
        host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:48].strip("-_") or "server"
        replica_id = f"{host}-{port}"
    return CLIENT_ID_PREFIX + check_replica_id(replica_id)


class FleetMqtt:
    def __init__(self, url: str, *, handler: Handler | AckingHandler, username: str | None = None,
                 password: str | None = None, shared: bool = True, ca_file: str | None = None,
                 client_id: str | None = None, keepalive: int = 30, kinds: Sequence[str] = INGESTED_KINDS,
                 persistent: bool = False, manual_ack: bool = False) -> None:
        if persistent and not client_id:
            raise BrokerError("a persistent MQTT session needs a stable client id",
                              fix="pass client_id=replica_client_id(config.replica_id, config.port)")
        try:
            # Several brokers (``mqtt://a:1883,b:1883``): the nodes to rotate through on failure.
            self.rotation = Rotation(parse_broker_urls(url))
        except BrokerUrlError as exc:
            raise BrokerError(f"broker URL {safe_url(url)!r}: {exc.message}", fix=exc.fix) from exc
        parts = urlsplit(url.split(",")[0].strip())  # a login in the URL is the first item's
        self.url = safe_url(url)  # for logs and errors: never the password
        self.handler = handler
        self.manual_ack = manual_ack
        self.shared = shared
        # server_subscription refuses a kind servers do not read, so a typo fails here, not silently.
        self.subscriptions = [(server_subscription(kind, shared=shared), 1) for kind in kinds]
        self.keepalive = keepalive
        self.connected = threading.Event()
        self._stopping = False
        self.persistent = persistent
        self.client_id = client_id or f"{CLIENT_ID_PREFIX}{secrets.token_hex(4)}"
        self._username = username or (unquote(parts.username) if parts.username else None)
        self._password = password or (unquote(parts.password) if parts.password else None)
        self._tls = self.rotation.current.tls
        self._ca_file = ca_file
        self._generation = 0  # one more at every CONNACK: an ack from before a reconnect is not sent
        self._ack_lock = threading.Lock()
        self._unacked = 0  # delivered on this connection, not yet acked (manual_ack)
        self._delivered = 0
        self.last_delivery: float | None = None  # time.monotonic() of the last message handed to the handler
        self._client = self._new_client(self.client_id, clean_session=not persistent, manual_ack=manual_ack)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.max_inflight_messages_set(MAX_INFLIGHT)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_message = self._on_message

    @property
    def host(self) -> str:
        """The broker node connected to now, or tried next."""
        return self.rotation.current.host

    @property
    def port(self) -> int:
        return self.rotation.current.port

    def _next_broker(self) -> None:
        """After a lost or failed connection, aim paho's own reconnect (1-30 s backoff) at the next node.

        On paho's thread. The ``host``/``port`` setters refuse while paho's state still says the
        connection was lost; ``reconnect()`` reads ``_host``/``_port``, so those are set.
        """
        if len(self.rotation.addresses) < 2 or self._stopping:
            return
        address = self.rotation.failed()
        self._client._host, self._client._port = address.host, address.port
        log.info("trying the next MQTT broker, %s", address)

    def _new_client(self, client_id: str, *, clean_session: bool, manual_ack: bool = False) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=MQTTProtocolVersion.MQTTv311, clean_session=clean_session,
                             manual_ack=manual_ack)
        if self._username:
            client.username_pw_set(self._username, self._password)
        if self._tls:
            client.tls_set(ca_certs=self._ca_file)
        return client

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

    def send(self, messages: Sequence[tuple[str, bytes]]) -> int:
        """Publish every (topic, payload) at QoS 0, waiting for nothing; how many paho took.

        For messages whose loss costs only a repeat (the telemetry confirmations of
        ``fleet_server.telemetry.acks``): no PUBACK round trip, no place in paho's in-flight
        window beside the assignments, nothing queued while disconnected."""
        from paho.mqtt.client import MQTT_ERR_SUCCESS

        if not self.connected.is_set():
            return 0
        return sum(self._client.publish(topic, payload, qos=0).rc == MQTT_ERR_SUCCESS for topic, payload in messages)

    def retained(self, topic_names: Sequence[str], timeout: float = 30.0) -> dict[str, bytes]:
        """The retained message of each topic named (topics with none are absent), as the broker holds them now.

        Read over a second connection with a clean session of its own, so nothing stays
        subscribed afterwards and the messages bypass ``handler``. The subscriptions are QoS 0
        (no in-flight window can hold a retained message back), in chunks, and a last
        SUBSCRIBE to a topic nobody publishes marks the end: a broker sends a subscription's
        retained messages right after its SUBACK (Mosquitto does), so all of them have come
        once that last SUBACK has. BrokerError if the broker cannot be reached in ``timeout``.
        """
        if not topic_names:
            return {}
        found: dict[str, bytes] = {}
        acked: set[int] = set()
        changed = threading.Condition()
        outcome: list[Any] = []
        sync_id = f"{self.client_id}-sync-{secrets.token_hex(3)}"
        client = self._new_client(sync_id, clean_session=True)

        def on_connect(_c: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
            with changed:
                outcome.append(reason_code)
                changed.notify_all()

        def on_message(_c: Any, _u: Any, message: Any) -> None:
            if message.retain and message.payload:
                found[message.topic] = bytes(message.payload)

        def on_subscribe(_c: Any, _u: Any, mid: int, _codes: Any, _p: Any) -> None:
            with changed:
                acked.add(mid)
                changed.notify_all()

        client.on_connect, client.on_message, client.on_subscribe = on_connect, on_message, on_subscribe
        deadline = time.monotonic() + timeout

        def wait(done: Callable[[], bool], what: str) -> None:
            with changed:
                if not changed.wait_for(done, max(0.0, deadline - time.monotonic())):
                    raise BrokerError(f"reading retained messages from {self.url}: no {what} within {timeout:g} s",
                                      fix="check the broker is reachable")

        try:
            client.connect(self.host, self.port, keepalive=self.keepalive)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to the MQTT broker at {self.url}: {exc}") from exc
        client.loop_start()
        try:
            wait(lambda: bool(outcome), "CONNACK")
            if outcome[0].is_failure:
                raise BrokerError(f"MQTT broker {self.url} refused the server: {outcome[0]}")
            names = list(dict.fromkeys(topic_names))
            chunks = [names[i:i + _RETAINED_CHUNK] for i in range(0, len(names), _RETAINED_CHUNK)]
            for chunk in [*chunks, [f"{PREFIX}/servers/{sync_id}/end"]]:
                result, mid = client.subscribe([(name, 0) for name in chunk])
                if result != 0:
                    raise BrokerError(f"subscribing at {self.url} failed (paho code {result})",
                                      fix="check the broker is reachable")
                wait(functools.partial(acked.__contains__, mid), "SUBACK")
        finally:
            client.disconnect()
            client.loop_stop()
        return found

    # paho runs these on its loop thread.
    def _on_connect(self, client: Any, _userdata: Any, flags: Any, reason_code: Any, _properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker %s refused the server: %s", self.url, reason_code)
            return
        # Renewed on every connect: a clean session keeps none, and a persistent one the broker
        # dropped (restarted without persistence, or expired it) must not leave us deaf.
        with self._ack_lock:
            self._generation += 1
            self._unacked = 0  # the broker redelivers what was not acked on the old connection
        if self.subscriptions:  # none on a NATS cluster: the server reads from JetStream (nats_ingest)
            client.subscribe(self.subscriptions)
        self.connected.set()
        log.info("connected to MQTT broker %s as %s (shared subscriptions: %s, persistent session: %s, "
                 "session resumed: %s)", self.url, self.client_id, self.shared, self.persistent,
                 bool(getattr(flags, "session_present", False)))

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any) -> None:
        self.connected.clear()
        if not self._stopping:
            log.warning("disconnected from MQTT broker %s (%s); reconnecting", self.rotation.current, reason_code)
            self._next_broker()

    def _on_connect_fail(self, _client: Any, _userdata: Any) -> None:
        log.warning("cannot reach MQTT broker %s", self.rotation.current)
        self._next_broker()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self.last_delivery = time.monotonic()
        if not self.manual_ack:
            try:
                cast(Handler, self.handler)(message.topic, bytes(message.payload))
            except Exception:  # one bad message must not kill paho's loop thread
                log.exception("handling MQTT message on %s failed", message.topic)
            return
        ack = self._acker(message.mid, message.qos)
        try:
            cast(AckingHandler, self.handler)(message.topic, bytes(message.payload), ack)
        except Exception:
            # A handler that failed will never ack: ack here, or the message would sit in the
            # broker's in-flight window until a reconnect, and then fail again (a poison pill).
            log.exception("handling MQTT message on %s failed; acknowledged and dropped", message.topic)
            ack()

    def _acker(self, mid: int, qos: int) -> Ack:
        """The one-shot ack of one delivered message, valid on this connection only.

        paho's ``ack`` only queues the PUBACK for its loop thread, so any thread may call it. An
        ack from before a reconnect is not sent: the broker redelivers that message on the new
        connection under the same packet id, and it may have reused the id since; the copy
        redelivered is stored as a duplicate (ignored) and acked then.
        """
        with self._ack_lock:
            generation = self._generation
            self._unacked += 1
            self._delivered += 1
        done = False

        def ack() -> None:
            nonlocal done
            with self._ack_lock:
                if done:
                    return
                done = True
                if generation != self._generation:
                    return
                self._unacked -= 1
            if qos > 0:
                self._client.ack(mid, qos)

        return ack

    def ack_counts(self) -> tuple[int, int]:
        """(messages delivered since start, delivered on this connection and not acked yet)."""
        with self._ack_lock:
            return self._delivered, self._unacked
