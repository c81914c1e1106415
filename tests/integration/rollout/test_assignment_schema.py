"""The registry never assigns a schema-2 bundle to a device whose reported agent predates schema 2
(issue 12): the assignment is refused with reason agent_too_old and a message naming the versions,
and a rollout shows it per device and in its log (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from edgefleet.assignment import DirectorSigner
from fleet_server.db import Database
from fleet_server.rollouts.assignments import Assignments, IneligibleError
from fleet_server.rollouts.engine import RolloutEngine
from fleet_server.rollouts.machine import RolloutPolicy
from fleet_server.tables import DeviceRow, ModelRow
from tests.integration.rollout.fleetdb import (
    T0,
    FakeClock,
    RecordingPublisher,
    add_device,
    add_model,
    counters,
)

AGENTS = {"dev-new": "0.1.0", "dev-old": "0.0.9", "dev-silent": ""}


@pytest.fixture
def db(migrated_db: Database) -> Iterator[Database]:
    database = migrated_db
    add_model(database, "digits", "1.0.0")  # schema 1 (its manifest names none)
    add_model(database, "wine", "1.0.0")
    with database.session() as s:
        s.execute(update(ModelRow).where(ModelRow.name == "wine").values(manifest={"schema_version": 2}))
    for device_id, agent_version in AGENTS.items():
        add_device(database, device_id)
        with database.session() as s:
            s.execute(update(DeviceRow).where(DeviceRow.id == device_id).values(agent_version=agent_version))
    yield database


@pytest.mark.parametrize(("device", "shown"), [("dev-old", "(0.0.9)"), ("dev-silent", "(no version reported)")])
def test_a_schema_2_bundle_is_refused_to_an_agent_that_predates_it(db: Database, device: str, shown: str) -> None:
    pub = RecordingPublisher()
    service = Assignments(db, DirectorSigner.generate(), pub)
    with pytest.raises(IneligibleError) as caught:
        service.assign(device, {"wine": "1.0.0"}, None, T0)
    assert caught.value.reason == "agent_too_old"
    assert (f"wine@1.0.0 is a schema-2 bundle, which device {device}'s agent {shown} cannot read: "
            "it needs edgefleet 0.1.0 or later") in caught.value.message
    assert caught.value.fix == f"upgrade the agent on {device} to edgefleet 0.1.0 or later"
    assert counters(db)[device] == 0 and pub.sent == []
    # The same device still takes schema-1 bundles, and an agent that reads schema 2 takes this one.
    assert service.assign(device, {"digits": "1.0.0"}, None, T0).counter == 1
    assert service.assign("dev-new", {"wine": "1.0.0"}, None, T0).counter == 1


def test_a_rollout_shows_why_an_old_agent_was_not_assigned(db: Database) -> None:
    engine = RolloutEngine(db, Assignments(db, DirectorSigner.generate(), RecordingPublisher()), clock=FakeClock())
    view = engine.create("wine", "1.0.0", "", RolloutPolicy(waves=(100.0,), bake_time=timedelta(minutes=5)))
    shown = engine.get(view["id"], devices=True)
    reasons = {r["device_id"]: r["reason"] for r in shown["device_records"]}
    assert reasons["dev-old"] == reasons["dev-silent"] == "not assignable: agent_too_old"
    assert reasons["dev-new"] == ""
    assert counters(db) == {"dev-new": 1, "dev-old": 0, "dev-silent": 0}
    log = "\n".join(entry["message"] for entry in shown["log"])
    assert "dev-old: not assigned wine@1.0.0: model wine@1.0.0 is a schema-2 bundle" in log
