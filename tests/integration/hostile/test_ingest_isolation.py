"""Should the database refuse a row the checks let through, only that row is lost (issue 14, "Isolate writes").

The checks are switched off here (a gap in them is what this guards against), so the rows the
issue found reach real SQLite and PostgreSQL: a seq of 2**64 (PostgreSQL: bigint out of range;
SQLite: OverflowError) and a lone surrogate (neither encodes it). They travel in the same write
as dozens of good messages; the writer splits the write until only the bad row fails, drops it,
counts it (``store_failed``, per device in ``device_refusals``) and stores all the others.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from edgefleet import telemetry, topics
from fleet_server.broker.accounts import UnmanagedBroker
from fleet_server.db import Database
from fleet_server.registry.devices import Devices
from fleet_server.registry.presence import PresenceIngest, PresenceUpdate
from fleet_server.tables import (
    DeviceEventRow,
    DeviceRefusalRow,
    TelemetryBatchRow,
    TelemetryRecordRow,
)
from fleet_server.telemetry import ingest as ingest_module
from fleet_server.telemetry.ingest import TelemetryIngest
from fleet_server.telemetry.validation import CheckedBatch, CheckedEvent
from tests.integration.rollout.fleetdb import add_device
from tests.integration.telemetry.fleet import batch, record

NOW = datetime(2026, 12, 1, tzinfo=UTC)
TS = NOW.timestamp() - 60


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    for device_id in ("dev-good", "dev-bad"):
        add_device(database, device_id)
    yield database
    database.dispose()


@pytest.fixture
def unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ingest with its checks off: every decoded batch and parsed event goes to the writer."""
    monkeypatch.setattr(ingest_module, "check_batch", lambda b, now, limits, refs: CheckedBatch(
        b, datetime.fromtimestamp(b.ts, UTC)))

    def any_event(device_id: str, payload: bytes, now: Any, limits: Any = None) -> CheckedEvent:
        document = json.loads(payload)
        return CheckedEvent({"device_id": device_id, "event_id": document["event_id"], "ts": NOW,
                             "event": document["event"], "model": None, "version": None, "document": document})

    monkeypatch.setattr(ingest_module, "check_event", any_event)


def _count(db: Database, table: Any, device_id: str) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(table).where(table.device_id == device_id)) or 0)


@pytest.mark.usefixtures("unchecked")
def test_a_row_the_database_refuses_is_dropped_alone(db: Database) -> None:
    running = TelemetryIngest(db, clock=lambda: NOW, linger_s=2.0)  # one write takes everything below
    sizes: list[int] = []
    prepare = running._prepare

    def recording(items: Sequence[Any]) -> Any:
        sizes.append(len(items))
        return prepare(items)

    running._prepare = recording  # type: ignore[method-assign]
    running.start()
    try:
        for seq in range(1, 41):
            running.ingest(topics.telemetry("dev-good"), telemetry.encode(batch("dev-good", seq, TS, record())))
            running.ingest(topics.events("dev-good"), json.dumps(
                {"event_id": f"e{seq}", "event": "staged", "ts": TS}).encode())
            if seq == 20:  # the poison pills, in the middle of the write
                running.ingest(topics.telemetry("dev-bad"), telemetry.encode(batch("dev-bad", 2**64, TS, record())))
                running.ingest(topics.events("dev-bad"), json.dumps(
                    {"event_id": "e1", "event": "stag\ud800ed", "ts": TS}).encode())
                running.ingest(topics.telemetry("dev-bad"), telemetry.encode(batch("dev-bad", 7, TS, record())))
        assert running.drain(60)
    finally:
        running.stop()
    assert sizes == [83]  # all in one write: the bad rows shared it with the good ones
    assert _count(db, TelemetryBatchRow, "dev-good") == 40 and _count(db, TelemetryRecordRow, "dev-good") == 40
    assert _count(db, DeviceEventRow, "dev-good") == 40
    assert _count(db, TelemetryBatchRow, "dev-bad") == 1  # its good batch (seq 7) too
    assert _count(db, DeviceEventRow, "dev-bad") == 0
    counts = running.counts()
    assert (counts.stored, counts.duplicates, counts.events_stored, counts.events_duplicate) == (41, 0, 40, 0)
    assert counts.faults == {("telemetry", "store_failed"): 1, ("events", "store_failed"): 1}
    with db.session() as session:
        rows = {(r.topic, r.reason): r for r in session.scalars(select(DeviceRefusalRow))}
    assert set(rows) == {("telemetry", "store_failed"), ("events", "store_failed")}
    assert all(r.device_id == "dev-bad" and r.count == 1 and r.detail.isprintable() for r in rows.values())


class Gate:
    """The real store; the first batch waits until the test has queued the rest behind it."""

    def __init__(self, devices: Devices) -> None:
        self.devices = devices
        self.open = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def record_presences(self, updates: Sequence[PresenceUpdate]) -> set[str]:
        self.entered.set()
        self.open.wait(10)
        self.batches.append(len(updates))
        return self.devices.record_presences(updates)


def test_a_presence_update_the_database_refuses_is_dropped_alone(database_url: str) -> None:
    db = Database(database_url)
    try:
        ids = [f"dev-{i:02d}" for i in range(30)]
        for device_id in ids:
            add_device(db, device_id)
        devices = Devices(db, UnmanagedBroker())
        gate = Gate(devices)
        dropped: list[tuple[str, str]] = []
        presence = PresenceIngest(gate, clock=lambda: NOW, idle_s=0.5,
                                  on_dropped=lambda device, topic, error: dropped.append((device, topic)))

        def report(device_id: str, agent_version: str) -> None:
            document = {"device_id": device_id, "online": True, "agent_version": agent_version, "models": {}}
            presence(topics.reported(device_id), json.dumps(document).encode())

        report(ids[0], "a-0")
        assert gate.entered.wait(10)
        for i, device_id in enumerate(ids[1:], start=1):
            # A document no check caught: neither database can encode a lone surrogate.
            report(device_id, "bad\ud800" if i == 15 else f"a-{i}")
        gate.open.set()
        assert presence.drain(30)
        assert gate.batches[:2] == [1, 29] and len(gate.batches) > 2  # shared one write, then it was split
        shown = {d.id: d.agent_version for d in devices.list()}
        assert {i: shown[i] for i in ids if i != ids[15]} == {i: f"a-{n}" for n, i in enumerate(ids) if n != 15}
        assert shown[ids[15]] == "test" and devices.get(ids[15]).last_seen is None
        assert dropped == [(ids[15], "reported")]
        assert presence.counts() == {"stored": 29, "dropped": 1}
    finally:
        db.dispose()
