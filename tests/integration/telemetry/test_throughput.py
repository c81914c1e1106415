"""Ingest throughput into PostgreSQL from one process (slow: run with -m slow)."""

from __future__ import annotations

import time

import pytest

from edgefleet import telemetry, topics
from fleet_server.db import Database
from fleet_server.telemetry.ingest import TelemetryIngest
from tests.integration.telemetry.fleet import add_device, batch, record

DEVICES = 200
MESSAGES = 20_000


@pytest.mark.slow
def test_ingest_stores_over_5000_batches_a_second_into_postgresql(postgres_url: str) -> None:
    db = Database(postgres_url)
    db.migrate()
    devices = [add_device(db, f"dev-{i}") for i in range(DEVICES)]
    # Every 10th batch carries drift counts, as the agent sends them by default.
    messages = [(topics.telemetry(devices[i % DEVICES]),
                 telemetry.encode(batch(devices[i % DEVICES], i // DEVICES, 1_764_000_000.0 + i,
                                        record(drift=[[1, 2, 3, 4]] * 16 if i % 10 == 0 else ()))))
                for i in range(MESSAGES)]
    ingest = TelemetryIngest(db).start()
    try:
        start = time.perf_counter()
        for topic, payload in messages:
            ingest.ingest(topic, payload)  # decode + queue, as paho's callback does
        assert ingest.drain(120)
        elapsed = time.perf_counter() - start
    finally:
        ingest.stop()
        db.dispose()
    rate = MESSAGES / elapsed
    print(f"\n{MESSAGES} batches decoded and stored in {elapsed:.2f} s: {rate:,.0f}/s")
    assert ingest.counts().stored == MESSAGES
    assert rate >= 5000
