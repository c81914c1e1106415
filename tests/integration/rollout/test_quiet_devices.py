"""A device whose outcome's event and report were both lost is asked to report, and the rollout completes.

The broker acknowledged the `committed` event and the `reported` document and then lost both (a
NATS stream leader's node killed during its election; a Mosquitto killed with them in memory):
here the device simply never publishes them. The server's rollout worker, a real Mosquitto and
the agent's own MQTT link are real; the device answers the `report` command as the agent's
daemon does (its reported state, published again).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from agent.link import Backoff, Link
from edgefleet.assignment import DirectorSigner
from fleet_server.broker.connection import FleetMqtt
from fleet_server.db import Database
from fleet_server.rollouts.assignments import Assignments
from fleet_server.rollouts.engine import RolloutEngine, RolloutWorker
from fleet_server.rollouts.machine import RolloutPolicy
from fleet_server.rollouts.quiet import QuietPolicy
from simulation.fleet import MosquittoProcess, wait_until
from tests.integration.rollout.fleetdb import FakeClock, reported, upgrade_fleet

DEVICE = "dev-quiet"
ONE_WAVE = RolloutPolicy(waves=(100.0,), bake_time=timedelta(0), device_timeout=timedelta(minutes=30),
                         max_failure_rate=0.0, min_success_rate=1.0)


@pytest.fixture
def db(migrated_db: Database) -> Database:
    return upgrade_fleet(migrated_db, [DEVICE])


class Server:
    """The server's side: events and reports go to the rollout worker, which asks quiet devices to report."""

    def __init__(self, db: Database, broker: MosquittoProcess, quiet: QuietPolicy) -> None:
        self.worker: RolloutWorker | None = None
        self.mqtt = FleetMqtt(broker.url, handler=self._handle, shared=False, kinds=("events", "reported")).start()
        assert self.mqtt.wait_connected(10)
        self.engine = RolloutEngine(db, Assignments(db, DirectorSigner.generate(), self.mqtt), clock=FakeClock())
        self.worker = RolloutWorker(self.engine, 0.2, send=lambda: self.mqtt.send, quiet=quiet).start()

    def _handle(self, topic: str, payload: bytes) -> None:
        if self.worker is not None:
            self.worker.submit(topic, payload)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.mqtt.stop()


class SilentDevice:
    """Takes its assignment and commits it, but what it publishes about that is lost; answers `report`."""

    def __init__(self, broker: MosquittoProcess) -> None:
        self.truth = reported(DEVICE, "1.0.0")
        self.commands: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.link = Link(DEVICE, broker.url, on_desired=self._on_desired, on_command=self._on_command,
                         backoff=Backoff(0.1, 0.5))
        self.link.set_reported(self.truth)
        self.link.start()

    def _on_desired(self, payload: bytes) -> None:
        if not payload:
            return
        counter = json.loads(payload)["signed"]["counter"]
        with self._lock:  # installed, probation passed: committed (and nobody heard of it)
            self.truth = reported(DEVICE, "2.0.0", state="committed", counter=counter)

    def _on_command(self, command: dict[str, Any]) -> None:
        with self._lock:
            self.commands.append(command)
            truth = self.truth
        if command.get("command") == "report":  # as agent/daemon.py: reload, then publish reported
            self.link.set_reported(truth)
            self.link.report_now()


@pytest.fixture
def server(db: Database, mosquitto: MosquittoProcess) -> Iterator[Server]:
    made = Server(db, mosquitto, QuietPolicy(quiet_s=1.0, max_wait_s=2.0))
    yield made
    made.close()


def test_a_device_whose_outcome_was_lost_is_asked_to_report_and_the_rollout_completes(
        server: Server, mosquitto: MosquittoProcess) -> None:
    device = SilentDevice(mosquitto)
    try:
        assert device.link.subscribed.wait(10)
        created = server.engine.create("digits", "2.0.0", policy=ONE_WAVE)

        def state() -> str:
            return str(server.engine.get(created["id"])["state"])

        wait_until(lambda: state() == "completed", 20, "the rollout to complete once the device is asked",
                   explain=lambda: f"state {state()}, commands {device.commands}")
        assert {"command": "report", "args": {}} in device.commands
        assert server.worker is not None and server.worker.asked >= 1
        record = server.engine.get(created["id"], devices=True)["device_records"][0]
        assert record["status"] == "committed" and record["serves"] == "2.0.0", record
    finally:
        device.link.stop()
