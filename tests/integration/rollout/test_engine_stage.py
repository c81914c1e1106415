"""The rollout engine's shadow and canary stage on a real database (SQLite and PostgreSQL), time injected.

Telemetry goes through the real ingest (``TelemetryIngest``: decode, check, store, the ``sh``
records included), device events through ``handle_messages`` as the MQTT worker feeds them,
and the assignments the engine signs are verified the way an agent verifies them: so these
tests cover the candidate entry on the wire, the stored shadow records, the figures gathered
per wave and the verdict, without a broker (test_engine.py covers the broker's part).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest

from edgefleet import telemetry, topics
from edgefleet.assignment import Assignment, DirectorSigner, verify_assignment
from edgefleet.telemetry import Feedback, ModelRecord, ShadowRecord, TelemetryBatch
from fleet_server.db import Database
from fleet_server.rollouts.assignments import Assignments
from fleet_server.rollouts.engine import RolloutEngine
from fleet_server.rollouts.machine import RolloutPolicy
from fleet_server.rollouts.stage import CanaryPolicy, ShadowPolicy
from fleet_server.telemetry.ingest import TelemetryIngest
from tests.integration.rollout.fleetdb import FakeClock, RecordingPublisher, upgrade_fleet

IDS = [f"dev-{i:02d}" for i in range(4)]
SHADOW = ShadowPolicy(timedelta(minutes=10), 0.98, min_requests=100)
FAST = (0, 0, 0, 10)


@pytest.fixture
def db(migrated_db: Database) -> Database:
    return upgrade_fleet(migrated_db, IDS)


class Stack:
    def __init__(self, db: Database) -> None:
        self.clock = FakeClock()
        self.signer, self.publisher = DirectorSigner.generate(), RecordingPublisher()
        self.engine = RolloutEngine(db, Assignments(db, self.signer, self.publisher), clock=self.clock)
        self.ingest = TelemetryIngest(db, clock=self.clock).start()
        self.seq = 0

    def latest(self, device_id: str) -> Assignment:
        payload = [p for t, p, _ in self.publisher.sent if t == topics.desired(device_id)][-1]
        return verify_assignment(payload, director_public_b64=self.signer.public_b64, device_id=device_id,
                                 last_counter=0, now=self.clock.now)

    def event(self, device_id: str, event: str, reason: str = "") -> None:
        self.engine.handle_messages([(topics.events(device_id), json.dumps({
            "device_id": device_id, "event": event, "model": "digits", "version": "2.0.0", "reason": reason}).encode())])

    def send(self, device_id: str, *, shadow: tuple[int, int] | None = None,
             feedback: dict[str, tuple[int, int]] | None = None) -> None:
        """One telemetry batch: ``shadow`` = (compared, agreed); ``feedback`` = version -> (labels, correct)."""
        self.seq += 1
        records = tuple(ModelRecord("digits", v, count=labels, feedback=Feedback(labels, correct))
                        for v, (labels, correct) in (feedback or {}).items())
        sh = () if shadow is None else (ShadowRecord("digits", "2.0.0", "1.0.0", shadow[0], shadow[1],
                                                     serving_buckets=(0, 0, 0, shadow[0]),
                                                     candidate_buckets=(0, 0, 0, shadow[0])),)
        batch = TelemetryBatch(device_id, self.seq, self.clock.now.timestamp(), 60.0, models=records, shadow=sh)
        self.ingest.ingest(topics.telemetry(device_id), telemetry.encode(batch))
        assert self.ingest.drain(30)

    def close(self) -> None:
        self.ingest.stop()


@pytest.fixture
def stack(db: Database) -> Iterator[Stack]:
    running = Stack(db)
    yield running
    running.close()


def _policy(stage: ShadowPolicy | CanaryPolicy) -> RolloutPolicy:
    return RolloutPolicy((50.0, 100.0), timedelta(minutes=5), 0.05, 0.95, timedelta(minutes=30), False, stage)


def _wave(stack: Stack, rollout_id: str, index: int) -> list[str]:
    records = stack.engine.get(rollout_id, devices=True)["device_records"]
    return sorted(r["device_id"] for r in records if r["wave"] == index)


def test_a_shifted_candidate_is_halted_on_its_agreement_and_withdrawn(stack: Stack) -> None:
    view = stack.engine.create("digits", "2.0.0", "", _policy(SHADOW))
    first = _wave(stack, view["id"], 0)
    for device in first:
        entry = stack.latest(device).models["digits"]
        assert entry.version == "1.0.0" and entry.candidate is not None
        assert (entry.candidate.version, entry.candidate.mode, entry.candidate.sample) == ("2.0.0", "shadow", 1.0)
        stack.event(device, "shadowing")
    # a refresh of the assignment (maintain, or a change to another model) keeps the candidate
    with stack.engine.db.session() as session:
        refreshed = stack.engine.assignments.next_assignment(session, first[0], {}, view["id"], stack.clock.now)
    candidate = refreshed.models["digits"].candidate
    assert candidate is not None and candidate.version == "2.0.0"
    stack.clock.advance(60)
    for device in first:
        stack.send(device, shadow=(602, 367))
    stack.clock.advance(10 * 60)
    stack.engine.tick()
    shown = stack.engine.get(view["id"])
    assert shown["state"] == "halted"
    assert shown["halt_reason"] == "shadow agreement 0.61 < 0.98 over 1,204 requests on wave 1"
    figures = shown["waves"][0]["stage"]["figures"]
    assert figures["requests"] == 1204 and figures["devices"] == 2
    for device in first:  # withdrawn: the serving version alone
        entry = stack.latest(device).models["digits"]
        assert entry.version == "1.0.0" and entry.candidate is None
    assert any("candidate withdrawn from 2 device(s)" in e["message"] for e in shown["log"])


def test_a_good_candidate_passes_its_stage_and_rolls_on(stack: Stack) -> None:
    view = stack.engine.create("digits", "2.0.0", "", _policy(SHADOW))
    first = _wave(stack, view["id"], 0)
    for device in first:
        stack.event(device, "shadowing")
        stack.send(device, shadow=(100, 100))
    stack.clock.advance(10 * 60 + 1)
    stack.engine.tick()
    shown = stack.engine.get(view["id"])
    assert shown["state"] == "running" and shown["waves"][0]["stage"]["verdict"] == "passed"
    for device in first:
        entry = stack.latest(device).models["digits"]
        assert entry.version == "2.0.0" and entry.candidate is None
        stack.event(device, "committed")
    stack.clock.advance(5 * 60 + 1)
    stack.engine.tick()
    second = _wave(stack, view["id"], 1)
    assert stack.engine.get(view["id"])["current_wave"] == 1
    assert all(stack.latest(d).models["digits"].candidate is not None for d in second)


def test_too_few_shadow_requests_halt_with_that_reason(stack: Stack) -> None:
    view = stack.engine.create("digits", "2.0.0", "", _policy(SHADOW))
    for device in _wave(stack, view["id"], 0):
        stack.event(device, "shadowing")
        stack.send(device, shadow=(10, 10))
    stack.clock.advance(11 * 60)
    stack.engine.tick()
    assert "too few to judge" in stack.engine.get(view["id"])["halt_reason"]


@pytest.mark.parametrize("candidate, outcome", [((60, 30), "halted"), ((60, 58), "running")])
def test_a_canary_is_decided_on_feedback_accuracy_per_arm(stack: Stack, candidate: tuple[int, int],
                                                          outcome: str) -> None:
    view = stack.engine.create("digits", "2.0.0", "", _policy(CanaryPolicy(0.1, timedelta(minutes=10),
                                                                            min_labels=50)))
    first = _wave(stack, view["id"], 0)
    for device in first:
        entry = stack.latest(device).models["digits"]
        assert entry.candidate is not None and (entry.candidate.mode, entry.candidate.share) == ("canary", 0.1)
        stack.event(device, "shadowing")
        stack.send(device, feedback={"1.0.0": (300, 270), "2.0.0": candidate})
    stack.clock.advance(10 * 60 + 1)
    stack.engine.tick()
    shown = stack.engine.get(view["id"])
    assert shown["state"] == outcome
    figures = shown["waves"][0]["stage"]["figures"]
    assert (figures["candidate_labels"], figures["serving_labels"]) == (2 * candidate[0], 600)
    if outcome == "halted":
        assert shown["halt_reason"].startswith("canary accuracy 0.500 < serving 0.900")
    else:
        assert all(stack.latest(d).models["digits"].version == "2.0.0" for d in first)


def test_a_candidate_refused_for_memory_halts_the_wave_with_the_reason(stack: Stack) -> None:
    view = stack.engine.create("digits", "2.0.0", "", _policy(SHADOW))
    first = _wave(stack, view["id"], 0)
    stack.event(first[0], "failed", "memory_budget")
    shown = stack.engine.get(view["id"], devices=True)
    assert shown["state"] == "halted"
    refused = next(r for r in shown["device_records"] if r["device_id"] == first[0])
    assert "memory_budget" in refused["reason"]
    assert all(stack.latest(d).models["digits"].candidate is None for d in first)
