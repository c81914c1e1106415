"""docker/docker-compose.yml run as local processes: every service's command, environment, volumes and health check.

There is no Docker engine on this machine, so nothing here builds an image or starts a
container. What runs instead, read from the compose file and the Dockerfiles:

- each service's command (the image's ENTRYPOINT + the compose ``command``) as a process, with
  the compose ``environment`` over the Dockerfile's ``ENV``;
- each named volume and bind mount as a directory of this test: a path inside a container is
  rewritten to that directory in the arguments, the environment and mosquitto.conf, and host
  names and ports (``server:8080``, ``mosquitto:1883``, ``127.0.0.1:8765``) to free local ports;
- each service's ``healthcheck`` command, rewritten the same way, polled until it passes.

What does not run: the ``postgres:16`` image (the local PostgreSQL stands in, with a database
of this test's own, for the compose file's ``postgresql://edgefleet:edgefleet@postgres/...``),
the ``user:``/``pid:`` settings (processes here share one pid namespace and user anyway) and
the restart policies (the test checks each service names one).

Started in the order a careless ``up`` might: Mosquitto first (it waits for the files the
server writes), then the server, then two agents (``--scale agent=2``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from simulation.fleet import Supervisor, edgefleet_argv, free_port, mosquitto_binary, wait_until
from tests.e2e.test_docker import DOCKER, VENV_BIN, dockerfile

COMPOSE = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


class Service:
    """One compose service as a local process: its paths and addresses rewritten to this machine's."""

    def __init__(self, name: str, root: Path, rewrite: dict[str, str]) -> None:
        self.name = name
        self.spec: dict[str, Any] = COMPOSE["services"][name]
        self.rewrite = dict(rewrite)
        for volume in self.spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                self.rewrite[target] = str(root / f"bind-{Path(source).name}")
            else:
                self.rewrite[target] = str(root / "volumes" / source)
                Path(self.rewrite[target]).mkdir(parents=True, exist_ok=True)

    def local(self, text: str) -> str:
        # Longest first, so /mosquitto/edgefleet/acl is not cut by a shorter /mosquitto prefix.
        for container, here in sorted(self.rewrite.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(container, here)
        return text

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        env = {**base, **{k: str(v) for k, v in (self.spec.get("environment") or {}).items()}}
        return {k: self.local(v) for k, v in env.items()}

    def healthcheck(self, env: dict[str, str]) -> Callable[[], bool]:
        test = self.spec["healthcheck"]["test"]
        if test[0] == "CMD-SHELL":
            argv = ["sh", "-c", self.local(test[1].replace("$$", "$"))]
        else:
            assert test[0] == "CMD"
            argv = [sys.executable if w == "python" else self.local(w) for w in test[1:]]

        def passes() -> bool:
            done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, timeout=30, check=False)
            return done.returncode == 0
        return passes


def _dockerfile_env(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in dockerfile(name).get("ENV", []):
        env.update(dict(word.split("=", 1) for word in line.split()))
    return env


def test_every_service_has_a_health_check_and_a_restart_policy() -> None:
    for name, service in COMPOSE["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), f"{name} has no restart policy"


def test_compose_services_run_as_processes(tmp_path: Path, postgres_url: str) -> None:
    binary = mosquitto_binary()
    assert binary is not None
    http, mqtt = free_port(), free_port()
    hosts = {"http://server:8080": f"http://127.0.0.1:{http}", "mqtt://mosquitto:1883": f"mqtt://127.0.0.1:{mqtt}",
             "postgresql://edgefleet:edgefleet@postgres/edgefleet": postgres_url,
             "127.0.0.1:8080/healthz": f"127.0.0.1:{http}/healthz"}
    supervisor = Supervisor(tmp_path / "logs")
    try:
        # --- mosquitto: its bind-mounted mosquitto.conf, with the volume paths and port of this machine
        mosquitto = Service("mosquitto", tmp_path, hosts)
        conf = mosquitto.local((DOCKER / "mosquitto" / "mosquitto.conf").read_text())
        conf = conf.replace("listener 1883 0.0.0.0", f"listener {mqtt} 127.0.0.1")
        if os.geteuid() == 0:
            conf += "user root\n"  # the container runs it as uid 10001 (compose `user:`); here we are root
        Path(mosquitto.rewrite["/mosquitto/config/mosquitto.conf"]).write_text(conf)
        command = [mosquitto.local(w) for w in mosquitto.spec["command"]]
        assert command[:2] == ["sh", "-c"]
        env = {"PATH": f"{Path(binary).parent}:{os.environ['PATH']}"}
        broker = supervisor.spawn("mosquitto", command, env=env)
        mosquitto_healthy = mosquitto.healthcheck(env)

        # --- server: ENTRYPOINT ["edgefleet", "server"] + the compose command
        server = Service("server", tmp_path, hosts)
        entrypoint = json.loads(dockerfile("Dockerfile.server")["ENTRYPOINT"][-1])
        assert entrypoint == ["edgefleet", "server"]
        args = [server.local(w) for w in server.spec["command"]]
        args[args.index("--port") + 1] = str(http)
        server_env = server.environment(_dockerfile_env("Dockerfile.server"))
        server_proc = supervisor.spawn("server", edgefleet_argv(*entrypoint[1:], *args), env=server_env)
        server_healthy = server.healthcheck(server_env)
        wait_until(lambda: server_proc.alive() and server_healthy(), 120, "the server's health check",
                   explain=lambda: server_proc.log_tail(60))
        wait_until(lambda: broker.alive() and mosquitto_healthy(), 60, "mosquitto's health check",
                   explain=lambda: broker.log_tail())
        postgres = Service("postgres", tmp_path, hosts)
        assert postgres.healthcheck({"PGHOST": "127.0.0.1", "PGUSER": "postgres"})()

        # --- two agents: the image's entrypoint script, each with its own state volume
        admin = {"Authorization": f"Bearer {(tmp_path / 'volumes' / 'server-data' / 'admin-token').read_text().strip()}"}
        agents = []
        for index in range(2):
            agent = Service("agent", tmp_path, {**hosts, "/var/lib/edgefleet": str(tmp_path / f"agent-{index}")})
            port = free_port()
            agent.rewrite["127.0.0.1:8765"] = f"127.0.0.1:{port}"
            agent_env = agent.environment(_dockerfile_env("Dockerfile.agent"))
            # The entrypoint's port default is 8765 for every container; here they share a host.
            agent_env |= {"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "EDGEFLEET_HTTP_PORT": str(port)}
            proc = supervisor.spawn(f"agent-{index}", ["sh", str(DOCKER / "agent-entrypoint.sh")], env=agent_env)
            agents.append((proc, agent.healthcheck(agent_env)))
        for proc, healthy in agents:
            wait_until(lambda p=proc, h=healthy: p.alive() and h(), 120, "an agent's health check",  # type: ignore[misc]
                       explain=lambda p=proc: p.log_tail(40))  # type: ignore[misc]

        def online() -> int:
            devices = httpx.get(f"http://127.0.0.1:{http}/api/v1/devices", headers=admin, timeout=5).json()
            return sum(1 for d in devices if d["online"])

        wait_until(lambda: online() == 2, 90, "both agents online through Mosquitto")
        assert httpx.get(f"http://127.0.0.1:{http}/healthz").json()["mqtt_connected"] is True
        for child in (broker, server_proc, *(p for p, _ in agents)):
            assert child.alive() and "Traceback" not in child.log(), child.log_tail(60)
    finally:
        supervisor.stop_all()
