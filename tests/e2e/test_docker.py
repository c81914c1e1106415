"""docker/: the compose file is valid and the images run the same `edgefleet` commands as the tests.

There is no Docker engine here (and the client has no compose plugin), so the compose file is
parsed with PyYAML; the agent's entrypoint script is run for real against a real server.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from edgefleet.cli import build_parser
from simulation.fleet import ServerProcess, Supervisor, free_port, wait_until

DOCKER = Path(__file__).resolve().parents[2] / "docker"
VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def dockerfile(name: str) -> dict[str, list[str]]:
    """Instructions of a Dockerfile by keyword (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (DOCKER / name).read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.setdefault(keyword.upper(), []).append(rest.strip())
    return found


def test_compose_has_the_services_and_the_agent_scales() -> None:
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"postgres", "server", "mosquitto", "agent"}
    agent = compose["services"]["agent"]
    # `--scale agent=5` needs no fixed name or host port; each replica gets its own state volume.
    assert "container_name" not in agent and "ports" not in agent
    assert "VOLUME" in dockerfile("Dockerfile.agent")
    server_args = compose["services"]["server"]["command"]
    assert "postgresql://edgefleet:edgefleet@postgres/edgefleet" in server_args
    assert "mqtt://mosquitto:1883" in server_args
    mosquitto = compose["services"]["mosquitto"]
    assert mosquitto["pid"] == "service:server"  # so the server may SIGHUP it after writing the ACL
    conf = (DOCKER / "mosquitto" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file /mosquitto/edgefleet/acl" in conf


def test_server_image_runs_the_server_command_the_tests_run() -> None:
    found = dockerfile("Dockerfile.server")
    entrypoint = json.loads(found["ENTRYPOINT"][-1])
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    for command in (json.loads(found["CMD"][-1]), compose["services"]["server"]["command"]):
        assert entrypoint[0] == "edgefleet"
        args = build_parser().parse_args([*entrypoint[1:], *command])
        assert args.command == "server" and str(args.data_dir) == "/var/lib/edgefleet" and args.host == "0.0.0.0"
    assert found["USER"] == ["edgefleet"]


def test_agent_image_is_non_root_with_a_healthz_check() -> None:
    found = dockerfile("Dockerfile.agent")
    assert found["USER"] == ["edgefleet"]
    assert "/healthz" in found["HEALTHCHECK"][0]
    assert json.loads(found["ENTRYPOINT"][0]) == ["/usr/local/bin/edgefleet-agent-entrypoint"]
    assert any("agent-entrypoint.sh /usr/local/bin/edgefleet-agent-entrypoint" in c for c in found["COPY"])
    script = (DOCKER / "agent-entrypoint.sh").read_text()
    commands = []
    for line in script.splitlines():
        if "edgefleet agent" not in line or line.lstrip().startswith("#"):
            continue
        # What the shell would pass: defaults for ${X:-d}, a placeholder for other variables.
        line = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", line.replace('"$@"', "").replace("$(hostname)", "h"))
        words = shlex.split(re.sub(r"\$[A-Za-z_]+", "x", line.strip().removeprefix("exec ")))
        if words[:1] == ["edgefleet"]:
            commands.append(build_parser().parse_args(words[1:]))
    assert [(a.command, a.handler.__name__) for a in commands] == [("agent", "_enroll"), ("agent", "_run")]


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_agent_entrypoint_enrolls_then_runs_against_a_real_server(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs")
    try:
        server = ServerProcess(supervisor, tmp_path / "server").start()
        port = free_port()
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "EDGEFLEET_SERVER": server.url,
               "EDGEFLEET_ADMIN_TOKEN_FILE": str(server.data_dir / "admin-token"), "EDGEFLEET_PROFILE": "rpi4-64",
               "EDGEFLEET_LABELS": "site=compose,ring=canary", "EDGEFLEET_STATE_DIR": str(tmp_path / "state"),
               "EDGEFLEET_HTTP_PORT": str(port)}
        agent = supervisor.spawn("entrypoint", ["sh", str(DOCKER / "agent-entrypoint.sh")], env=env)
        admin = {"Authorization": f"Bearer {server.admin_token}"}

        def online() -> list[dict[str, object]]:
            assert agent.alive(), agent.log_tail()
            devices = httpx.get(f"{server.url}/api/v1/devices", headers=admin).json()
            return [d for d in devices if d["online"]]

        devices = wait_until(online, 60, "the entrypoint's agent to enroll and come online")
        assert devices[0]["labels"] == {"site": "compose", "ring": "canary"} and devices[0]["profile"] == "rpi4-64"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        # A restarted container keeps its identity: the script does not enroll again.
        agent.stop()
        again = supervisor.spawn("entrypoint-2", ["sh", str(DOCKER / "agent-entrypoint.sh")], env=env)
        wait_until(lambda: answers(port) if again.alive() else pytest.fail(again.log_tail()), 30, "the restarted agent")
        assert len(httpx.get(f"{server.url}/api/v1/devices", headers=admin).json()) == 1
    finally:
        supervisor.stop_all()


def test_no_engine_needed_for_the_checks() -> None:
    # `docker compose config` would need the compose plugin; say which check ran instead.
    probe = subprocess.run(["sh", "-c", "docker compose version"], capture_output=True, text=True, check=False)
    if probe.returncode == 0:
        done = subprocess.run(["docker", "compose", "-f", str(DOCKER / "docker-compose.yml"), "config", "-q"],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    else:
        assert yaml.safe_load((DOCKER / "docker-compose.yml").read_text())["name"] == "edgefleet"
