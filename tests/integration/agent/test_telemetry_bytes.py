"""What telemetry costs a device on a metered link, measured on the agent's own batches.

A real serving table runs the converter-made digits model (64 features, 10 classes) under the
reporter at the default settings (a batch every 60 s, feature counts on every 10th); traffic
is one request a second with a label fed back for every 10th. The interval clock is injected:
the test composes 20 intervals' batches into a real outbox and prices what it stored, with
MQTT framing, over a day. It asserts the computed bound, not a timing.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from agent.install import install_bundle
from agent.metrics import Metrics
from agent.outbox import Outbox
from agent.reporter import Reporter
from agent.runtime import load_session
from agent.serving import ServingTable
from agent.state import StateDir
from edgefleet import telemetry, topics
from edgefleet.profiles import load_profile
from tests.support.bundles import example, make_onnx_bundle

DEVICE = "dev-3f2a9c1b7e"  # the length enrollment gives
INTERVALS = 20  # two full cycles of feature counts
PER_DAY = 24 * 3600 / telemetry.DEFAULT_INTERVAL_S


def mqtt_framing(topic: str, payload: int) -> int:
    """Bytes of a QoS 1 PUBLISH around ``payload`` plus its PUBACK (no TCP/IP, no TLS)."""
    remaining = 2 + len(topic.encode()) + 2 + payload  # topic length, topic, packet id, payload
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3
    return 1 + length_bytes + remaining - payload + 4


@pytest.mark.parametrize("drift_every", [telemetry.DEFAULT_DRIFT_EVERY, 10])
def test_one_device_one_model_sends_about_a_megabyte_a_day_or_a_third_of_it(tmp_path: Path, drift_every: int) -> None:
    """At defaults (feature counts on every batch: drift at most one interval old) about 1 MB a
    day; with counts on every 10th batch, for a metered link, well under half of that."""
    profile = load_profile("generic-x86_64")
    state = StateDir(tmp_path / "state").ensure()
    installed = install_bundle(state, make_onnx_bundle(tmp_path), profile)
    with example("digits-mlp").validation_csv.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        label = header.index(example("digits-mlp").labels_column)
        data = [[float(v) for v in row] for row in reader]
    rows = [[v for i, v in enumerate(row) if i != label] for row in data]
    truth = [int(row[label]) for row in data]

    clock = [0.0]
    table = ServingTable()
    metrics = Metrics()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    reporter = Reporter(metrics, device_id=DEVICE, outbox=outbox, monotonic=lambda: clock[0], drift_every=drift_every)
    reporter.attach(table)
    table.swap("digits", load_session(installed.slot, profile))
    n = 0
    for _interval in range(INTERVALS):
        for _ in range(int(telemetry.DEFAULT_INTERVAL_S)):  # one request a second
            result = table.predict("digits", {"inputs": [rows[n % len(rows)]]})
            if n % 10 == 0:
                reporter.feedback([{"request_id": result.request_id, "label": truth[n % len(rows)]}])
            n += 1
            clock[0] += 1.0
        reporter.close_interval(now=1_764_000_000.0 + clock[0])
    stored = outbox.pending(INTERVALS)
    table.close()
    outbox.close()

    assert [e.seq for e in stored] == list(range(1, INTERVALS + 1))
    batches = [telemetry.decode(e.payload, device_id=DEVICE) for e in stored]
    assert sum(r.count for b in batches for r in b.models) == INTERVALS * 60
    with_features = [b for b in batches if b.models[0].drift]
    assert len(with_features) == INTERVALS // drift_every

    topic = topics.telemetry(DEVICE)
    payload = sum(len(e.payload) for e in stored) / INTERVALS
    framed = sum(len(e.payload) + mqtt_framing(topic, len(e.payload)) for e in stored) / INTERVALS
    per_day_payload, per_day_framed = payload * PER_DAY, framed * PER_DAY
    featured = [len(e.payload) for e, b in zip(stored, batches, strict=True) if b.models[0].drift]
    print(f"\nmean batch {payload:.0f} B (with feature counts {sum(featured) / len(featured):.0f} B); "
          f"per day {per_day_payload / 1000:.0f} KB payload, {per_day_framed / 1000:.0f} KB with MQTT framing")
    if drift_every == 1:
        assert per_day_framed < 1_200_000, f"{per_day_framed / 1000:.0f} KB a day at defaults"
        return
    assert per_day_framed < 1_000_000, f"{per_day_framed / 1000:.0f} KB a day is not well under 1 MB"
    # And well under means with room for TCP/IP headers (about 300 KB a day at most, docs/telemetry.md).
    assert per_day_framed < 650_000, f"{per_day_framed / 1000:.0f} KB a day leaves no room for TCP/IP overhead"


@pytest.mark.parametrize(("payload", "expected"), [(10, 1 + 1 + 2 + 45 + 2 + 4), (200, 1 + 2 + 2 + 45 + 2 + 4)])
def test_framing_counts_the_publish_header_topic_packet_id_and_puback(payload: int, expected: int) -> None:
    assert mqtt_framing(topics.telemetry(DEVICE), payload) == expected
