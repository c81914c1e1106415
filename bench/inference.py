"""Benchmark 1, inference: the agent's local API against joblib+Flask and the raw runtime.

For each model (``bench.models``) and each concurrency (1, 4, 16 clients) it measures, in
the same run: (a) the Flask baseline (``bench.baseline``), (b) ``onnxruntime``
``InferenceSession.run`` in this process (threads, no HTTP), (c) the real ``edgefleet agent
run`` daemon over loopback TCP and over its Unix socket, (d) the server's cloud predict
endpoint when the server has one. HTTP loads come from ``bench.loadgen`` (a separate
process). Single-row requests throughout. It reports the agent's p50 overhead over raw
``run`` and the agent/Flask throughput ratio; it never asserts a figure.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench import fleet, processes
from bench.errors import BenchError
from bench.loadgen import Target, run_load
from bench.models import PROFILE, BenchModel, prepare
from bench.stats import LatencySummary, ratio
from simulation.fleet import MosquittoProcess

CONCURRENCY = (1, 4, 16)
QUICK_CONCURRENCY = (1, 16)


def _raw_run(model: BenchModel, row: np.ndarray, clients: int, duration_s: float) -> LatencySummary:
    """``InferenceSession.run`` from ``clients`` threads of this process, the session configured as the agent's."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.onnx_path.read_bytes(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: row.reshape(1, -1)}
    for _ in range(20):
        session.run(None, feed)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    deadline = time.perf_counter() + duration_s

    def client(out: list[float]) -> None:
        while True:
            start = time.perf_counter()
            if start >= deadline:
                return
            session.run(None, feed)
            out.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(latencies[i],)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return LatencySummary.of([v for per in latencies for v in per], 0, time.perf_counter() - began)


def cloud_endpoint_available() -> bool:
    """Whether the fleet server has a ``/api/v1/models/{name}/predict`` route (read from its source, no import)."""
    import fleet_server

    root = Path(fleet_server.__file__).parent
    return any("/models/{name}/predict" in path.read_text(encoding="utf-8") for path in root.rglob("*.py"))


@contextlib.contextmanager
def _cloud(work: Path, bundles: list[Path]) -> Iterator[fleet.ServerProcess]:
    """A real ``edgefleet server`` (SQLite, Mosquitto) with ``bundles`` pushed through ``edgefleet models push``."""
    with MosquittoProcess(None, work / "mosquitto", auth=False, persistence=False) as broker, fleet.database(work, "sqlite") as (url, _kind), \
            fleet.server(work / "server", broker.url, url) as srv:
        for bundle in bundles:
            done = subprocess.run([*processes.EDGEFLEET, "models", "push", str(bundle), "--server",
                                   f"http://127.0.0.1:{srv.port}", "--token", srv.token, "--json"],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BenchError(f"edgefleet models push {bundle.name} failed: {done.stderr.strip()[-400:]}")
        yield srv


def _served(pid: int, target: Target, body: dict[str, Any], clients: int, duration_s: float) -> dict[str, Any]:
    """One load run plus the server process's CPU time per request (psutil): a ratio the client cannot cap."""
    import psutil

    proc = psutil.Process(pid)
    before = proc.cpu_times()
    summary = run_load(target, body, clients, duration_s)
    after = proc.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    served = summary.throughput_rps * duration_s
    return {**summary.to_dict(), "server_cpu_us_per_request": round(1e6 * cpu / served, 1) if served else None}


def _measure_model(model: BenchModel, concurrency: tuple[int, ...], duration_s: float, work: Path,
                   cloud: fleet.ServerProcess | None) -> dict[str, Any]:
    features, _ = model.validation()
    row = features[0]
    body = {"inputs": [row.tolist()]}
    results: dict[str, dict[str, Any]] = {"flask": {}, "raw_run": {}, "agent_tcp": {}, "agent_unix": {}}
    notes: list[str] = []
    for clients in concurrency:
        results["raw_run"][str(clients)] = _raw_run(model, row, clients, duration_s).to_dict()
    state = work / f"agent-{model.name}"
    processes.install_bundle(model.bundle_path, state, PROFILE)
    with processes.agent(state) as agent:
        path = f"/v1/models/bench-{model.name}/predict"
        for clients in concurrency:
            tcp = Target(path, port=agent.port)
            unix = Target(path, unix_socket=str(agent.socket_path))
            results["agent_tcp"][str(clients)] = _served(agent.proc.pid, tcp, body, clients, duration_s)
            results["agent_unix"][str(clients)] = _served(agent.proc.pid, unix, body, clients, duration_s)
    if cloud is not None:
        target = Target(f"/api/v1/models/bench-{model.name}/predict", port=cloud.port,
                        headers=(("Authorization", f"Bearer {cloud.token}"),))
        results["cloud"] = {str(c): _served(cloud.proc.pid, target, body, c, duration_s) for c in concurrency}
    with processes.flask_baseline(model.baseline_path) as (flask, port):
        for clients in concurrency:
            results["flask"][str(clients)] = _served(flask.pid, Target("/predict", port=port), body, clients,
                                                     duration_s)
    top = str(max(concurrency))
    summary = {
        "baseline": f"Flask + {model.baseline_kind} model.predict",
        "agent_unix_p50_overhead_ms": _overhead(results, "agent_unix"),
        "agent_tcp_p50_overhead_ms": _overhead(results, "agent_tcp"),
        f"agent_unix_over_flask_throughput_at_{top}": ratio(results["agent_unix"][top]["throughput_rps"],
                                                            results["flask"][top]["throughput_rps"]),
        f"agent_tcp_over_flask_throughput_at_{top}": ratio(results["agent_tcp"][top]["throughput_rps"],
                                                           results["flask"][top]["throughput_rps"]),
        # Server CPU per request: how much cheaper the agent serves one request, whatever caps throughput.
        f"flask_over_agent_unix_cpu_per_request_at_{top}": ratio(results["flask"][top]["server_cpu_us_per_request"],
                                                                 results["agent_unix"][top]["server_cpu_us_per_request"]),
    }
    return {"model": model.name, "results": results, "summary": summary, "notes": notes}


def _overhead(results: dict[str, dict[str, Any]], kind: str) -> float:
    return round(results[kind]["1"]["p50_ms"] - results["raw_run"]["1"]["p50_ms"], 4)


def run(*, quick: bool = False, models: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The inference section of a run document."""
    names = models or (("mlp", "forest") if quick else ("mlp", "forest", "cnn"))
    concurrency = QUICK_CONCURRENCY if quick else CONCURRENCY
    duration_s = 1.0 if quick else 3.0
    section: dict[str, Any] = {"concurrency": list(concurrency), "duration_s": duration_s, "models": []}
    prepared = [prepare(name) for name in names]
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-inference-") as tmp, contextlib.ExitStack() as stack:
        cloud = None
        if cloud_endpoint_available():
            section["cloud_predict"] = "measured: edgefleet server (uvicorn, one process), POST /api/v1/models/{name}/predict"
            cloud = stack.enter_context(_cloud(Path(tmp) / "cloud", [m.bundle_path for m in prepared]))
        else:
            section["cloud_predict"] = "not available: the fleet server has no /api/v1/models/{name}/predict"
        for model in prepared:
            section["models"].append(_measure_model(model, concurrency, duration_s, Path(tmp), cloud))
    return section
