"""Which devices in flight are asked to report again (fleet_server.rollouts.quiet), on an injected clock."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_server.rollouts.quiet import REPORT_COMMAND, QuietDevices, QuietPolicy

POLICY = QuietPolicy(quiet_s=60.0, max_wait_s=600.0)


def test_a_quiet_device_is_asked_after_quiet_s_then_after_doubling_waits_up_to_the_cap() -> None:
    quiet = QuietDevices(POLICY)
    assert quiet.due(["a"], 0.0) == []  # first seen in flight: its quiet time starts now
    assert quiet.due(["a"], 59.9) == []
    assert quiet.due(["a"], 60.0) == ["a"]
    asked_at = [60.0]
    now = 60.0
    while len(asked_at) < 7:
        now += 1.0
        if quiet.due(["a"], now):
            asked_at.append(now)
    waits = [b - a for a, b in itertools.pairwise(asked_at)]
    assert waits == [120.0, 240.0, 480.0, 600.0, 600.0, 600.0]


def test_hearing_from_a_device_starts_over_and_devices_out_of_flight_are_forgotten() -> None:
    quiet = QuietDevices(POLICY)
    quiet.due(["a", "b"], 0.0)
    assert quiet.due(["a", "b"], 60.0) == ["a", "b"]
    quiet.heard(["a"], 100.0)
    assert quiet.due(["a", "b"], 159.0) == []  # a spoke 59 s ago; b was asked 99 s ago (its wait: 120 s)
    assert quiet.due(["a", "b"], 160.0) == ["a"]  # a: quiet again, asked as if for the first time
    assert quiet.due(["a", "b"], 180.0) == ["b"]
    quiet.heard(["a"], 190.0)
    assert quiet.due(["b"], 200.0) == [] and len(quiet) == 1  # a left the rollout's flight
    quiet.heard(["a"], 300.0)  # a message from a device not in flight tracks nothing
    assert len(quiet) == 1


def test_the_command_is_the_contracts_report_command() -> None:
    assert json.loads(REPORT_COMMAND) == {"command": "report", "args": {}}


@pytest.mark.parametrize(("quiet_s", "max_wait_s"), [(0.0, 10.0), (-1.0, 10.0), (60.0, 30.0)])
def test_nonsense_policies_are_refused(quiet_s: float, max_wait_s: float) -> None:
    with pytest.raises(ValueError, match="quiet_s"):
        QuietPolicy(quiet_s, max_wait_s)


# A run: at each step some devices are in flight, some of those are heard from, time moves on.
_steps = st.lists(st.tuples(st.sets(st.sampled_from("abcd")), st.sets(st.sampled_from("abcd")),
                            st.floats(0.0, 400.0)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(steps=_steps)
def test_only_quiet_devices_in_flight_are_asked_and_never_more_often_than_the_policy_allows(
        steps: list[tuple[set[str], set[str], float]]) -> None:
    quiet = QuietDevices(POLICY)
    now = 0.0
    last_heard: dict[str, float] = {}  # since it is continuously in flight
    last_asked: dict[str, float] = {}
    for in_flight, heard, step in steps:
        now += step
        for gone in set(last_heard) - in_flight:
            last_heard.pop(gone)
            last_asked.pop(gone, None)
        for device in in_flight:
            last_heard.setdefault(device, now)
        quiet.heard(heard, now)
        for device in heard & in_flight:
            last_heard[device] = now
            last_asked.pop(device, None)
        asked = quiet.due(in_flight, now)
        assert asked == sorted(asked) and set(asked) <= in_flight
        for device in asked:
            assert now - last_heard[device] >= POLICY.quiet_s  # quiet for at least quiet_s
            if device in last_asked:
                assert now - last_asked[device] >= 2 * POLICY.quiet_s  # the first wait after an ask doubles
            last_asked[device] = now
        for device in in_flight - set(asked):
            # a device not asked either spoke recently or was asked within its wait
            assert now - last_heard[device] < POLICY.quiet_s or now - last_asked[device] < POLICY.max_wait_s
