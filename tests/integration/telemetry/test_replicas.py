"""Two server replicas share the telemetry through a $share subscription on one Mosquitto and one
PostgreSQL; duplicates sent on purpose end as one row each."""

from __future__ import annotations

import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from edgefleet import telemetry, topics
from fleet_server.broker.connection import FleetMqtt
from fleet_server.db import Database
from fleet_server.tables import TelemetryBatchRow
from fleet_server.telemetry.ingest import TelemetryIngest, route_telemetry
from simulation.fleet import MosquittoProcess
from tests.integration.telemetry.fleet import add_device, batch, record

DEVICES = 5
BATCHES = 60  # per device


class Replica:
    def __init__(self, db: Database, broker_url: str, name: str) -> None:
        self.ingest = TelemetryIngest(db).start()
        self.mqtt = FleetMqtt(broker_url, handler=route_telemetry(self.ingest, lambda t, p: None), shared=True,
                              client_id=f"replica-{name}", kinds=topics.DEVICE_TO_SERVER).start()

    def stop(self) -> None:
        self.mqtt.stop()
        self.ingest.stop()


@pytest.fixture
def db(postgres_url: str) -> Iterator[Database]:
    database = Database(postgres_url)
    database.migrate()
    yield database
    database.dispose()


def _publisher(url_port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-devices")
    client.connect("127.0.0.1", url_port)
    client.loop_start()
    return client


def _stored(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(TelemetryBatchRow)) or 0)


def test_two_replicas_store_every_batch_once(db: Database, mosquitto: MosquittoProcess) -> None:
    devices = [add_device(db, f"dev-{i}") for i in range(DEVICES)]
    replicas = [Replica(db, mosquitto.url, "a"), Replica(db, mosquitto.url, "b")]
    publisher = _publisher(mosquitto.port)
    try:
        assert all(r.mqtt.wait_connected(10) for r in replicas)
        time.sleep(0.3)  # the SUBSCRIBEs are sent with the CONNACK; give Mosquitto a moment to file them
        sent = 0
        for seq in range(BATCHES):
            for device in devices:
                payload = telemetry.encode(batch(device, seq, 1_764_000_000.0 + seq * 60, record()))
                copies = 3 if seq % 10 == 0 else 1  # duplicates on purpose, as re-sent outbox rows
                for _ in range(copies):
                    publisher.publish(topics.telemetry(device), payload, qos=1).wait_for_publish(10)
                    sent += 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            received = sum(r.ingest.counts().received for r in replicas)
            if received >= sent:
                break
            time.sleep(0.1)
        assert all(r.ingest.drain(30) for r in replicas)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        for r in replicas:
            r.stop()
    counts = [r.ingest.counts() for r in replicas]
    assert sum(c.received for c in counts) == sent
    assert all(c.received > 0 for c in counts), "the shared subscription should split the load"
    assert _stored(db) == DEVICES * BATCHES
    assert sum(c.stored for c in counts) == DEVICES * BATCHES
    assert sum(c.duplicates for c in counts) == sent - DEVICES * BATCHES
