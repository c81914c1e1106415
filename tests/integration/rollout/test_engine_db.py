"""The rollout engine on a real database with time injected: timeouts, yanks, rollbacks, racing replicas.

Device events are fed the way the MQTT worker feeds them (``handle_messages``), so these run
in milliseconds; the broker's part is covered by test_engine.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from edgefleet import topics
from edgefleet.assignment import DirectorSigner, verify_assignment
from fleet_server.db import Database
from fleet_server.rollouts.assignments import Assignments
from fleet_server.rollouts.engine import RolloutEngine
from fleet_server.rollouts.machine import RolloutPolicy
from fleet_server.tables import ModelRow
from tests.integration.rollout.fleetdb import (
    FakeClock,
    RecordingPublisher,
    add_device,
    add_model,
    counters,
)

IDS = [f"dev-{i:02d}" for i in range(10)]


@pytest.fixture
def db(migrated_db: Database) -> Iterator[Database]:
    database = migrated_db
    add_model(database, "digits", "1.0.0")
    add_model(database, "digits", "2.0.0")
    for device_id in IDS:
        add_device(database, device_id, runs={"digits": "1.0.0"})
    yield database


def _engine(db: Database, clock: FakeClock) -> tuple[RolloutEngine, RecordingPublisher, DirectorSigner]:
    signer, pub = DirectorSigner.generate(), RecordingPublisher()
    return RolloutEngine(db, Assignments(db, signer, pub), clock=clock), pub, signer


def _event(device_id: str, event: str, version: str = "2.0.0", reason: str = "") -> tuple[str, bytes]:
    return topics.events(device_id), json.dumps({"device_id": device_id, "event": event, "model": "digits",
                                                  "version": version, "reason": reason}).encode()


def _policy(**changes: object) -> RolloutPolicy:
    base: dict[str, object] = {"waves": (50.0, 100.0), "bake_time": timedelta(minutes=5),
                               "device_timeout": timedelta(minutes=30)}
    base.update(changes)
    return RolloutPolicy(**base)  # type: ignore[arg-type]


def _wave(view: dict[str, object], index: int, engine: RolloutEngine) -> list[str]:
    records = engine.get(str(view["id"]), devices=True)["device_records"]
    return [r["device_id"] for r in records if r["wave"] == index]


def test_bake_time_gates_the_next_wave(db: Database) -> None:
    clock = FakeClock()
    engine, _, _ = _engine(db, clock)
    view = engine.create("digits", "2.0.0", "", _policy())
    first = _wave(view, 0, engine)
    engine.handle_messages([_event(d, "committed") for d in first])
    clock.advance(4 * 60)
    engine.tick()
    assert engine.get(view["id"])["current_wave"] == 0  # still baking
    clock.advance(61)
    engine.tick()
    assert engine.get(view["id"])["current_wave"] == 1
    assert all(counters(db)[d] == 1 for d in IDS)


def test_silent_devices_time_out_and_auto_rollback_sends_the_previous_version(db: Database) -> None:
    clock = FakeClock()
    engine, pub, signer = _engine(db, clock)
    view = engine.create("digits", "2.0.0", "", _policy(auto_rollback=True))
    first = _wave(view, 0, engine)
    engine.handle_messages([_event(first[0], "downloaded")])  # alive, but never finishes
    clock.advance(30 * 60 + 1)
    engine.tick()
    final = engine.get(view["id"], devices=True)
    assert final["state"] == "rolled_back"
    for device_id in first:
        latest = [p for t, p, _ in pub.sent if t == topics.desired(device_id)][-1]
        doc = verify_assignment(latest, director_public_b64=signer.public_b64, device_id=device_id, last_counter=1,
                                now=clock.now)
        assert doc.counter == 2 and doc.models["digits"].version == "1.0.0"
    assert all(counters(db)[d] == 0 for d in IDS if d not in first)


def test_a_version_yanked_mid_rollout_is_never_assigned_again(db: Database) -> None:
    clock = FakeClock()
    engine, pub, _ = _engine(db, clock)
    view = engine.create("digits", "2.0.0", "", _policy(bake_time=timedelta(0)))
    first = _wave(view, 0, engine)
    with db.session() as s:
        s.execute(update(ModelRow).where(ModelRow.version == "2.0.0").values(yanked=True))
    engine.tick()
    sent_before = len(pub.sent)
    engine.handle_messages([_event(d, "committed") for d in first])  # would have started wave 2
    engine.tick()
    final = engine.get(view["id"])
    assert final["state"] == "halted" and "yanked" in final["halt_reason"]
    assert len(pub.sent) == sent_before
    assert all(counters(db)[d] == 0 for d in IDS if d not in first)


def test_operator_rollback_after_completion_moves_every_device_back(db: Database) -> None:
    clock = FakeClock()
    engine, _, _ = _engine(db, clock)
    view = engine.create("digits", "2.0.0", "", _policy(bake_time=timedelta(0)))
    engine.handle_messages([_event(d, "committed") for d in _wave(view, 0, engine)])
    engine.handle_messages([_event(d, "committed") for d in _wave(view, 1, engine)])
    assert engine.get(view["id"])["state"] == "completed"
    rolled = engine.rollback(view["id"])
    assert rolled["state"] == "rolled_back" and rolled["devices"] == {"rolled_back": 10}
    assert set(counters(db).values()) == {2}
    assert any("10 device(s) sent their previous version" in e["message"] for e in rolled["log"])


def test_events_about_other_versions_or_unknown_devices_change_nothing(db: Database) -> None:
    clock = FakeClock()
    engine, _, _ = _engine(db, clock)
    view = engine.create("digits", "2.0.0", "", _policy())
    first = _wave(view, 0, engine)
    before = engine.get(view["id"])
    engine.handle_messages([_event(first[0], "failed", version="1.0.0"), _event("dev-stranger", "failed"),
                            (topics.events(first[0]), b"not json"), (topics.telemetry(first[0]), b"{}")])
    assert engine.get(view["id"])["devices"] == before["devices"]


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_racing_replicas_advance_each_wave_once(db: Database) -> None:
    clock = FakeClock()
    signer = DirectorSigner.generate()
    replicas = []
    for _ in range(2):
        own = Database(db.url)  # each replica has its own engine and connection pool
        replicas.append(RolloutEngine(own, Assignments(own, signer, RecordingPublisher()), clock=clock))
    for i in range(10, 40):
        add_device(db, f"dev-{i:02d}", runs={"digits": "1.0.0"})
    view = replicas[0].create("digits", "2.0.0", "", _policy(waves=(10.0, 50.0, 100.0), bake_time=timedelta(0)))
    errors: list[BaseException] = []

    def commit_everything(engine: RolloutEngine, parity: int) -> None:
        try:
            for _ in range(40):
                assigned = [r["device_id"] for r in engine.get(view["id"], devices=True)["device_records"]
                            if r["status"] == "assigned" and hash(r["device_id"]) % 2 == parity]
                engine.handle_messages([_event(d, "committed") for d in assigned])
                engine.tick()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=commit_everything, args=(e, p)) for e in replicas for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    final = replicas[1].get(view["id"])
    messages = [e["message"] for e in final["log"]]
    assert final["state"] == "completed"
    assert messages.count("wave 2 started") == 1 and messages.count("wave 3 started") == 1
    assert set(counters(db).values()) == {1}  # nobody assigned twice by the two replicas
    for engine in replicas:
        engine.db.dispose()


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_two_replicas_creating_the_same_rollout_start_only_one(db: Database) -> None:
    from fleet_server.errors import ConflictError

    signer = DirectorSigner.generate()
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def create() -> None:
        own = Database(db.url)
        engine = RolloutEngine(own, Assignments(own, signer, RecordingPublisher()), clock=FakeClock())
        barrier.wait()
        try:
            result = engine.create("digits", "2.0.0", "", _policy())["id"]
        except ConflictError:
            result = "conflict"
        with lock:
            outcomes.append(result)
        own.dispose()

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes).count("conflict") == 3
    assert set(counters(db).values()) <= {0, 1}
