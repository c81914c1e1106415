"""What the broker-accounts server tests do with a real agent: enroll it, see it online, revoke it, see the kick."""

from __future__ import annotations

from pathlib import Path

import httpx

from simulation.fleet import AgentProcess, ServerProcess, Supervisor, wait_until


def enroll_agent(server: ServerProcess, supervisor: Supervisor, name: str, state_root: Path) -> AgentProcess:
    """A real agent enrolled through ``edgefleet agent enroll`` with a fresh token (not started)."""
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    token = httpx.post(f"{server.url}/api/v1/devices/enrollment-tokens", headers=admin,
                       json={"profile": "generic-x86_64", "labels": {}}).raise_for_status().json()["token"]
    return AgentProcess(supervisor, name, state_root / "state").enroll(server.url, token)


def online_then_kicked_when_revoked(server: ServerProcess, supervisor: Supervisor, agent: AgentProcess) -> None:
    """Start ``agent``, wait until the server has it online, revoke it through the API, and wait
    (5 s at most) for Mosquitto's log to say its session was closed by administrative action."""
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    agent.start().wait_ready()

    def online() -> bool:
        device = httpx.get(f"{server.url}/api/v1/devices/{agent.device_id}", headers=admin).json()
        return bool(device["online"])

    wait_until(online, 30, "the agent to be online")
    httpx.post(f"{server.url}/api/v1/devices/{agent.device_id}/revoke", headers=admin).raise_for_status()
    log = supervisor.log_dir / "mosquitto.log"
    wait_until(lambda: f"Client {agent.device_id} been disconnected by administrative action" in log.read_text(),
               5, "Mosquitto to kick the revoked agent")
