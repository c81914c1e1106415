"""The reporter counts served calls in bulk, and loses none: every read sees every call answered.

A served call is only queued on the request's path (``Reporter.on_request``); drift windows and
the feedback memory get the queue in bulk (``Reporter.fold``) every ``FOLD_EVERY`` calls and
before every read. These tests serve a real converter-made digits bundle through the real
serving table and compare what the reporter counted with a twin ``DriftWindow`` fed one call
at a time, as the reporter did before bulk counting.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.drift import DriftWindow
from agent.metrics import Metrics
from agent.reporter import FOLD_EVERY, Reporter
from agent.runtime import load_session
from agent.serving import Served, ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from edgefleet.errors import InputError
from edgefleet.profiles import Profile
from tests.support.bundles import make_onnx_bundle


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx_bundle(tmp_path_factory.mktemp("bundle"))


def _serving(state: StateDir, profile: Profile, bundle_path: Path, clock: list[float]) -> tuple[
        ServingTable, Reporter, Any]:
    bundle = read_bundle(bundle_path)
    table = ServingTable()
    table.swap("digits", load_session(ModelStore(state).stage(bundle), profile))
    reporter = Reporter(Metrics(), monotonic=lambda: clock[0])
    reporter.attach(table)
    return table, reporter, bundle


def test_every_call_is_in_the_windows_and_remembered_whatever_the_fold_point(
        state: StateDir, profile: Profile, bundle_path: Path) -> None:
    clock = [1000.0]
    table, reporter, bundle = _serving(state, profile, bundle_path, clock)
    twin = DriftWindow(bundle.reference())
    rng = np.random.default_rng(5)
    key = ("digits", bundle.manifest.version)
    window = reporter.windows()[key]
    # More than two folds' worth, across a time-bucket boundary (5 min buckets), 1-3 rows a call.
    for i in range(2 * FOLD_EVERY + 41):
        rows = rng.uniform(0, 16, size=(1 + i % 3, 64)).astype(np.float32)
        result = table.predict("digits", rows)
        twin.observe(rows, result.predictions, now=clock[0])
        if i == FOLD_EVERY + 3:
            clock[0] += window.bucket_s
        if i in (0, 7, FOLD_EVERY - 1, FOLD_EVERY, FOLD_EVERY + 100):
            # A read at any point sees every call so far (the fold runs before it).
            scored = reporter.feedback([{"request_id": result.request_id, "label": result.predictions[0]}])
            assert scored["accepted"] == [{"request_id": result.request_id, "correct": True}]
            counts, outputs = reporter.windows()[key].window_counts(clock[0])
            want_counts, want_outputs = twin.window_counts(clock[0])
            assert [c.tolist() for c in counts] == [c.tolist() for c in want_counts]
            assert outputs.tolist() == want_outputs.tolist()
    assert reporter.windows()[key] is window  # the read folds what is still queued
    assert window.take_interval() == twin.take_interval()
    assert window.window_counts(clock[0])[1].tolist() == twin.window_counts(clock[0])[1].tolist()
    summary = reporter.drift_summary(*key)
    assert summary is not None and summary["rows"] == sum(1 + i % 3 for i in range(2 * FOLD_EVERY + 41))


def test_a_call_the_window_cannot_count_costs_only_its_own_counts(
        state: StateDir, profile: Profile, bundle_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = [50.0]
    table, reporter, bundle = _serving(state, profile, bundle_path, clock)
    key = ("digits", bundle.manifest.version)
    rows = np.full((2, 64), 3.0, dtype=np.float32)
    good = [table.predict("digits", rows) for _ in range(5)]
    # A call whose matrix does not fit the reference (the table never makes one; a bug might).
    reporter.on_request(Served("digits", bundle.manifest.version, "odd", "ok", 0.1,
                               np.zeros((1, 63), np.float32), [1]))
    good += [table.predict("digits", rows) for _ in range(4)]
    with caplog.at_level(logging.ERROR, logger="agent.reporter"):
        counts, outputs = reporter.windows()[key].window_counts(clock[0])
    assert all(int(c.sum()) == 2 * len(good) for c in counts)
    assert int(outputs.sum()) == 2 * len(good)
    assert "could not count a request" in caplog.text
    # Its predictions were remembered all the same, as were the others'.
    assert reporter.metrics.feedback("odd", 1) is True
    assert reporter.metrics.feedback(good[-1].request_id, good[-1].predictions[0]) is True


def test_refused_calls_count_as_errors_at_once(state: StateDir, profile: Profile, bundle_path: Path) -> None:
    clock = [0.0]
    table, reporter, _bundle = _serving(state, profile, bundle_path, clock)
    with pytest.raises(InputError):
        table.predict("digits", [[1.0, 2.0]])
    (record,) = reporter.metrics.take_records()
    assert record.errors == {"input": 1} and record.count == 0
