"""The agent's link rotates through several brokers: a killed node costs one backoff step, not an outage.

Two independent Mosquittos (they share no sessions: real session continuity needs a cluster),
the agent given both as ``mqtt://a,b``. With the one it is on killed, it is back on the other
within 10 s and reports there (its retained ``reported``); a message it publishes then arrives.
"""

from __future__ import annotations

import json
import queue
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.link import Backoff, Link
from edgefleet import topics
from simulation.fleet import MosquittoProcess, wait_until

pytestmark = pytest.mark.mosquitto


def listener(broker: MosquittoProcess, topic: str) -> tuple[mqtt.Client, queue.Queue[bytes]]:
    got: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_message = lambda c, u, m: got.put(bytes(m.payload))
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client, got


def test_the_agent_is_back_on_the_other_broker_within_10_s_and_reports(tmp_path: Path) -> None:
    first = MosquittoProcess(None, tmp_path / "a", auth=False, persistence=False).start()
    second = MosquittoProcess(None, tmp_path / "b", auth=False, persistence=False).start()
    link = Link("dev-failover", f"{first.url},127.0.0.1:{second.port}", backoff=Backoff(initial=0.5, maximum=5.0))
    watcher, reports = listener(second, topics.reported("dev-failover"))
    try:
        link.set_reported({"models": {}})
        link.start()
        assert link.wait_connected(10)
        assert link.address.port == first.port
        first.stop()  # SIGTERM: the node is gone
        wait_until(lambda: link.connected and link.address.port == second.port, 10,
                   "the link to be connected to the second broker")
        report = json.loads(reports.get(timeout=5))
        assert report["online"] is True and report["device_id"] == "dev-failover"
        assert link.publish("events", {"event": "after-failover"})
    finally:
        link.stop()
        watcher.loop_stop()
        second.stop()
        first.stop()


def test_a_dead_first_broker_at_start_costs_one_try(tmp_path: Path) -> None:
    alive = MosquittoProcess(None, tmp_path / "b", auth=False, persistence=False).start()
    dead = MosquittoProcess(None, tmp_path / "a", auth=False, persistence=False)  # never started: refused
    link = Link("dev-late", f"{dead.url},{alive.url}", backoff=Backoff(initial=0.5, maximum=5.0))
    try:
        link.start()
        assert link.wait_connected(10)
        assert link.address.port == alive.port
    finally:
        link.stop()
        alive.stop()
