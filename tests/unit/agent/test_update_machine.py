"""The update state machine: legal paths, illegal inputs, recovery rules, and properties over any input sequence."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.update_machine import (
    EVENTS,
    Activated,
    Assign,
    BeginDownload,
    BeginHealthCheck,
    Commit,
    Downloaded,
    Fail,
    HealthPassed,
    IllegalTransitionError,
    Recovery,
    Reset,
    Restart,
    Staged,
    State,
    Target,
    UpdateMachine,
    UpdateMachineError,
    Verified,
    recovery,
    refusal,
    step,
)

TARGET = Target("digits", "1.1.0", 7, "ro-1", "digits/digits-1.1.0.tar.gz", "a" * 64, 1234)


def run(machine: UpdateMachine, *inputs: object) -> tuple[UpdateMachine, list[str]]:
    events = []
    for inp in inputs:
        machine, event = step(machine, inp)  # type: ignore[arg-type]
        if event is not None:
            events.append(event.event)
    return machine, events


def happy_path(t0: float = 100.0) -> list[object]:
    return [Assign(TARGET, t0), BeginDownload(t0 + 1), Downloaded(t0 + 4), Verified(t0 + 5), Staged(t0 + 6, "slot"),
            BeginHealthCheck(t0 + 6), HealthPassed(t0 + 7), Activated(t0 + 7), Commit(t0 + 67)]


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
        step(machine, Activated(200))


def test_illegal_input_names_the_state() -> None:
    with pytest.raises(IllegalTransitionError, match="Commit is not allowed in state idle"):
        step(UpdateMachine(), Commit(1))


def test_redone_health_check_must_pass_again() -> None:
    machine, _ = run(UpdateMachine(), *happy_path()[:7])
    assert machine.health_passed
    machine, _ = step(machine, BeginHealthCheck(300))
    assert not machine.health_passed
    with pytest.raises(IllegalTransitionError):
        step(machine, Activated(301))


def test_recovery_rule_for_every_state() -> None:
    seen = {}
    machine = UpdateMachine()
    seen[machine.state] = recovery(machine)
    for inp in happy_path():
        machine, _ = step(machine, inp)  # type: ignore[arg-type]
        seen[machine.state] = recovery(machine)
    for reason_state in (State.FAILED,):
        failed, _ = run(UpdateMachine(), *happy_path()[:2], Fail(1, "download_failed"))
        seen[reason_state] = recovery(failed)
    rolled, _ = run(UpdateMachine(), *happy_path()[:8], Fail(1, "probation_failed"))
    seen[rolled.state] = recovery(rolled)
    assert seen == {
        State.IDLE: Recovery.NOTHING, State.ASSIGNED: Recovery.START_DOWNLOAD,
        State.DOWNLOADING: Recovery.RESUME_DOWNLOAD, State.VERIFIED: Recovery.REVERIFY,
        State.STAGED: Recovery.REVERIFY, State.HEALTH_CHECK: Recovery.REDO_HEALTH_CHECK,
        State.ACTIVATED: Recovery.COUNT_RESTART, State.COMMITTED: Recovery.RESET,
        State.FAILED: Recovery.RESET, State.ROLLED_BACK: Recovery.RESET,
    }


def test_restart_in_probation_counts() -> None:
    machine, _ = run(UpdateMachine(), *happy_path()[:8], Restart(150), Restart(151))
    assert machine.restarts == 2 and machine.state is State.ACTIVATED


def test_corrupt_update_json_names_the_fix() -> None:
    with pytest.raises(UpdateMachineError, match="delete update.json"):
        UpdateMachine.from_dict({"state": "sideways"})
    with pytest.raises(UpdateMachineError, match="without a passed health check"):
        UpdateMachine.from_dict({"state": "activated", "target": TARGET.to_dict(), "downloaded": True,
                                 "probation_started_at": 1.0})


def test_refusal_is_a_failed_event_with_the_reason() -> None:
    event = refusal("bad_signature", 9.0, counter=3)
    assert event.event == "failed" and event.reason == "bad_signature" and event.counter == 3


# --- properties ---------------------------------------------------------------------------------

REASONS = st.sampled_from(["download_failed", "hash_mismatch", "health_failed", "probation_failed", "superseded"])


def inputs(now: float) -> st.SearchStrategy[object]:
    return st.one_of(
        st.just(Assign(TARGET, now)), st.just(BeginDownload(now)), st.just(Downloaded(now, {"bytes": 1})),
        st.just(Verified(now)), st.just(Staged(now, "s")), st.just(BeginHealthCheck(now)), st.just(HealthPassed(now)),
        st.just(Activated(now)), st.just(Commit(now)), REASONS.map(lambda r: Fail(now, r)), st.just(Restart(now)),
        st.just(Reset(now)),
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
        # update.json always reads back as the same machine, through real JSON.
        assert UpdateMachine.from_dict(json.loads(json.dumps(machine.to_dict(), allow_nan=False))) == machine
        assert all(v >= 0 for v in machine.timings.values())
