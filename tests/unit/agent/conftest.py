"""Fixtures for the agent's unit tests: a state directory, a profile, and a bundle maker."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.state import StateDir
from edgefleet.profiles import Profile, load_profile
from tests.unit.agent.models import BundleMaker, make_linear_bundle


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state").ensure()


@pytest.fixture
def profile() -> Profile:
    return load_profile("generic-x86_64")


@pytest.fixture
def linear_bundle() -> BundleMaker:
    return make_linear_bundle
