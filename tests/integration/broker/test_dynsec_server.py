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

import pytest

from simulation.brokers import SERVER_PASSWORD, DynsecMosquitto
from simulation.fleet import ServerProcess, Supervisor
from tests.integration.broker.agent_flow import enroll_agent, online_then_kicked_when_revoked

pytestmark = pytest.mark.mosquitto


def test_an_agent_enrolled_through_dynamic_security_comes_online_and_is_cut_off_when_revoked(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs")
    try:
        broker = DynsecMosquitto(tmp_path / "mosquitto", supervisor=supervisor).start()
        server = ServerProcess(supervisor, tmp_path / "server", env={
            "EDGEFLEET_BROKER_URL": broker.url, "EDGEFLEET_BROKER_ACCOUNTS": "mosquitto-dynsec",
            "EDGEFLEET_MQTT_PASSWORD": SERVER_PASSWORD}).start()
        agent = enroll_agent(server, supervisor, "dynsec-agent", tmp_path / "agent")
        identity = json.loads((agent.state_dir / "identity.json").read_text())
        assert identity["broker_url"] == broker.url  # from broker_urls, one node here
        online_then_kicked_when_revoked(server, supervisor, agent)
    finally:
        supervisor.stop_all()
