"""The report code of scripts/bench: tables, targets and the run document (no timing measured here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.inference import schedule
from bench.report import Table, render_markdown, render_text, targets, write_run
from bench.stats import LatencySummary, combine_repeats, percentile, ratio, spread

REFERENCE = Path(__file__).resolve().parents[3] / "bench" / "results" / "reference.json"


def _latency(p50: float, rps: float) -> dict[str, Any]:
    return {"requests": 100, "errors": 0, "p50_ms": p50, "p95_ms": p50 * 2, "p99_ms": p50 * 3, "throughput_rps": rps}


def _inference_model(name: str, flask_rps: float, agent_rps: float, fastapi_rps: float = 5000.0) -> dict[str, Any]:
    results = {kind: {"1": _latency(p50, rps), "16": _latency(p50 * 10, rps)}
               for kind, p50, rps in (("flask", 1.0, flask_rps), ("raw_run", 0.01, 1e5),
                                      ("agent_tcp", 0.3, agent_rps), ("agent_unix", 0.2, agent_rps),
                                      ("fastapi_unix", 0.3, fastapi_rps))}
    spread_of = {"min": 2.0, "median": ratio(agent_rps, fastapi_rps), "max": 4.0}
    return {"model": name, "results": results, "notes": [], "summary": {
        "baseline": "Flask + joblib model.predict", "agent_unix_p50_overhead_ms": 0.09,
        "agent_unix_p50_overhead_ms_range": {"min": 0.08, "median": 0.09, "max": 0.2},
        "agent_tcp_p50_overhead_ms": 0.29, "agent_unix_over_flask_throughput_at_16": ratio(agent_rps, flask_rps),
        "agent_unix_over_fastapi_throughput_at_16": ratio(agent_rps, fastapi_rps), "ratio_at": 16,
        "headline": {"peer": "fastapi_unix", "pair": "agent_unix/fastapi_unix", "clients": 16, "ratio": spread_of},
        "agent_unix_p99_ms_at_64": 7.5, "ratios": {"agent_unix/fastapi_unix": {"1": None, "16": spread_of}}}}


def _doc() -> dict[str, Any]:
    return {
        "schema": 1, "quick": False, "started_at": "2026-11-25T12:00:00Z",
        "machine": {"description": "2-core x86_64 VM"}, "load_average": {"before": [1.0, 1.0, 1.0]},
        "errors": {"quantization": "BenchError: converter missing"},
        "benchmarks": {
            "inference": {"concurrency": [1, 16], "cloud_predict": "not available",
                          "models": [_inference_model("mlp", 1000, 12000), _inference_model("forest", 200, 1000)]},
            "rollout": {"sizes": [{"devices": 1000, "create_to_last_commit_s": 42.0, "create_to_completed_s": 45.0,
                                   "lost": 0, "messages_per_device": 11.0, "server_cpu_s": 20.0,
                                   "server_peak_rss_mb": 140.0, "database": "postgresql", "state": "completed"},
                                  {"devices": 5000, "error": "TimeoutError: timed out"}]},
            "ingest": {"not_measured": "not measured: fleet_server.telemetry.ingest is missing"},
            "footprint": {"model": "mlp", "formats": [{"format": "onnx", "rss_mb": 120.0, "uss_mb": 33.0,
                                                       "idle_cpu_percent": 0.0, "cold_start_s": 0.2}], "install": {}},
        },
    }


def _verdicts(doc: dict[str, Any]) -> dict[str, bool | None]:
    return {t.target: t.met for t in targets(doc)}


def test_targets_compare_each_figure_with_its_threshold() -> None:
    verdicts = _verdicts(_doc())
    assert verdicts["agent >= 10x Flask + joblib throughput at 16 clients (mlp, Unix socket)"] is True     # 12x
    assert verdicts["agent >= 10x Flask + joblib throughput at 16 clients (forest, Unix socket)"] is False  # 5x
    assert verdicts["agent >= 3x the FastAPI + onnxruntime peer's throughput at 16 clients "
                    "(mlp, Unix socket both, median of repeats)"] is False                               # 2.4x
    assert verdicts["agent p50 overhead over raw run <= 0.1 ms at 1 client (mlp, Unix socket)"] is True   # 0.09
    assert verdicts["agent p99 <= 5 ms at 64 clients (mlp, Unix socket)"] is False                       # 7.5
    assert verdicts["1,000 devices committed within 60 s of rollout create, none lost"] is True
    assert verdicts["agent idle RSS < 100 MB with an ONNX model"] is False                         # 120 MB
    assert verdicts["agent cold start to first prediction < 2 s"] is True


def test_the_image_goal_is_read_from_the_image_model_with_the_mlp_thresholds() -> None:
    from bench.report import IMAGE_GOAL

    def image_verdicts(doc: dict[str, Any]) -> list[bool | None]:
        return [t.met for t in targets(doc) if t.target.startswith(IMAGE_GOAL)]

    doc = _doc()
    assert image_verdicts(doc) == [None, None, None]  # no image model in this run: not measured
    image = _inference_model("image", 1, 3300, fastapi_rps=1000)  # 3.3x, overhead 0.09 ms, p99 7.5 ms
    doc["benchmarks"]["inference"]["models"].append(image)
    assert image_verdicts(doc) == [True, True, False]
    image["summary"].update(agent_unix_over_fastapi_throughput_at_16=0.2, agent_unix_p50_overhead_ms=0.57,
                            agent_unix_p99_ms_at_64=None)  # a --quick run: no 64 clients for the image model
    assert image_verdicts(doc) == [False, False, None]


def test_a_benchmark_missing_from_the_run_is_not_measured_rather_than_met() -> None:
    verdicts = _verdicts(_doc())
    assert verdicts["one server ingests >= 5,000 msgs/s into PostgreSQL, none lost"] is None
    assert verdicts["int8-static ONNX <= 30% of float32, <= 1 point lost (mlp)"] is None
    assert verdicts["agent p50 overhead over raw run < 0.5 ms (cnn, Unix socket)"] is None


def test_lost_devices_miss_the_rollout_target_even_when_fast() -> None:
    doc = _doc()
    doc["benchmarks"]["rollout"]["sizes"][0]["lost"] = 3
    assert _verdicts(doc)["1,000 devices committed within 60 s of rollout create, none lost"] is False


def test_text_report_shows_every_section_failures_and_targets() -> None:
    text = render_text(_doc())
    for title in ("== inference: mlp", "== inference: agent overhead and headline",
                  "== inference: throughput ratios, same transport on both sides", "== rollout scale",
                  "== telemetry ingest", "== agent footprint", "== benchmarks that failed", "== targets"):
        assert title in text
    assert "TimeoutError: timed out" in text
    assert "MISSED" in text and "not measured" in text


def test_markdown_tables_have_a_header_separator_per_table() -> None:
    markdown = render_markdown(_doc(), names=["rollout", "targets"])
    assert sum(line.startswith("|---|") for line in markdown.splitlines()) == 2
    assert "| devices | broker | create->last commit s |" in markdown
    assert "inference" not in markdown


def test_client_counts_are_listed_in_numeric_order_after_a_json_round_trip(tmp_path: Path) -> None:
    doc = _doc()
    for kind in doc["benchmarks"]["inference"]["models"][0]["results"].values():
        kind["4"] = _latency(0.5, 10.0)
    reloaded = json.loads(write_run(doc, tmp_path).read_text())  # sort_keys: "1", "16", "4"
    rows = [line for line in render_markdown(reloaded, names=["inference: mlp"]).splitlines()
            if line.startswith("| flask |")]
    assert [row.split(" | ")[1] for row in rows] == ["1", "4", "16"]


def test_run_document_is_written_as_json_named_by_its_start(tmp_path: Path) -> None:
    path = write_run(_doc(), tmp_path)
    assert path.name == "20261125T120000Z.json"
    assert json.loads(path.read_text())["benchmarks"]["rollout"]["sizes"][0]["devices"] == 1000


def test_table_rows_must_match_the_headers() -> None:
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        Table("t", ("a", "b"), (("only one",),))


def test_percentiles_interpolate_between_ranks() -> None:
    samples = [float(v) for v in range(1, 101)]
    assert percentile(samples, 50) == pytest.approx(50.5)
    assert percentile(samples, 99) == pytest.approx(99.01)
    assert percentile([3.0], 95) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_summary_counts_throughput_over_wall_time() -> None:
    summary = LatencySummary.of([0.001] * 90 + [0.010] * 10, errors=1, wall_s=2.0, completed=120)
    assert (summary.requests, summary.errors, summary.throughput_rps) == (100, 1, 60.0)
    assert summary.p50_ms == pytest.approx(1.0) and summary.p99_ms == pytest.approx(10.0)
    assert len(summary.quantiles_ms) == 21 and list(summary.quantiles_ms) == sorted(summary.quantiles_ms)
    assert summary.quantiles_ms[0] == pytest.approx(1.0) and summary.quantiles_ms[-1] == pytest.approx(10.0)
    assert ratio(10, 0) is None and ratio(None, 3) is None and ratio(30, 4) == 7.5


def test_an_older_run_document_reads_the_new_targets_as_not_measured() -> None:
    doc = _doc()
    for model in doc["benchmarks"]["inference"]["models"]:  # issue 8's documents had no ratios nor ranges
        for key in ("ratios", "headline", "agent_unix_p50_overhead_ms_range", "agent_unix_p99_ms_at_64",
                    "agent_unix_over_fastapi_throughput_at_16"):
            model["summary"].pop(key)
    verdicts = _verdicts(doc)
    assert verdicts["agent p50 overhead over raw run <= 0.1 ms at 1 client (mlp, Unix socket)"] is None
    assert verdicts["agent p99 <= 5 ms at 64 clients (mlp, Unix socket)"] is None
    assert "== inference: agent overhead and headline" in render_text(doc)


def test_repeats_combine_into_medians_with_their_ranges() -> None:
    runs = [{"requests": 10, "errors": e, "p50_ms": p50, "p95_ms": p50 * 2, "p99_ms": p50 * 3, "throughput_rps": rps,
             "server_cpu_us_per_request": cpu, "quantiles_ms": [rps]}
            for e, p50, rps, cpu in ((0, 1.0, 300.0, 90.0), (1, 3.0, 100.0, None), (0, 2.0, 200.0, 70.0))]
    row = combine_repeats(runs)
    assert (row["repeats"], row["requests"], row["errors"]) == (3, 30, 1)
    assert (row["p50_ms"], row["p99_ms"], row["throughput_rps"]) == (2.0, 6.0, 200.0)
    assert row["throughput_range"] == {"min": 100.0, "median": 200.0, "max": 300.0}
    assert row["server_cpu_us_per_request"] == 80.0  # the run without a CPU reading is left out
    assert row["quantiles_ms"] == [200.0]             # the distribution of the median-throughput run
    assert spread([None, None]) is None


@given(paths=st.lists(st.text(min_size=1, max_size=3), min_size=1, max_size=8, unique=True),
       concurrency=st.lists(st.integers(1, 64), min_size=1, max_size=3, unique=True), repeats=st.integers(1, 6))
def test_the_schedule_measures_every_cell_once_per_repeat_in_rotated_order(
        paths: list[str], concurrency: list[int], repeats: int) -> None:
    order = schedule(paths, concurrency, repeats)
    assert sorted(order) == sorted((r, c, p) for r in range(repeats) for c in concurrency for p in paths)
    firsts = [order[i][2] for i in range(0, len(order), len(paths))]
    # Each repeat starts one path later, so no path is always measured first.
    assert firsts == [paths[r % len(paths)] for r in range(repeats) for _ in concurrency]


def test_the_committed_reference_run_renders() -> None:
    doc = json.loads(REFERENCE.read_text())
    assert "== targets" in render_text(doc)
    assert len(targets(doc)) == len(targets(_doc()))


def test_the_headline_table_shows_the_limit_raw_run_from_16_threads() -> None:
    from bench.report import inference_tables

    section = _doc()["benchmarks"]["inference"]
    (headline,) = [t for t in inference_tables(section) if t.title == "inference: agent overhead and headline"]
    limit = headline.headers.index("limit: raw run req/s, 16 threads")
    mlp = next(row for row in headline.rows if row[0] == "mlp")
    assert mlp[limit] == 1e5 and mlp[limit + 1] == "12%"  # the agent's 12,000 req/s of the raw 100,000
