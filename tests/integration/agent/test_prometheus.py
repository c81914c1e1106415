"""The agent's ``GET /metrics`` through a real agent process, read with prometheus_client's parser.

The agent serves the converter-made digits bundle and publishes telemetry to a real Mosquitto.
Predictions, a refused request, feedback and shifted inputs go through its local API; the
scrape must count them per model version (counters, a latency histogram in seconds, accuracy
and drift gauges that equal what ``agent status`` says), and the telemetry batches must carry
the same latency buckets (the contract's ``h``) for the server's histogram.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edgefleet import telemetry
from simulation.fleet import MosquittoProcess
from tests.integration.agent.harness import AgentProcess, eventually
from tests.integration.agent.test_telemetry import (  # noqa: F401  (fixtures)
    Batches,
    broker,
    digits,
    predict,
    start_agent,
    status,
    validation,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
DIGITS = (("model", "digits"), ("version", "1.0.0"))


def scrape(agent: AgentProcess) -> tuple[Samples, dict[str, str]]:
    answer = httpx.get(f"{agent.url}/metrics", timeout=5)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = list(text_string_to_metric_families(answer.text))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    return samples, {f.name: f.type for f in families}


def test_metrics_count_requests_errors_latency_feedback_and_drift_per_model_version(
        tmp_path: Path, digits: Path, validation: tuple[list[list[float]], list[int]],  # noqa: F811
        broker: MosquittoProcess) -> None:  # noqa: F811
    batches = Batches(broker.port)
    agent = start_agent(tmp_path, digits, broker)
    try:
        samples, types = scrape(agent)
        assert samples[("edgefleet_agent_serving", DIGITS)] == 1
        assert ("edgefleet_agent_predictions_total", DIGITS) not in samples  # nothing ran yet
        assert types["edgefleet_agent_latency_seconds"] == "histogram"
        assert types["edgefleet_agent_predictions"] == "counter"  # the parser strips _total

        rows, truth = validation
        answers: list[dict[str, Any]] = [predict(agent, rows[i:i + 20]) for i in range(0, 200, 20)]
        refused = agent.predict([[1.0, 2.0]], model="digits")  # 2 features where 64 are expected
        assert 400 <= refused.status_code < 500, refused.text
        items = [{"request_id": a["request_id"], "label": truth[20 * i + r], "row": r}
                 for i, a in enumerate(answers) for r in range(2)]
        assert httpx.post(f"{agent.url}/v1/feedback", json=items, timeout=5).status_code == 200
        correct = sum(a["predictions"][r] == truth[20 * i + r] for i, a in enumerate(answers) for r in range(2))

        samples, _ = scrape(agent)
        assert samples[("edgefleet_agent_predictions_total", DIGITS)] == 10
        assert samples[("edgefleet_agent_errors_total", (("kind", "input"), *DIGITS))] == 1
        buckets = [(float(dict(labels)["le"]), value) for (name, labels), value in samples.items()
                   if name == "edgefleet_agent_latency_seconds_bucket"]
        assert [le for le, _ in sorted(buckets)] == [*telemetry.LATENCY_BUCKETS_S, float("inf")]
        counts = [value for _, value in sorted(buckets)]
        assert counts == sorted(counts) and counts[-1] == 10  # cumulative, +Inf holds every request
        assert samples[("edgefleet_agent_latency_seconds_count", DIGITS)] == 10
        assert 0 < samples[("edgefleet_agent_latency_seconds_sum", DIGITS)] < 10
        assert samples[("edgefleet_agent_feedback_labels_total", DIGITS)] == 20
        assert samples[("edgefleet_agent_feedback_correct_total", DIGITS)] == correct
        assert samples[("edgefleet_agent_feedback_accuracy_ratio", DIGITS)] == correct / 20
        assert samples[("edgefleet_agent_drift_rows", DIGITS)] == 200
        assert samples[("edgefleet_agent_drift_psi_max", DIGITS)] < telemetry.DRIFT_ABOVE

        # The same digits, inverted (ink becomes paper): the inputs drift.
        for i in range(0, 200, 20):
            predict(agent, [[16.0 - v for v in row] for row in rows[i:i + 20]])
        samples, _ = scrape(agent)
        drift = status(agent)["models"][0]["drift"]
        assert samples[("edgefleet_agent_drift_psi_max", DIGITS)] == drift["max_psi"] > telemetry.DRIFT_ABOVE
        assert samples[("edgefleet_agent_drift_rows", DIGITS)] == drift["rows"] == 400

        # The telemetry carries the same buckets: the server's histogram adds them up.
        def sent() -> list[int]:
            total = [0] * (len(telemetry.LATENCY_BUCKETS_S) + 1)
            for record in (r for b in batches.unique() for r in b.models):
                assert sum(record.latency_buckets) == record.count
                for i, n in enumerate(record.latency_buckets):
                    total[i] += n
            return total

        assert eventually(lambda: sum(sent()) == 20, timeout=15), sent()
        samples, _ = scrape(agent)
        running = 0
        for bound, n in zip(telemetry.LATENCY_BUCKETS_S, sent(), strict=False):
            running += n
            key = ("edgefleet_agent_latency_seconds_bucket", (("le", repr(bound)), *DIGITS))
            assert samples[key] == running, (bound, samples[key], running)
    finally:
        agent.terminate()
        batches.close()
