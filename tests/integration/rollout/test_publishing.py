"""Publishing a wave at once: all sent, all PUBACKs awaited together, marked in one pass, latest wins.

Against a real Mosquitto and a real database (SQLite and PostgreSQL). The rollout worker's
hand-off (``create`` returns before anything is published) uses a gated in-memory publisher,
because what is under test there is who waits for the broker, not the broker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta

import pytest
from sqlalchemy import select

from edgefleet import topics
from edgefleet.assignment import DirectorSigner
from fleet_server.broker.connection import FleetMqtt
from fleet_server.db import Database
from fleet_server.rollouts.assignments import PUBLISH_TIMEOUT_S, Assignments, IssuedAssignment
from fleet_server.rollouts.engine import RolloutEngine, RolloutWorker
from fleet_server.rollouts.machine import RolloutPolicy
from fleet_server.tables import DeviceAssignmentRow
from simulation.fleet import MosquittoProcess
from tests.integration.rollout.fleetdb import T0, add_device, add_model
from tests.integration.rollout.mqtt_tools import Recorder

IDS = [f"dev-{i:03d}" for i in range(120)]


@pytest.fixture
def db(migrated_db: Database) -> Iterator[Database]:
    database = migrated_db
    add_model(database, "digits", "1.0.0")
    add_model(database, "digits", "2.0.0")
    for device_id in IDS:
        add_device(database, device_id)
    yield database


@pytest.fixture
def server_mqtt(mosquitto: MosquittoProcess) -> Iterator[FleetMqtt]:
    client = FleetMqtt(mosquitto.url, handler=lambda _t, _p: None, shared=False).start()
    assert client.wait_connected(10)
    yield client
    client.stop()


def _published(db: Database) -> dict[str, tuple[int, int]]:
    with db.session() as s:
        return {d: (c, p) for d, c, p in s.execute(select(DeviceAssignmentRow.device_id, DeviceAssignmentRow.counter,
                                                          DeviceAssignmentRow.published_counter))}


def _issue(service: Assignments, db: Database, device_ids: Sequence[str], version: str) -> list[IssuedAssignment]:
    with db.session() as s:
        return [service.next_assignment(s, d, {"digits": version}, "ro-t", T0) for d in device_ids]


def test_publish_all_confirms_every_message_from_the_broker(mosquitto: MosquittoProcess,
                                                            server_mqtt: FleetMqtt) -> None:
    messages = [(f"edgefleet/v1/devices/d{i}/desired", f"{i}".encode()) for i in range(500)]
    assert server_mqtt.publish_all(messages, retain=True, timeout=30) == [True] * 500
    with Recorder(mosquitto.url, "edgefleet/v1/devices/+/desired") as rec:
        rec.wait_for(lambda: len(rec.messages) == 500)
        assert all(retained for _, _, retained in rec.messages)


def test_publish_all_without_a_broker_returns_at_once_and_queues_nothing() -> None:
    client = FleetMqtt("mqtt://127.0.0.1:9", handler=lambda _t, _p: None, shared=False).start()
    try:
        assert client.publish_all([("a/b", b"1"), ("a/c", b"2")], timeout=30) == [False, False]
        assert client._client._out_messages == {}  # nothing piles up for a reconnect
    finally:
        client.stop()


def test_a_wave_is_published_and_marked_in_one_pass_and_the_broker_keeps_the_latest(
        db: Database, mosquitto: MosquittoProcess, server_mqtt: FleetMqtt) -> None:
    service = Assignments(db, DirectorSigner.generate(), server_mqtt)
    older = _issue(service, db, IDS, "1.0.0")
    newer = _issue(service, db, IDS[:10], "2.0.0")  # another replica moved ten devices on meanwhile
    # The late publisher sends the older wave (and, for one device, both): the broker must end
    # up retaining each device's latest envelope all the same.
    assert service.publish_all([*older, newer[0]]) == []
    assert _published(db) == {d: (2, 2) if d in IDS[:10] else (1, 1) for d in IDS}
    assert service.maintain(T0) == (0, 0)
    latest = {i.device_id: i.envelope for i in older} | {i.device_id: i.envelope for i in newer}
    with Recorder(mosquitto.url, "edgefleet/v1/devices/+/desired") as rec:
        rec.wait_for(lambda: len(rec.messages) == len(IDS))
        assert {t: p for t, p, _ in rec.messages} == {topics.desired(d): e for d, e in latest.items()}


class PartialPublisher:
    """A broker seam that confirms every message but those to ``refuse`` (a broker that lost them)."""

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.calls: list[list[str]] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        raise AssertionError("a batch publisher is driven through publish_all")

    def publish_all(self, messages: Sequence[tuple[str, bytes]], *, retain: bool = False,
                    timeout: float = PUBLISH_TIMEOUT_S) -> list[bool]:
        self.calls.append([t for t, _ in messages])
        return [t not in self.refuse for t, _ in messages]


def test_unconfirmed_envelopes_stay_unmarked_and_maintain_sends_them_again(db: Database) -> None:
    lost = {topics.desired(d) for d in IDS[5:8]}
    pub = PartialPublisher(lost)
    service = Assignments(db, DirectorSigner.generate(), pub)
    assert service.publish_all(_issue(service, db, IDS, "1.0.0")) == IDS[5:8]
    assert len(pub.calls) == 1 and len(pub.calls[0]) == len(IDS)
    assert {d for d, (c, p) in _published(db).items() if p < c} == set(IDS[5:8])
    pub.refuse = set()
    assert service.maintain(T0) == (3, 0)
    assert sorted(pub.calls[-1]) == sorted(lost)
    assert all(c == p for c, p in _published(db).values())


class GatedPublisher(PartialPublisher):
    """Holds every publish_all until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(set())
        self.gate = threading.Event()

    def publish_all(self, messages: Sequence[tuple[str, bytes]], *, retain: bool = False,
                    timeout: float = PUBLISH_TIMEOUT_S) -> list[bool]:
        assert self.gate.wait(10)
        return super().publish_all(messages, retain=retain, timeout=timeout)


