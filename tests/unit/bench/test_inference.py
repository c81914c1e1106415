"""The inference benchmark's pure parts: the image model's paths, the summary over the paths a
model was measured on, the workload's checks and the example pictures' pixels (nothing timed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bench.errors import BenchError
from bench.inference import CONCURRENCY, PATHS, Workload, image_paths, summarize
from bench.models import picture_pixels
from bench.stats import combine_repeats


def _run(p50: float, rps: float) -> dict[str, Any]:
    return {"requests": 100, "errors": 0, "p50_ms": p50, "p95_ms": p50 * 2, "p99_ms": p50 * 3, "throughput_rps": rps}


def _image_runs() -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Three repeats of the --quick image paths: raw run, the agent and the FastAPI peer over the Unix socket."""
    return {
        "raw_run": {1: [_run(0.07, 10000), _run(0.08, 9000), _run(0.06, 11000)],
                    16: [_run(0.05, 11000)] * 3},
        "agent_unix": {1: [_run(0.57, 1500), _run(0.68, 1400), _run(0.46, 1600)],
                       16: [_run(9.0, 1800), _run(9.0, 1500), _run(9.0, 2100)]},
        "fastapi_unix": {1: [_run(0.7, 1100)] * 3, 16: [_run(10.0, 1000), _run(10.0, 1000), _run(10.0, 700)]},
    }


def test_the_image_summary_reads_the_goals_from_the_paths_it_was_measured_on() -> None:
    runs = _image_runs()
    results = {p: {str(c): combine_repeats(v) for c, v in by.items()} for p, by in runs.items()}
    summary = summarize("none", runs, results, (1, 16))
    # Overhead repeat by repeat (0.50, 0.60, 0.40), ratio repeat by repeat (1.8, 1.5, 3.0): their medians.
    assert summary["agent_unix_p50_overhead_ms"] == pytest.approx(0.5)
    assert summary["agent_unix_over_fastapi_throughput_at_16"] == 1.8
    assert summary["headline"]["peer"] == "fastapi_unix" and summary["headline"]["ratio"]["max"] == pytest.approx(3.0)
    # Not measured here: no TCP pair, no Flask rows, no 64 clients. None, never a made-up figure.
    assert summary["agent_tcp_p50_overhead_ms"] is None and summary["agent_unix_over_flask_throughput_at_16"] is None
    assert summary["agent_unix_p99_ms_at_64"] is None
    assert set(summary["ratios"]) == {"agent_unix/fastapi_unix"}


def test_a_model_without_peers_has_no_headline() -> None:
    runs = {p: by for p, by in _image_runs().items() if p != "fastapi_unix"}
    results = {p: {str(c): combine_repeats(v) for c, v in by.items()} for p, by in runs.items()}
    summary = summarize("none", runs, results, (1, 16))
    assert summary["headline"] is None and summary["ratios"] == {}
    assert summary["agent_unix_p50_overhead_ms"] == pytest.approx(0.5)


def test_the_image_model_meets_only_the_fastapi_peer_and_quick_keeps_the_goals_at_1_and_16_clients() -> None:
    quick_paths, quick_clients = image_paths(quick=True)
    assert quick_paths == ("raw_run", "agent_unix", "fastapi_unix") and quick_clients == (1, 16)
    full_paths, full_clients = image_paths(quick=False)
    assert full_clients == CONCURRENCY and "agent_tcp" in full_paths and "fastapi_tcp" in full_paths
    assert not {"flask", "flask_ort"} & set(full_paths)


def _workload(paths: tuple[str, ...], baseline: Path | None = None) -> Workload:
    return Workload("image", Path("b.tar.gz"), Path("m.onnx"), np.zeros((1, 4), np.float32), b"\x89PNG", "image/png",
                    paths, (1,), "none", baseline)


def test_a_workload_needs_raw_run_known_paths_and_a_baseline_for_flask() -> None:
    assert _workload(PATHS, Path("model.joblib")).paths == PATHS
    for paths in (("agent_unix",), ("raw_run", "agent_udp")):
        with pytest.raises(BenchError):
            _workload(paths)
    with pytest.raises(BenchError, match="baseline"):
        _workload(("raw_run", "flask"))


@given(pixels=hnp.arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8), st.sampled_from([1, 3]))))
def test_example_pictures_go_back_to_the_pixels_they_were_made_from(pixels: np.ndarray) -> None:
    # converter.examples.digit_images makes its pictures as pixels / 255 in float32.
    assert np.array_equal(picture_pixels(pixels.astype(np.float32) / np.float32(255.0)), pixels)


def test_a_picture_must_have_a_channel_axis() -> None:
    with pytest.raises(BenchError, match="height, width"):
        picture_pixels(np.zeros((4, 4)))
