"""A device that missed its `desired` gets it again once it reports an older assignment (issue 13).

Real Mosquitto, real database (SQLite and PostgreSQL), the agent's real MQTT link. The server
issues and publishes an assignment before the device has any subscription, and the broker
then holds nothing for it (the retained copy cleared): what a device whose SUBSCRIBE waited
for its JetStream consumer sees on a NATS cluster, without starting one. The device connects
on a fresh session and reports the assignment it holds (``assignment_counter`` 0); the server's
resender compares it with the latest issued and publishes that envelope again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from agent.link import Backoff, Link
from edgefleet import topics
from edgefleet.assignment import DirectorSigner
from fleet_server.broker.connection import FleetMqtt
from fleet_server.db import Database
from fleet_server.rollouts.assignments import Assignments
from fleet_server.rollouts.resend import DesiredResender
from simulation.fleet import MosquittoProcess, wait_until
from tests.integration.rollout.fleetdb import T0, add_device, add_model

DEVICE, OLD_AGENT = "dev-late", "dev-old-agent"


@pytest.fixture
def db(migrated_db: Database) -> Database:
    add_model(migrated_db, "digits", "1.0.0")
    add_device(migrated_db, DEVICE)
    add_device(migrated_db, OLD_AGENT)
    return migrated_db


class Server:
    """The server's side: its MQTT connection taking ``reported``, the assignments, the resender."""

    def __init__(self, db: Database, broker: MosquittoProcess) -> None:
        self.resender: DesiredResender | None = None
        self.mqtt = FleetMqtt(broker.url, handler=self._handle, shared=False, kinds=("reported",)).start()
        assert self.mqtt.wait_connected(10)
        self.assignments = Assignments(db, DirectorSigner.generate(), self.mqtt)
        self.resender = DesiredResender(self.assignments).start()

    def _handle(self, topic: str, payload: bytes) -> None:
        if self.resender is not None:
            self.resender.submit(topic, payload)

    def issue_and_lose(self, db: Database, device_id: str) -> bytes:
        """Issue and publish an assignment, then clear the retained copy: no subscriber ever sees it."""
        with db.session() as session:
            issued = self.assignments.next_assignment(session, device_id, {"digits": "1.0.0"}, "ro-1", T0)
        self.assignments.publish(issued)
        self.mqtt.publish(topics.desired(device_id), b"", retain=True)
        return issued.envelope

    def close(self) -> None:
        if self.resender is not None:
            self.resender.stop()
        self.mqtt.stop()


@pytest.fixture
def server(db: Database, mosquitto: MosquittoProcess) -> Iterator[Server]:
    made = Server(db, mosquitto)
    yield made
    made.close()


class Device:
    def __init__(self, device_id: str, broker: MosquittoProcess, reported: dict[str, object]) -> None:
        self.received: list[bytes] = []
        self.lock = threading.Lock()
        self.link = Link(device_id, broker.url, on_desired=self._on_desired, backoff=Backoff(0.1, 0.5))
        self.link.set_reported(reported)
        self.link.start()

    def _on_desired(self, payload: bytes) -> None:
        with self.lock:
            self.received.append(payload)


def test_a_device_that_missed_its_desired_gets_it_again_after_it_reports(
        db: Database, server: Server, mosquitto: MosquittoProcess) -> None:
    envelope = server.issue_and_lose(db, DEVICE)
    device = Device(DEVICE, mosquitto, {"models": {}, "update": {"state": "idle"}, "assignment_counter": 0})
    try:
        assert device.link.subscribed.wait(10)
        wait_until(lambda: device.received, 10, "the server to publish the lost desired again")
        assert device.received[0] == envelope
        resender = server.resender
        assert resender is not None and resender.counts().resent >= 1
        # reported at the connect and once desired was granted on the fresh session: both handled
        wait_until(lambda: resender.counts().reports >= 2, 10, "the resender to handle both reports")
        # It holds the latest now: its report says so, and the server sends nothing more.
        sent = resender.counts().resent
        device.link.set_reported({"models": {}, "update": {"state": "idle"}, "assignment_counter": 1})
        device.link.report_now()
        wait_until(lambda: resender.counts().reports >= 4, 10, "the resender to handle the new reports")
        assert resender.counts().resent == sent
    finally:
        device.link.stop()


def test_an_agent_that_names_no_assignment_is_left_as_before(db: Database, server: Server,
                                                            mosquitto: MosquittoProcess) -> None:
    server.issue_and_lose(db, OLD_AGENT)
    server.issue_and_lose(db, DEVICE)
    # An agent from before `assignment_counter`: its reports are taken as always, and trigger nothing.
    device = Device(OLD_AGENT, mosquitto, {"models": {}, "update": {"state": "idle"}})
    try:
        assert device.link.subscribed.wait(10)
        late = Device(DEVICE, mosquitto, {"models": {}, "update": {"state": "idle"}, "assignment_counter": 0})
        try:
            # the resender takes reports in order: once the later device is answered, the old agent's were seen
            wait_until(lambda: late.received, 10, "the resender to answer the later report")
        finally:
            late.link.stop()
        assert device.received == []
    finally:
        device.link.stop()
