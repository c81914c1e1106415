"""``edgefleet server`` with ``broker_accounts = "mosquitto-dynsec"``: a real agent enrolls, comes online, is revoked.

The whole path: the server starts against a Mosquitto whose plugin file holds only the
server's account (simulation.brokers, docs/deployment.md's recipe), reconciles at start,
enrolls a real agent through ``edgefleet agent enroll`` (its password goes to the plugin, the
agent is told ``broker_urls``), the agent connects and reports, and a revocation through the
API makes Mosquitto kick its session.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from simulation.brokers import SERVER_PASSWORD, DynsecMosquitto
from simulation.fleet import AgentProcess, ServerProcess, Supervisor, wait_until

pytestmark = pytest.mark.mosquitto


def test_an_agent_enrolled_through_dynamic_security_comes_online_and_is_cut_off_when_revoked(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs")
    try:
        broker = DynsecMosquitto(tmp_path / "mosquitto", supervisor=supervisor).start()
        server = ServerProcess(supervisor, tmp_path / "server", env={
            "EDGEFLEET_BROKER_URL": broker.url, "EDGEFLEET_BROKER_ACCOUNTS": "mosquitto-dynsec",
            "EDGEFLEET_MQTT_PASSWORD": SERVER_PASSWORD}).start()
        admin = {"Authorization": f"Bearer {server.admin_token}"}
        token = httpx.post(f"{server.url}/api/v1/devices/enrollment-tokens", headers=admin,
                           json={"profile": "generic-x86_64", "labels": {}}).raise_for_status().json()["token"]
        agent = AgentProcess(supervisor, "dynsec-agent", tmp_path / "agent" / "state").enroll(server.url, token)
        identity = json.loads((agent.state_dir / "identity.json").read_text())
        assert identity["broker_url"] == broker.url  # from broker_urls, one node here
        agent.start().wait_ready()

        def online() -> bool:
            device = httpx.get(f"{server.url}/api/v1/devices/{agent.device_id}", headers=admin).json()
            return bool(device["online"])

        wait_until(online, 30, "the agent to be online")
        httpx.post(f"{server.url}/api/v1/devices/{agent.device_id}/revoke", headers=admin).raise_for_status()
        log = supervisor.log_dir / "mosquitto.log"
        wait_until(lambda: f"Client {agent.device_id} been disconnected by administrative action" in log.read_text(),
                   5, "Mosquitto to kick the revoked agent")
    finally:
        supervisor.stop_all()
