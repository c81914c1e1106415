"""``edgefleet server`` with ``broker_accounts = "mosquitto-http"``: a real agent enrolls, comes online, is revoked.

The whole path: Mosquitto loads the edgefleet plugin built from the repository and asks the
server's broker-auth endpoint at each CONNECT, the server's own connections included (so the
server must not wait for its MQTT connection before it serves HTTP); a real agent enrolls through
``edgefleet agent enroll`` (nothing is written at the broker), connects and reports, and a
revocation through the API makes the plugin kick its session.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from simulation.brokers import SERVER_PASSWORD, PluginMosquitto
from simulation.fleet import ServerProcess, Supervisor, free_port
from tests.integration.broker.agent_flow import enroll_agent, online_then_kicked_when_revoked
from tests.integration.broker.test_mosquitto_http import TOKEN

pytestmark = pytest.mark.mosquitto
STARTS_WITHIN_S = 8.0  # the server's MQTT connection needs the server's own endpoint: no 10 s wait for it


def test_an_agent_enrolled_through_the_plugin_comes_online_and_is_cut_off_when_revoked(
        tmp_path: Path, plugin: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs")
    try:
        port = free_port()
        broker = PluginMosquitto(tmp_path / "mosquitto", plugin=plugin, server_url=f"http://127.0.0.1:{port}",
                                 token=TOKEN, supervisor=supervisor).start()
        started = time.monotonic()
        server = ServerProcess(supervisor, tmp_path / "server", port=port, env={
            "EDGEFLEET_BROKER_URL": broker.url, "EDGEFLEET_BROKER_ACCOUNTS": "mosquitto-http",
            "EDGEFLEET_MQTT_PASSWORD": SERVER_PASSWORD, "EDGEFLEET_BROKER_AUTH_TOKEN": TOKEN}).start()
        assert time.monotonic() - started < STARTS_WITHIN_S
        agent = enroll_agent(server, supervisor, "http-agent", tmp_path / "agent")
        online_then_kicked_when_revoked(server, supervisor, agent)
    finally:
        supervisor.stop_all()
