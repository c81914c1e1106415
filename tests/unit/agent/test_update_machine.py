"""The update state machine: legal paths, illegal inputs, recovery rules, and properties over any input sequence."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.probation import ProbationConfig, StatsSnapshot
from agent.update_machine import (
    STAGE_STATES,
    TERMINAL,
    Activated,
    Assign,
    BeginDownload,
    BeginHealthCheck,
    Commit,
    Downloaded,
    Fail,
    HealthPassed,
    IllegalTransitionError,
    Observe,
    Recovery,
    Restart,
    RetryNow,
    Staged,
    StageStarted,
    State,
    Target,
    UpdateMachine,
    UpdateMachineError,
    Verified,
    Work,
    next_work,
    recovery,
    refusal,
    step,
)
from edgefleet.events import EVENTS

TARGET = Target("digits", "1.1.0", 7, "ro-1", "digits/digits-1.1.0.tar.gz", "a" * 64, 1234)
SHADOW_B = Target("digits", "1.2.0", 8, "ro-2", "digits/digits-1.2.0.tar.gz", "b" * 64, 999, "shadow", 0.5)
CANARY_B = Target("digits", "1.2.0", 8, "ro-2", "digits/digits-1.2.0.tar.gz", "b" * 64, 999, "canary", 0.1)
PROMOTE_B = Target("digits", "1.2.0", 9, "ro-2", "digits/digits-1.2.0.tar.gz", "b" * 64, 999)
WATCH = ProbationConfig(duration_s=60, min_requests=5, max_restarts=2)


def activated(now: float) -> Activated:
    return Activated(now, WATCH, 50.0)


def run(machine: UpdateMachine, *inputs: object) -> tuple[UpdateMachine, list[str]]:
    events = []
    for inp in inputs:
        machine, event = step(machine, inp)  # type: ignore[arg-type]
        if event is not None:
            events.append(event.event)
    return machine, events


def happy_path(t0: float = 100.0) -> list[object]:
    return [Assign(TARGET, t0), BeginDownload(t0 + 1), Downloaded(t0 + 4), Verified(t0 + 5), Staged(t0 + 6, "slot"),
            BeginHealthCheck(t0 + 6), HealthPassed(t0 + 7), activated(t0 + 7), Commit(t0 + 67)]


def test_happy_path_emits_every_event_in_order_with_timings() -> None:
    machine, events = run(UpdateMachine(), *happy_path())
    assert machine.state is State.COMMITTED
    assert events == ["assigned", "downloaded", "verified", "staged", "health_passed", "activated", "committed"]
    assert machine.timings["download_s"] == pytest.approx(4.0)
    assert machine.timings["probation_s"] == pytest.approx(60.0)
    _, event = step(UpdateMachine(), Assign(TARGET, 5.0))
    assert event is not None
    payload = event.payload("dev-1", "e-1")
    assert set(payload) == {"device_id", "event_id", "ts", "event", "model", "version", "counter", "rollout_id",
                            "reason", "timings", "details"}
    assert payload["counter"] == 7 and payload["rollout_id"] == "ro-1"


def test_failure_before_activation_is_failed_after_is_rolled_back() -> None:
    path = happy_path()
    before, events = run(UpdateMachine(), *path[:5], Fail(110, "health_failed"))
    assert before.state is State.FAILED and before.reason == "health_failed" and events[-1] == "failed"
    after, events = run(UpdateMachine(), *path[:8], Fail(120, "probation_failed"))
    assert after.state is State.ROLLED_BACK and events[-1] == "rolled_back"


def test_cannot_activate_without_passing_health_check() -> None:
    machine, _ = run(UpdateMachine(), *happy_path()[:6])
    with pytest.raises(IllegalTransitionError, match="health check"):
        step(machine, activated(200))


def test_illegal_input_names_the_state() -> None:
    with pytest.raises(IllegalTransitionError, match="Commit is not allowed in state idle"):
        step(UpdateMachine(), Commit(1))


def test_redone_health_check_must_pass_again() -> None:
    machine, _ = run(UpdateMachine(), *happy_path()[:7])
    assert machine.health_passed
    machine, _ = step(machine, Restart(300))  # killed mid-check: the pass recorded before proves nothing
    assert not machine.health_passed and machine.state is State.HEALTH_CHECK
    assert next_work(machine) is Work.CHECK_HEALTH
    with pytest.raises(IllegalTransitionError):
        step(machine, activated(301))


def test_recovery_rule_for_every_state() -> None:
    seen = {}
    machine = UpdateMachine()
    seen[machine.state] = recovery(machine)
    for inp in happy_path():
        machine, _ = step(machine, inp)  # type: ignore[arg-type]
        seen[machine.state] = recovery(machine)
    failed, _ = run(UpdateMachine(), *happy_path()[:2], Fail(1, "hash_mismatch"))
    seen[failed.state] = recovery(failed)
    rolled, _ = run(UpdateMachine(), *happy_path()[:8], Fail(1, "probation_failed"))
    seen[rolled.state] = recovery(rolled)
    assert seen == {
        State.IDLE: Recovery.NOTHING, State.ASSIGNED: Recovery.START_DOWNLOAD,
        State.DOWNLOADING: Recovery.RESUME_DOWNLOAD, State.VERIFIED: Recovery.REVERIFY,
        State.STAGED: Recovery.REVERIFY, State.HEALTH_CHECK: Recovery.REDO_HEALTH_CHECK,
        State.ACTIVATED: Recovery.RESUME_PROBATION, State.COMMITTED: Recovery.NOTHING,
        State.FAILED: Recovery.NOTHING, State.ROLLED_BACK: Recovery.NOTHING,
    }
    retryable, _ = run(UpdateMachine(), *happy_path()[:2], Fail(1, "download_failed"))
    assert recovery(retryable) is Recovery.RETRY


def test_next_work_walks_the_happy_path() -> None:
    works = []
    machine = UpdateMachine()
    for inp in happy_path():
        works.append(next_work(machine))
        machine, _ = step(machine, inp)  # type: ignore[arg-type]
    assert works == [None, Work.BEGIN_DOWNLOAD, Work.DOWNLOAD, Work.VERIFY, Work.STAGE, Work.BEGIN_HEALTH_CHECK,
                     Work.CHECK_HEALTH, Work.ACTIVATE, Work.WATCH]
    assert next_work(machine) is None  # committed


def test_restarts_in_probation_are_counted_in_the_one_record_that_decides() -> None:
    machine, _ = run(UpdateMachine(), *happy_path()[:8], Restart(150))
    assert machine.restarts == 1 and machine.state is State.ACTIVATED
    # What was written after the first restart is what the second one starts from.
    machine = UpdateMachine.from_dict(json.loads(json.dumps(machine.to_dict())))
    machine, _ = step(machine, Restart(151))
    assert machine.probation is not None and machine.probation.decide(152).reason == "crash_loop"


def test_observe_folds_serving_stats_into_probation() -> None:
    machine, _ = run(UpdateMachine(), *happy_path()[:8], Observe(110, StatsSnapshot(110, 3, 0)),
                     Observe(140, StatsSnapshot(140, 8, 0)))
    assert machine.probation is not None and machine.probation.totals.requests == 8
    assert machine.probation.decide(167).verdict.value == "commit"


def test_a_finished_update_stays_until_the_next_assignment_even_across_restarts() -> None:
    committed, _ = run(UpdateMachine(), *happy_path(), Restart(200), Restart(300))
    assert committed.state is State.COMMITTED
    assert committed.report() == {"state": "committed", "model": "digits", "version": "1.1.0", "counter": 7,
                                  "rollout_id": "ro-1", "reason": None}
    nxt, events = run(committed, Assign(TARGET, 400))
    assert nxt.state is State.ASSIGNED and events == ["assigned"]


def test_a_retryable_failure_waits_until_due_or_a_restart_or_a_new_assignment() -> None:
    failed, _ = run(UpdateMachine(), *happy_path()[:2], Fail(110, "download_failed", retry_after_s=60))
    assert failed.waiting(150) and not failed.waiting(170)
    assert failed.may_try("digits", TARGET.attempt)  # the same bundle may be tried again once due
    assert not step(failed, Restart(120))[0].waiting(121)
    assert not step(failed, RetryNow(120))[0].waiting(121)
    final, _ = run(UpdateMachine(), *happy_path()[:2], Fail(110, "hash_mismatch"))
    assert not final.waiting(111) and not final.may_try("digits", TARGET.attempt)
    assert final.may_try("digits", "another-bundle@ro-1")
    with pytest.raises(IllegalTransitionError, match="not retried"):
        step(final, RetryNow(120))


def test_corrupt_update_json_names_the_fix() -> None:
    with pytest.raises(UpdateMachineError, match="delete update.json"):
        UpdateMachine.from_dict({"state": "sideways"})
    with pytest.raises(UpdateMachineError, match="without a passed health check"):
        UpdateMachine.from_dict({"state": "activated", "target": TARGET.to_dict(), "downloaded": True,
                                 "probation": None})
    with pytest.raises(UpdateMachineError, match="has a probation"):
        UpdateMachine.from_dict({"state": "activated", "target": TARGET.to_dict(), "downloaded": True,
                                 "health_passed": True, "probation": None})


def test_refusal_is_a_failed_event_with_the_reason() -> None:
    event = refusal("bad_signature", 9.0, counter=3)
    assert event.event == "failed" and event.reason == "bad_signature" and event.counter == 3


# --- properties ---------------------------------------------------------------------------------

REASONS = st.sampled_from(["download_failed", "hash_mismatch", "health_failed", "probation_failed", "superseded",
                           "memory_budget"])


def inputs(now: float) -> st.SearchStrategy[object]:
    return st.one_of(
        st.just(Assign(TARGET, now)), st.just(Assign(SHADOW_B, now)), st.just(Assign(CANARY_B, now)),
        st.just(Assign(PROMOTE_B, now)), st.just(StageStarted(now)), st.just(BeginDownload(now)), st.just(Downloaded(now, {"bytes": 1})),
        st.just(Verified(now)), st.just(Staged(now, "s")), st.just(BeginHealthCheck(now)), st.just(HealthPassed(now)),
        st.just(activated(now)), st.just(Commit(now)), REASONS.map(lambda r: Fail(now, r)), st.just(Restart(now)),
        st.just(RetryNow(now)), st.integers(0, 50).map(lambda n: Observe(now, StatsSnapshot(now, n, n // 10))),
    )


@st.composite
def sequences(draw: st.DrawFn) -> list[object]:
    n = draw(st.integers(0, 60))
    times = sorted(draw(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=n, max_size=n)))
    return [draw(inputs(t)) for t in times]


@settings(max_examples=300, deadline=None)
@given(sequences())
def test_any_input_sequence_keeps_the_invariants(seq: list[object]) -> None:
    machine = UpdateMachine()
    health_passed_since_assign = False
    for inp in seq:
        before = machine
        try:
            machine, event = step(machine, inp)  # type: ignore[arg-type]
        except IllegalTransitionError:
            assert machine == before  # a refused input changes nothing
            continue
        if event is not None:
            assert event.event in EVENTS
            if event.event == "assigned":
                health_passed_since_assign = False
            if event.event == "health_passed":
                health_passed_since_assign = True
            if event.event == "activated":
                assert health_passed_since_assign, "activated without a passed health check"
        if isinstance(inp, Fail):
            expected = State.ROLLED_BACK if before.state is State.ACTIVATED else State.FAILED
            assert machine.state is expected and machine.reason == inp.reason
        if machine.state in (State.ACTIVATED, State.COMMITTED):
            assert machine.health_passed and machine.downloaded
            assert machine.target is not None and machine.target.mode is None, "a candidate became the version"
        if machine.state in STAGE_STATES:
            assert machine.health_passed and health_passed_since_assign, "a stage without a passed health check"
        if isinstance(inp, Restart) and before.state in STAGE_STATES:
            assert machine.state is State.HEALTH_CHECK and not machine.health_passed
        if isinstance(inp, Assign) and before.state in STAGE_STATES:
            assert before.target is not None and inp.target.sha256 == before.target.sha256 and inp.target.mode is None
        if isinstance(inp, Restart) and before.state is State.ACTIVATED:
            assert machine.restarts == before.restarts + 1  # every restart in probation counts, in this record
        if before.state in TERMINAL and not isinstance(inp, Assign):
            assert machine.report() == before.report()  # an outcome stays reported until the next assignment
        # update.json always reads back as the same machine, through real JSON.
        assert UpdateMachine.from_dict(json.loads(json.dumps(machine.to_dict(), allow_nan=False))) == machine
        assert all(v >= 0 for v in machine.timings.values())


# --- candidates (issue 18) ----------------------------------------------------------------------

def candidate_path(target: Target = SHADOW_B, t0: float = 100.0) -> list[object]:
    return [Assign(target, t0), BeginDownload(t0 + 1), Downloaded(t0 + 2), Verified(t0 + 3), Staged(t0 + 4, "slot"),
            BeginHealthCheck(t0 + 4), HealthPassed(t0 + 5)]


def test_a_candidate_runs_its_stage_after_its_health_check_and_never_activates() -> None:
    machine, _ = run(UpdateMachine(), *candidate_path())
    assert next_work(machine) is Work.START_STAGE
    with pytest.raises(IllegalTransitionError, match="never activated"):
        step(machine, activated(106))
    machine, event = step(machine, StageStarted(106, {"mode": "shadow", "sample": 0.5}))
    assert machine.state is State.SHADOW and next_work(machine) is None
    assert event is not None and event.event == "shadowing" and event.version == "1.2.0"
    assert event.details == {"mode": "shadow", "sample": 0.5}
    assert machine.report()["state"] == "shadow" and machine.report()["version"] == "1.2.0"
    canary, _ = run(UpdateMachine(), *candidate_path(CANARY_B), StageStarted(106))
    assert canary.state is State.CANARY and canary.report()["state"] == "canary"
    assert UpdateMachine.from_dict(json.loads(json.dumps(canary.to_dict()))) == canary


def test_an_ordinary_update_never_starts_a_stage() -> None:
    machine, _ = run(UpdateMachine(), *happy_path()[:7])
    with pytest.raises(IllegalTransitionError, match="only a candidate"):
        step(machine, StageStarted(107))


def test_a_stage_ends_failed_with_the_reason_or_by_promoting_the_same_bundle() -> None:
    staged, _ = run(UpdateMachine(), *candidate_path(), StageStarted(106))
    withdrawn, event = step(staged, Fail(200, "superseded"))
    assert withdrawn.state is State.FAILED and event is not None and event.event == "failed"
    assert withdrawn.timings["shadow_s"] == pytest.approx(94.0)
    promoted, event = step(staged, Assign(PROMOTE_B, 300))
    assert promoted.state is State.ASSIGNED and event is not None and event.version == "1.2.0"
    assert staged.may_try("digits", PROMOTE_B.attempt)  # a new try: the candidate's was its own
    with pytest.raises(IllegalTransitionError, match="promotion"):
        step(staged, Assign(TARGET, 300))  # another bundle: end the stage first


def test_memory_budget_refusal_is_a_failed_candidate_with_the_reason() -> None:
    machine, events = run(UpdateMachine(), *candidate_path()[:6], Fail(105, "memory_budget", {"message": "no"}))
    assert machine.state is State.FAILED and machine.reason == "memory_budget" and events[-1] == "failed"
    assert recovery(machine) is Recovery.NOTHING  # not retried: the model's size does not change


def test_a_restart_in_a_stage_checks_and_loads_the_candidate_again() -> None:
    staged, _ = run(UpdateMachine(), *candidate_path(), StageStarted(106))
    machine, event = step(staged, Restart(400))
    assert event is None and machine.state is State.HEALTH_CHECK and not machine.health_passed
    assert recovery(machine) is Recovery.REDO_HEALTH_CHECK and next_work(machine) is Work.CHECK_HEALTH
    machine, _ = run(machine, HealthPassed(401), StageStarted(402))
    assert machine.state is State.SHADOW


def test_a_candidate_target_checks_its_mode_and_rate() -> None:
    with pytest.raises(UpdateMachineError, match="mode"):
        Target("digits", "1.2.0", 8, None, "d/d.tar.gz", "b" * 64, 9, "blue", 0.5)
    with pytest.raises(UpdateMachineError, match="rate"):
        Target("digits", "1.2.0", 8, None, "d/d.tar.gz", "b" * 64, 9, "canary", 0.0)
    with pytest.raises(UpdateMachineError, match="candidate target only"):
        Target("digits", "1.2.0", 8, None, "d/d.tar.gz", "b" * 64, 9, None, 0.5)
    assert SHADOW_B.attempt != CANARY_B.attempt != PROMOTE_B.attempt
