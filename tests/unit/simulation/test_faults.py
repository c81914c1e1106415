"""The fault plan: options parse or are refused with a fix; the schedule is seeded and ordered."""

from __future__ import annotations

import pytest

from simulation.faults import (
    FaultError,
    FaultPlan,
    parse_seconds,
    parse_share_duration,
    pick,
    schedule,
    skewed_devices,
)

DEVICES = [f"dev-{i:02d}" for i in range(20)]


def test_share_and_duration_parse() -> None:
    assert parse_share_duration("30%:10s", "--network-loss") == (0.3, 10.0)
    assert parse_share_duration("100%:2m", "--network-loss") == (1.0, 120.0)
    assert parse_seconds("90") == 90.0 and parse_seconds("1h") == 3600.0


@pytest.mark.parametrize("bad", ["30:10s", "30%", "x%:1s", "0%:1s", "150%:1s", "30%:-1s"])
def test_malformed_share_is_refused_with_an_example(bad: str) -> None:
    with pytest.raises(FaultError) as caught:
        parse_share_duration(bad, "--network-loss")
    assert "--network-loss" in str(caught.value) and "30%:10s" in str(caught.value)


def test_plan_validates_itself() -> None:
    with pytest.raises(FaultError, match="sigkill"):
        FaultPlan(sigkill=-1)
    with pytest.raises(FaultError, match="share"):
        FaultPlan(network_loss_share=1.5)
    assert not FaultPlan().any and FaultPlan(corrupt_download=True).any


def test_schedule_is_ordered_and_the_same_for_the_same_seed() -> None:
    plan = FaultPlan(network_loss_share=0.25, network_loss_s=5, broker_restart_at_s=2.0, sigkill=2,
                     corrupt_download=True)
    first = schedule(plan, DEVICES, seed=7)
    assert first == schedule(plan, list(reversed(DEVICES)), seed=7)
    assert [a.at_s for a in first] == sorted(a.at_s for a in first)
    kinds = [a.kind for a in first]
    assert kinds == ["corrupt_download", "sigkill", "network_down", "broker_restart", "network_up"]
    down, up = (a for a in first if a.kind.startswith("network"))
    assert down.devices == up.devices and len(down.devices) == 5 and up.at_s - down.at_s == 5
    assert schedule(plan, DEVICES, seed=8) != first


def test_a_small_share_still_picks_one_device_and_none_picks_none() -> None:
    import random

    assert len(pick(DEVICES, 0.01, random.Random(1))) == 1
    assert pick(DEVICES, 0.0, random.Random(1)) == []
    assert skewed_devices(FaultPlan(clock_skew_share=0.5, clock_skew_s=60), DEVICES, 3) == \
        skewed_devices(FaultPlan(clock_skew_share=0.5, clock_skew_s=60), DEVICES, 3)
