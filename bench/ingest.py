"""Benchmark 4, telemetry ingest: messages per second the real server stores, none lost or doubled.

Setups: one ``edgefleet server`` on SQLite, one on PostgreSQL, and two replicas on one
PostgreSQL sharing the load through the broker's ``$share/edgefleet/...`` subscription. A
separate publisher process (paho clients, QoS 1) sends valid telemetry batches for seeded
devices, each (device, seq) once, as fast as the broker acknowledges them. The rate is
batches stored (the ``telemetry_batches`` rows) over the seconds from the first publish to
the last row; losses are sent minus stored, duplicates are what the replicas' ``/metrics``
counted as already stored. The publisher, the broker and the server share this machine's two
cores, so the figure is a floor, not what a server alone could do. Beside the rate, the server
processes' own CPU time per message stored (``server_cpu_us_per_msg``, psutil: user + system of
every replica over the run) says what each message costs the server, which other work on a shared
machine changes far less than the rate.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench import fleet
from bench.errors import BenchError

DEVICES = 100
# (label, database, replicas, broker): "mosquitto" (one node, $share subscription, manual acks) or
# "nats" (three nodes on loopback, the JetStream stream's shared durable consumer: docs/deployment.md
# "Scaling out"; publishers to node a).
SETUPS = (("one server, sqlite", "sqlite", 1, "mosquitto"), ("one server, postgresql", "postgresql", 1, "mosquitto"),
          ("two replicas, postgresql", "postgresql", 2, "mosquitto"),
          ("two replicas, postgresql, NATS cluster", "postgresql", 2, "nats"))
PUBLISHERS = 2


def _payloads(device_ids: list[str], per_device: int) -> list[tuple[str, bytes]]:
    from edgefleet import telemetry, topics

    record = telemetry.ModelRecord("bench-model", "1.0.0", count=120, latency=telemetry.Latency(0.2, 0.4, 0.9),
                                   outputs=(60, 60))
    now = time.time()
    return [(topics.telemetry(d), telemetry.encode(telemetry.TelemetryBatch(d, seq, now, models=(record,))))
            for seq in range(1, per_device + 1) for d in device_ids]


def _publish_main(argv: list[str]) -> int:
    """One publisher process: ``python -m bench.ingest BROKER_URL PER_DEVICE DEVICE_ID...``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    broker, per_device, ids = urlparse(argv[0]), int(argv[1]), argv[2:]
    messages = _payloads(ids, per_device)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-publisher-{ids[0]}")
    client.max_inflight_messages_set(200)
    client.connect(broker.hostname or "127.0.0.1", broker.port or 1883)
    client.loop_start()
    started = time.time()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(120)
    acked = time.time()
    client.loop_stop()
    client.disconnect()
    json.dump({"started": started, "acked": acked, "sent": len(messages)}, sys.stdout)
    return 0


def _publish(broker_url: str, ids: list[str], per_device: int) -> dict[str, float]:
    """Run PUBLISHERS publisher processes at once (one Python process alone tops out near 3,000/s)."""
    procs = [subprocess.Popen([sys.executable, "-m", "bench.ingest", broker_url, str(per_device), *ids[i::PUBLISHERS]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(PUBLISHERS)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise BenchError(f"a telemetry publisher failed: {err.strip()[-500:]}")
        results.append(json.loads(out))
    return {"started": min(r["started"] for r in results), "acked": max(r["acked"] for r in results),
            "sent": sum(r["sent"] for r in results)}


@contextlib.contextmanager
def _replicas(count: int, work: Path, broker_url: str, url: str,
              env: dict[str, str]) -> Iterator[list[fleet.ServerProcess]]:
    with contextlib.ExitStack() as stack:
        # Replicas share the data directory (keys, TUF repository) as they share the database.
        yield [stack.enter_context(fleet.server(work / "server", broker_url, url, env)) for _ in range(count)]


def _one_setup(label: str, db_kind: str, replicas: int, per_device: int, work: Path,
               broker_kind: str = "mosquitto") -> dict[str, Any]:
    ids = [f"ingest-{i:04d}" for i in range(DEVICES)]
    with fleet.broker(broker_kind, work) as (publish_url, broker_url, env), \
            fleet.database(work, db_kind) as (url, got_kind), _replicas(replicas, work, broker_url, url, env) as servers:
        fleet.seed(url, ids)
        sent = DEVICES * per_device
        cpu_before = _cpu_seconds(servers)
        published = _publish(publish_url, ids, per_device)
        stored, last_change, previous = 0, time.time(), -1
        # Wait until every batch is stored, or nothing new was stored for 10 s (then the rest is lost).
        while stored < sent and time.time() - last_change < 10:
            stored = fleet.count_rows(url, "telemetry_batches")
            if stored != previous:
                previous, last_change = stored, time.time()
            time.sleep(0.1)
        cpu = _cpu_seconds(servers) - cpu_before
        duplicates = sum(s.metrics().get("edgefleet_telemetry_duplicates_total", 0.0) for s in servers)
        received = sum(s.metrics().get("edgefleet_telemetry_received_total", 0.0) for s in servers)
    took = last_change - published["started"]
    return {"setup": label if got_kind == db_kind else f"{label} (fell back to {got_kind})", "replicas": replicas,
            "broker": broker_kind,
            "database": got_kind, "messages": sent, "received": int(received), "stored": stored,
            "duplicates": int(duplicates), "lost": sent - stored, "seconds": round(took, 2),
            "msgs_per_s": round(stored / took, 1),
            "server_cpu_us_per_msg": round(cpu / max(stored, 1) * 1e6, 1),
            "publisher_msgs_per_s": round(sent / (published["acked"] - published["started"]), 1)}


def _cpu_seconds(servers: list[fleet.ServerProcess]) -> float:
    """User + system CPU seconds the server processes have used so far."""
    import psutil

    return sum(sum(psutil.Process(s.proc.pid).cpu_times()[:2]) for s in servers)


def available() -> str | None:
    """Why the ingest cannot be measured in this checkout, or None when it can."""
    try:
        import fleet_server.telemetry.ingest  # noqa: F401
    except ImportError as exc:
        return f"not measured: fleet_server.telemetry.ingest is missing ({exc})"
    return None


def run(*, quick: bool = False) -> dict[str, Any]:
    """The ingest section of a run document."""
    missing = available()
    if missing:
        return {"not_measured": missing}
    per_device = 50 if quick else 300
    setups = SETUPS[1:2] if quick else SETUPS
    section: dict[str, Any] = {"devices": DEVICES, "per_device": per_device, "runs": []}
    for label, db_kind, replicas, broker_kind in setups:
        with tempfile.TemporaryDirectory(prefix="edgefleet-bench-ingest-") as tmp:
            try:
                section["runs"].append(_one_setup(label, db_kind, replicas, per_device, Path(tmp), broker_kind))
            except Exception as exc:  # one setup failing must not lose the others
                section["runs"].append({"setup": label, "error": f"{type(exc).__name__}: {exc}"})
    return section


if __name__ == "__main__":
    sys.exit(_publish_main(sys.argv[1:]))
