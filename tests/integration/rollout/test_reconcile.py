"""The engine reconciles devices from their `reported` documents (issue 19, hole 2), on a real database.

Threat model: an outcome reached while no server listened (down, or killed with the message
still in its queues) must still be learned, from the report the database stored or the one
the broker retains; a device that already serves the version must not time out; nobody who
runs the version is rolled back; a device's malformed report must not stop the engine.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from edgefleet import topics
from edgefleet.assignment import DirectorSigner
from fleet_server.broker.connection import FleetMqtt
from fleet_server.db import Database
from fleet_server.rollouts.assignments import Assignments
from fleet_server.rollouts.engine import RolloutEngine
from fleet_server.rollouts.machine import RolloutPolicy
from fleet_server.tables import DeviceRow
from simulation.fleet import MosquittoProcess
from tests.integration.rollout.fleetdb import (
    FakeClock,
    RecordingPublisher,
    counters,
    reported,
    upgrade_fleet,
)
from tests.integration.rollout.mqtt_tools import Recorder

IDS = [f"dev-{i:02d}" for i in range(3)]
ALL_AT_ONCE = RolloutPolicy(waves=(100.0,), bake_time=timedelta(0), device_timeout=timedelta(minutes=30),
                            max_failure_rate=0.0, min_success_rate=1.0, auto_rollback=True)


@pytest.fixture
def db(migrated_db: Database) -> Database:
    return upgrade_fleet(migrated_db, IDS)


def store(db: Database, device_id: str, document: dict[str, Any], *, online: bool = True) -> None:
    """What the presence ingest stores from a report (and from a last will, online False)."""
    with db.session() as session:
        session.execute(update(DeviceRow).where(DeviceRow.id == device_id).values(reported=document, online=online))


def engine(db: Database, clock: FakeClock, reports: FleetMqtt | None = None) -> tuple[RolloutEngine, RecordingPublisher]:
    publisher = RecordingPublisher()
    return RolloutEngine(db, Assignments(db, DirectorSigner.generate(), publisher), clock=clock,
                         reports=reports), publisher


def records(engine_: RolloutEngine, rollout_id: str) -> dict[str, dict[str, Any]]:
    return {r["device_id"]: r for r in engine_.get(rollout_id, devices=True)["device_records"]}


def test_a_restarted_server_learns_every_outcome_it_missed_and_rolls_nobody_back(
        db: Database, mosquitto: MosquittoProcess) -> None:
    clock = FakeClock()
    first, _ = engine(db, clock)
    view = first.create("digits", "2.0.0", "", ALL_AT_ONCE)
    counter = counters(db)
    assert set(counter.values()) == {1}
    # The server goes down. Meanwhile every device commits, and no event reaches a server:
    # dev-00 and dev-01 report the outcome (retained by the broker), dev-02 reported it while
    # the old server still stored presence, then went offline (the broker retains its last will).
    with Recorder(mosquitto.url, "unused/topic") as device_side:
        device_side.publish(topics.reported("dev-00"),
                            json.dumps(reported("dev-00", "2.0.0", "committed", counter["dev-00"])).encode(), retain=True)
        device_side.publish(topics.reported("dev-01"), json.dumps(reported("dev-01", "2.0.0")).encode(), retain=True)
        device_side.publish(topics.reported("dev-02"),
                            json.dumps({"device_id": "dev-02", "online": False}).encode(), retain=True)
    store(db, "dev-02", reported("dev-02", "2.0.0", "committed", counter["dev-02"]), online=False)
    clock.advance(60)

    connection = FleetMqtt(mosquitto.url, handler=lambda t, p: None, shared=True).start()
    try:
        second, publisher = engine(db, clock, reports=connection)
        assert second.reconcile()
    finally:
        connection.stop()
    second.tick()
    done = second.get(view["id"], devices=True)
    assert done["state"] == "completed", done["log"]
    assert {d: (r["status"], r["serves"]) for d, r in records(second, view["id"]).items()} == {
        d: ("committed", "2.0.0") for d in IDS}
    assert records(second, view["id"])["dev-02"]["online"] is False
    assert publisher.sent == [] and counters(db) == counter  # nobody was sent anything, let alone rolled back


def test_without_the_reports_the_same_rollout_times_out_and_rolls_everyone_back(db: Database) -> None:
    """The control: what hole 2 did before (events lost, reports ignored)."""
    clock = FakeClock()
    first, publisher = engine(db, clock)
    view = first.create("digits", "2.0.0", "", ALL_AT_ONCE)
    clock.advance(31 * 60)
    first.tick()
    assert first.get(view["id"])["state"] == "rolled_back"
    assert len([t for t, _, _ in publisher.sent if t.endswith("/desired")]) == 2 * len(IDS)


def test_a_device_already_serving_the_version_commits_when_assigned(db: Database) -> None:
    # Its agent finds the assigned bundle active, installs nothing and sends no event.
    store(db, "dev-01", reported("dev-01", "2.0.0"))
    clock = FakeClock()
    engine_, _ = engine(db, clock)
    view = engine_.create("digits", "2.0.0", "", ALL_AT_ONCE)
    assert records(engine_, view["id"])["dev-01"]["status"] == "committed"
    assert {r["status"] for d, r in records(engine_, view["id"]).items() if d != "dev-01"} == {"assigned"}


def test_an_outcome_reported_for_an_older_assignment_is_not_this_rollouts(db: Database) -> None:
    clock = FakeClock()
    engine_, _ = engine(db, clock)
    view = engine_.create("digits", "2.0.0", "", ALL_AT_ONCE)
    stale = reported("dev-00", "1.0.0", "failed", counters(db)["dev-00"] - 1, "health_failed")
    engine_.handle_messages([(topics.reported("dev-00"), json.dumps(stale).encode())])
    assert records(engine_, view["id"])["dev-00"]["status"] == "assigned"
    fresh = reported("dev-00", "1.0.0", "failed", counters(db)["dev-00"], "health_failed")
    engine_.handle_messages([(topics.reported("dev-00"), json.dumps(fresh).encode())])
    assert records(engine_, view["id"])["dev-00"]["status"] == "rolled_back"


def test_a_device_in_probation_past_the_timeout_is_waited_for_not_failed(db: Database) -> None:
    clock = FakeClock()
    engine_, _ = engine(db, clock)
    view = engine_.create("digits", "2.0.0", "", ALL_AT_ONCE)
    counter = counters(db)
    engine_.handle_messages([(topics.reported(d), json.dumps(reported(d, "2.0.0", "committed", counter[d])).encode())
                             for d in IDS[:2]])
    engine_.handle_messages([(topics.reported("dev-02"),
                              json.dumps(reported("dev-02", "2.0.0", "activated", counter["dev-02"])).encode())])
    clock.advance(31 * 60)
    engine_.tick()
    assert engine_.get(view["id"])["state"] == "running"
    assert records(engine_, view["id"])["dev-02"]["status"] == "assigned"


def test_malformed_reports_are_counted_and_skipped_without_stopping_the_engine(db: Database) -> None:
    store(db, "dev-01", {"device_id": "dev-01", "online": True, "models": ["digits"]})  # a list: not the contract
    clock = FakeClock()
    engine_, _ = engine(db, clock)
    view = engine_.create("digits", "2.0.0", "", ALL_AT_ONCE)  # its stored report reads as "runs nothing known"
    assert records(engine_, view["id"])["dev-01"]["status"] == "assigned"
    bad = [{"device_id": "dev-00", "online": False, "models": 7},
           {"device_id": "dev-00", "online": True, "update": {"state": "committed", "model": "digits",
                                                              "version": "2.0.0", "counter": "1"}},
           {"device_id": "dev-00", "online": True, "models": {"digits": "2.0.0"}}]
    engine_.handle_messages([(topics.reported("dev-00"), json.dumps(b).encode()) for b in bad])
    assert engine_.malformed_reports == 2  # the last will carries nothing to misread
    record = records(engine_, view["id"])["dev-00"]
    assert record["status"] == "assigned" and record["online"] is True  # presence still counted
    counter = counters(db)["dev-00"]
    engine_.handle_messages([(topics.reported("dev-00"),
                              json.dumps(reported("dev-00", "2.0.0", "committed", counter)).encode())])
    assert records(engine_, view["id"])["dev-00"]["status"] == "committed"
