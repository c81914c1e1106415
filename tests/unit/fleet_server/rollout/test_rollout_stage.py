"""The rollout core with a shadow or canary stage: candidate, stage, verdict, promotion or halt and withdrawal."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta

from edgefleet.events import SHADOWING
from fleet_server.rollouts.machine import (
    Action,
    AssignCandidate,
    AssignPrevious,
    AssignVersion,
    DeviceStatus,
    Halt,
    Rollout,
    RolloutState,
    WithdrawCandidate,
)
from fleet_server.rollouts.reports import DeviceReport, ReportedUpdate
from fleet_server.rollouts.stage import CanaryFigures, CanaryPolicy, ShadowFigures, ShadowPolicy
from tests.unit.fleet_server.rollout.fleet import (
    MODEL,
    PREVIOUS,
    VERSION,
    at,
    devices,
    make_rollout,
)

SHADOW = ShadowPolicy(timedelta(minutes=30), 0.98, min_requests=100)
GOOD = ShadowFigures(1000, 995, 0, 0, None, (0, 0, 0, 100), (0, 0, 0, 100), 2)
SHIFTED = ShadowFigures(1204, 734, 0, 0, None, (0, 0, 0, 100), (0, 0, 0, 100), 2)


def of(actions: Sequence[Action], kind: type) -> list[str]:
    return sorted(a.device_id for a in actions if isinstance(a, kind))  # type: ignore[union-attr]


def staged(count: int = 20, stage: ShadowPolicy | CanaryPolicy = SHADOW, **policy: object
           ) -> tuple[Rollout, list[str]]:
    rollout = make_rollout(devices(count), stage=stage, **policy)  # type: ignore[arg-type]
    return rollout, of(rollout.start(at(0)), AssignCandidate)


def shadowing(rollout: Rollout, ids: Sequence[str], minute: float) -> list[Action]:
    return [a for d in ids for a in rollout.device_event(d, SHADOWING, at(minute), version=VERSION)]


def figures_at(rollout: Rollout, minute: float, figures: ShadowFigures | CanaryFigures) -> list[Action]:
    query = rollout.stage_query(at(minute))
    assert query is not None
    return rollout.stage_figures(query.wave, figures, at(minute))


def test_a_stage_sends_the_candidate_beside_the_serving_version_and_never_the_version() -> None:
    rollout = make_rollout(devices(20), stage=SHADOW)
    actions = rollout.start(at(0))
    assert not [a for a in actions if isinstance(a, AssignVersion)]
    candidates = [a for a in actions if isinstance(a, AssignCandidate)]
    assert sorted(a.device_id for a in candidates) == sorted(rollout.plan.waves[0])
    assert all(a.serving_version == PREVIOUS and a.target.version == VERSION and a.mode == "shadow" and a.rate == 1.0
               for a in candidates)
    assert all(rollout.devices[a.device_id].status is DeviceStatus.CANDIDATE for a in candidates)


def test_a_passing_stage_promotes_the_wave_and_the_usual_flow_follows() -> None:
    rollout, first = staged()
    assert shadowing(rollout, first, 2) == []
    stage = rollout.stages[0]
    assert stage.opened_at == at(2)
    assert rollout.next_deadline() == at(32)
    assert figures_at(rollout, 20, GOOD) == []          # figures shown, the stage still runs
    assert rollout.stages[0].figures is not None and not rollout.stages[0].decided
    actions = figures_at(rollout, 32, GOOD)
    assert of(actions, AssignVersion) == first
    assert rollout.stages[0].verdict == "passed" and "0.99" in rollout.stages[0].reason
    for device in first:
        rollout.device_event(device, "committed", at(40), version=VERSION)
    second = of(rollout.tick(at(51)), AssignCandidate)  # the bake is over: wave 2 starts with its own stage
    assert sorted(second) == sorted(rollout.plan.waves[1])
    assert rollout.stages[1].started_at == at(51)


def test_a_shifted_candidate_halts_with_the_agreement_and_is_withdrawn() -> None:
    rollout, first = staged(auto_rollback=False)
    shadowing(rollout, first, 1)
    actions = figures_at(rollout, 31, SHIFTED)
    assert isinstance(actions[0], Halt)
    assert rollout.halt_reason == "shadow agreement 0.61 < 0.98 over 1,204 requests on wave 1"
    withdrawn = [a for a in actions if isinstance(a, WithdrawCandidate)]
    assert sorted(a.device_id for a in withdrawn) == first and all(a.serving_version == PREVIOUS for a in withdrawn)
    assert not of(actions, AssignVersion) and not of(actions, AssignPrevious)
    assert all(rollout.devices[d].status is DeviceStatus.WITHDRAWN for d in first)
    assert rollout.state is RolloutState.HALTED


def test_auto_rollback_does_not_send_withdrawn_devices_a_second_assignment() -> None:
    rollout, first = staged(auto_rollback=True)
    shadowing(rollout, first, 1)
    actions = figures_at(rollout, 31, SHIFTED)
    assert of(actions, WithdrawCandidate) == first and of(actions, AssignPrevious) == []
    assert rollout.state is RolloutState.ROLLED_BACK


def test_too_few_requests_when_the_time_is_over_halt() -> None:
    rollout, first = staged(auto_rollback=False)
    shadowing(rollout, first, 1)
    figures_at(rollout, 31, ShadowFigures(12, 12))
    assert rollout.state is RolloutState.HALTED and "too few to judge" in rollout.halt_reason


def test_figures_gathered_before_the_end_never_decide() -> None:
    rollout, first = staged()
    shadowing(rollout, first, 1)
    figures_at(rollout, 5, SHIFTED)
    assert rollout.tick(at(40)) == [] and not rollout.stages[0].decided
    query = rollout.stage_query(at(40))
    assert query is not None and query.device_ids == tuple(sorted(rollout.plan.waves[0])) and query.since == at(0)


def test_the_stage_opens_only_once_enough_devices_shadow() -> None:
    rollout, first = staged(40, min_success_rate=0.8)  # wave 1: 4 devices
    shadowing(rollout, first[:3], 1)
    assert rollout.stages[0].opened_at is None
    shadowing(rollout, first[3:], 2)
    assert rollout.stages[0].opened_at == at(2)


def test_a_candidate_refused_for_memory_counts_as_a_failure_of_its_wave() -> None:
    rollout, first = staged(auto_rollback=False, max_failure_rate=0.2)  # wave 1: 2 devices
    actions = rollout.device_event(first[0], "failed", at(1), reason="memory_budget", version=VERSION)
    assert isinstance(actions[0], Halt) and "1 of 2" in rollout.halt_reason
    assert of(actions, WithdrawCandidate) == first  # the failed one's assignment still names it
    assert "memory_budget" in rollout.devices[first[0]].reason


def test_a_shadowing_device_never_times_out_but_one_that_never_starts_does() -> None:
    rollout, first = staged(device_timeout=timedelta(minutes=10), auto_rollback=False, max_failure_rate=0.6,
                            min_success_rate=0.5)
    shadowing(rollout, first[:1], 1)
    rollout.tick(at(11))
    assert rollout.devices[first[0]].status is DeviceStatus.CANDIDATE
    assert rollout.devices[first[1]].status is DeviceStatus.TIMED_OUT


def test_a_lost_shadowing_event_is_learned_from_the_report() -> None:
    rollout, first = staged()
    report = DeviceReport(True, {MODEL: PREVIOUS}, ReportedUpdate("shadow", MODEL, VERSION, 1))
    assert rollout.report_changes(first[0], report)
    rollout.device_reported(first[0], report, at(1))
    assert rollout.devices[first[0]].last_event == SHADOWING
    assert not rollout.report_changes(first[0], report)


def test_devices_serving_nothing_wait_for_the_stage_and_a_wave_of_them_skips_it() -> None:
    fleet = devices(10) + devices(10, prefix="new", version=None)
    rollout = make_rollout(fleet, stage=SHADOW, waves=(100.0,))
    actions = rollout.start(at(0))
    assert all(d.startswith("dev") for d in of(actions, AssignCandidate)) and not of(actions, AssignVersion)
    shadowing(rollout, of(actions, AssignCandidate), 1)
    promoted = figures_at(rollout, 31, GOOD)
    assert of(promoted, AssignVersion) == sorted(d.device_id for d in fleet)
    fresh = make_rollout(devices(5, version=None), stage=SHADOW, waves=(100.0,))
    assert len(of(fresh.start(at(0)), AssignVersion)) == 5 and fresh.stages[0].verdict == "skipped"


def test_abort_withdraws_the_candidate() -> None:
    rollout, first = staged()
    assert of(rollout.abort(at(3)), WithdrawCandidate) == first


def test_canary_stage_decides_on_feedback_accuracy() -> None:
    canary = CanaryPolicy(0.1, timedelta(minutes=20), min_labels=50)
    rollout, first = staged(stage=canary, auto_rollback=False)
    assert rollout.start is not None
    shadowing(rollout, first, 1)
    worse = CanaryFigures(serving_labels=300, serving_correct=270, candidate_labels=60, candidate_correct=30)
    figures_at(rollout, 10, ShadowFigures())  # the wrong kind is ignored
    actions = figures_at(rollout, 21, worse)
    assert isinstance(actions[0], Halt) and rollout.halt_reason.startswith("canary accuracy 0.500 < serving 0.900")
    better = CanaryFigures(serving_labels=300, serving_correct=270, candidate_labels=60, candidate_correct=57)
    rollout, first = staged(stage=canary)
    shadowing(rollout, first, 1)
    assert of(figures_at(rollout, 21, better), AssignVersion) == first


def test_a_stage_survives_the_round_trip_through_the_stored_document() -> None:
    rollout, first = staged()
    shadowing(rollout, first, 1)
    figures_at(rollout, 10, GOOD)
    restored = Rollout.from_dict(json.loads(json.dumps(rollout.to_dict())))
    assert restored.to_dict() == rollout.to_dict()
    assert of(figures_at(restored, 31, GOOD), AssignVersion) == first


def test_a_document_stored_before_stages_still_loads() -> None:
    rollout = make_rollout(devices(5))
    rollout.start(at(0))
    stored = rollout.to_dict()
    del stored["stages"]
    del stored["policy"]["stage"]
    assert Rollout.from_dict(stored).to_dict() == rollout.to_dict()
