"""Per-model metrics, feedback accuracy and resource use, with the real serving table and /proc."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drift import DriftWindow
from agent.metrics import (
    FOLD_EVERY,
    BatchComposer,
    FeedbackConflictError,
    FeedbackError,
    LatencyHistogram,
    Metrics,
    ResourceReader,
    parse_proc_stat_cpu_ticks,
    read_temperature_c,
)
from agent.outbox import Outbox
from agent.runtime import load_session
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet import telemetry
from edgefleet.bundle import read_bundle
from edgefleet.profiles import Profile
from edgefleet.telemetry import Resource
from tests.support.bundles import make_onnx_bundle


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.02, 5_000.0), min_size=1, max_size=300))
def test_histogram_percentiles_are_within_the_bucket_ratio_of_the_truth(values: list[float]) -> None:
    histogram = LatencyHistogram()
    for v in values:
        histogram.add(v)
    for q in (50, 95, 99):
        got = histogram.percentile(q)
        # The nearest-rank percentile, which is what a bucket count can name.
        truth = sorted(values)[max(1, int(np.ceil(len(values) * q / 100))) - 1]
        assert got is not None
        assert truth / LatencyHistogram.RATIO <= got <= truth * LatencyHistogram.RATIO


def test_histogram_memory_is_bounded_and_extremes_are_kept() -> None:
    histogram = LatencyHistogram()
    for v in (0.0, float("nan"), 1e12):
        histogram.add(v)
    assert len(histogram.counts) == LatencyHistogram.BUCKETS + 1 and histogram.total == 3
    assert histogram.percentile(0.1) == LatencyHistogram.LOW_MS


def test_records_count_errors_latency_and_reset_each_interval() -> None:
    metrics = Metrics()
    for ms in (1.0, 2.0, 3.0, 100.0):
        metrics.observe("digits", "1.0.0", ms, True)
    metrics.observe("digits", "1.0.0", 5.0, False)
    metrics.error("digits", "1.0.0", "input")
    metrics.observe("digits", "2.0.0", 1.0, True)
    first = {(r.model, r.version): r for r in metrics.take_records()}
    old = first[("digits", "1.0.0")]
    assert old.count == 5 and old.errors == {"inference": 1, "input": 1}
    assert old.latency is not None and 2.8 < old.latency.p50 < 3.2 and 95 < old.latency.p99 < 105
    assert first[("digits", "2.0.0")].count == 1
    assert metrics.take_records() == []  # nothing happened since: an idle model costs no bytes


def test_feedback_scores_the_remembered_prediction_and_accuracy_rolls() -> None:
    metrics = Metrics(accuracy_window=4, remember_limit=3)
    for i, label in enumerate(["cat", "dog", "cat"]):
        metrics.remember(f"r{i}", "pets", "1.0.0", [label])
    assert metrics.feedback("r0", "cat") is True
    assert metrics.feedback("r1", "cat") is False
    assert metrics.accuracy("pets", "1.0.0").value == pytest.approx(0.5)
    metrics.remember("r3", "pets", "1.0.0", [3, 4])
    with pytest.raises(FeedbackError, match="no prediction with that request id"):
        metrics.feedback("r0", "cat")  # forgotten: only the last 3 requests are kept
    assert metrics.feedback("r3", "4", row=1) is True  # labels compare as strings
    with pytest.raises(FeedbackError, match="row 2 does not exist"):
        metrics.feedback("r3", 4, row=2)
    with pytest.raises(FeedbackConflictError, match="row 1 of that request is labelled already"):
        metrics.feedback("r3", "3", row=1)  # one label per prediction: a second never counts
    for i in range(4):
        metrics.remember(f"s{i}", "pets", "1.0.0", ["cat"])
        metrics.feedback(f"s{i}", "cat")
    rolling = metrics.accuracy("pets", "1.0.0")
    assert (rolling.labels, rolling.correct) == (4, 4)  # the window keeps the last 4 labels only
    record = metrics.take_records()[0]
    assert (record.feedback.labels, record.feedback.correct) == (7, 6)  # the interval keeps them all


def test_serving_table_observer_and_drift_make_a_batch_that_round_trips(
        state: StateDir, profile: Profile, tmp_path: Path) -> None:
    # A converter-made digits bundle: 64 features, 10 classes, a real reference.json.
    bundle = read_bundle(make_onnx_bundle(tmp_path))
    session = load_session(ModelStore(state).stage(bundle), profile)
    table = ServingTable()
    table.swap("digits", session)
    metrics = Metrics()
    table.add_observer(metrics.observe)
    window = DriftWindow(bundle.reference())
    rows = np.asarray(bundle.golden()["inputs"][:8], dtype=np.float32)
    result = table.predict("digits", rows)
    window.observe(rows, result.predictions, now=1.0)
    metrics.remember(result.request_id, "digits", result.version, result.predictions)
    metrics.feedback(result.request_id, result.predictions[0])

    records = metrics.take_records({("digits", bundle.manifest.version): window})
    batch = telemetry.TelemetryBatch("dev-1", 1, 1000.0, resource=ResourceReader().read(), models=tuple(records))
    decoded = telemetry.decode(telemetry.encode(batch))
    assert decoded == batch
    (record,) = decoded.models
    assert record.count == 1 and sum(record.outputs) == 8
    assert len(record.drift) == 64 and all(sum(f) == 8 for f in record.drift)
    assert (record.feedback.labels, record.feedback.correct) == (1, 1)


def test_resource_reader_reads_this_process_from_proc() -> None:
    times = iter([0.0, 2.0])
    reader = ResourceReader(clock=lambda: next(times))
    first = reader.read()
    assert first.cpu_percent is None  # CPU % needs two readings
    sum(i * i for i in range(300_000))  # burn a little CPU between the readings
    second = reader.read()
    assert second.cpu_percent is not None and second.cpu_percent >= 0
    assert second.rss_bytes is not None and second.rss_bytes > 10 * 1024 * 1024  # a Python with numpy loaded


def test_cpu_ticks_survive_a_command_name_with_spaces_and_parentheses() -> None:
    fields = " ".join(str(i) for i in range(3, 53))  # field n holds n
    assert parse_proc_stat_cpu_ticks(f"1234 (odd) name)) {fields}") == 14 + 15
    real = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert parse_proc_stat_cpu_ticks(real) >= 0


def test_temperature_is_the_hottest_readable_zone_or_none(tmp_path: Path) -> None:
    assert read_temperature_c(tmp_path) is None  # a board without thermal zones
    for zone, text in (("thermal_zone0", "48312\n"), ("thermal_zone1", "61000\n"), ("thermal_zone2", "garbage")):
        (tmp_path / "class" / "thermal" / zone).mkdir(parents=True)
        (tmp_path / "class" / "thermal" / zone / "temp").write_text(text)
    assert read_temperature_c(tmp_path) == 61.0


def test_composer_batches_carry_outbox_seq_and_features_every_nth(tmp_path: Path) -> None:
    reference = {"rows": 2, "features": [{"name": "a", "edges": [0.0, 1.0, 2.0], "counts": [1, 1]}],
                 "outputs": {"kind": "classes", "labels": ["x", "y"], "counts": [1, 1]}}
    metrics = Metrics()
    windows = {("m", "1.0.0"): DriftWindow(reference)}
    composer = BatchComposer("dev-7", metrics, windows=lambda: windows, drift_every=3,
                             resource=lambda: Resource(1.0, 1000, None))
    with Outbox(tmp_path / "outbox.sqlite", max_rows=4) as outbox:
        for minute in range(6):
            metrics.observe("m", "1.0.0", 2.0, True)
            windows[("m", "1.0.0")].observe([[0.5], [1.5]], ["x", "y"], now=minute * 60.0)
            outbox.append(composer.compose(1000.0 + minute * 60))
        batches = [telemetry.decode(e.payload, device_id="dev-7") for e in outbox.pending()]
    assert [(b.seq, b.dropped) for b in batches] == [(3, 0), (4, 0), (5, 0), (6, 1)]  # seq 1 dropped by 5, reported by 6
    assert [bool(b.models[0].drift) for b in batches] == [True, False, False, True]
    assert batches[0].models[0].drift == ((3, 3),)  # three intervals of two rows, deferred then sent
    assert all(b.models[0].outputs == (1, 1) and b.resource.rss_bytes == 1000 for b in batches)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.floats(0.0, 1e9), st.sampled_from([0.0, 0.01, float("nan"), float("inf"), -1.0])),
                max_size=200))
def test_histogram_add_many_counts_what_add_counts_one_by_one(values: list[float]) -> None:
    one_by_one, in_bulk = LatencyHistogram(), LatencyHistogram()
    for v in values:
        if v != float("inf"):  # add's int() refuses infinity; add_many puts it in the last bucket
            one_by_one.add(v)
    in_bulk.add_many(np.asarray([v for v in values if v != float("inf")], dtype=np.float64))
    assert in_bulk.counts == one_by_one.counts and in_bulk.total == one_by_one.total
    infinite = LatencyHistogram()
    infinite.add_many(np.asarray([float("inf")]))
    assert infinite.counts[-1] == 1


def test_observe_queues_and_every_read_counts_all_of_it_exactly() -> None:
    # Fewer than FOLD_EVERY calls are only queued; the read folds them. More fold on the way.
    metrics = Metrics()
    latencies = [0.05 * (i % 300) for i in range(FOLD_EVERY * 2 + 17)]
    for i, ms in enumerate(latencies):
        metrics.observe("digits", "1.0.0", ms, ok=i % 100 != 7)
    expected = [0] * (len(telemetry.LATENCY_BUCKETS_S) + 1)
    for ms in latencies:
        expected[telemetry.latency_bucket(ms / 1000.0)] += 1
    (total,) = metrics.totals()
    assert total.requests == len(latencies) and list(total.buckets) == expected
    assert total.errors == {"inference": sum(1 for i in range(len(latencies)) if i % 100 == 7)}
    assert total.latency_s == pytest.approx(sum(latencies) / 1000.0)
    (record,) = metrics.take_records()
    assert record.count == len(latencies) and sum(record.latency_buckets) == len(latencies)
    assert record.errors == total.errors


def test_observers_on_many_threads_lose_no_count_while_records_are_taken() -> None:
    metrics = Metrics()
    threads, per_thread = 8, FOLD_EVERY + 333
    taken: list[int] = []
    done = threading.Event()

    def observe() -> None:
        for i in range(per_thread):
            metrics.observe("digits", "1.0.0", 0.1 + (i % 7), True)

    def take() -> None:  # the reporter's interval, racing with the serving threads
        while not done.is_set():
            taken.extend(r.count for r in metrics.take_records())

    taker = threading.Thread(target=take)
    taker.start()
    workers = [threading.Thread(target=observe) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    taker.join()
    taken.extend(r.count for r in metrics.take_records())
    assert sum(taken) == threads * per_thread
    (total,) = metrics.totals()
    assert total.requests == threads * per_thread and sum(total.buckets) == threads * per_thread
