"""The serving table: swaps never fail a request, the old session closes when its calls finish."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from agent.errors import ModelNotFoundError
from agent.runtime import ModelSession, load_session
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from edgefleet.errors import InputError
from edgefleet.profiles import Profile
from tests.unit.agent.models import LABELS, BundleMaker, linear_probabilities
from tests.unit.agent.tally import Tally

ROW = [0.1, -0.2, 0.3, 0.4]


def session(state: StateDir, profile: Profile, data: bytes) -> ModelSession:
    return load_session(ModelStore(state).stage(read_bundle(data)), profile)


class Gate:
    """Wraps a real session; holds each call until released, and records close()."""

    def __init__(self, inner: ModelSession) -> None:
        self.inner = inner
        self.manifest, self.slot, self.providers, self.runtime = inner.manifest, inner.slot, inner.providers, inner.runtime
        self.entered = threading.Event()
        self.release = threading.Event()
        self.closed = False

    def run_roles(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.entered.set()
        assert self.release.wait(5)
        assert not self.closed, "ran on a closed session"
        return self.inner.run_roles(x)

    def close(self) -> None:
        self.closed = True


def test_predict_answers_labels_probabilities_and_ids(state: StateDir, profile: Profile, linear_bundle: BundleMaker) -> None:
    table = ServingTable()
    table.swap("iris", session(state, profile, linear_bundle()))
    result = table.predict("iris", {"inputs": [ROW, ROW]})
    expected = linear_probabilities(np.array([ROW], np.float32), 0)[0]
    assert result.model == "iris" and result.version == "1.0.0" and len(result.request_id) == 32
    assert result.predictions == [LABELS[int(expected.argmax())]] * 2
    assert result.probabilities is not None and np.allclose(result.probabilities[0], expected, atol=1e-6)
    assert set(result.to_dict()) == {"model", "version", "request_id", "predictions", "probabilities"}
    assert table.predict("iris", {"instances": [dict(zip(["sepal_length", "sepal_width", "petal_length", "petal_width"],
                                                             ROW, strict=True))]}).predictions == result.predictions[:1]


def test_stats_count_requests_errors_and_latency_and_reset_on_swap(state: StateDir, profile: Profile,
                                                                   linear_bundle: BundleMaker) -> None:
    ticks = iter(np.arange(0, 100, 0.5))
    seen: list[tuple[str, str, float, bool]] = []
    table = ServingTable(clock=lambda: float(next(ticks)))
    table.add_observer(lambda *args: seen.append(args))
    table.swap("iris", session(state, profile, linear_bundle()))
    table.predict("iris", [ROW])
    with pytest.raises(InputError):
        table.predict("iris", [[1, 2]])
    stats = table.stats("iris")
    assert (stats.requests, stats.errors, stats.input_errors) == (1, 0, 1)
    assert stats.latencies_ms == (500.0,) and stats.percentile(50) == 500.0
    assert seen == [("iris", "1.0.0", 500.0, True)]
    table.swap("iris", session(state, profile, linear_bundle("2.0.0", seed=3)))
    assert table.stats("iris").requests == 0 and table.stats("iris").version == "2.0.0"


def test_an_observer_that_raises_is_logged_and_the_prediction_still_succeeds(
        state: StateDir, profile: Profile, linear_bundle: BundleMaker, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def broken(*_args: object) -> None:
        raise RuntimeError("telemetry bug")

    table = ServingTable()
    table.add_observer(broken)
    table.add_observer(lambda model, *_: seen.append(model))  # observers after the broken one still run
    table.swap("iris", session(state, profile, linear_bundle()))
    with caplog.at_level(logging.ERROR, logger="agent.serving"):
        result = table.predict("iris", [ROW])
    assert result.version == "1.0.0" and seen == ["iris"]
    assert table.stats("iris").requests == 1 and table.stats("iris").errors == 0
    assert any("observer failed for iris@1.0.0" in r.getMessage() and r.exc_info for r in caplog.records)


def test_unknown_model_is_named(state: StateDir) -> None:
    table = ServingTable()
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        table.predict("nope", [ROW])
    with pytest.raises(ModelNotFoundError):
        table.stats("nope")


def test_in_flight_call_finishes_on_the_old_session_which_then_closes(state: StateDir, profile: Profile,
                                                                      linear_bundle: BundleMaker) -> None:
    table = ServingTable()
    old = Gate(session(state, profile, linear_bundle()))
    table.swap("iris", old)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(table.predict, "iris", [ROW])
        assert old.entered.wait(5)
        table.swap("iris", session(state, profile, linear_bundle("2.0.0", seed=5)))
        assert not old.closed  # a call is still running on it
        assert table.predict("iris", [ROW]).version == "2.0.0"  # new calls go to the new one
        old.release.set()
        assert pending.result(5).version == "1.0.0"
    assert old.closed


def test_swap_under_hammering_threads_fails_no_request(state: StateDir, profile: Profile,
                                                       linear_bundle: BundleMaker) -> None:
    sessions = [session(state, profile, linear_bundle(f"1.{i}.0", seed=i)) for i in range(2)]
    table = ServingTable()
    table.swap("iris", sessions[0])
    stop = threading.Event()
    versions: set[str] = set()
    failures: list[BaseException] = []

    tally = Tally()

    def hammer() -> int:
        n = 0
        while not stop.is_set():
            try:
                versions.add(table.predict("iris", [ROW, ROW]).version)
                n += 1
            except BaseException as exc:  # any failure at all is the bug
                failures.append(exc)
            tally.add()
        return n

    with ThreadPoolExecutor(4) as pool:
        counts = [pool.submit(hammer) for _ in range(4)]
        seen = 0
        for i in range(60):
            seen = tally.wait_for_more(seen + 1)  # requests in flight across every swap
            table.swap("iris", session(state, profile, linear_bundle(f"1.{(i + 1) % 2}.0", seed=(i + 1) % 2)))
        tally.wait_for_more(tally.count + 3)
        stop.set()
        total = sum(c.result() for c in counts)
    assert failures == [] and total > 120
    assert versions == {"1.0.0", "1.1.0"}
