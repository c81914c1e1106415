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


@pytest.mark.parametrize(("one", "four", "chosen"), [(13e-6, 21e-6, 1), (20e-6, 5e-6, 4)])
def test_a_loaded_session_runs_on_the_thread_count_it_measured_best(tmp_path: Path, profile: Profile,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   one: float, four: float, chosen: int) -> None:
    """The session runs both real sessions on its zero row and keeps the one ``choose`` picks; the
    seconds are scripted (1 thread first, then 4), since a loaded machine decides real ones by chance."""
    from dataclasses import replace

    timings = iter([one, four])
    ran: list[object] = []

    def scripted(run: object, *_: object, **__: object) -> float:
        ran.append(run() if callable(run) else None)  # each session really runs the zero row
        return next(timings)

    monkeypatch.setattr(threads, "seconds_per_run", scripted)
    state = StateDir(tmp_path / "state").ensure()
    session = load_session(ModelStore(state).stage(read_bundle(make_linear_bundle())), replace(profile, intra_op_threads=4))
    assert len(ran) == 2 and all(r is not None for r in ran)
    assert session.intra_op_threads == chosen  # type: ignore[attr-defined]
    assert session.run_roles(np.ones((2, 4), dtype=np.float32))["label"].shape == (2,)
