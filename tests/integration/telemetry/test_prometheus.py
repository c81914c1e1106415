"""The server's per model version series on ``/metrics``, fed by real telemetry, read with prometheus_client.

Two real agent processes serve the converter-made digits bundle and report through a real
Mosquitto: the one at site a sees held-out digits and gets feedback, the one at site b sees
washed-out images (every pixel 16). The scrape must count their requests and latency buckets,
carry the feedback accuracy, the devices per version and state, and a drift gauge per group that
equals the drift API's figure (the one a drift alert judges); the Grafana dashboard and the
Prometheus rules in docker/monitoring must query only series these scrapes expose. The second test feeds encoded
batches from fake devices to show the bounds: no series for a version the registry does not
hold, and only the last finished rollouts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from edgefleet import telemetry, topics
from fleet_server.telemetry.views import KEEP_FINISHED_ROLLOUTS
from simulation.fleet import MosquittoProcess
from tests.integration.agent.harness import eventually
from tests.integration.server.harness import RunningServer, server_config
from tests.integration.telemetry.fleet import add_device, batch, record
from tests.integration.telemetry.test_agents_to_server import _agent, _predict, _validation
from tests.support.monitoring import dashboard_queries, exposed, metric_names, rule_queries

ADMIN = {"Authorization": "Bearer test-admin-token"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
DIGITS = (("model", "digits"), ("version", "1.0.0"))


def scrape(server: RunningServer) -> tuple[Samples, dict[str, str], str]:
    body = httpx.get(f"{server.url}/metrics", timeout=10).text
    families = list(text_string_to_metric_families(body))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    return samples, {f.name: f.type for f in families}, body


@pytest.fixture
def server(tmp_path: Path, mosquitto: MosquittoProcess, digits_bundle: Path) -> Iterator[RunningServer]:
    config = server_config(tmp_path / "server", f"sqlite:///{tmp_path}/server.sqlite", broker_url=mosquitto.url)
    with RunningServer(config) as running:
        running.ctx.registry.push(digits_bundle)
        assert running.ctx.mqtt.wait_connected(10)
        yield running


def test_real_agents_telemetry_becomes_per_version_counters_histograms_and_gauges(
        tmp_path: Path, server: RunningServer, mosquitto: MosquittoProcess, digits_bundle: Path) -> None:
    add_device(server.ctx.db, "dev-site-a", labels={"site": "a"})
    add_device(server.ctx.db, "dev-site-b", labels={"site": "b"})
    agents = [_agent(tmp_path, "dev-site-a", digits_bundle, mosquitto),
              _agent(tmp_path, "dev-site-b", digits_bundle, mosquitto)]
    try:
        site_a, site_b = (a.wait_ready() for a in agents)
        rows, truth = _validation()
        answers = [_predict(f"{site_a.url}/v1/models/digits/predict", rows[i:i + 30]) for i in range(0, 300, 30)]
        _predict(f"{site_b.url}/v1/models/digits/predict", [[16.0] * 64 for _ in range(200)])
        refused = httpx.post(f"{site_b.url}/v1/models/digits/predict", json={"inputs": [[1.0]]}, timeout=5)
        assert 400 <= refused.status_code < 500
        feedback = [{"request_id": a["request_id"], "label": truth[30 * i + r], "row": r}
                    for i, a in enumerate(answers[:2]) for r in range(30)]
        done = httpx.post(f"{site_a.url}/v1/feedback", json=feedback, timeout=5)
        assert done.status_code == 200, done.text
        (accuracy,) = done.json()["accuracy"]

        def settled() -> Samples | None:
            samples, _, _ = scrape(server)
            site = (("by", "label:site"), ("group", "site=b"), *DIGITS)
            ready = (samples.get(("edgefleet_model_predictions_total", DIGITS)) == 11
                     and samples.get(("edgefleet_model_feedback_labels_total", DIGITS)) == 60
                     and samples.get(("edgefleet_model_drift_rows", site)) == 200
                     # the gauges are read at most every 5 s: they may lag the counters by one read
                     and samples.get(("edgefleet_model_feedback_accuracy_ratio", DIGITS)) == accuracy["correct"] / 60
                     and samples.get(("edgefleet_model_devices", (*DIGITS[:1], ("state", "online"), DIGITS[1]))) == 2)
            return samples if ready else None

        assert eventually(settled, timeout=30), scrape(server)[2]
        samples, types, body = scrape(server)

        # counters and the latency histogram, in seconds, from the agents' buckets
        assert types["edgefleet_model_predictions"] == types["edgefleet_model_errors"] == "counter"
        assert types["edgefleet_model_latency_seconds"] == "histogram"
        assert samples[("edgefleet_model_errors_total", (("kind", "input"), *DIGITS))] == 1
        buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in samples.items()
                         if name == "edgefleet_model_latency_seconds_bucket")
        assert [le for le, _ in buckets] == [*telemetry.LATENCY_BUCKETS_S, float("inf")]
        assert [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[-1][1] == 11
        assert samples[("edgefleet_model_latency_seconds_count", DIGITS)] == 11
        assert samples[("edgefleet_model_feedback_correct_total", DIGITS)] == accuracy["correct"]
        assert samples[("edgefleet_model_feedback_accuracy_ratio", DIGITS)] == accuracy["correct"] / 60

        # drift gauges: the API's figure per group, which is what a drift alert judges
        view = httpx.get(f"{server.url}/api/v1/models/digits/1.0.0/drift", params={"by": "label:site"},
                         headers=ADMIN).json()
        for group in view["groups"]:
            labels = (("by", "label:site"), ("group", group["group"]), *DIGITS)
            assert samples[("edgefleet_model_drift_psi_max", labels)] == pytest.approx(group["max_psi"], abs=1e-4)
        site_b_psi = samples[("edgefleet_model_drift_psi_max", (("by", "label:site"), ("group", "site=b"), *DIGITS))]
        assert site_b_psi > telemetry.DRIFT_ABOVE
        assert samples[("edgefleet_model_drift_rows", (("by", "fleet"), ("group", "fleet"), *DIGITS))] == 500
        assert ("edgefleet_model_drift_psi_max", (("by", "profile"), ("group", "generic-x86_64"), *DIGITS)) in samples
        observed = {o.subject: o.value for o in server.ctx.fleet_views.observations() if o.kind == "drift"}
        assert observed["digits@1.0.0 site=b"] == site_b_psi

        # naming: counters end in _total, nothing names a device
        for line in body.splitlines():
            if line.startswith("# TYPE edgefleet_model") and line.endswith(" counter"):
                assert line.split()[2].endswith("_total"), line
        assert "dev-site" not in body

        # the Grafana dashboard and the Prometheus rules query only what the server and agents expose
        agent_scrape = httpx.get(f"{site_a.url}/metrics", timeout=5).text
        offered = exposed(body) | exposed(agent_scrape)
        for query in dashboard_queries() + rule_queries():
            assert metric_names(query) <= offered, (query, metric_names(query) - offered)
        assert {n for q in dashboard_queries() for n in metric_names(q)} >= {
            "edgefleet_model_predictions_total", "edgefleet_model_errors_total", "edgefleet_model_devices",
            "edgefleet_model_latency_seconds_bucket", "edgefleet_model_drift_psi_max",
            "edgefleet_model_feedback_accuracy_ratio", "edgefleet_agent_latency_seconds_bucket"}
    finally:
        for agent in agents:
            if agent.proc.poll() is None:
                agent.terminate()


@pytest.fixture
def fed_server(tmp_path: Path, database_url: str, mosquitto: MosquittoProcess,
               digits_bundle: Path) -> Iterator[RunningServer]:
    config = server_config(tmp_path / "data", database_url, broker_url=mosquitto.url)
    with RunningServer(config) as running:
        running.ctx.registry.push(digits_bundle)
        assert running.ctx.mqtt.wait_connected(10)
        yield running


def test_series_stay_bounded_unknown_versions_and_old_rollouts_make_none(
        fed_server: RunningServer, mosquitto: MosquittoProcess) -> None:
    server = fed_server
    add_device(server.ctx.db, "dev-1", models={"digits": "1.0.0"})
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-device")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        now = time.time()
        # 9.9.9 is in no registry: a device cannot make series by naming versions
        payload = telemetry.encode(batch("dev-1", 0, now, record(count=3, p95=1.0),
                                         record(version="9.9.9", count=5, p95=1.0)))
        client.publish(topics.telemetry("dev-1"), payload, qos=1).wait_for_publish(10)
        assert eventually(lambda: server.ctx.ingest.counts().stored == 1, timeout=20)
    finally:
        client.loop_stop()
        client.disconnect()
    with server.ctx.db.session() as session:
        for i in range(KEEP_FINISHED_ROLLOUTS + 3):
            session.execute(text("INSERT INTO rollouts (id, model, version, state, spec, header, log, created_at, "
                                 "updated_at) VALUES (:id, 'digits', '1.0.0', 'completed', '{}', :header, '[]', :at, "
                                 ":at)"),
                            {"id": f"done-{i}", "header": json.dumps({"stages": []}),
                             "at": f"2026-11-{10 + i:02d} 12:00:00+00:00"})
        # a live rollout in its wave 1 shadow stage (issue 18): one series per figure of a closed set
        stage = {"wave": 0, "mode": "shadow", "started_at": "2026-11-01T12:00:00+00:00", "sent": 2,
                 "opened_at": "2026-11-01T12:01:00+00:00", "verdict": None, "reason": "", "decided_at": None,
                 "figures_at": "2026-11-01T12:02:00+00:00",
                 "figures": {"kind": "shadow", "requests": 1204, "agreement": 0.61, "candidate_p99_ms": 2.5,
                             "serving_p99_ms": None, "device_id_list": ["dev-1"], "serving_buckets": [1, 2]}}
        session.execute(text("INSERT INTO rollouts (id, model, version, state, spec, header, log, created_at, "
                             "updated_at) VALUES ('live', 'digits', '1.0.0', 'running', '{}', :header, '[]', :at, :at)"),
                        {"header": json.dumps({"stages": [stage]}), "at": "2026-11-01 12:00:00+00:00"})
    samples, _, body = scrape(server)
    assert samples[("edgefleet_model_predictions_total", DIGITS)] == 3
    assert "9.9.9" not in body
    shown = sorted({dict(labels)["rollout"] for name, labels in samples if name == "edgefleet_rollout_info"})
    newest = [f"done-{i}" for i in range(3, KEEP_FINISHED_ROLLOUTS + 3)]
    assert shown == sorted([*newest, "live"])
    wave = (("mode", "shadow"), ("rollout", "live"), ("wave", "1"))
    figures = {dict(labels)["figure"]: value for (name, labels), value in samples.items()
               if name == "edgefleet_rollout_stage"}
    assert figures == {"requests": 1204, "agreement": 0.61, "candidate_p99_seconds": 0.0025}
    assert samples[("edgefleet_rollout_stage_state", tuple(sorted((*wave, ("state", "running")))))] == 1
    assert samples[("edgefleet_model_devices", (("model", "digits"), ("state", "online"), ("version", "1.0.0")))] == 1
