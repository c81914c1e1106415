"""The updater in one process, over an in-memory TUF client: the whole update path but the network.

Real signed assignments, real bundles, onnxruntime, slots and serving table; the repository is
``tests.unit.agent.updates.MemoryRepository`` behind the ``TufClient`` seam, so no test here
needs an HTTP server. The same updater against the real TUF repository over HTTP (and the real
broker) is tests/integration/agent/test_updater_tuf.py; real processes killed with SIGKILL are
tests/integration/update_path.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.probation import ProbationConfig
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.update_machine import UpdateMachine
from agent.update_service import attach
from agent.updater import Updater
from edgefleet.assignment import DirectorSigner, ModelTarget
from tests.unit.agent.updates import (
    DEVICE,
    LIFECYCLE,
    PROBATION,
    Fleet,
    Killed,
    MemoryRepository,
    install,
)


@pytest.fixture
def repo() -> MemoryRepository:
    return MemoryRepository()


@pytest.fixture
def fleet(tmp_path: Path, repo: MemoryRepository) -> Fleet:
    return Fleet.create(tmp_path, repo)


def test_good_version_goes_through_every_step_and_commits(fleet: Fleet) -> None:
    updater = fleet.updater()
    outcome = updater.handle_assignment(fleet.sign(fleet.push("1.0.0")))
    assert outcome.accepted and outcome.counter == 1
    assert fleet.names() == LIFECYCLE
    assert fleet.serving_version() == "1.0.0"
    assert fleet.update_json()["state"] == "activated"
    health = fleet.events[4]["details"]["health"]
    assert health["agreement"] == 1.0 and health["latency_p95_ms"] < health["latency_budget_ms"]
    assert all(e["device_id"] == DEVICE and e["counter"] == 1 and e["rollout_id"] == "ro-1" for e in fleet.events)
    assert json.loads(fleet.state.assignment_file.read_text())["counter"] == 1

    fleet.traffic(3)
    fleet.clock.t += PROBATION.duration_s
    updater.tick()
    assert fleet.names()[-1] == "activated"  # not enough requests yet: probation goes on
    fleet.traffic(5)
    updater.tick()
    assert fleet.names()[-1] == "committed"
    assert fleet.events[-1]["details"]["probation"]["requests"] == 8
    assert fleet.update_json()["state"] == "committed"
    assert not (fleet.state.downloads_dir / "digits-1.0.0.tar.gz").exists()


def test_upgrade_keeps_serving_and_records_previous(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    updater = fleet.updater()
    updater.handle_assignment(fleet.sign(fleet.push("1.1.0", seed=1)))
    assert fleet.serving_version() == "1.1.0"
    assert fleet.events[-1]["details"]["previous_version"] == "1.0.0"


def test_probation_failure_rolls_back_to_the_previous_version(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    updater = fleet.updater(probation=ProbationConfig(duration_s=30, min_requests=5, latency_budget_multiplier=1e-9))
    updater.handle_assignment(fleet.sign(fleet.push("1.1.0", seed=1)))
    fleet.traffic(20)  # real latencies, far above a budget scaled to nothing
    updater.tick()
    last = fleet.events[-1]
    assert last["event"] == "rolled_back" and last["reason"] == "probation_failed"
    assert last["details"]["cause"] == "latency"
    assert fleet.serving_version() == "1.0.0"
    assert ModelStore(fleet.state).active("digits").version == "1.0.0"  # type: ignore[union-attr]


def test_crash_loop_in_probation_rolls_back(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    fleet.updater().handle_assignment(fleet.sign(fleet.push("1.1.0", seed=1)))
    for _ in range(PROBATION.max_restarts):
        fleet.clock.t += 1
        fleet.restart()
    last = fleet.events[-1]
    assert last["event"] == "rolled_back" and last["details"]["cause"] == "crash_loop"
    assert fleet.serving_version() == "1.0.0"


def test_bad_outputs_in_probation_roll_back_a_first_install_to_nothing(fleet: Fleet) -> None:
    updater = fleet.updater()
    updater.handle_assignment(fleet.sign(fleet.push("1.0.0")))
    session = fleet.serving.get("digits")
    session.bad_outputs = 1  # type: ignore[union-attr]  # what WatchedSession counts on a NaN served
    updater.tick()
    assert fleet.events[-1]["event"] == "rolled_back" and fleet.events[-1]["details"]["cause"] == "bad_outputs"
    assert fleet.serving.get("digits") is None and ModelStore(fleet.state).active("digits") is None


@pytest.mark.parametrize("reason", ["bad_signature", "wrong_device", "replayed_counter", "expired", "malformed"])
def test_refused_assignment_keeps_the_old_model_and_reports_the_reason(fleet: Fleet, reason: str) -> None:
    install(fleet, "1.0.0")
    target = fleet.push("1.1.0", seed=1)
    envelope = {
        "bad_signature": lambda: fleet.sign(target, signer=DirectorSigner.generate()),
        "wrong_device": lambda: fleet.sign(target, device="dev-2"),
        "replayed_counter": lambda: fleet.sign(target, counter=1),
        "expired": lambda: fleet.sign(target, expires_in=60, issued_ago=120),
        "malformed": lambda: b'{"signed": ',
    }[reason]()
    before = fleet.state.assignment_file.read_bytes()
    outcome = fleet.updater().handle_assignment(envelope)
    assert not outcome.accepted and outcome.reason == reason
    assert fleet.events[-1]["event"] == "failed" and fleet.events[-1]["reason"] == reason
    assert fleet.serving_version() == "1.0.0"
    assert fleet.state.assignment_file.read_bytes() == before  # the counter moves only on acceptance
    assert fleet.update_json()["state"] == "committed"


def refused(fleet: Fleet, envelope: bytes, reason: str, updater: Updater | None = None) -> dict[str, Any]:
    (updater or fleet.updater()).handle_assignment(envelope)
    last = fleet.events[-1]
    assert (last["event"], last["reason"]) == ("failed", reason), last
    assert fleet.serving_version() == "1.0.0"
    assert ModelStore(fleet.state).active("digits").version == "1.0.0"  # type: ignore[union-attr]
    return last


def test_assignment_hash_disagreeing_with_tuf_is_refused_before_any_download(fleet: Fleet,
                                                                           repo: MemoryRepository) -> None:
    install(fleet, "1.0.0")
    real = fleet.push("1.1.0", seed=1)
    forged = ModelTarget(real.version, real.target_path, "f" * 64, real.length)
    last = refused(fleet, fleet.sign(forged), "hash_mismatch")
    assert last["details"]["tuf"]["sha256"] == real.sha256
    assert real.target_path not in repo.downloads


def test_bytes_disagreeing_with_tuf_are_refused(fleet: Fleet, repo: MemoryRepository) -> None:
    install(fleet, "1.0.0")
    target = fleet.push("1.1.0", seed=1)
    data = bytearray(repo.served[target.target_path])
    data[100] ^= 0xFF
    repo.served[target.target_path] = bytes(data)  # a tampered file on the server
    refused(fleet, fleet.sign(target), "hash_mismatch")


def test_bundle_for_another_profile_is_refused(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    last = refused(fleet, fleet.sign(fleet.push("1.1.0", profiles=("rpi4-64",))), "profile_mismatch")
    assert last["details"]["device_profile"] == "generic-x86_64"


def test_version_failing_its_golden_samples_never_serves(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    last = refused(fleet, fleet.sign(fleet.push("1.1.0", served_seed=99)), "health_failed")
    assert last["details"]["cause"] == "golden_mismatch"
    assert "activated" not in fleet.names()[-5:]


def test_target_missing_from_tuf_is_refused(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    ghost = ModelTarget("9.9.9", "digits/digits-9.9.9.tar.gz", "e" * 64, 1000)
    refused(fleet, fleet.sign(ghost), "target_unknown")


def test_failed_download_is_retried_later(fleet: Fleet, repo: MemoryRepository) -> None:
    install(fleet, "1.0.0")
    target = fleet.push("1.1.0", seed=1)
    repo.offline = True
    updater = fleet.updater(retry_after_s=60)
    refused(fleet, fleet.sign(target), "download_failed", updater)
    assert fleet.update_json()["machine"]["retry_at"] == fleet.clock.t + 60
    repo.offline = False
    fleet.clock.t += 30
    updater.tick()
    assert fleet.names()[-1] == "failed"  # not due yet
    fleet.clock.t += 31
    updater.tick()
    assert fleet.names()[-6:] == LIFECYCLE and fleet.serving_version() == "1.1.0"


def test_reissued_assignment_does_not_disturb_probation(fleet: Fleet) -> None:
    updater = fleet.updater()
    target = fleet.push("1.0.0")
    updater.handle_assignment(fleet.sign(target))
    assert updater.handle_assignment(fleet.sign(target)).accepted
    assert fleet.names() == LIFECYCLE and fleet.update_json()["state"] == "activated"


def test_newer_assignment_supersedes_probation_and_rolls_back_first(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    updater = fleet.updater()
    updater.handle_assignment(fleet.sign(fleet.push("1.1.0", seed=1)))
    updater.handle_assignment(fleet.sign(fleet.push("1.2.0", seed=2)))
    names = fleet.names()
    assert "rolled_back" in names[-7:] and fleet.events[-7]["reason"] == "superseded"
    assert names[-6:] == LIFECYCLE and fleet.serving_version() == "1.2.0"


@pytest.mark.parametrize("kill_on", LIFECYCLE)
def test_killed_after_each_step_resumes_and_never_serves_a_partial_model(fleet: Fleet, kill_on: str) -> None:
    install(fleet, "1.0.0")
    fleet.kill_on = kill_on
    with pytest.raises(Killed):
        fleet.updater().handle_assignment(fleet.sign(fleet.push("1.1.0", seed=1)))
    assert fleet.update_json()["state"] in {"assigned", "downloading", "verified", "staged", "health_check",
                                            "activated"}
    updater = fleet.restart()
    assert fleet.serving_version() in {"1.0.0", "1.1.0"}
    assert fleet.update_json()["state"] == "activated" and fleet.serving_version() == "1.1.0"
    fleet.traffic()
    fleet.clock.t += PROBATION.duration_s
    updater.tick()
    assert fleet.names()[-1] == "committed" and fleet.events[-1]["version"] == "1.1.0"


def test_probation_totals_survive_a_restart(fleet: Fleet) -> None:
    updater = fleet.updater()
    updater.handle_assignment(fleet.sign(fleet.push("1.0.0")))
    fleet.traffic(3)
    fleet.clock.t += 11
    updater.tick()  # persisted: 3 requests so far
    updater = fleet.restart()
    fleet.traffic(3)  # the new process counts from zero again
    fleet.clock.t += PROBATION.duration_s
    updater.tick()
    assert fleet.names()[-1] == "committed"
    assert fleet.events[-1]["details"]["probation"] == pytest.approx(
        {**fleet.events[-1]["details"]["probation"], "requests": 6, "restarts": 1})


def test_first_install_superseded_in_probation_keeps_serving_while_its_successor_fails(fleet: Fleet) -> None:
    updater = fleet.updater()
    updater.handle_assignment(fleet.sign(fleet.push("1.0.0")))
    updater.handle_assignment(fleet.sign(fleet.push("1.1.0", served_seed=99)))
    superseded = next(e for e in fleet.events if e["reason"] == "superseded")
    assert superseded["event"] == "rolled_back" and superseded["details"]["kept_serving"] is True
    assert fleet.events[-1]["reason"] == "health_failed"
    assert fleet.serving_version() == "1.0.0"  # never without a working model


def test_redelivered_retained_assignment_is_not_a_replay(fleet: Fleet) -> None:
    envelope = fleet.sign(fleet.push("1.0.0"))
    fleet.updater().handle_assignment(envelope)
    count = len(fleet.events)
    outcome = fleet.restart().handle_assignment(envelope)  # the broker re-delivers `desired` on reconnect
    assert outcome.accepted and outcome.duplicate and outcome.counter == 1
    assert len(fleet.events) == count  # no `failed replayed_counter` noise
    tampered = envelope.replace(b'"counter":1', b'"counter":5')
    assert fleet.updater().handle_assignment(tampered).reason == "bad_signature"


def test_failed_bundle_is_tried_again_only_by_a_new_rollout(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    updater = fleet.updater(probation=ProbationConfig(duration_s=30, min_requests=5, latency_budget_multiplier=1e-9))
    target = fleet.push("1.1.0", seed=1)
    updater.handle_assignment(fleet.sign(target))
    fleet.traffic(20)
    updater.tick()
    assert fleet.names()[-1] == "rolled_back"
    count = len(fleet.events)
    updater.handle_assignment(fleet.sign(target))  # the same rollout, re-issued: not again
    assert len(fleet.events) == count
    updater.handle_assignment(fleet.sign(target, rollout="ro-2"))  # an operator's new rollout: try again
    assert fleet.names()[count:] == LIFECYCLE and fleet.events[-1]["rollout_id"] == "ro-2"


def test_update_json_is_one_record_the_machine_and_the_report_of_it(fleet: Fleet) -> None:
    fleet.updater().handle_assignment(fleet.sign(fleet.push("1.0.0")))
    document = fleet.update_json()
    machine = UpdateMachine.from_dict(document["machine"])
    # Everything lives in the machine: nothing beside it but the flat report `reported.update` shows.
    assert set(document) == {"machine", "state", "model", "version", "counter", "rollout_id", "reason"}
    assert {k: v for k, v in document.items() if k != "machine"} == machine.report()
    assert machine.probation is not None and machine.attempted == {"digits": machine.target.attempt}  # type: ignore[union-attr]


def test_a_kill_right_after_the_restart_is_written_still_counts_toward_the_crash_loop(fleet: Fleet) -> None:
    """Issue 19, hole 1: with max_restarts=2, two kills inside one probation must roll back.

    The first restarted process is killed right after its first write, the one that counts
    the restart. The old updater wrote the machine's count there and probation's count (the one
    that decides) only after reloading the slot, so this kill lost the restart and the device
    committed.
    """
    probation = ProbationConfig(duration_s=30, min_requests=5, max_restarts=2)
    install(fleet, "1.0.0")
    fleet.updater(probation=probation).handle_assignment(fleet.sign(fleet.push("1.1.0", seed=1)))
    assert fleet.update_json()["state"] == "activated"  # the first kill lands here, in probation

    def killed_after_first_write(_machine: UpdateMachine) -> None:
        raise Killed("right after the restart was written")

    fleet.clock.t += 1
    with pytest.raises(Killed):
        fleet.restart(probation=probation, on_persist=killed_after_first_write)
    assert len(fleet.update_json()["machine"]["probation"]["restarts"]) == 1
    fleet.clock.t += 1
    updater = fleet.restart(probation=probation)  # the second restart inside the same probation
    last = fleet.events[-1]
    assert (last["event"], last["details"]["cause"]) == ("rolled_back", "crash_loop"), last
    assert fleet.serving_version() == "1.0.0"
    fleet.traffic()
    fleet.clock.t += probation.duration_s
    updater.tick()
    assert "committed" not in fleet.names()[-3:]


def test_a_restart_keeps_the_last_outcome_for_its_counter_until_the_next_assignment(fleet: Fleet) -> None:
    """Issue 19, hole 2 (agent side): a restart must not erase the outcome `reported` shows."""
    install(fleet, "1.0.0")
    fleet.restart()
    report = {k: v for k, v in fleet.update_json().items() if k != "machine"}
    assert report == {"state": "committed", "model": "digits", "version": "1.0.0", "counter": 1,
                      "rollout_id": "ro-1", "reason": None}
    assert fleet.serving_version() == "1.0.0"
    updater = fleet.restart()  # and again: still the same outcome, nothing re-installed
    assert fleet.update_json()["state"] == "committed" and fleet.names().count("assigned") == 1
    updater.handle_assignment(fleet.sign(fleet.push("1.1.0", seed=1)))  # a new assignment replaces it
    assert fleet.update_json()["state"] == "activated" and fleet.update_json()["counter"] == 2


def test_a_rollback_stays_reported_across_a_restart_with_the_old_version_serving(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    updater = fleet.updater(probation=ProbationConfig(duration_s=30, min_requests=5, latency_budget_multiplier=1e-9))
    updater.handle_assignment(fleet.sign(fleet.push("1.1.0", seed=1)))
    fleet.traffic(20)
    updater.tick()
    fleet.restart()
    document = fleet.update_json()
    assert (document["state"], document["version"], document["counter"], document["reason"]) == \
        ("rolled_back", "1.1.0", 2, "probation_failed")
    assert fleet.serving_version() == "1.0.0"  # reported.models says what actually serves


def test_a_restart_retries_a_retryable_failure_at_once(fleet: Fleet, repo: MemoryRepository) -> None:
    install(fleet, "1.0.0")
    target = fleet.push("1.1.0", seed=1)
    repo.offline = True
    refused(fleet, fleet.sign(target), "download_failed", fleet.updater(retry_after_s=3600))
    fleet.restart(retry_after_s=3600)  # still offline: failed again, and reported so
    assert fleet.update_json()["state"] == "failed" and fleet.names()[-2:] == ["assigned", "failed"]
    repo.offline = False
    fleet.restart(retry_after_s=3600)
    assert fleet.update_json()["state"] == "activated" and fleet.serving_version() == "1.1.0"


def test_update_json_written_before_the_record_held_everything_is_still_read(fleet: Fleet) -> None:
    fleet.updater().handle_assignment(fleet.sign(fleet.push("1.0.0")))
    document = fleet.update_json()
    machine = document["machine"]
    legacy = {**{k: v for k, v in document.items() if k != "machine"},
              "machine": {k: v for k, v in machine.items() if k not in ("probation", "retry_at", "attempted")},
              "probation": machine["probation"], "retry_at": None, "attempted": machine["attempted"]}
    fleet.state.update_file.write_text(json.dumps(legacy))
    assert fleet.updater().machine == UpdateMachine.from_dict(machine)
    fleet.state.update_file.write_text('{"machine": {"state": "sideways"}}')
    assert fleet.updater().machine == UpdateMachine()  # unreadable: idle, the active pointer keeps serving


def test_attach_stays_out_of_a_device_without_a_trust_root_or_a_link(fleet: Fleet) -> None:
    assert attach(SimpleNamespace(state=fleet.state, link=None)) is None  # type: ignore[arg-type]
    fleet.state.tuf_root_file.unlink()
    assert attach(SimpleNamespace(state=fleet.state, link=object())) is None  # type: ignore[arg-type]


def test_a_first_install_rolled_back_is_deactivated_in_the_store(fleet: Fleet) -> None:
    updater = fleet.updater()
    updater.handle_assignment(fleet.sign(fleet.push("1.0.0")))
    fleet.serving.get("digits").bad_outputs = 1  # type: ignore[union-attr]
    updater.tick()
    store = ModelStore(fleet.state)
    assert store.models() == [] and store.previous("digits") is None
    restarted = fleet.restart()  # nothing serves after a restart either, and nothing is re-installed
    assert fleet.serving.get("digits") is None and restarted.machine.state.value == "rolled_back"
    assert isinstance(fleet.serving, ServingTable)
