"""Ingest: each telemetry batch and event stored once per (device, seq|event_id), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import func, select

from edgefleet import telemetry, topics
from fleet_server.db import Database
from fleet_server.tables import DeviceEventRow, TelemetryBatchRow, TelemetryRecordRow
from fleet_server.telemetry.ingest import (
    IngestError,
    TelemetryIngest,
    batch_rows,
    event_row,
    route_telemetry,
)
from tests.integration.telemetry.fleet import add_device, batch, record


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def ingest(db: Database) -> Iterator[TelemetryIngest]:
    running = TelemetryIngest(db, max_batch=7).start()
    yield running
    running.stop()


def _count(db: Database, table: type) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def _send(ingest: TelemetryIngest, device: str, seq: int, ts: float = 1_764_000_000.0, dropped: int = 0) -> None:
    payload = telemetry.encode(batch(device, seq, ts, record(), record("other", "2.0.0"), dropped=dropped))
    ingest.ingest(topics.telemetry(device), payload)


def test_duplicate_batches_are_stored_once_and_counted(db: Database, ingest: TelemetryIngest) -> None:
    add_device(db, "dev-a")
    add_device(db, "dev-b")
    for seq in range(20):
        _send(ingest, "dev-a", seq, dropped=1 if seq == 3 else 0)
        _send(ingest, "dev-b", seq)
    assert ingest.drain(30)
    for seq in (0, 5, 19):  # re-sent later, as an outbox does after a crash before its ack
        _send(ingest, "dev-a", seq)
        _send(ingest, "dev-a", seq)
    assert ingest.drain(30)
    assert _count(db, TelemetryBatchRow) == 40
    assert _count(db, TelemetryRecordRow) == 80
    counts = ingest.counts()
    assert (counts.received, counts.stored, counts.duplicates, counts.device_dropped) == (46, 40, 6, 1)
    assert counts.rate_per_s > 0


def test_a_second_ingest_on_the_same_database_stores_nothing_twice(db: Database, ingest: TelemetryIngest) -> None:
    add_device(db, "dev-a")
    for seq in range(5):
        _send(ingest, "dev-a", seq)
    assert ingest.drain(30)
    restarted = TelemetryIngest(db).start()
    try:
        for seq in range(8):
            _send(restarted, "dev-a", seq)
        assert restarted.drain(30)
    finally:
        restarted.stop()
    assert _count(db, TelemetryBatchRow) == 8
    assert (restarted.counts().stored, restarted.counts().duplicates) == (3, 5)


def test_unknown_devices_and_bodies_naming_another_device_are_not_stored(db: Database, ingest: TelemetryIngest) -> None:
    add_device(db, "dev-a")
    _send(ingest, "dev-ghost", 1)
    impostor = telemetry.encode(batch("dev-a", 1, 1_764_000_000.0, record()))
    ingest.ingest(topics.telemetry("dev-b"), impostor)
    ingest.ingest(topics.telemetry("dev-a"), b"\x01not zlib")
    assert ingest.drain(30)
    assert _count(db, TelemetryBatchRow) == 0
    counts = ingest.counts()
    assert (counts.unknown_device, counts.invalid, counts.stored) == (1, 2, 0)


def test_events_are_stored_once_by_event_id(db: Database, ingest: TelemetryIngest) -> None:
    add_device(db, "dev-a")
    event = {"device_id": "dev-a", "event_id": "e-1", "ts": 1_764_000_000, "event": "committed",
             "model": "digits", "version": "1.0.0"}
    for _ in range(3):
        ingest.ingest(topics.events("dev-a"), json.dumps(event).encode())
    ingest.ingest(topics.events("dev-a"), json.dumps({**event, "event_id": "e-2"}).encode())
    assert ingest.drain(30)
    assert _count(db, DeviceEventRow) == 2
    assert (ingest.counts().events_stored, ingest.counts().events_duplicate) == (2, 2)


def test_batch_rows_keep_every_counter() -> None:
    b = batch("dev-a", 9, 1_764_000_060.5, record(drift=[[1, 2], [3, 4]], errors={"input": 2}, feedback=(5, 4),
                                                  outputs=[3, 7]), dropped=2)
    head, records = batch_rows(b, received_at=head_time())
    assert (head["seq"], head["dropped"], head["ts"].timestamp()) == (9, 2, 1_764_000_060.5)
    (rec,) = records
    assert rec["drift"] == [[1, 2], [3, 4]] and rec["errors"] == {"input": 2} and rec["outputs"] == [3, 7]
    assert (rec["feedback_labels"], rec["feedback_correct"], rec["p95_ms"]) == (5, 4, 1.5)


def head_time() -> object:
    from datetime import UTC, datetime

    return datetime(2026, 11, 25, tzinfo=UTC)


@pytest.mark.parametrize("payload, problem", [
    (b"not json", "not JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps({"event": "committed", "ts": 1}).encode(), "no event_id"),
    (json.dumps({"event_id": "e", "ts": 1}).encode(), "no event name"),
    (json.dumps({"event_id": "e", "event": "committed"}).encode(), "no numeric ts"),
    (json.dumps({"device_id": "dev-b", "event_id": "e", "event": "x", "ts": 1}).encode(), "claims to be from"),
])
def test_event_row_refuses_malformed_events(payload: bytes, problem: str) -> None:
    with pytest.raises(IngestError, match=problem):
        event_row("dev-a", payload)


def test_route_telemetry_sends_telemetry_to_the_ingest_alone() -> None:
    seen: list[tuple[str, str]] = []
    handle = route_telemetry(lambda t, p: seen.append(("ingest", t)), lambda t, p: seen.append(("others", t)))
    handle(topics.telemetry("dev-a"), b"")
    handle(topics.events("dev-a"), b"")
    handle(topics.reported("dev-a"), b"")
    assert seen == [("ingest", topics.telemetry("dev-a")), ("others", topics.events("dev-a")),
                    ("others", topics.reported("dev-a"))]


def test_a_batch_or_event_from_a_broken_clock_is_refused_and_the_writer_lives_on(
        db: Database, ingest: TelemetryIngest) -> None:
    add_device(db, "dev-a")
    _send(ingest, "dev-a", 1, ts=1e15)
    ingest.ingest(topics.events("dev-a"), json.dumps({"event_id": "e", "event": "x", "ts": -5}).encode())
    _send(ingest, "dev-a", 2)
    assert ingest.drain(30)
    assert _count(db, TelemetryBatchRow) == 1 and ingest.counts().invalid == 2


def test_the_writer_lingers_to_fill_a_batch_then_writes_what_it_has(db: Database) -> None:
    # A write costs about the same for 10 batches as for one: the writer waits up to linger_s
    # for a full batch instead of committing each message as it arrives.
    add_device(db, "dev-a")
    running = TelemetryIngest(db, max_batch=10, linger_s=1.0)
    sizes: list[int] = []
    prepare = running._prepare

    def counting(items: Sequence[Any]) -> Any:
        sizes.append(len(items))
        return prepare(items)

    running._prepare = counting  # type: ignore[method-assign]
    running.start()
    try:
        for seq in range(25):  # all queued well within the linger time
            _send(running, "dev-a", seq)
        assert running.drain(30)
    finally:
        running.stop()
    assert sizes == [10, 10, 5]
    assert _count(db, TelemetryBatchRow) == 25 and running.counts().stored == 25


def test_stored_and_duplicate_batches_are_confirmed_after_their_commit_unknown_devices_never(db: Database) -> None:
    add_device(db, "dev-a")
    confirmed: list[tuple[str, int, bool]] = []

    def on_committed(done: Any) -> int:
        with db.session() as session:  # called after the commit: another session sees the rows
            rows = set(session.execute(select(TelemetryBatchRow.device_id, TelemetryBatchRow.seq)).all())
        confirmed.extend((device, seq, (device, seq) in rows) for device, seqs in done.items() for seq in seqs)
        return len(done)

    running = TelemetryIngest(db, max_batch=3, on_committed=on_committed).start()
    try:
        for seq in range(1, 6):
            _send(running, "dev-a", seq)
        _send(running, "ghost", 1)  # not enrolled: never confirmed, so it is not told "stored"
        running.ingest(topics.telemetry("dev-a"), b"not a batch")  # refused by the checks: not confirmed
        assert running.drain(30)
        _send(running, "dev-a", 3)  # a resend: confirmed again, so the agent can let it go
        assert running.drain(30)
    finally:
        running.stop()
    assert sorted({(d, s) for d, s, _ in confirmed}) == [("dev-a", s) for s in range(1, 6)]
    assert [s for d, s, _ in confirmed].count(3) == 2
    assert all(stored for _, _, stored in confirmed)
    assert running.counts().acks_sent >= 2  # one per device per write
