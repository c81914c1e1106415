"""Intra-op threads per model: one thread unless N are clearly faster, measured on a real session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent import threads
from agent.runtime import load_session
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from edgefleet.profiles import Profile
from tests.unit.agent.models import make_linear_bundle


def test_one_thread_wins_ties_and_more_threads_must_be_clearly_faster() -> None:
    assert threads.choose({1: 10e-6, 2: 9.5e-6}) == 1     # 5% faster: not worth a second thread's CPU
    assert threads.choose({1: 10e-6, 2: 5e-6}) == 2
    assert threads.choose({1: 13e-6, 2: 21e-6}) == 1     # the forest
    assert threads.choose({1: 10e-6, 2: 8e-6, 4: 7.5e-6}) == 2
    with pytest.raises(ValueError):
        threads.choose({})


def test_a_zero_row_is_made_only_where_every_shape_is_known() -> None:
    feeds = threads.sample_feeds([("x", "tensor(float)", ["batch", 4]), ("ids", "tensor(int64)", [None, 2, 3])])
    assert feeds is not None and feeds["x"].shape == (1, 4) and feeds["x"].dtype == np.float32
    assert feeds["ids"].shape == (1, 2, 3) and feeds["ids"].dtype == np.int64
    assert threads.sample_feeds([("x", "tensor(float)", ["batch", "width"])]) is None
    assert threads.sample_feeds([("s", "tensor(string)", ["batch", 1])]) is None


def test_the_clock_times_each_run_and_takes_the_median() -> None:
    ticks = iter(float(t) for t in range(1000))
    assert threads.seconds_per_run(lambda: None, runs=5, clock=lambda: next(ticks)) == 1.0


def test_a_loaded_session_runs_on_the_thread_count_it_measured_best(tmp_path: Path, profile: Profile) -> None:
    from dataclasses import replace

    four = replace(profile, intra_op_threads=4)
    state = StateDir(tmp_path / "state").ensure()
    session = load_session(ModelStore(state).stage(read_bundle(make_linear_bundle())), four)
    # A four-feature linear model: nothing for three more threads to share.
    assert session.intra_op_threads == 1  # type: ignore[attr-defined]
    assert session.run_roles(np.ones((2, 4), dtype=np.float32))["label"].shape == (2,)
