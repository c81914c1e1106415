"""A real fleet server for the benchmarks: its process, its database, its admin API, seeded rows.

``server`` starts ``edgefleet server`` exactly as an operator would (its own process, so
psutil can read it) against a given broker and database; ``database`` gives a fresh
PostgreSQL database (``simulation.databases``) or an SQLite file; ``seed`` writes enrolled
devices and a published version straight into the server's tables, because enrolling 5,000
devices one token at a time would measure enrollment, which has its own tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import processes
from bench.errors import BenchError
from simulation.databases import postgres_available, postgres_database
from simulation.fleet import free_port

PROFILE = "rpi4-64"


@dataclass(frozen=True)
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    token: str
    data_dir: Path

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        # Long timeout: creating a rollout signs and publishes every device's assignment in the request.
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None,
                         {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status >= 300:
            raise BenchError(f"{method} {path} answered {response.status}: {data[:300]!r}")
        return json.loads(data) if response.headers.get("content-type", "").startswith("application/json") else data

    def metrics(self) -> dict[str, float]:
        """The Prometheus text of ``/metrics`` as {name: value} (unlabelled samples only)."""
        text = self.api("GET", "/metrics")
        values: dict[str, float] = {}
        for line in (text.decode() if isinstance(text, bytes) else str(text)).splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    values[name] = float(value)
        return values


@contextlib.contextmanager
def database(work: Path, kind: str = "postgresql") -> Iterator[tuple[str, str]]:
    """A fresh database URL and its kind; PostgreSQL falls back to SQLite when no server runs."""
    if kind == "postgresql" and postgres_available():
        with postgres_database(prefix="edgefleet_bench") as url:
            yield url, "postgresql"
    else:
        yield f"sqlite:///{work / 'fleet.sqlite'}", "sqlite"


@contextlib.contextmanager
def server(data_dir: Path, broker_url: str, database_url: str,
           env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    """``edgefleet server`` on a free port; ``env`` adds settings (e.g. EDGEFLEET_NATS_URL)."""
    port = free_port()
    proc = subprocess.Popen([*processes.EDGEFLEET, "server", "--data-dir", str(data_dir), "--port", str(port),
                             "--database", database_url, "--broker", broker_url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "EDGEFLEET_LOG_LEVEL": "40", **(env or {})})
    try:
        processes.wait_http(proc, "edgefleet server", 120, port=port)
        yield ServerProcess(proc, port, (data_dir / "admin-token").read_text().strip(), data_dir)
    finally:
        processes.stop(proc)


def director_public_b64(data_dir: Path) -> str:
    from edgefleet.assignment import DirectorSigner

    return DirectorSigner.from_pem((data_dir / "keys" / "director.pem").read_bytes()).public_b64


def seed(database_url: str, ids: Sequence[str], *, model: tuple[str, str] | None = None) -> None:
    """Enrolled devices (and one published ``(name, version)``) written the way the services write them."""
    from fleet_server.db import Database
    from fleet_server.tables import DeviceRow, ModelRow

    now = datetime.now(UTC)
    db = Database(database_url)
    try:
        with db.session() as s:
            s.add_all(DeviceRow(id=d, profile=PROFILE, labels={"site": "bench"}, hostname=d, agent_version="bench",
                                mqtt_username=d, mqtt_password_hash="x",
                                api_token_hash=hashlib.sha256(d.encode()).hexdigest(), status="enrolled", online=True,
                                last_seen=None, reported=None, assignment_counter=0, enrolled_at=now) for d in ids)
            if model is not None:
                name, version = model
                s.add(ModelRow(name=name, version=version, sha256=hashlib.sha256(b"bench").hexdigest(), length=1000,
                               target_path=f"{name}/{name}-{version}.tar.gz", manifest={}, profiles=[PROFILE],
                               yanked=False, yanked_at=None, created_at=now))
    finally:
        db.dispose()


def count_rows(database_url: str, table: str) -> int:
    from sqlalchemy import text

    from fleet_server.db import Database

    db = Database(database_url)
    try:
        with db.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        db.dispose()


@contextlib.contextmanager
def broker(kind: str, work: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """A broker for a run: (the devices' MQTT URL, the servers' broker_url, the servers' extra settings).

    ``mosquitto``: one anonymous Mosquitto. ``nats``: a three-node NATS cluster on loopback
    (``simulation.nats``), the devices on its first node's MQTT port, the server consuming
    through JetStream (docs/deployment.md "Scaling out").
    """
    from simulation.fleet import MosquittoProcess, Supervisor

    if kind == "nats":
        from simulation.nats import NatsCluster

        supervisor = Supervisor(work / "logs")
        try:
            cluster = NatsCluster(supervisor, work / "nats").start()
            yield (cluster.mqtt_urls[0], ",".join(cluster.mqtt_urls),
                   {"EDGEFLEET_NATS_URL": ",".join(cluster.nats_urls)})
        finally:
            supervisor.stop_all()
        return
    if kind != "mosquitto":
        raise BenchError(f"no broker kind {kind!r}: mosquitto or nats")
    with MosquittoProcess(None, work / "mosquitto", auth=False, persistence=False) as mosquitto:
        yield mosquitto.url, mosquitto.url, {}
