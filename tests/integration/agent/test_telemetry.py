"""Telemetry from a real agent process to a real Mosquitto: ordered, durable, counted.

The agent serves a converter-made digits bundle (64 features, 10 classes) with a short
telemetry interval; a plain paho subscriber decodes every batch with edgefleet.telemetry.
The broker is stopped and started again under the agent to show store-and-forward: nothing
lost under the outbox cap, the oldest dropped and counted over it.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.install import install_bundle
from edgefleet import telemetry, topics
from edgefleet.bundle import read_bundle
from edgefleet.profiles import load_profile
from simulation.fleet import MosquittoProcess
from tests.integration.agent.harness import AgentProcess, cli, dev_state, eventually
from tests.support.bundles import example, make_onnx_bundle

DEVICE = "dev-telemetry"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def golden(digits: Path) -> dict[str, Any]:
    return read_bundle(digits).golden()


@pytest.fixture(scope="module")
def validation() -> tuple[list[list[float]], list[int]]:
    """Held-out digits rows and their true labels (the converter validated the bundle on them)."""
    with example("digits-mlp").validation_csv.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        label = header.index(example("digits-mlp").labels_column)
        data = [[float(v) for v in row] for row in reader]
    return [[v for i, v in enumerate(row) if i != label] for row in data], [int(row[label]) for row in data]


class Batches:
    """A persistent-session subscriber that decodes every telemetry batch of one device."""

    def __init__(self, port: int, device_id: str = DEVICE) -> None:
        self.batches: list[telemetry.TelemetryBatch] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.device_id = device_id
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"batches-{time.monotonic_ns()}",
                                  clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(topics.telemetry(device_id), qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.subscribed.wait(10), "could not subscribe to telemetry"

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        batch = telemetry.decode(bytes(message.payload), device_id=self.device_id)
        with self.lock:
            self.batches.append(batch)

    def unique(self) -> list[telemetry.TelemetryBatch]:
        """First arrival of each seq, in arrival order (the server stores each seq once)."""
        seen: set[int] = set()
        out = []
        with self.lock:
            for batch in self.batches:
                if batch.seq not in seen:
                    seen.add(batch.seq)
                    out.append(batch)
        return out

    def count(self, model: str = "digits") -> int:
        """Requests counted (``count`` is inferences run: one per request, whatever its rows)."""
        return sum(r.count for b in self.unique() for r in b.models if r.model == model)

    def rows(self, model: str = "digits") -> int:
        """Rows predicted: the output class counts add up to them."""
        return sum(sum(r.outputs) for b in self.unique() for r in b.models if r.model == model)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_agent(tmp_path: Path, bundle: Path, broker: MosquittoProcess, **config: Any) -> AgentProcess:
    state = dev_state(tmp_path / "state", device_id=DEVICE, broker_url=broker.url)
    install_bundle(state, bundle, load_profile("generic-x86_64"))
    settings = {"telemetry_interval_s": 0.4, "telemetry_drift_every": 1, **config}
    toml = tmp_path / "agent.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    return AgentProcess(state.path, "--config", str(toml)).wait_ready()


def predict(agent: AgentProcess, rows: list[list[float]]) -> dict[str, Any]:
    answer = agent.predict(rows, model="digits")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def status(agent: AgentProcess) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{agent.url}/v1/status", timeout=5).json()
    return body


def assert_in_order(batches: list[telemetry.TelemetryBatch]) -> None:
    seqs = [b.seq for b in batches]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    # Persistent: sessions survive a restart, so a test subscriber misses nothing the agent
    # publishes while the broker is being started again.
    with MosquittoProcess(None, tmp_path / "mosquitto", auth=False, persistence=True) as running:
        yield running


def test_batches_arrive_in_order_with_increasing_seq_and_count_every_request(
        tmp_path: Path, digits: Path, golden: dict[str, Any], broker: MosquittoProcess) -> None:
    batches = Batches(broker.port)
    agent = start_agent(tmp_path, digits, broker)
    try:
        rows = golden["inputs"][:30]
        for i in range(0, 30, 3):
            predict(agent, rows[i:i + 3])
        assert eventually(lambda: batches.rows() == 30, timeout=15), (batches.rows(), agent.log())
        assert batches.count() == 10
        got = batches.unique()
        assert_in_order(got)
        assert [b.seq for b in got] == list(range(1, len(got) + 1))  # nothing missing from the first
        records = [r for b in got for r in b.models]
        assert {(r.model, r.version) for r in records} == {("digits", "1.0.0")}
        # Outputs in reference label order and feature counts over the bins add up to the rows.
        assert sum(sum(r.outputs) for r in records) == 30
        for feature in range(64):
            assert sum(sum(r.drift[feature]) for r in records if r.drift) == 30
        assert all(r.latency is not None for r in records if r.count)
        assert all(b.resource.rss_bytes for b in got)
    finally:
        agent.terminate()
        batches.close()


def test_broker_down_for_a_while_then_back_loses_nothing_under_the_cap(
        tmp_path: Path, digits: Path, golden: dict[str, Any], broker: MosquittoProcess) -> None:
    batches = Batches(broker.port)
    agent = start_agent(tmp_path, digits, broker, telemetry_interval_s=0.3)
    try:
        predict(agent, golden["inputs"][:5])
        assert eventually(lambda: batches.rows() == 5, timeout=15)
        broker.stop()
        for i in range(5, 25):  # served while offline: inference never waits on the link
            predict(agent, golden["inputs"][i:i + 1])
        assert eventually(lambda: status(agent)["telemetry"]["outbox"]["rows"] >= 6, timeout=15)
        offline_seq = status(agent)["telemetry"]["outbox"]["next_seq"] - 1
        broker.start()
        assert eventually(lambda: batches.rows() == 25 and max(b.seq for b in batches.unique()) >= offline_seq,
                          timeout=30), (batches.rows(), agent.log())
        assert batches.count() == 21
        got = batches.unique()
        assert_in_order(got)
        assert [b.seq for b in got] == list(range(1, len(got) + 1))
        assert sum(b.dropped for b in got) == 0
        assert eventually(lambda: status(agent)["telemetry"]["outbox"]["rows"] <= 1, timeout=10)
    finally:
        agent.terminate()
        batches.close()


def test_over_the_cap_the_oldest_batches_are_dropped_and_counted(
        tmp_path: Path, digits: Path, golden: dict[str, Any], broker: MosquittoProcess) -> None:
    batches = Batches(broker.port)
    agent = start_agent(tmp_path, digits, broker, telemetry_interval_s=0.25, outbox_max_rows=4)
    try:
        predict(agent, golden["inputs"][:2])
        assert eventually(lambda: batches.rows() == 2, timeout=15)
        go_offline_with_nothing_in_flight(agent, broker)
        before = max(b.seq for b in batches.unique())
        assert eventually(lambda: status(agent)["telemetry"]["outbox"]["next_seq"] > before + 12, timeout=30)
        broker.start()

        def settled() -> bool:
            got = batches.unique()
            last = max(b.seq for b in got)
            return last > before + 12 and len(got) + sum(b.dropped for b in got) == last

        assert eventually(settled, timeout=30), ([(b.seq, b.dropped) for b in batches.unique()], agent.log())
        got = batches.unique()
        assert_in_order(got)
        delivered = {b.seq for b in got}
        missing = sorted(set(range(1, max(delivered) + 1)) - delivered)
        # The lost ones are the oldest of the outage, in one run, and their number is reported.
        assert missing and missing == list(range(before + 1, before + 1 + len(missing))), missing
        assert sum(b.dropped for b in got) == len(missing)
        assert len([s for s in delivered if s > before]) >= 4
    finally:
        agent.terminate()
        batches.close()


def go_offline_with_nothing_in_flight(agent: AgentProcess, broker: MosquittoProcess) -> None:
    """Stop the broker at a moment the agent has no batch in flight, so that every batch is
    either delivered or dropped, never both (see docs/agent.md, "Telemetry": a batch paho
    holds for resending can also be counted as dropped). On a busy machine a batch may be
    published just as the broker goes; then start it again and retry."""
    for _ in range(5):
        assert eventually(lambda: (t := status(agent)["telemetry"])["in_flight"] == 0 and t["outbox"]["rows"] == 0
                          and status(agent)["mqtt"]["connected"], timeout=20, every=0.01)
        broker.stop()
        assert eventually(lambda: not status(agent)["mqtt"]["connected"], timeout=20)
        if status(agent)["telemetry"]["in_flight"] == 0:
            return
        broker.start()
    raise AssertionError("could not catch the agent with nothing in flight")


def test_shifted_inputs_show_as_drift_in_the_counts_and_the_status(
        tmp_path: Path, digits: Path, validation: tuple[list[list[float]], list[int]],
        broker: MosquittoProcess) -> None:
    reference = telemetry.ReferenceProfile.from_dict(read_bundle(digits).reference())
    batches = Batches(broker.port)
    agent = start_agent(tmp_path, digits, broker)
    try:
        rows = validation[0][:200]
        for i in range(0, 200, 20):
            predict(agent, rows[i:i + 20])
        assert eventually(lambda: batches.rows() == 200, timeout=15)
        normal = feature_psi(reference, batches.unique())
        assert status(agent)["models"][0]["drift"]["band"] == "stable", status(agent)["models"][0]["drift"]
        seen = len(batches.unique())
        # The same digits, inverted: ink becomes paper (pixel values 0..16 -> 16..0).
        for i in range(0, 200, 20):
            predict(agent, [[16.0 - v for v in row] for row in rows[i:i + 20]])
        assert eventually(lambda: batches.rows() == 400, timeout=15)
        shifted = feature_psi(reference, batches.unique()[seen:])
        informative = [n for n, f in zip(reference.feature_names, reference.features, strict=True) if len(f.counts) > 2]
        # Inverting a roughly symmetric pixel moves it little; most pixels are not symmetric.
        assert sum(shifted[n] > telemetry.DRIFT_ABOVE for n in informative) > len(informative) / 2, shifted
        assert not any(normal[n] > telemetry.DRIFT_ABOVE for n in informative), normal
        assert sorted(normal.values())[len(normal) // 2] < telemetry.STABLE_BELOW, normal
        answer = cli("agent", "status", "--state-dir", str(agent.state_dir), "--json")
        assert answer.returncode == 0, answer.stderr
        [model] = json.loads(answer.stdout)["daemon"]["models"]
        assert model["drift"]["band"] == "drift" and model["drift"]["max_psi"] > telemetry.DRIFT_ABOVE, model
        assert model["requests"] == 20 and model["latency_ms_p95"] > 0
    finally:
        agent.terminate()
        batches.close()


def feature_psi(reference: telemetry.ReferenceProfile, batches: list[telemetry.TelemetryBatch]) -> dict[str, float]:
    """PSI per feature of the summed counts, as the server computes it."""
    sums = [[0] * len(f.counts) for f in reference.features]
    for batch in batches:
        for record in batch.models:
            for feature, counts in enumerate(record.drift):
                for b, n in enumerate(counts):
                    sums[feature][b] += n
    return {f.name: telemetry.psi(s, f.counts) for f, s in zip(reference.features, sums, strict=True)}


def test_feedback_reaches_telemetry_and_accuracy_per_version(
        tmp_path: Path, digits: Path, validation: tuple[list[list[float]], list[int]],
        broker: MosquittoProcess) -> None:
    batches = Batches(broker.port)
    agent = start_agent(tmp_path, digits, broker)
    try:
        rows, truth = validation
        answers = [predict(agent, rows[i:i + 2]) for i in range(0, 20, 2)]
        items = [{"request_id": a["request_id"], "label": truth[2 * i + row], "row": row}
                 for i, a in enumerate(answers) for row in (0, 1)]
        items[0]["label"] = answers[0]["predictions"][0] + 1  # a label the model surely got wrong
        done = httpx.post(f"{agent.url}/v1/feedback", json=items, timeout=5)
        assert done.status_code == 200, done.text
        expected_correct = sum(a["predictions"][row] == it["label"] for a, it, row in
                               ((answers[k // 2], items[k], k % 2) for k in range(20)))
        assert done.json()["accuracy"] == [{"model": "digits", "version": "1.0.0", "labels": 20,
                                            "correct": expected_correct, "accuracy": expected_correct / 20}]
        assert expected_correct <= 19
        missing = httpx.post(f"{agent.url}/v1/feedback", json={"request_id": "not-a-request", "label": 1}, timeout=5)
        assert missing.status_code == 404 and "not-a-request" not in missing.text  # an unknown id is not echoed
        assert missing.json()["detail"] == "no prediction with that request id is remembered"

        def feedback() -> tuple[int, int]:
            records = [r for b in batches.unique() for r in b.models]
            return sum(r.feedback.labels for r in records), sum(r.feedback.correct for r in records)

        assert eventually(lambda: feedback() == (20, expected_correct), timeout=15), feedback()
        shown = cli("agent", "status", "--state-dir", str(agent.state_dir))
        assert shown.returncode == 0, shown.stderr
        assert f"{expected_correct / 20:.1%} of 20" in shown.stdout, shown.stdout
        # 20 rows are too few for a PSI to mean anything: the status says so instead of a band.
        assert "20 rows, too few" in shown.stdout and status(agent)["models"][0]["drift"]["band"] is None
    finally:
        agent.terminate()
        batches.close()


def test_batches_stored_offline_survive_an_agent_restart_and_seq_never_repeats(
        tmp_path: Path, digits: Path, golden: dict[str, Any], broker: MosquittoProcess) -> None:
    batches = Batches(broker.port)
    agent = start_agent(tmp_path, digits, broker, telemetry_interval_s=0.3)
    try:
        predict(agent, golden["inputs"][:3])
        assert eventually(lambda: batches.rows() == 3, timeout=15)
        broker.stop()
        predict(agent, golden["inputs"][3:10])
        assert eventually(lambda: status(agent)["telemetry"]["outbox"]["rows"] >= 3, timeout=15)
        assert agent.terminate() == 0  # SIGTERM also stores the interval it was counting
        # Started again, still offline: it goes on from the stored seq, then delivers everything.
        settings = tmp_path / "agent.toml"
        agent = AgentProcess(agent.state_dir, "--config", str(settings)).wait_ready()
        predict(agent, golden["inputs"][10:12])
        broker.start()
        assert eventually(lambda: batches.rows() == 12, timeout=30), (batches.rows(), agent.log())
        got = batches.unique()
        assert_in_order(got)
        assert [b.seq for b in got] == list(range(1, len(got) + 1))
    finally:
        agent.terminate()
        batches.close()
