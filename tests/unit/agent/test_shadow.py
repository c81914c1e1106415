"""Shadow figures and the memory budget, pure; the mirror's queue and the serving table's candidates
with a real onnxruntime session (no process, no broker)."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.errors import AgentError
from agent.memory import (
    MIB,
    SESSION_OVERHEAD_BYTES,
    budget_bytes,
    check_after_load,
    check_before_load,
)
from agent.mirror import Mirror
from agent.serving import ServingTable
from agent.shadow import Sampler, ShadowTally, compare
from edgefleet.telemetry import LATENCY_BUCKETS_S, ShadowRecord, decode, encode
from edgefleet.telemetry import TelemetryBatch as Batch
from simulation.fleet import wait_until
from tests.unit.agent.test_health import onnx_bundle, session_for

# --- comparison ----------------------------------------------------------------------------------

def test_a_classifier_agrees_on_the_same_top1_label_of_every_row() -> None:
    assert compare("classification", [1, 2], [1, 2], 0.05).agreed
    assert compare("classification", [1, "2"], ["1", 2], 0.05).agreed  # 3 and "3" are one class, as in feedback
    assert not compare("classification", [1, 2], [1, 3], 0.05).agreed
    assert not compare("classification", [1, 2], [1], 0.05).agreed  # a length mismatch is a disagreement
    assert compare("classification", [1], [1], 0.05).rel_error is None


def test_a_regressor_agrees_within_the_candidates_relative_tolerance() -> None:
    near = compare("regression", [10.0, -4.0], [10.4, -4.1], 0.05)
    assert near.agreed and near.rel_error == pytest.approx((0.04 + 0.025) / 2)
    assert not compare("regression", [10.0], [11.0], 0.05).agreed
    assert compare("regression", [0.0], [1e-12], 0.05).agreed  # eps keeps a zero answer from dividing by zero
    bad = compare("regression", [1.0], [math.nan], 0.05)
    assert not bad.agreed and bad.rel_error is None  # NaN disagrees and stays out of the sum
    assert not compare("regression", [[1.0], [2.0]], [[1.0]], 0.05).agreed


# --- tally ---------------------------------------------------------------------------------------

def test_the_tally_closes_intervals_into_shadow_records_and_keeps_totals() -> None:
    tally = ShadowTally("digits", "1.1.0", "1.0.0")
    assert tally.take() is None  # an idle candidate costs no bytes
    tally.compared(compare("classification", [1], [1], 0.05), 0.0003, 0.002)
    tally.compared(compare("classification", [1], [2], 0.05), 0.0003, 0.02)
    tally.skipped(3)
    tally.error()
    record = tally.take()
    assert record == ShadowRecord("digits", "1.1.0", "1.0.0", compared=2, agreed=1, skipped=3, errors=1,
                                  serving_buckets=(0, 0, 2), candidate_buckets=(0, 0, 0, 0, 1, 0, 0, 1))
    assert decode(encode(Batch("dev-1", 1, 1.0, shadow=(record,)))).shadow == (record,)
    assert tally.take() is None
    tally.compared(compare("regression", [1.0], [1.01], 0.05), 0.001, 0.001)
    totals = tally.totals()
    assert (totals.compared, totals.agreed, totals.skipped, totals.errors) == (3, 2, 3, 1)
    taken = tally.take()
    assert taken is not None and taken.rel_error_sum == pytest.approx(0.01)
    assert len(LATENCY_BUCKETS_S) + 1 >= len(taken.serving_buckets)


def test_the_sampler_picks_about_its_share_with_independent_draws() -> None:
    draws = iter([0.05, 0.5, 0.09, 0.99])
    pick = Sampler(0.1, lambda: next(draws))
    assert [pick() for _ in range(4)] == [True, False, True, False]
    assert all(Sampler(1.0, lambda: 0.999999)() for _ in range(3))
    assert not Sampler(0.0)()
    share = sum(Sampler(0.25)() for _ in range(20_000)) / 20_000
    assert 0.23 < share < 0.27
    with pytest.raises(ValueError):
        Sampler(1.5)


# --- memory budget --------------------------------------------------------------------------------

def test_the_memory_budget_refuses_a_candidate_that_would_not_fit_with_its_figures() -> None:
    budget = budget_bytes(512, 0.5)
    assert budget == 256 * MIB
    fits = check_before_load(100 * MIB, 10 * MIB, ram_mb=512, share=0.5)
    assert fits.fits and fits.cost_bytes == 20 * MIB + SESSION_OVERHEAD_BYTES
    refused = check_before_load(240 * MIB, 10 * MIB, ram_mb=512, share=0.5)
    assert not refused.fits
    assert "does not fit" in refused.message and "256.0 MiB" in refused.message and "estimated" in refused.message
    assert refused.to_dict() == {"fits": False, "rss_mb": 240.0, "cost_mb": 28.0, "budget_mb": 256.0,
                                 "measured": False}
    measured = check_after_load(100 * MIB, 300 * MIB, ram_mb=512, share=0.5)
    assert not measured.fits and measured.measured and measured.cost_bytes == 200 * MIB
    with pytest.raises(AgentError, match="share"):
        budget_bytes(512, 0.0)


# --- the mirror and the serving table -------------------------------------------------------------

ROWS = np.random.default_rng(3).normal(size=(30, 4)).astype(np.float32)


def _table(tmp_path: Path, serving: str = "1.0.0") -> ServingTable:
    table = ServingTable()
    session, _ = session_for(tmp_path / "a", onnx_bundle(serving, seed=0))
    table.swap("digits", session)
    return table


def test_shadow_answers_come_from_the_serving_version_and_disagreement_is_counted(tmp_path: Path) -> None:
    table = _table(tmp_path)
    shifted, _ = session_for(tmp_path / "b", onnx_bundle("1.1.0", seed=1))  # passes its own golden samples
    mirror = Mirror(shifted, ShadowTally("digits", "1.1.0", "1.0.0"), sample=1.0, queue_size=64, start=False)
    table.start_shadow("digits", mirror)
    answers = [table.predict("digits", row.tolist()) for row in ROWS]
    assert {a.version for a in answers} == {"1.0.0"}, "the candidate answered a request in shadow mode"
    assert mirror.pending() == len(ROWS)
    assert mirror.run_pending() == len(ROWS)
    totals = mirror.tally.totals()
    assert totals.compared == len(ROWS) and totals.errors == 0 and totals.skipped == 0
    assert totals.agreement is not None and totals.agreement < 0.9  # another model: it disagrees
    assert table.candidates()[0]["mode"] == "shadow" and table.candidates()[0]["compared"] == len(ROWS)
    table.end_candidate("digits")
    records = table.take_shadow_records()  # the ended stage's last interval is still reported once
    assert len(records) == 1 and records[0].compared == len(ROWS)
    assert table.take_shadow_records() == [] and table.candidates() == []


def test_a_full_queue_sheds_shadow_work_and_counts_it_skipped(tmp_path: Path) -> None:
    table = _table(tmp_path)
    same, _ = session_for(tmp_path / "b", onnx_bundle("1.1.0", seed=0))
    mirror = Mirror(same, ShadowTally("digits", "1.1.0", "1.0.0"), sample=1.0, queue_size=4, start=False)
    table.start_shadow("digits", mirror)
    for row in ROWS[:10]:
        assert table.predict("digits", row.tolist()).version == "1.0.0"
    assert mirror.pending() == 4 and mirror.tally.totals().skipped == 6
    mirror.stop()  # the 4 queued, never compared, count as skipped too
    assert mirror.tally.totals().skipped == 10 and mirror.tally.totals().compared == 0


def test_the_mirror_worker_compares_off_the_request_thread(tmp_path: Path) -> None:
    table = _table(tmp_path)
    same, _ = session_for(tmp_path / "b", onnx_bundle("1.1.0", seed=0))
    threads: set[str] = set()
    original = same.run_roles

    def spy(x: np.ndarray) -> dict[str, np.ndarray]:
        threads.add(threading.current_thread().name)
        return original(x)

    same.run_roles = spy  # type: ignore[method-assign]
    mirror = Mirror(same, ShadowTally("digits", "1.1.0", "1.0.0"), sample=1.0, queue_size=64)
    table.start_shadow("digits", mirror)
    for row in ROWS:
        table.predict("digits", row.tolist())
    table.predict_many("digits", [{"inputs": [row.tolist()]} for row in ROWS[:5]])  # micro-batched calls too
    wait_until(lambda: mirror.tally.totals().compared + mirror.tally.totals().skipped == len(ROWS) + 5, 10,
               "the mirror to take every sampled request")
    assert threads == {"edgefleet-shadow-digits"}
    assert mirror.tally.totals().agreed == mirror.tally.totals().compared  # the same model agrees
    table.close()


def test_a_canary_answers_about_its_share_under_its_own_version(tmp_path: Path) -> None:
    table = _table(tmp_path)
    candidate, _ = session_for(tmp_path / "b", onnx_bundle("1.1.0", seed=1))
    seen: list[tuple[str, str]] = []
    table.add_observer(lambda model, version, ms, ok: seen.append((model, version)))
    table.start_canary("digits", candidate, 0.2)
    versions = [table.predict("digits", ROWS[i % len(ROWS)].tolist()).version for i in range(2000)]
    share = versions.count("1.1.0") / len(versions)
    assert 0.16 < share < 0.24, share
    assert set(versions) == {"1.0.0", "1.1.0"}
    assert seen.count(("digits", "1.1.0")) == versions.count("1.1.0")  # counted under the version that answered
    batched = table.predict_many("digits", [{"inputs": [ROWS[0].tolist()]}] * 500)
    batch_share = sum(r.version == "1.1.0" for r in batched if not isinstance(r, Exception)) / 500
    assert 0.13 < batch_share < 0.27, batch_share
    assert table.stats("digits").version == "1.0.0"  # the serving version's stats stay its own
    canary = table.candidates()[0]
    assert canary["mode"] == "canary" and canary["share"] == 0.2 and canary["requests"] > 0
    table.end_candidate("digits")
    assert {table.predict("digits", ROWS[0].tolist()).version for _ in range(50)} == {"1.0.0"}


def test_the_worker_sheds_a_job_taken_while_a_served_request_runs(tmp_path: Path) -> None:
    same, _ = session_for(tmp_path / "b", onnx_bundle("1.1.0", seed=0))
    busy = [True]
    mirror = Mirror(same, ShadowTally("digits", "1.1.0", "1.0.0"), sample=1.0, queue_size=64, busy=lambda: busy[0])
    served = [int(v) for v in same.run_roles(ROWS[:1])["label"]]
    for _ in range(3):
        mirror.offer(ROWS[:1], None, served, 0.1)
    wait_until(lambda: mirror.tally.totals().skipped == 3, 10, "the worker to shed the jobs")
    busy[0] = False
    mirror.offer(ROWS[:1], None, served, 0.1)
    wait_until(lambda: mirror.tally.totals().compared == 1, 10, "the worker to compare once idle")
    mirror.stop()


def test_the_worker_spends_at_most_its_cpu_share_on_the_candidate(tmp_path: Path) -> None:
    same, _ = session_for(tmp_path / "b", onnx_bundle("1.1.0", seed=0))
    now = [0.0]
    original = same.run_roles
    calls: list[int] = []

    def thirty_ms(x: np.ndarray) -> dict[str, np.ndarray]:
        now[0] += 0.03  # each candidate run costs 30 ms of the injected clock
        calls.append(len(x))
        return original(x)

    same.run_roles = thirty_ms  # type: ignore[method-assign]
    mirror = Mirror(same, ShadowTally("digits", "1.1.0", "1.0.0"), sample=1.0, queue_size=100, cpu_share=0.1,
                    clock=lambda: now[0], start=False)
    served = [int(v) for v in original(ROWS[:1])["label"]]

    def round_of(n: int = 16) -> None:
        for _ in range(n):
            mirror.offer(ROWS[:1], None, served, 0.1)
        mirror.run_pending()

    for _ in range(3):
        round_of()
    totals = mirror.tally.totals()
    # A 50 ms burst pays for two 30 ms runs (16 jobs each, one call a batch); then 10% of the time.
    assert calls == [16, 16] and (totals.compared, totals.skipped) == (32, 16)
    now[0] += 1.0  # a second later the allowance is full again (capped at the burst)
    round_of()
    assert mirror.tally.totals().compared == 48 and calls[-1] == 16
    mirror.stop()
