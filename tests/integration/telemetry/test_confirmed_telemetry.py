"""A broker that loses telemetry it acknowledged loses nothing once the server confirms what it
stored (issue 13; docs/telemetry.md "Store and forward"), with a real Mosquitto, `edgefleet
server` and `edgefleet agent`.

Threat model: the agent's outbox deleted a batch on the broker's PUBACK, so a broker that
crashed with the batch in memory (Mosquitto without persistence, SIGKILLed; a NATS stream
leader killed during its election) lost it for good. Here the server is down while the agent
publishes, so its persistent session's queue in Mosquitto holds batches the broker PUBACKed;
then Mosquitto is SIGKILLed and its memory with them. The agent sends those batches again
because no ``telemetry_ack`` came, and every seq ends up stored once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fleet import Fleet, FleetAgent, fleet, wait_for

pytestmark = pytest.mark.mosquitto

INTERVAL_S = 0.3  # confirmation deadline: 2 intervals after the PUBACK


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet(tmp_path)


def agent_metrics(agent: FleetAgent) -> dict[str, float]:
    text = httpx.get(f"{agent.url}/metrics", timeout=5).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("edgefleet_agent_outbox")}


def telemetry_status(agent: FleetAgent) -> dict[str, Any]:
    return dict(httpx.get(f"{agent.url}/v1/status", timeout=5).json()["telemetry"])


def stored_seqs(running: Fleet, device_id: str) -> list[int]:
    path = running.server.data_dir / "edgefleet.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        return [int(s) for (s,) in db.execute("SELECT seq FROM telemetry_batches WHERE device_id = ? ORDER BY seq",
                                              (device_id,))]


def test_batches_a_killed_broker_had_acknowledged_are_sent_again_and_stored_once(running: Fleet) -> None:
    agent = running.enroll("dev-confirm")
    agent.settings["telemetry_interval_s"] = INTERVAL_S
    agent.start()
    # The first confirmation turns it on (an agent of a server without acks stays as before).
    wait_for(lambda: "edgefleet_agent_outbox_unconfirmed" in agent_metrics(agent), 30,
             "the agent to see the server's first telemetry_ack", explain=agent.log)
    running.server.kill()
    # The agent goes on publishing; Mosquitto PUBACKs and queues the batches for the server's session.
    before = telemetry_status(agent)["acknowledged"]
    wait_for(lambda: telemetry_status(agent)["acknowledged"] >= before + 6, 30,
             "batches PUBACKed while the server is down", explain=agent.log)
    held = max(stored_seqs(running, agent.device_id), default=0)
    running.broker.kill()  # SIGKILL, no persistence: the queued batches are gone from the broker
    running.broker.start()
    running.server.start()
    # Every seq the agent made before the kill and after: stored, each once, with no gap.
    made = int(telemetry_status(agent)["outbox"]["next_seq"]) - 1
    wait_for(lambda: stored_seqs(running, agent.device_id)[:made] == list(range(1, made + 1)), 40,
             f"seqs 1..{made} stored", every=0.2,
             explain=lambda: f"stored {stored_seqs(running, agent.device_id)}; agent {agent_metrics(agent)}")
    seqs = stored_seqs(running, agent.device_id)
    assert seqs == list(range(1, len(seqs) + 1))  # no gap, no duplicate (unique (device, seq) too)
    assert made > held + 5  # the broker had batches the server had not stored when it was killed
    counters = agent_metrics(agent)
    assert counters["edgefleet_agent_outbox_resent_total"] >= 1, counters
    # And the outbox empties: what is stored is confirmed and deleted.
    wait_for(lambda: agent_metrics(agent)["edgefleet_agent_outbox_rows"] <= 2, 20, "the outbox to drain",
             explain=lambda: str(agent_metrics(agent)))
