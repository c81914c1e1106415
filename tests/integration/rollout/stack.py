"""Server replicas and light fleets for rollout tests, wired the way the server wires them.

``Replica`` is one fleet-server replica's rollout side: the real ``FleetMqtt`` connection (shared
subscriptions; a persistent session when given a ``client_id``, as the server does on an
external broker) hands device messages to a ``RolloutWorker``, whose ``RolloutEngine`` issues
assignments through ``Assignments``, which publishes over the same connection, and reads the
retained reports over it when it starts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from edgefleet.assignment import DirectorSigner
from fleet_server.broker.connection import FleetMqtt
from fleet_server.db import Database
from fleet_server.rollouts.assignments import Assignments
from fleet_server.rollouts.engine import RolloutEngine, RolloutWorker
from simulation.lightdevice import Behaviour, DeviceIdentity, LightFleet
from tests.integration.rollout.fleetdb import add_device, fake_sha


class Replica:
    def __init__(self, db: Database | str, broker_url: str, signer: DirectorSigner, *, interval: float = 0.2,
                 client_id: str | None = None) -> None:
        self.db = db if isinstance(db, Database) else Database(db)
        self.db.migrate()
        self._worker: RolloutWorker | None = None
        self._early: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.mqtt = FleetMqtt(broker_url, handler=self._dispatch, shared=True, client_id=client_id,
                              persistent=client_id is not None).start()
        if not self.mqtt.wait_connected(10):
            raise RuntimeError("replica could not connect to the broker")
        self.assignments = Assignments(self.db, signer, self.mqtt)
        self.engine = RolloutEngine(self.db, self.assignments, reports=self.mqtt)
        worker = RolloutWorker(self.engine, interval).start()
        with self._lock:
            self._worker = worker
            for item in self._early:
                worker.submit(*item)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        with self._lock:
            if self._worker is None:
                self._early.append((topic, payload))
                return
        self._worker.submit(topic, payload)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()
        self.mqtt.stop()
        self.db.dispose()


def build_fleet(db: Database, fleet: LightFleet, director_b64: str, ids: Iterable[str], *,
                profile: str = "rpi4-64", labels: dict[str, str] | None = None, runs: dict[str, str] | None = None,
                behaviour: Behaviour | None = None) -> list[str]:
    """Enroll devices in the DB and add a light device for each, running ``runs`` already."""
    made = []
    for device_id in ids:
        add_device(db, device_id, profile, labels or {"site": "a"}, runs=runs)
        models = {m: (v, fake_sha(m, v)) for m, v in (runs or {}).items()}
        fleet.add(DeviceIdentity(device_id, profile, director_b64, labels=labels or {"site": "a"}),
                  behaviour, models=models)
        made.append(device_id)
    return made
