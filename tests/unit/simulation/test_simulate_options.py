"""`edgefleet simulate` options: the profile mix and which faults each mode can do."""

from __future__ import annotations

from collections import Counter

import pytest

from simulation.faults import FaultError, FaultPlan
from simulation.simulate import SimulateOptions, parse_profile_mix, profiles_for


def test_profile_mix_is_normalised_and_dealt_in_its_shares() -> None:
    mix = parse_profile_mix("rpi4-64=70,jetson-orin-nano=30")
    assert mix == pytest.approx({"rpi4-64": 0.7, "jetson-orin-nano": 0.3})
    dealt = profiles_for(mix, 10)
    assert Counter(dealt) == {"rpi4-64": 7, "jetson-orin-nano": 3}
    assert dealt[:2] == ["rpi4-64", "jetson-orin-nano"]  # interleaved, not in blocks
    assert Counter(profiles_for(parse_profile_mix("a=1,b=1,c=1"), 4)).total() == 4


@pytest.mark.parametrize("bad", ["", "rpi4-64=x", "=3", "rpi4-64=0"])
def test_bad_profile_mix_is_refused_with_an_example(bad: str) -> None:
    with pytest.raises(FaultError, match="profile-mix"):
        parse_profile_mix(bad)


@pytest.mark.parametrize(("options", "message"), [
    ({"faults": FaultPlan(sigkill=1)}, "--sigkill"),
    ({"faults": FaultPlan(corrupt_download=True)}, "--corrupt-download"),
    ({"faults": FaultPlan(slow_link_s=1), "processes": True}, "light devices"),
    ({"faults": FaultPlan(broker_restart_at_s=1), "server": "http://x:8080", "rollouts": ("m@1.0.0",)}, "own broker"),
    ({"server": "http://x:8080"}, "--rollout"),
])
def test_faults_a_mode_cannot_do_are_refused_before_anything_starts(options: dict, message: str) -> None:
    with pytest.raises(FaultError, match=message):
        SimulateOptions(devices=3, profile_mix={"rpi4-64": 1.0}, **options)
