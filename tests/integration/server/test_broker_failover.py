"""The server's own MQTT client rotates through several brokers, as the agent does."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_server.broker.connection import FleetMqtt
from simulation.fleet import MosquittoProcess, wait_until

pytestmark = pytest.mark.mosquitto


def test_the_server_is_back_on_the_other_broker_after_its_node_dies(tmp_path: Path) -> None:
    first = MosquittoProcess(None, tmp_path / "a", auth=False, persistence=False).start()
    second = MosquittoProcess(None, tmp_path / "b", auth=False, persistence=False).start()
    client = FleetMqtt(f"{first.url},{second.url}", handler=lambda topic, payload: None, shared=False).start()
    try:
        assert client.wait_connected(10) and client.port == first.port
        first.stop()
        wait_until(lambda: client.connected.is_set() and client.port == second.port, 10,
                   "the server's client to be connected to the second broker")
        client.publish("edgefleet/v1/devices/dev-x/commands", b"{}")
    finally:
        client.stop()
        second.stop()
