"""The agent's hand-written Prometheus text format reads back with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import Accuracy, Metrics
from agent.prometheus import Family, agent_families, render
from edgefleet.telemetry import LATENCY_BUCKETS_S


def parsed(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_label_values_with_quotes_backslashes_and_newlines_survive_the_parser() -> None:
    family = Family("edgefleet_agent_test", "gauge", 'help with "quotes" and \\ and\nnewline')
    family.add({"model": 'a"b\\c\nd'}, 0.5)
    family.add({}, float("inf"))
    assert parsed(render([family])) == {("edgefleet_agent_test", (("model", 'a"b\\c\nd'),)): 0.5,
                                        ("edgefleet_agent_test", ()): float("inf")}


def test_totals_become_counters_and_a_cumulative_histogram_in_seconds() -> None:
    metrics = Metrics()
    for ms in (0.05, 0.3, 0.3, 2.0, 20_000.0):  # the last is over every bound: only in +Inf
        metrics.observe("digits", "1.0.0", ms, ok=ms < 10_000)
    metrics.error("digits", "1.0.0", "input")
    samples = parsed(render(agent_families(serving={"digits": "1.0.0"}, totals=metrics.totals(),
                                           accuracies=[Accuracy("digits", "1.0.0", 4, 3)], drift={},
                                           outbox_rows=7)))
    labels = (("model", "digits"), ("version", "1.0.0"))
    assert samples[("edgefleet_agent_predictions_total", labels)] == 5
    assert samples[("edgefleet_agent_errors_total", (("kind", "inference"), *labels))] == 1
    assert samples[("edgefleet_agent_errors_total", (("kind", "input"), *labels))] == 1
    buckets = {float(dict(k[1])["le"]): v for k, v in samples.items() if k[0] == "edgefleet_agent_latency_seconds_bucket"}
    assert buckets[0.0001] == 1 and buckets[0.0005] == 3 and buckets[0.0025] == 4 and buckets[10.0] == 4
    assert buckets[float("inf")] == 5 and len(buckets) == len(LATENCY_BUCKETS_S) + 1
    assert abs(samples[("edgefleet_agent_latency_seconds_sum", labels)] - 20.00265) < 1e-9
    assert samples[("edgefleet_agent_feedback_accuracy_ratio", labels)] == 0.75
    assert samples[("edgefleet_agent_outbox_rows", ())] == 7


def test_totals_are_kept_for_the_last_versions_of_a_model_only() -> None:
    metrics = Metrics()
    for minor in range(6):
        metrics.observe("digits", f"1.{minor}.0", 1.0, ok=True)
    metrics.observe("iris", "1.0.0", 1.0, ok=True)
    assert [(t.model, t.version) for t in metrics.totals()] == [
        ("digits", "1.3.0"), ("digits", "1.4.0"), ("digits", "1.5.0"), ("iris", "1.0.0")]
