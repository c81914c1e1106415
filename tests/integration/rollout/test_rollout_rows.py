"""Rollouts stored as a header row plus one row per device (issue 13), on SQLite and PostgreSQL.

* migration 0006 splits a stored whole document (one from before issue 18 too) into the rows,
  and the rollout read back is the one stored; its downgrade gives the document back;
* two engines on one database, interleaving: each reuses the rollout it holds only while the
  header's revision is its own, and reads the rows again once the other changed it, so
  neither ever acts on a stale copy;
* a transaction that fails leaves no half-changed copy held in memory;
* a batch of device events writes the device rows it changed, not the fleet.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import event, select

from edgefleet import topics
from edgefleet.assignment import DirectorSigner
from fleet_server.db import Database, alembic_config, upgrade
from fleet_server.rollouts.assignments import Assignments
from fleet_server.rollouts.engine import RolloutEngine, rollout_summary
from fleet_server.rollouts.machine import Rollout, RolloutPolicy, RolloutState
from fleet_server.rollouts.reports import DeviceReport
from fleet_server.rollouts.stage import ShadowPolicy
from fleet_server.rollouts.store import RolloutStore
from fleet_server.tables import RolloutDeviceRow, RolloutRow
from simulation.databases import postgres_available, postgres_database
from tests.integration.rollout.fleetdb import FakeClock, RecordingPublisher, upgrade_fleet
from tests.unit.fleet_server.rollout.fleet import T0, VERSION, at, devices, make_rollout

BEFORE = "0005_shadow_records"


# --------------------------------------------------------------------------- migration


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables yet, so a test can stop the migrations where it likes."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.sqlite'}"
        return
    if not postgres_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (see scripts/test for how to start it)")
    with postgres_database(prefix="edgefleet_migration") as url:
        yield url


def _driven_rollout() -> Rollout:
    """A rollout with something in every part: waves started, records of most statuses, a stage, a late device."""
    rollout = make_rollout(devices(30) + devices(3, "jetson-nano", "odd"), waves=(10.0, 50.0, 100.0),
                           bake_time=timedelta(0), stage=ShadowPolicy(timedelta(minutes=2), 0.9, min_requests=1))
    rollout.start(at(0))
    first = sorted(d for d, r in rollout.devices.items() if r.status.value == "candidate")
    for device in first:
        rollout.device_event(device, "shadowing", at(1), "", VERSION)
    rollout.device_offline(first[0], at(1.5))
    rollout.device_reported(first[1], DeviceReport(True, {"digits": "1.0.0"}), at(1.6))
    rollout.assignment_issued(first[2], 7)
    return rollout


def _store_document(db: Database, rollout_id: str, document: dict[str, Any]) -> None:
    table = sa.table("rollouts", *(sa.column(c) for c in ("id", "model", "version", "state", "created_at",
                                                          "updated_at")), sa.column("document", sa.JSON()),
                     sa.column("log", sa.JSON()))
    with db.engine.begin() as conn:
        conn.execute(table.insert().values(id=rollout_id, model="digits", version=VERSION, state=document["state"],
                                           document=document, log=[{"at": "2026-11-25T12:00:00Z", "message": "x"}],
                                           created_at=T0, updated_at=T0))


def _load(db: Database, rollout_id: str) -> Rollout:
    with db.session() as session:
        row = session.scalars(select(RolloutRow).where(RolloutRow.id == rollout_id)).one()
        return RolloutStore(rollout_summary).load(session, row)


def test_migration_splits_stored_documents_into_rows_and_back(empty_url: str) -> None:
    db = Database(empty_url)
    try:
        upgrade(db.engine, BEFORE)
        rollout = _driven_rollout()
        current = json.loads(json.dumps(rollout.to_dict()))
        # A document stored before issue 18 (and before the records' serves and counter).
        old = make_rollout(devices(8), waves=(50.0, 100.0))
        old.start(T0)
        older = json.loads(json.dumps(old.to_dict()))
        older.pop("stages")
        older["id"] = "ro-old"
        for record in older["devices"]:
            record.pop("serves")
            record.pop("counter")
        _store_document(db, "ro-1", current)
        _store_document(db, "ro-old", older)

        db.migrate()

        assert _load(db, "ro-1").to_dict() == current
        assert _load(db, "ro-old").to_dict() == {**older, "stages": [], "id": "ro-old",
                                                 "devices": [{**r, "serves": None, "counter": None}
                                                             for r in older["devices"]]}
        with db.session() as session:
            header = session.get(RolloutRow, "ro-1")
            assert header is not None and header.log == [{"at": "2026-11-25T12:00:00Z", "message": "x"}]
            rows = session.scalar(select(sa.func.count()).select_from(RolloutDeviceRow))
        assert rows == len(rollout.devices) + 8

        command.downgrade(alembic_config(db.engine), BEFORE)  # and back: the documents as they were
        with db.engine.connect() as conn:
            documents: dict[str, Any] = dict(conn.execute(sa.text("SELECT id, document FROM rollouts")).all())
        documents = {k: json.loads(v) if isinstance(v, str) else v for k, v in documents.items()}
        assert documents["ro-1"] == current
        db.migrate()
        assert _load(db, "ro-1").to_dict() == current
    finally:
        db.dispose()


# --------------------------------------------------------------------------- engines on rows

IDS = [f"dev-{i:02d}" for i in range(20)]


@pytest.fixture
def db(migrated_db: Database) -> Database:
    return upgrade_fleet(migrated_db, IDS)


def _event(device_id: str, kind: str) -> tuple[str, bytes]:
    return topics.events(device_id), json.dumps({"device_id": device_id, "event": kind, "model": "digits",
                                                  "version": "2.0.0"}).encode()


def _replicas(db: Database, clock: FakeClock, count: int = 2) -> list[RolloutEngine]:
    signer = DirectorSigner.generate()
    engines = []
    for _ in range(count):
        own = Database(db.url)  # each replica has its own engine and connection pool
        engines.append(RolloutEngine(own, Assignments(own, signer, RecordingPublisher()), clock=clock))
    return engines


def _assigned(engine: RolloutEngine, rollout_id: str) -> list[str]:
    records = engine.get(rollout_id, devices=True)["device_records"]
    return [r["device_id"] for r in records if r["status"] == "assigned"]


def test_two_engines_interleaving_never_act_on_a_stale_copy(db: Database) -> None:
    clock = FakeClock(T0)
    a, b = _replicas(db, clock)
    policy = RolloutPolicy(waves=(50.0, 100.0), bake_time=timedelta(0), min_success_rate=1.0)
    rollout_id = a.create("digits", "2.0.0", "", policy)["id"]
    first = _assigned(a, rollout_id)
    assert len(first) == 10
    # Each engine commits half of wave 1, alternating; each must see what the other stored.
    for index, device in enumerate(first):
        (a if index % 2 else b).handle_messages([_event(device, "committed")])
    view_a, view_b = a.get(rollout_id, devices=True), b.get(rollout_id, devices=True)
    assert view_a == view_b
    assert view_a["current_wave"] == 1, "wave 1 passed: every commit, from both engines, counted"
    second = _assigned(b, rollout_id)
    assert len(second) == 10 and not set(second) & set(first)
    # b holds revision r; a changes the rollout; b must read the rows again, not reuse its copy.
    a.handle_messages([_event(second[0], "committed")])
    b.handle_messages([_event(second[1], "failed")])
    records = {r["device_id"]: r["status"] for r in a.get(rollout_id, devices=True)["device_records"]}
    assert records[second[0]] == "committed" and records[second[1]] == "failed"
    # the halt (a failure with max_failure_rate 5%) came from b, on a's commit: both on the rows
    assert a.get(rollout_id)["state"] == RolloutState.HALTED.value
    with db.session() as session:
        stored = session.get(RolloutRow, rollout_id)
        assert stored is not None and stored.state == "halted"
    # a fresh engine (a restarted server) reads the same rollout from the rows
    (fresh,) = _replicas(db, clock, 1)
    assert fresh.get(rollout_id, devices=True) == b.get(rollout_id, devices=True)


def test_a_failed_transaction_leaves_no_changed_copy_held(db: Database) -> None:
    clock = FakeClock(T0)
    (engine,) = _replicas(db, clock, 1)
    rollout_id = engine.create("digits", "2.0.0", "", RolloutPolicy(waves=(100.0,), bake_time=timedelta(0)))["id"]
    device = _assigned(engine, rollout_id)[0]

    def fail_after_change(rollout: Rollout, now: Any, _session: Any) -> list[Any]:
        rollout.device_event(device, "committed", now, "", "2.0.0")
        raise RuntimeError("the database went away mid-transaction")

    with pytest.raises(RuntimeError):
        engine._change(rollout_id, fail_after_change, None)
    records = {r["device_id"]: r["status"] for r in engine.get(rollout_id, devices=True)["device_records"]}
    assert records[device] == "assigned", "the change that was rolled back must not survive in memory"


def test_a_batch_of_events_writes_the_rows_it_changed(db: Database) -> None:
    clock = FakeClock(T0)
    (engine,) = _replicas(db, clock, 1)
    rollout_id = engine.create("digits", "2.0.0", "", RolloutPolicy(waves=(100.0,), bake_time=timedelta(0)))["id"]
    devices_written: list[int] = []

    def count_rows(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
                   executemany: bool) -> None:
        if "rollout_devices" in statement and statement.lstrip().upper().startswith("INSERT"):
            devices_written.append(len(parameters) if executemany else len(parameters) // 16)  # 16 columns a row

    event.listen(engine.db.engine, "before_cursor_execute", count_rows)
    try:
        engine.handle_messages([_event(IDS[0], "downloaded"), _event(IDS[1], "committed")])
    finally:
        event.remove(engine.db.engine, "before_cursor_execute", count_rows)
    assert devices_written and sum(devices_written) <= 2, devices_written
    records = {r["device_id"]: r for r in engine.get(rollout_id, devices=True)["device_records"]}
    assert records[IDS[0]]["last_event"] == "downloaded" and records[IDS[1]]["status"] == "committed"


def test_an_engine_reads_the_device_rows_again_only_after_another_changed_the_rollout(db: Database) -> None:
    clock = FakeClock(T0)
    a, b = _replicas(db, clock)
    rollout_id = a.create("digits", "2.0.0", "", RolloutPolicy(waves=(100.0,), bake_time=timedelta(0)))["id"]
    reads: list[str] = []

    def count_reads(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM rollout_devices" in statement:
            reads.append(statement)

    event.listen(a.db.engine, "before_cursor_execute", count_reads)
    try:
        a.handle_messages([_event(IDS[0], "downloaded")])
        assert reads == [], "a kept the rollout it stored: nothing else changed it"
        a.get(rollout_id)
        assert reads == [], "a status at the revision a stored comes from its summary"
        b.handle_messages([_event(IDS[1], "downloaded")])
        a.handle_messages([_event(IDS[2], "downloaded")])
        assert len(reads) == 1, "b changed the rollout: a read the rows once, then holds them again"
        a.handle_messages([_event(IDS[3], "downloaded")])
        assert len(reads) == 1
    finally:
        event.remove(a.db.engine, "before_cursor_execute", count_reads)
    records = {r["device_id"]: r["last_event"] for r in b.get(rollout_id, devices=True)["device_records"]}
    assert [records[d] for d in IDS[:4]] == ["downloaded"] * 4

