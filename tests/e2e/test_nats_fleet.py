"""The fleet on a three-node NATS cluster (docs/deployment.md "Scaling out"), real processes throughout.

Devices are real agents speaking MQTT 3.1.1 to one node; the server consumes their
``reported``, ``events`` and ``telemetry`` through the JetStream stream's shared durable
consumer and publishes assignments over MQTT to another node. A node dies mid-rollout: the
rollout completes, and every telemetry batch the agents sent is stored exactly once, the node
leading the stream included (what its election swallowed after the MQTT gateway's PUBACK the
agents send again: the server confirms stored telemetry). Two server replicas split the stream,
and one SIGKILLed mid-ingest loses nothing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from bench.fleet import count_rows, seed
from bench.ingest import _publish as publish
from simulation.fleet import AgentProcess, ServerProcess, wait_until
from tests.support.nats import NatsStack

TELEMETRY = {"telemetry_interval_s": 0.5}


def outbox(agent: AgentProcess) -> tuple[int, int]:
    """(rows the agent has not had acknowledged yet, the next seq it will use)."""
    with sqlite3.connect(f"file:{agent.state_dir / 'outbox.sqlite'}?mode=ro", uri=True, timeout=5) as db:
        pending = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        next_seq = db.execute("SELECT value FROM outbox_meta WHERE key = 'next_seq'").fetchone()[0]
    return int(pending), int(next_seq)


def stored_seqs(database_url: str, device_id: str) -> list[int]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return [r[0] for r in connection.execute(
                text("SELECT seq FROM telemetry_batches WHERE device_id = :d ORDER BY seq"), {"d": device_id})]
    finally:
        engine.dispose()


def assert_every_batch_stored_once(stack: NatsStack, database_url: str) -> None:
    for agent in stack.agents:
        wait_until(lambda a=agent: outbox(a)[0] == 0, 60, f"{agent.name}'s outbox to empty")
        sent = list(range(1, outbox(agent)[1]))
        # Up to the consumer's ack_wait (30 s) and a fetch more: a batch delivered to the server
        # through a node that then died is delivered again only when its ack is overdue.
        wait_until(lambda a=agent, s=sent: stored_seqs(database_url, a.device_id) == s, 75,
                   f"{agent.name}'s {len(sent)} batches stored", explain=lambda a=agent: str(
                       sorted(set(range(1, outbox(a)[1])) - set(stored_seqs(database_url, a.device_id)))))
        assert len(sent) > 10, "the agents sent too few batches for the test to mean anything"


def test_rollout_completes_and_no_telemetry_is_lost_when_a_node_dies(nats_stack: NatsStack, postgres_url: str) -> None:
    """Two agents on node a, the server's publisher on node c; node b SIGKILLed mid-rollout.

    Node c leads the stream and the consumer, b dies with its share of the MQTT gateway's own
    streams. (Killing the stream's leader instead loses what devices publish during the
    election: docs/deployment.md "Scaling out", "What holds".)
    """
    nats_stack.add_agents(2, settings=TELEMETRY)
    nats_stack.push("1.0.0")
    nats_stack.move_leaders(nats_stack.cluster.nodes[2])
    rollout = nats_stack.rollout("1.0.0", waves=(50.0, 100.0), bake_s=1.0)
    wait_until(lambda: nats_stack.view(rollout["id"])["devices"].get("committed", 0) >= 1, 90, "the first commit")
    nats_stack.cluster.kill(1)
    done = nats_stack.wait_state(rollout["id"], "completed", timeout=120)
    assert done["devices"] == {"committed": 2}
    assert set(nats_stack.versions().values()) == {"1.0.0"}
    assert_every_batch_stored_once(nats_stack, postgres_url)


def test_no_telemetry_is_lost_when_the_stream_leader_dies(nats_stack: NatsStack, postgres_url: str) -> None:
    """Node b leads the stream and the consumer and is SIGKILLed; the agents stay on node a.

    The MQTT gateway PUBACKs what devices publish during the election (about 4.5 s) although no
    stream stores it. The server confirms what it stored (``telemetry_ack``) and the agents keep
    every batch until then, so what the election swallowed is sent again and stored once
    (docs/telemetry.md "Store and forward"). No rollout here: the update path's events and
    reported state published during the election are lost the same way and are not confirmed
    (docs/deployment.md "Scaling out"), so a rollout across this kill can stall.
    """
    agents = nats_stack.add_agents(2, settings=TELEMETRY)
    node_a, node_b = nats_stack.cluster.nodes[0], nats_stack.cluster.nodes[1]
    wait_until(lambda: all(nats_stack.node_of(a.device_id) is node_a for a in agents), 30, "the agents on node a")
    nats_stack.move_leaders(node_b)
    wait_until(lambda: all(outbox_confirming(a) for a in agents), 30, "the agents to see the server's confirmations")
    nats_stack.cluster.kill(1)
    at_kill = [outbox(a)[1] for a in agents]
    wait_until(lambda: stream_leader(nats_stack) not in (None, f"edgefleet-{node_b.name}"), 30, "a new stream leader")
    # Batches published across the election and after it (0.5 s interval).
    wait_until(lambda: all(outbox(a)[1] >= n + 12 for a, n in zip(agents, at_kill, strict=True)), 30,
               "batches after the new leader")
    assert_every_batch_stored_once(nats_stack, postgres_url)
    resent = sum(int(httpx.get(f"{a.url}/v1/status", timeout=5).json()["telemetry"]["resent"]) for a in agents)
    print(f"batches the agents sent again after the stream leader's kill: {resent}")


def stream_leader(stack: NatsStack) -> str | None:
    try:
        return stack.stream_leaders()[0]
    except Exception:  # no leader during the election: JetStream's API times out
        return None


def outbox_confirming(agent: AgentProcess) -> bool:
    with sqlite3.connect(f"file:{agent.state_dir / 'outbox.sqlite'}?mode=ro", uri=True, timeout=5) as db:
        row = db.execute("SELECT value FROM outbox_meta WHERE key = 'confirming'").fetchone()
    return bool(row and row[0])


def received(stack: NatsStack, server: ServerProcess) -> float:
    """The telemetry batches this replica took from the stream (its /metrics)."""
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "edgefleet_telemetry_received_total":
                return float(sample.value)
    raise AssertionError("/metrics has no edgefleet_telemetry_received_total")


def test_two_replicas_split_the_stream_and_one_killed_mid_ingest_loses_nothing(tmp_path: Path,
                                                                               postgres_url: str) -> None:
    # Simulated devices (bench.fleet.seed) have no broker password: the nodes take anyone here.
    stack = NatsStack(tmp_path, postgres_url, replicas=2, callout=False)
    try:
        first = [f"split-{i:02d}" for i in range(20)]
        second = [f"kill-{i:02d}" for i in range(20)]
        seed(postgres_url, first + second)
        mqtt_url = stack.cluster.mqtt_urls[0]
        # 1. Both alive: each batch is taken by one replica, and both take some.
        publish(mqtt_url, first, 50)
        wait_until(lambda: count_rows(postgres_url, "telemetry_batches") == 1000, 60, "1,000 batches stored")
        counts = [received(stack, s) for s in stack.servers]
        assert sum(counts) == 1000 and min(counts) > 0, counts
        # 2. One replica SIGKILLed while the next 4,000 are being ingested: what it had taken and
        # not acked comes back to the other after ack_wait (30 s), and is stored once.
        at_kill: list[int] = []

        def kill_mid_ingest() -> None:
            wait_until(lambda: count_rows(postgres_url, "telemetry_batches") > 1300, 60, "ingest under way")
            stack.servers[1].kill()
            at_kill.append(count_rows(postgres_url, "telemetry_batches"))

        killer = threading.Thread(target=kill_mid_ingest)
        killer.start()
        publish(mqtt_url, second, 200)
        killer.join()
        assert at_kill and at_kill[0] < 4000, f"the replica was killed after the ingest ({at_kill})"
        wait_until(lambda: count_rows(postgres_url, "telemetry_batches") == 5000, 90, "all 5,000 batches stored",
                   explain=lambda: f"{count_rows(postgres_url, 'telemetry_batches')} stored")
        for device in second:
            assert stored_seqs(postgres_url, device) == list(range(1, 201))
    finally:
        stack.close()


def test_agents_move_to_another_node_when_theirs_is_killed_mid_rollout(nats_stack: NatsStack, postgres_url: str) -> None:
    """The agents' node (a) dies mid-rollout: their link fails over to b or c (the broker list
    enrollment gave them), their persistent sessions carry on there, the rollout completes and
    no telemetry is lost. The stream and consumer are led by c, away from the dead node."""
    agents = nats_stack.add_agents(2, settings=TELEMETRY)
    node_a = nats_stack.cluster.nodes[0]
    wait_until(lambda: all(nats_stack.node_of(a.device_id) is node_a for a in agents), 30, "the agents on node a")
    nats_stack.push("1.0.0")
    nats_stack.move_leaders(nats_stack.cluster.nodes[2])
    rollout = nats_stack.rollout("1.0.0", waves=(50.0, 100.0), bake_s=1.0)
    wait_until(lambda: nats_stack.view(rollout["id"])["devices"].get("committed", 0) >= 1, 90, "the first commit")
    nats_stack.cluster.kill(0)
    killed = time.monotonic()
    wait_until(lambda: all(nats_stack.node_of(a.device_id) not in (None, node_a) for a in agents), 60,
               "the agents on another node")
    print(f"agents back on another node {time.monotonic() - killed:.1f} s after their node was killed")
    done = nats_stack.wait_state(rollout["id"], "completed", timeout=120)
    assert done["devices"] == {"committed": 2}
    assert set(nats_stack.versions().values()) == {"1.0.0"}
    assert_every_batch_stored_once(nats_stack, postgres_url)