def test_create_returns_once_stored_and_the_worker_publishes_the_wave_together(db: Database) -> None:
    pub = GatedPublisher()
    engine = RolloutEngine(db, Assignments(db, DirectorSigner.generate(), pub))
    worker = RolloutWorker(engine, interval=60).start()
    try:
        view = engine.create("digits", "2.0.0", "", RolloutPolicy((100.0,)))
        # returned while the broker (gated) has confirmed nothing: the request did not wait for it
        assert view["assigned"] == len(IDS) and pub.calls == []
        assert all(c == 1 and p == 0 for c, p in _published(db).values())
        pub.gate.set()
        pause = threading.Event()
        for _ in range(200):
            if all(c == p for c, p in _published(db).values()):
                break
            pause.wait(0.05)
        assert all(c == p == 1 for c, p in _published(db).values())
        assert [sorted(c) for c in pub.calls] == [sorted(topics.desired(d) for d in IDS)]  # one batch
    finally:
        pub.gate.set()
        worker.stop()


def test_the_worker_loses_no_message_when_a_batch_fills(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from fleet_server.rollouts import engine as rollout_engine

    monkeypatch.setattr(rollout_engine, "_BATCH", 4)
    engine = RolloutEngine(db, Assignments(db, DirectorSigner.generate(), PartialPublisher(set())))
    # completed only once every device has committed
    view = engine.create("digits", "2.0.0", "", RolloutPolicy((100.0,), bake_time=timedelta(0), min_success_rate=1.0))
    worker = RolloutWorker(engine, interval=60)
    for device_id in IDS:  # queued before the worker runs: it meets a full backlog
        worker.submit(topics.events(device_id), json.dumps({"device_id": device_id, "event": "committed",
                                                            "model": "digits", "version": "2.0.0"}).encode())
    worker.start()
    try:
        pause = threading.Event()
        for _ in range(200):
            if engine.get(view["id"])["state"] == "completed":
                break
            pause.wait(0.05)
        assert engine.get(view["id"])["devices"] == {"committed": len(IDS)}
    finally:
        worker.stop()


def test_presence_batches_and_rollout_changes_never_deadlock_on_postgresql(postgres_url: str) -> None:
    from datetime import UTC, datetime

    from fleet_server.broker.accounts import UnmanagedBroker
    from fleet_server.registry.devices import Devices
    from fleet_server.registry.presence import PresenceUpdate

    database = Database(postgres_url)
    database.migrate()
    add_model(database, "digits", "2.0.0")
    for device_id in IDS:
        add_device(database, device_id)
    devices = Devices(database, UnmanagedBroker())
    engine = RolloutEngine(database, Assignments(database, DirectorSigner.generate(), PartialPublisher(set())))
    errors: list[BaseException] = []
    done = threading.Event()

    def presence() -> None:
        # Batches in the opposite order to the rollout's waves: without one lock order for
        # both, PostgreSQL aborts one of two such transactions as a deadlock.
        at = datetime.now(UTC)
        try:
            while not done.is_set():
                devices.record_presences([PresenceUpdate(d, at, True) for d in reversed(IDS)])
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=presence)
    writer.start()
    try:
        for seed in range(4):
            view = engine.create("digits", "2.0.0", "", RolloutPolicy((100.0,)), seed=seed)
            engine.abort(view["id"])
    finally:
        done.set()
        writer.join(30)
        database.dispose()
    assert errors == []
