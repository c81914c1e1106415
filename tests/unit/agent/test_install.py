"""Local install: the bundle reader's checks, the profile check and the health check gate activation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.install import InstallError, install_bundle
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet.errors import BundleError
from edgefleet.profiles import Profile, load_profile
from tests.unit.agent.models import BundleMaker


def test_install_activates_and_keeps_the_previous(state: StateDir, profile: Profile, linear_bundle: BundleMaker) -> None:
    first = install_bundle(state, linear_bundle("1.0.0"), profile, latency_runs=5)
    assert first.previous_version is None and first.health["passed"] is True and first.health["agreement"] == 1.0
    second = install_bundle(state, linear_bundle("1.1.0", seed=1), profile, latency_runs=5)
    assert second.previous_version == "1.0.0"
    store = ModelStore(state)
    active, previous = store.active("iris"), store.previous("iris")
    assert active is not None and active.version == "1.1.0"
    assert previous is not None and previous.version == "1.0.0"


def test_a_bundle_for_another_profile_is_refused(state: StateDir, linear_bundle: BundleMaker) -> None:
    with pytest.raises(InstallError) as caught:
        install_bundle(state, linear_bundle(profiles=("rpi4-64",)), load_profile("rpi5"))
    assert "validated for rpi4-64, not for this device's profile rpi5" in caught.value.message
    assert "--profile rpi5" in str(caught.value.fix)
    assert ModelStore(state).models() == []


def test_a_model_over_the_profile_size_limit_is_refused(state: StateDir, profile: Profile,
                                                        linear_bundle: BundleMaker) -> None:
    tiny = dataclasses.replace(profile, max_model_bytes=10)
    with pytest.raises(InstallError, match="over profile generic-x86_64's limit of 10"):
        install_bundle(state, linear_bundle(), tiny)


def test_a_tampered_bundle_is_refused_by_the_reader(state: StateDir, profile: Profile, linear_bundle: BundleMaker,
                                                    tmp_path: Path) -> None:
    data = bytearray(linear_bundle())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(BundleError):
        install_bundle(state, bytes(data), profile)
    assert ModelStore(state).models() == []


def test_a_model_failing_its_golden_samples_is_not_activated(state: StateDir, profile: Profile,
                                                             linear_bundle: BundleMaker) -> None:
    install_bundle(state, linear_bundle("1.0.0"), profile, latency_runs=5)
    with pytest.raises(InstallError, match="failed its health check") as caught:
        install_bundle(state, linear_bundle("2.0.0", seed=1, golden_seed=9), profile, latency_runs=5)
    assert "nothing was activated" in str(caught.value.fix)
    store = ModelStore(state)
    active = store.active("iris")
    assert active is not None and active.version == "1.0.0"
    assert store.slot_ids("iris") == [active.sha256]  # the failed slot was removed
