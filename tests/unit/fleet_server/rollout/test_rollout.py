"""The rollout state machine, read as a threat model: how a bad version is kept from the fleet."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta

import pytest

from fleet_server.errors import ConflictError, InvalidInputError
from fleet_server.rollouts.machine import (
    Action,
    AlertNeeded,
    AssignPrevious,
    AssignVersion,
    Completed,
    DeviceStatus,
    Halt,
    Rollout,
    RolloutDataError,
    RolloutPolicy,
    RolloutState,
    RolloutStateError,
    action_to_dict,
)
from fleet_server.rollouts.waves import RolloutDevice
from tests.unit.fleet_server.rollout.fleet import (
    MODEL,
    PREVIOUS,
    VERSION,
    at,
    devices,
    make_rollout,
    target,
)


def assigned(actions: Sequence[Action]) -> list[str]:
    return [a.device_id for a in actions if isinstance(a, AssignVersion)]


def sent_back(actions: Sequence[Action]) -> list[str]:
    return [a.device_id for a in actions if isinstance(a, AssignPrevious)]


def commit(rollout: Rollout, ids: Sequence[str], minute: float) -> list[Action]:
    actions: list[Action] = []
    for device in ids:
        actions += rollout.device_event(device, "committed", at(minute), version=VERSION)
    return actions


def join_many(rollout: Rollout, minute: float, count: int = 20) -> list[Action]:
    """Enough joiners that some land in the current wave (placement is by hash)."""
    actions: list[Action] = []
    for i in range(count):
        actions += rollout.add_device(RolloutDevice(f"late-{i:02d}", "rpi4-64", {"site": "a"}, PREVIOUS), at(minute))
    assert any(rollout.devices[f"late-{i:02d}"].wave == rollout.current_wave for i in range(count))
    return actions


def started(count: int = 20, **policy: object) -> tuple[Rollout, list[str]]:
    rollout = make_rollout(devices(count), **policy)
    return rollout, assigned(rollout.start(at(0)))


def test_start_assigns_exactly_the_first_wave_with_the_profile_target() -> None:
    rollout, first = started()  # waves 10, 50, 100 of 20 devices: 2, 8, 10
    assert sorted(first) == sorted(rollout.plan.waves[0]) and len(first) == 2
    actions = make_rollout(devices(20)).start(at(0))
    assert all(a == AssignVersion(a.device_id, MODEL, VERSION, target("rpi4-64"))
               for a in actions if isinstance(a, AssignVersion))
    assert rollout.assigned_count() == rollout.allowed_count() == 2
    assert rollout.state is RolloutState.RUNNING


def test_first_wave_failure_halts_before_second_wave() -> None:
    rollout, first = started(auto_rollback=False)
    actions = rollout.device_event(first[0], "failed", at(3), reason="golden samples disagree: 61% < 99%",
                                   version=VERSION)
    assert [type(a) for a in actions] == [Halt]
    assert rollout.state is RolloutState.HALTED
    assert "wave 1" in rollout.halt_reason and "1 of 2" in rollout.halt_reason
    # The other first-wave device commits and the bake passes: the second wave still never starts.
    assert assigned(commit(rollout, first[1:], 4)) == []
    assert assigned(rollout.tick(at(600))) == []
    assert rollout.assigned_count() == 2
    assert all(rollout.devices[d].status is DeviceStatus.PENDING for d in rollout.plan.waves[1])


def test_halted_rollout_never_assigns_again() -> None:
    rollout, first = started(auto_rollback=False)
    rollout.device_event(first[0], "failed", at(1), version=VERSION)
    assert rollout.state is RolloutState.HALTED
    for command in (rollout.resume, rollout.pause, rollout.start):
        with pytest.raises(RolloutStateError) as caught:
            command(at(2))
        assert isinstance(caught.value, ConflictError) and caught.value.fix
    actions = join_many(rollout, 3)
    actions += commit(rollout, list(rollout.devices), 4) + rollout.tick(at(1000))
    actions += rollout.device_online(first[1], at(1001))
    assert assigned(actions) == []
    # Rolling back afterwards is allowed and still assigns only previous versions.
    assert sorted(sent_back(rollout.rollback(at(1002)))) == sorted(first)
    assert rollout.state is RolloutState.ROLLED_BACK
    assert assigned(rollout.tick(at(2000))) == []


def test_aborted_rollout_never_assigns_again_and_leaves_devices_in_place() -> None:
    rollout, first = started()
    assert rollout.abort(at(1), reason="wrong model") == []
    assert rollout.state is RolloutState.ABORTED and rollout.halt_reason == "wrong model"
    commit(rollout, first, 2)
    assert assigned(rollout.tick(at(100))) == []
    with pytest.raises(RolloutStateError):
        rollout.resume(at(101))
    assert sorted(sent_back(rollout.rollback(at(102)))) == sorted(first)


def test_auto_rollback_sends_every_touched_device_back_and_no_other() -> None:
    rollout, first = started()
    commit(rollout, first, 1)
    second = assigned(rollout.tick(at(11)))
    assert sorted(second) == sorted(rollout.plan.waves[1]) and len(second) == 8
    commit(rollout, second[:5], 12)
    rollout.device_event(second[5], "rolled_back", at(13), reason="3 restarts in probation", version=VERSION)
    actions = rollout.device_event(second[6], "failed", at(13), version=VERSION)  # 2 of 8 = 25% > 20%
    assert isinstance(actions[0], Halt)
    assert sorted(sent_back(actions)) == sorted(first + second)
    assert all(a == AssignPrevious(a.device_id, MODEL, PREVIOUS) for a in actions if isinstance(a, AssignPrevious))
    assert rollout.state is RolloutState.ROLLED_BACK
    assert rollout.devices[second[5]].reason == "rolled back on the device: 3 restarts in probation; sent back to 1.0.0"
    untouched = rollout.plan.waves[2]
    assert all(rollout.devices[d].status is DeviceStatus.PENDING for d in untouched)
    # Rolling back again is refused: it is done, and nothing is sent twice.
    with pytest.raises(RolloutStateError):
        rollout.rollback(at(14))


def test_device_without_previous_version_is_reported_not_rolled_back() -> None:
    fleet = devices(10, version=None)[:1] + devices(10)[1:]
    rollout = make_rollout(fleet, waves=(100.0,), max_failure_rate=0.05)
    rollout.start(at(0))
    actions = rollout.device_event("dev-000", "failed", at(1), version=VERSION)
    alerts = [a for a in actions if isinstance(a, AlertNeeded)]
    assert len(alerts) == 1 and alerts[0].devices == ("dev-000",) and alerts[0].topic == "no_previous_version"
    assert "dev-000" not in sent_back(actions) and len(sent_back(actions)) == 9


def test_offline_device_times_out_as_failed() -> None:
    # Until the timeout it counts as pending (in flight), not as a failure.
    rollout, first = started()
    rollout.device_offline(first[0], at(1))
    commit(rollout, first[1:], 2)
    assert rollout.tick(at(29.9)) == []
    summary = rollout.wave_summaries()[0]
    assert (summary.in_flight, summary.failed, rollout.state) == (1, 0, RolloutState.RUNNING)
    assert rollout.next_deadline() == at(12)  # the bake ends before the device times out
    actions = rollout.tick(at(30))
    assert isinstance(actions[0], Halt) and "1 of 2 device(s) failed" in actions[0].reason
    assert rollout.devices[first[0]].status is DeviceStatus.ROLLED_BACK
    assert "no result within the device timeout (offline since" in rollout.devices[first[0]].reason
    assert sorted(sent_back(actions)) == sorted(first)


def test_a_download_failure_the_device_retries_keeps_it_in_flight() -> None:
    # A network blip is not a verdict on the version: the agent retries it by itself.
    rollout, first = started()
    assert rollout.device_event(first[0], "failed", at(1), reason="download_failed", version=VERSION) == []
    record = rollout.devices[first[0]]
    assert record.status is DeviceStatus.ASSIGNED and record.last_event == "failed"
    assert record.reason == "download_failed; the device retries"
    summary = rollout.wave_summaries()[0]
    assert (summary.in_flight, summary.failed, rollout.state) == (2, 0, RolloutState.RUNNING)
    commit(rollout, first, 5)  # the retry went through
    assert rollout.devices[first[0]].status is DeviceStatus.COMMITTED
    assert sorted(assigned(rollout.tick(at(15)))) == sorted(rollout.plan.waves[1])


def test_a_device_that_keeps_failing_its_download_times_out() -> None:
    rollout, first = started()
    commit(rollout, first[1:], 1)
    for minute in (1, 11, 21):
        rollout.device_event(first[0], "failed", at(minute), reason="download_failed", version=VERSION)
    assert rollout.tick(at(29)) == [] and rollout.state is RolloutState.RUNNING
    actions = rollout.tick(at(30))
    assert isinstance(actions[0], Halt)
    assert rollout.devices[first[0]].reason.startswith("no result within the device timeout (online)")


def test_a_final_failure_reason_still_counts_at_once() -> None:
    rollout, first = started()
    actions = rollout.device_event(first[0], "failed", at(1), reason="health_failed", version=VERSION)
    assert isinstance(actions[0], Halt) and rollout.devices[first[0]].reason.startswith("health_failed")


def test_offline_device_that_returns_and_commits_in_time_is_not_failed() -> None:
    rollout, first = started()
    rollout.device_offline(first[0], at(1))
    rollout.device_online(first[0], at(20))
    commit(rollout, first, 25)
    assert rollout.tick(at(30)) == []
    assert rollout.devices[first[0]].status is DeviceStatus.COMMITTED
    assert sorted(assigned(rollout.tick(at(35)))) == sorted(rollout.plan.waves[1])


def test_ineligible_profile_never_assigned() -> None:
    fleet = devices(10) + devices(10, profile="jetson-nano", prefix="jet")
    rollout = make_rollout(fleet, waves=(50.0, 100.0))
    everything = rollout.start(at(0))
    everything += commit(rollout, list(rollout.plan.waves[0]), 1) + rollout.tick(at(11))
    everything += rollout.add_device(RolloutDevice("jet-late", "jetson-nano", {}, PREVIOUS), at(12))
    everything += commit(rollout, list(rollout.plan.waves[1]), 13) + rollout.tick(at(23))
    assert everything[-1] == Completed()
    assert not [d for d in assigned(everything) if d.startswith("jet")]
    jetsons = [r for r in rollout.devices.values() if r.profile == "jetson-nano"]
    assert len(jetsons) == 11 and all(r.status is DeviceStatus.INELIGIBLE and r.wave is None for r in jetsons)
    assert "validated" in jetsons[0].reason


def test_selector_limits_who_takes_part_and_who_may_join() -> None:
    fleet = devices(5) + devices(5, prefix="b", labels={"site": "b"})
    rollout = make_rollout(fleet, selector="site=a", waves=(100.0,))
    assert set(rollout.devices) == {f"dev-{i:03d}" for i in range(5)}
    rollout.start(at(0))
    assert rollout.add_device(RolloutDevice("b-late", "rpi4-64", {"site": "b"}), at(1)) == []
    assert "b-late" not in rollout.devices


def test_yanked_version_never_assigned() -> None:
    rollout, first = started()
    actions = rollout.yank(at(1), reason="CVE in the preprocessing")
    assert isinstance(actions[0], Halt) and "yanked" in actions[0].reason
    assert sorted(sent_back(actions)) == sorted(first)
    later = commit(rollout, first, 2) + rollout.tick(at(100))
    later += join_many(rollout, 101)
    assert assigned(later) == []
    pending = make_rollout(devices(5))
    pending.yank(at(0))
    with pytest.raises(RolloutStateError):
        pending.start(at(1))


def test_yanking_a_completed_rollout_alerts_and_stops_late_joiners() -> None:
    rollout, first = started(5, waves=(100.0,))
    commit(rollout, first, 1)
    assert rollout.tick(at(11)) == [Completed()]
    joined = rollout.add_device(RolloutDevice("dev-late", "rpi4-64", {"site": "a"}, PREVIOUS), at(12))
    assert assigned(joined) == ["dev-late"]  # a completed rollout keeps new matching devices current
    alert = rollout.yank(at(13))
    assert isinstance(alert[0], AlertNeeded) and len(alert[0].devices) == 5
    assert rollout.add_device(RolloutDevice("dev-later", "rpi4-64", {"site": "a"}, PREVIOUS), at(14)) == []


def test_wave_passes_only_after_the_bake_time_since_its_last_commit() -> None:
    rollout, first = started()
    commit(rollout, first[:1], 1)
    commit(rollout, first[1:], 4)
    assert rollout.tick(at(13.99)) == []
    assert rollout.next_deadline() == at(14)
    assert len(assigned(rollout.tick(at(14)))) == 8
    assert rollout.current_wave == 1 and rollout.wave_started_at == at(14)


def test_wave_below_min_success_rate_does_not_advance() -> None:
    rollout, first = started(min_success_rate=1.0, max_failure_rate=0.5)
    commit(rollout, first[:1], 1)
    assert rollout.tick(at(29)) == []  # half committed, half in flight: wait
    assert rollout.current_wave == 0


def test_wave_that_can_no_longer_reach_min_success_rate_halts() -> None:
    # 1 failure in 2 is within max_failure_rate 0.5, but 95% success is out of reach.
    rollout, first = started(max_failure_rate=0.5, min_success_rate=0.95)
    actions = rollout.device_event(first[0], "failed", at(1), version=VERSION)
    assert isinstance(actions[0], Halt) and "can no longer reach" in actions[0].reason


def test_tolerated_failures_still_let_the_wave_pass() -> None:
    rollout, first = started()
    commit(rollout, first, 1)
    second = assigned(rollout.tick(at(11)))
    rollout.device_event(second[0], "failed", at(12), version=VERSION)  # 1 of 8 = 12.5% <= 20%
    commit(rollout, second[1:], 13)  # 87.5% >= 80%
    assert rollout.state is RolloutState.RUNNING
    third = assigned(rollout.tick(at(23)))
    assert sorted(third) == sorted(rollout.plan.waves[2])
    commit(rollout, third, 24)
    assert rollout.tick(at(34)) == [Completed()]
    assert rollout.state is RolloutState.COMPLETED and rollout.finished_at == at(34)
    assert rollout.assigned_count() == 20


def test_failure_in_an_earlier_wave_after_it_passed_still_halts() -> None:
    rollout, first = started(5, waves=(40.0, 100.0), min_success_rate=0.5, max_failure_rate=0.4)
    commit(rollout, first[:1], 1)  # 1 of 2 committed: 50% passes
    assert assigned(rollout.tick(at(11)))
    actions = rollout.device_event(first[1], "failed", at(12), version=VERSION)  # 1 of 2 = 50% > 40%
    assert isinstance(actions[0], Halt) and "wave 1" in actions[0].reason


def test_pause_stops_progress_but_not_safety() -> None:
    rollout, first = started(auto_rollback=False)
    commit(rollout, first, 1)
    rollout.pause(at(2))
    assert rollout.tick(at(60)) == []
    joined = rollout.add_device(RolloutDevice("dev-late", "rpi4-64", {"site": "a"}, PREVIOUS), at(61))
    assert joined == []
    resumed = assigned(rollout.resume(at(62)))
    assert set(rollout.plan.waves[1]) <= set(resumed)
    rollout.pause(at(63))
    actions = []
    for device in rollout.plan.waves[1][:2]:
        actions += rollout.device_event(device, "failed", at(64), version=VERSION)
    assert any(isinstance(a, Halt) for a in actions) and rollout.state is RolloutState.HALTED


def test_late_joiner_joins_the_current_or_a_later_wave() -> None:
    rollout, first = started(40)
    commit(rollout, first, 1)
    rollout.tick(at(11))  # now in wave 2 of 3
    joined = {}
    for i in range(30):
        device = RolloutDevice(f"late-{i:02d}", "rpi4-64", {"site": "a"}, PREVIOUS)
        got = assigned(rollout.add_device(device, at(12)))
        joined[device.device_id] = rollout.devices[device.device_id].wave
        assert (got == [device.device_id]) == (joined[device.device_id] == 1)
    assert set(joined.values()) == {1, 2}
    assert rollout.assigned_count() <= rollout.allowed_count()
    # The same device joining again changes nothing.
    assert rollout.add_device(RolloutDevice("late-00", "rpi4-64", {"site": "a"}, PREVIOUS), at(13)) == []


def test_events_about_other_versions_or_unknown_devices_change_nothing() -> None:
    rollout, first = started(auto_rollback=False)
    before = rollout.to_dict()
    assert rollout.device_event(first[0], "failed", at(1), version="1.0.0") == []
    assert rollout.device_event("stranger", "failed", at(1), version=VERSION) == []
    pending = rollout.plan.waves[2][0]
    assert rollout.device_event(pending, "failed", at(1), version=VERSION) == []
    assert rollout.to_dict() == before
    rollout.device_event(first[0], "downloaded", at(2), version=VERSION)
    assert rollout.devices[first[0]].last_event == "downloaded"
    with pytest.raises(InvalidInputError):
        rollout.device_event(first[0], "exploded", at(3))


def test_late_commit_after_timeout_counts_while_running() -> None:
    rollout, first = started(max_failure_rate=0.5, min_success_rate=0.5)
    commit(rollout, first[:1], 1)
    rollout.tick(at(5))
    rollout.tick(at(30))  # first[1] times out; 50% failed is not above 50%
    assert rollout.devices[first[1]].status is DeviceStatus.TIMED_OUT
    rollout.device_event(first[1], "committed", at(31), version=VERSION)
    assert rollout.devices[first[1]].status is DeviceStatus.COMMITTED


def test_restart_mid_rollout_carries_on_identically() -> None:
    rollout, first = started(auto_rollback=True)
    commit(rollout, first, 1)
    second = assigned(rollout.tick(at(11)))
    rollout.device_offline(second[0], at(12))
    commit(rollout, second[2:5], 13)
    restored = Rollout.from_dict(json.loads(json.dumps(rollout.to_dict())))
    assert restored.to_dict() == rollout.to_dict()

    def carry_on(twin: Rollout) -> list[list[Action]]:
        return [twin.tick(at(20)), twin.device_event(second[1], "failed", at(21), version=VERSION),
                twin.tick(at(45))]

    assert carry_on(restored) == carry_on(rollout)
    assert restored.to_dict() == rollout.to_dict()


def test_stored_document_that_does_not_parse_is_refused_with_a_fix() -> None:
    rollout, _ = started()
    data = rollout.to_dict()
    for broken in ({}, {**data, "schema": 99}, {**data, "state": "sideways"}, {**data, "devices": [{"x": 1}]},
                   {**data, "current_wave": 7}, {**data, "selector": "a=,"}):
        with pytest.raises(RolloutDataError) as caught:
            Rollout.from_dict(broken)
        assert caught.value.fix


@pytest.mark.parametrize(("setting", "value", "words"), [
    ("max_failure_rate", 1.0, "max failure rate"), ("min_success_rate", 0.0, "min success rate"),
    ("bake_time", timedelta(minutes=-1), "bake time"), ("device_timeout", timedelta(0), "device timeout"),
    ("waves", (50.0, 10.0), "grow strictly"),
])
def test_bad_policy_names_the_setting(setting: str, value: object, words: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        RolloutPolicy(**{setting: value})  # type: ignore[arg-type]
    assert words in str(caught.value)


def test_no_eligible_device_is_explained() -> None:
    with pytest.raises(InvalidInputError) as caught:
        make_rollout(devices(3, profile="jetson-nano"))
    assert "jetson-nano" in str(caught.value) and "rpi4-64" in str(caught.value)


def test_actions_serialise_for_logs() -> None:
    rollout, _ = started(2, waves=(100.0,))
    document = action_to_dict(rollout.yank(at(1))[0])
    assert document["kind"] == "halt" and "yanked" in document["reason"]
    json.dumps([action_to_dict(a) for a in make_rollout(devices(2)).start(at(0))])


def test_example_timeline_in_the_docs_is_what_the_machine_does() -> None:
    # docs/rollouts.md, "Example timeline": keep the two in step.
    fleet = (devices(12, "rpi4-64", "pi") + devices(8, "jetson-orin-nano", "jet")
             + devices(2, "rpi-zero-2w", "zero"))
    rollout = make_rollout(fleet, profiles=("rpi4-64", "jetson-orin-nano"), seed=2026, max_failure_rate=0.05,
                           min_success_rate=0.95)
    waves = rollout.plan.waves
    assert [len(w) for w in waves] == [2, 8, 10]
    assert [sum(d.startswith("pi") for d in w) for w in waves] == [1, 5, 6]
    assert sorted(assigned(rollout.start(at(0)))) == ["jet-006", "pi-010"]
    assert commit(rollout, ["jet-006"], 4) + commit(rollout, ["pi-010"], 7) + rollout.tick(at(12)) == []
    assert len(assigned(rollout.tick(at(17)))) == 8
    assert commit(rollout, [d for d in waves[1] if d != "pi-004"], 20) == []
    actions = rollout.device_event("pi-004", "failed", at(21), "golden agreement 0.61 < 0.99", VERSION)
    assert actions[0] == Halt("wave 2: 1 of 8 device(s) failed (12% > max 5%)")
    assert len(sent_back(actions)) == 10 and rollout.state is RolloutState.ROLLED_BACK
