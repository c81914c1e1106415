"""The updater with a candidate (issue 18): staged beside the serving version, budgeted, health-checked,
run in shadow or canary, promoted, withdrawn, and resumed after a kill; real slots and onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.memory import MIB
from agent.update_machine import State
from edgefleet.assignment import Candidate, ModelTarget
from tests.unit.agent.updates import Fleet, Killed, MemoryRepository, install

STAGE = ["assigned", "downloaded", "verified", "staged", "health_passed", "shadowing"]


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet.create(tmp_path, MemoryRepository())


def _candidate(fleet: Fleet, serving: ModelTarget, candidate: Candidate, rollout: str = "ro-2") -> bytes:
    return fleet.sign(serving.with_candidate(candidate), rollout=rollout)


def _staged(fleet: Fleet, *, mode: str = "shadow", seed: int = 1, **updater: Any) -> tuple[Any, ModelTarget, ModelTarget]:
    install(fleet, "1.0.0")
    a = fleet.push("1.0.0")
    b = fleet.push("1.1.0", seed=seed)
    fleet.events.clear()
    updater_ = fleet.updater(**updater)
    candidate = Candidate.shadow(b, 1.0) if mode == "shadow" else Candidate.canary(b, 0.5)
    assert updater_.handle_assignment(_candidate(fleet, a, candidate)).accepted
    return updater_, a, b


def test_a_shadow_candidate_is_staged_beside_the_serving_version_and_never_answers(fleet: Fleet) -> None:
    updater, _, b = _staged(fleet)
    assert fleet.names() == STAGE
    assert {e["version"] for e in fleet.events} == {"1.1.0"}
    assert fleet.events[-1]["details"]["mode"] == "shadow" and fleet.events[-1]["details"]["sample"] == 1.0
    memory = fleet.events[-2]["details"]["memory"]
    assert memory["fits"] and memory["measured"]
    assert updater.machine.state is State.SHADOW and fleet.update_json()["state"] == "shadow"
    assert fleet.serving_version() == "1.0.0"
    assert updater.store.active("digits").version == "1.0.0"  # type: ignore[union-attr]
    assert b.sha256 in updater.store.slot_ids("digits")  # staged beside the active slot
    fleet.traffic(20)
    answers = {fleet.serving.predict("digits", [0.1, 0.2, 0.3, 0.4]).version for _ in range(20)}
    assert answers == {"1.0.0"}
    assert fleet.serving.candidates()[0]["version"] == "1.1.0"
    fleet.serving.end_candidate("digits")


def test_a_canary_candidate_answers_a_share_under_its_version(fleet: Fleet) -> None:
    updater, _, _ = _staged(fleet, mode="canary")
    assert fleet.events[-1]["details"] == {"mode": "canary", "share": 0.5, "serving_version": "1.0.0"}
    assert updater.machine.state is State.CANARY
    versions = [fleet.serving.predict("digits", [0.1, 0.2, 0.3, 0.4]).version for _ in range(200)]
    assert 60 < versions.count("1.1.0") < 140
    fleet.serving.end_candidate("digits")


def test_a_candidate_that_does_not_fit_the_memory_budget_is_refused_with_the_reason(fleet: Fleet) -> None:
    updater, _, b = _staged(fleet, rss=lambda: 4000 * MIB)  # generic-x86_64: 4096 MB, half of it the budget
    failed = fleet.events[-1]
    assert failed["event"] == "failed" and failed["reason"] == "memory_budget" and failed["version"] == "1.1.0"
    assert "does not fit" in failed["details"]["message"] and failed["details"]["memory"]["budget_mb"] == 2048.0
    assert "health_passed" not in fleet.names()  # refused before it was loaded
    assert fleet.serving_version() == "1.0.0" and fleet.serving.candidates() == []
    assert b.sha256 not in updater.store.slot_ids("digits")  # its slot is dropped
    assert updater.machine.state is State.FAILED
    updater.tick()
    assert fleet.names().count("assigned") == 1  # not retried: the model's size does not change


def test_a_candidate_failing_its_golden_samples_never_runs(fleet: Fleet) -> None:
    install(fleet, "1.0.0")
    a, b = fleet.push("1.0.0"), fleet.push("1.1.0", served_seed=9)
    fleet.events.clear()
    updater = fleet.updater()
    updater.handle_assignment(_candidate(fleet, a, Candidate.shadow(b)))
    assert fleet.names()[-1] == "failed" and fleet.events[-1]["reason"] == "health_failed"
    assert fleet.serving.candidates() == [] and fleet.serving_version() == "1.0.0"


def test_promotion_reuses_the_verified_download_and_commits(fleet: Fleet, ) -> None:
    updater, _, b = _staged(fleet)
    repo = fleet.repo
    assert isinstance(repo, MemoryRepository)
    downloads = len(repo.downloads)
    fleet.events.clear()
    assert updater.handle_assignment(fleet.sign(b, rollout="ro-2")).accepted
    assert fleet.names() == ["assigned", "downloaded", "verified", "staged", "health_passed", "activated"]
    assert len(repo.downloads) == downloads, "the promotion fetched the candidate again"
    assert fleet.serving.candidates() == [] and fleet.serving_version() == "1.1.0"
    fleet.traffic()
    fleet.clock.t += 60
    updater.tick()
    assert fleet.names()[-1] == "committed"


def test_withdrawal_drops_the_candidate_and_its_slot(fleet: Fleet) -> None:
    updater, a, b = _staged(fleet)
    assert updater.handle_assignment(fleet.sign(a, rollout="ro-2")).accepted
    failed = fleet.events[-1]
    assert failed["event"] == "failed" and failed["reason"] == "superseded" and failed["version"] == "1.1.0"
    assert fleet.serving.candidates() == [] and fleet.serving_version() == "1.0.0"
    assert b.sha256 not in updater.store.slot_ids("digits")
    assert not (fleet.state.downloads_dir / "digits-1.1.0.tar.gz").exists()


def test_the_same_candidate_reissued_keeps_its_stage(fleet: Fleet) -> None:
    updater, a, b = _staged(fleet)
    before = len(fleet.events)
    assert updater.handle_assignment(_candidate(fleet, a, Candidate.shadow(b, 1.0))).accepted
    assert len(fleet.events) == before and updater.machine.state is State.SHADOW
    fleet.serving.end_candidate("digits")


@pytest.mark.parametrize("kill_on", ["downloaded", "verified", "staged", "health_passed", "shadowing"])
def test_killed_during_the_stage_serves_the_old_version_and_the_stage_resumes(fleet: Fleet, kill_on: str) -> None:
    install(fleet, "1.0.0")
    a, b = fleet.push("1.0.0"), fleet.push("1.1.0", seed=1)
    fleet.events.clear()
    fleet.kill_on = kill_on
    with pytest.raises(Killed):
        fleet.updater().handle_assignment(_candidate(fleet, a, Candidate.shadow(b)))
    fleet.serving.end_candidate("digits")  # the dead process's threads
    updater = fleet.restart()
    assert fleet.serving_version() == "1.0.0"
    assert updater.machine.state is State.SHADOW, fleet.events[-1]
    assert fleet.names()[-1] == "shadowing" and fleet.events[-1]["version"] == "1.1.0"
    assert fleet.serving.candidates()[0]["version"] == "1.1.0"
    fleet.serving.end_candidate("digits")


def test_a_stage_whose_staged_slot_is_gone_after_a_restart_is_reported_failed(fleet: Fleet) -> None:
    updater, _, b = _staged(fleet)
    fleet.serving.end_candidate("digits")
    import shutil
    shutil.rmtree(fleet.state.models_dir / "digits" / "slots" / b.sha256)
    updater = fleet.restart()
    assert fleet.serving_version() == "1.0.0"
    assert updater.machine.state is State.FAILED and fleet.events[-1]["event"] == "failed"
    assert fleet.events[-1]["reason"] == "bundle_invalid" and fleet.events[-1]["version"] == "1.1.0"
