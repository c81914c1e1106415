"""Wave plans: seeded and reproducible, stratified, never an empty wave, late joiners placed."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_server.rollouts.waves import (
    RolloutDevice,
    WavePlan,
    WavePlanError,
    parse_waves,
    plan_waves,
)

PROFILES = ("rpi4-64", "rpi5", "jetson-nano")


def mixed_fleet(count: int, seed: int = 0) -> list[RolloutDevice]:
    rng = random.Random(seed)
    return [RolloutDevice(f"dev-{i:04d}", rng.choice(PROFILES), {"site": rng.choice("ab")}) for i in range(count)]


def test_same_seed_same_plan_and_the_seed_is_recorded() -> None:
    fleet = mixed_fleet(200)
    first = plan_waves(fleet, (1, 10, 50, 100), seed=42)
    assert first == plan_waves(fleet, (1, 10, 50, 100), seed=42)
    assert first.seed == 42
    assert WavePlan.from_dict(first.to_dict()) == first
    assert plan_waves(fleet, (1, 10, 50, 100), seed=43).waves[1] != first.waves[1]


def test_enrollment_order_does_not_decide_who_goes_first() -> None:
    fleet = mixed_fleet(300)
    shuffled = list(fleet)
    random.Random(1).shuffle(shuffled)
    plan = plan_waves(fleet, (10, 100), seed=5)
    assert plan == plan_waves(shuffled, (10, 100), seed=5)
    first_enrolled = {d.device_id for d in fleet[:30]}
    assert set(plan.waves[0]) != first_enrolled


def test_first_wave_is_spread_across_profiles_not_the_first_enrolled() -> None:
    # Fifty Pis enrolled before fifty Jetsons: the 10% wave still holds both, about evenly.
    fleet = [RolloutDevice(f"pi-{i:02d}", "rpi4-64") for i in range(50)]
    fleet += [RolloutDevice(f"jet-{i:02d}", "jetson-nano") for i in range(50)]
    for seed in range(20):
        first = plan_waves(fleet, (10, 100), seed).waves[0]
        assert len(first) == 10
        pis = sum(1 for d in first if d.startswith("pi-"))
        assert 4 <= pis <= 6, (seed, first)


def test_labels_are_spread_within_a_profile() -> None:
    fleet = [RolloutDevice(f"a-{i:02d}", "rpi5", {"site": "a"}) for i in range(40)]
    fleet += [RolloutDevice(f"b-{i:02d}", "rpi5", {"site": "b"}) for i in range(40)]
    for seed in range(20):
        first = plan_waves(fleet, (10, 100), seed).waves[0]
        assert sum(1 for d in first if d.startswith("a-")) in (3, 4, 5)


def test_fewer_devices_than_waves_merges_the_surplus_into_the_last_wave() -> None:
    plan = plan_waves(mixed_fleet(2), (1, 10, 50, 100), seed=3)
    assert [len(w) for w in plan.waves] == [1, 1]
    assert plan.percentages == (1, 100)
    assert plan.requested == (1, 10, 50, 100)


def test_one_percent_of_thirty_devices_is_still_one_device() -> None:
    plan = plan_waves(mixed_fleet(30), (1, 10, 50, 100), seed=3)
    assert [len(w) for w in plan.waves] == [1, 2, 12, 15]


def test_no_device_is_an_error_with_a_fix() -> None:
    with pytest.raises(WavePlanError) as caught:
        plan_waves([], (10, 100), seed=1)
    assert caught.value.fix


def test_duplicate_device_is_refused() -> None:
    with pytest.raises(WavePlanError):
        plan_waves(mixed_fleet(3) + mixed_fleet(1), (100,), seed=1)


@pytest.mark.parametrize(("text", "words"), [
    ("", "not a list of numbers"), ("1,x", "not a list of numbers"), ("10,5,100", "grow strictly"),
    ("0,100", "(0, 100]"), ("10,50", "end the list with 100"), ("50,150", "(0, 100]"), ("nan,100", "(0, 100]"),
])
def test_bad_wave_list_names_the_problem(text: str, words: str) -> None:
    with pytest.raises(WavePlanError) as caught:
        parse_waves(text)
    assert words in str(caught.value)


def test_wave_list_parses_with_percent_signs() -> None:
    assert parse_waves("1%, 10%,50,100") == (1.0, 10.0, 50.0, 100.0)


def test_late_joiner_goes_to_its_band_or_the_current_wave() -> None:
    plan = plan_waves(mixed_fleet(100), (10, 50, 100), seed=9)
    placed = {f"new-{i}": plan.place(f"new-{i}", current_wave=0) for i in range(400)}
    assert set(placed.values()) == {0, 1, 2}  # spread over the bands, not piled into one wave
    for device, wave in placed.items():
        assert plan.place(device, 0) == wave  # deterministic
        assert plan.place(device, 1) == max(wave, 1)  # a band gone by means the current wave
        assert plan.place(device, 2) == 2


_fleets = st.lists(
    st.tuples(st.sampled_from(PROFILES), st.sampled_from(("a", "b", "c"))), min_size=1, max_size=120,
).map(lambda rows: [RolloutDevice(f"d{i}", p, {"site": s}) for i, (p, s) in enumerate(rows)])
_waves = st.lists(st.floats(min_value=0.5, max_value=99.5), max_size=5).map(
    lambda ws: (*sorted(set(ws)), 100.0))


@settings(max_examples=120, deadline=None)
@given(_fleets, _waves, st.integers(min_value=0, max_value=2**63 - 1))
def test_plan_covers_every_device_once_and_no_wave_is_empty(fleet: list[RolloutDevice], waves: tuple[float, ...],
                                                            seed: int) -> None:
    plan = plan_waves(fleet, waves, seed)
    drawn = [d for wave in plan.waves for d in wave]
    assert sorted(drawn) == sorted(d.device_id for d in fleet)
    assert all(plan.waves)
    assert len(plan.waves) == min(len(waves), len(fleet))
    assert plan.percentages[-1] == 100
    # Each kept wave holds at least its share of the fleet, cumulatively, unless that share
    # would starve a later wave: then it leaves exactly one device for each later wave.
    cumulative = 0
    for index, (percent, members) in enumerate(zip(plan.percentages, plan.waves, strict=True)):
        cumulative += len(members)
        later = len(plan.waves) - index - 1
        assert cumulative >= percent * len(fleet) / 100 - 1e-6 or cumulative == len(fleet) - later


@settings(max_examples=120, deadline=None)
@given(_fleets, st.integers(min_value=0, max_value=2**32))
def test_every_prefix_of_the_draw_holds_each_profile_near_its_share(fleet: list[RolloutDevice], seed: int) -> None:
    # Systematic sampling per profile: in a prefix of m devices, profile s (n_s of N devices,
    # S profiles) has c_s with |c_s - m n_s / N| <= 1 + S n_s / N (bound derived in waves._spread).
    plan = plan_waves(fleet, (100,), seed)
    order = plan.waves[0]
    profile_of = {d.device_id: d.profile for d in fleet}
    total = len(fleet)
    sizes = {p: sum(1 for d in fleet if d.profile == p) for p in set(profile_of.values())}
    strata = len(sizes)
    counts = dict.fromkeys(sizes, 0)
    for m, device in enumerate(order, start=1):
        counts[profile_of[device]] += 1
        for profile, n in sizes.items():
            assert abs(counts[profile] - m * n / total) <= 1 + strata * n / total + 1e-9
