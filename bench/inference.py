"""Benchmark 1, inference: the agent's local API against competent peers and the raw runtime.

For each model (``bench.models``) and each concurrency it measures, in the same run, with
every server up at once:

    raw_run       ``InferenceSession.run`` from N threads of this process (no HTTP): the limit
    agent_unix    the real ``edgefleet agent run`` daemon over its Unix socket
    agent_tcp     the same daemon over loopback TCP
    fastapi_unix  FastAPI + uvicorn (uvloop, httptools, one worker) + onnxruntime (``bench.peers``)
    fastapi_tcp   the same peer over loopback TCP
    flask_ort     Flask + onnxruntime, Unix socket (``bench.peers``)
    flask         the seed's Flask + joblib/Keras ``model.predict``, Unix socket (``bench.baseline``)
    cloud         the fleet server's predict endpoint, TCP (full runs only, when it has one)

Honesty rules (issue 15): every peer runs the bundle's own model file with the agent's session
options and gives the agent's response content; every ratio divides two paths over the same
transport (``PAIRS``); each (path, clients) is measured ``repeats`` times, the paths in an
order rotated every repeat (``schedule``) so that drift in the machine's load spreads over all
of them; figures are the median with min and max; the load generator's warm-up answers are
out of the throughput; the generator gets its own core and the servers the others
(``processes.split_cores``) where there are two or more. Single-row requests throughout. The
headline is the agent against the strongest peer. It never asserts a figure.

The ``image`` model (``bench.models.prepare_image``, the typed-inputs work's digits CNN) is
measured with decoding in the path: each request is one 32x32 RGB PNG of a held-out digit
(``Content-Type: image/png``), sent to the agent and to the FastAPI peer only (no Flask rows),
and the peer decodes and preprocesses it with ``edgefleet.images.preprocess`` and the bundle's
``ImageSpec``, the agent's own code, so both do the same work. Its raw run is ``run`` on the
already preprocessed tensor, so its overhead figure is decoding plus HTTP (``image_workload``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import fleet, processes
from bench.errors import BenchError
from bench.loadgen import Body, Target, run_load
from bench.models import IMAGE_MODEL, PROFILE, BenchModel, ImageBenchModel, prepare, prepare_image
from bench.stats import LatencySummary, combine_repeats, spread
from simulation.fleet import MosquittoProcess

CONCURRENCY = (1, 16, 64)
REPEATS = 5
# --quick is a smoke check that must finish in 3 minutes on a busy 2-core machine: 3 repeats
# still give a min/median/max; the reference keeps the 5.
QUICK_REPEATS = 3
# The issue-15 goals are read at these client counts.
RATIO_AT = 16
TAIL_AT = 64

PATHS = ("raw_run", "agent_unix", "agent_tcp", "fastapi_unix", "fastapi_tcp", "flask_ort", "flask")
# (agent path, peer path): the same transport on both sides of every ratio.
PAIRS = (("agent_unix", "fastapi_unix"), ("agent_tcp", "fastapi_tcp"), ("agent_unix", "flask_ort"),
         ("agent_unix", "flask"))
PEERS = {"fastapi_unix": "FastAPI + uvicorn + onnxruntime", "fastapi_tcp": "FastAPI + uvicorn + onnxruntime",
         "flask_ort": "Flask + onnxruntime"}
WARMUP = 3  # answers per client the load generator leaves out


def schedule(paths: Sequence[str], concurrency: Sequence[int], repeats: int) -> list[tuple[int, int, str]]:
    """(repeat, clients, path) in the order to measure: every repeat visits each concurrency,
    and within it every path, starting one path later than the repeat before (rotated), so
    no path always runs first (cold) or last (after the heaviest load)."""
    order = []
    for repeat in range(repeats):
        for clients in concurrency:
            shift = repeat % len(paths)
            order += [(repeat, clients, path) for path in (*paths[shift:], *paths[:shift])]
    return order


class _RawRun:
    """``InferenceSession.run`` from threads of this process with the agent's session options, on ``feed``
    (one row, or the preprocessed picture for the image model: no decoding, no HTTP)."""

    def __init__(self, onnx_path: Path, feed: np.ndarray, cores: processes.Cores) -> None:
        import onnxruntime as ort

        from bench.peers import session_options

        self.cores = cores
        with self._pinned():  # onnxruntime's pool threads start here and keep this affinity
            self.session = ort.InferenceSession(onnx_path.read_bytes(), session_options(PROFILE),
                                                providers=["CPUExecutionProvider"])
        self.feed = {self.session.get_inputs()[0].name: feed}

    @contextlib.contextmanager
    def _pinned(self) -> Iterator[None]:
        if not self.cores:
            yield
            return
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, self.cores)
        try:
            yield
        finally:
            os.sched_setaffinity(0, before)

    def __call__(self, clients: int, duration_s: float) -> dict[str, Any]:
        session, feed = self.session, self.feed
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

        with self._pinned():  # threads inherit the creating thread's affinity
            threads = [threading.Thread(target=client, args=(latencies[i],)) for i in range(clients)]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
        for thread in threads:
            thread.join()
        return LatencySummary.of([v for per in latencies for v in per], 0, time.perf_counter() - began).to_dict()


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


def _served(pid: int, target: Target, body: Body, clients: int, duration_s: float,
            cores: processes.Cores) -> dict[str, Any]:
    """One load run plus the server process's CPU time per request (psutil): a ratio the client cannot cap."""
    import psutil

    proc = psutil.Process(pid)
    before = proc.cpu_times()
    summary = run_load(target, body, clients, duration_s, cpus=cores)
    after = proc.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    # The CPU covers the warm-up answers too, so they count in the denominator here.
    served = summary.requests + clients * WARMUP
    return {**summary.to_dict(), "server_cpu_us_per_request": round(1e6 * cpu / served, 1) if served else None}


Runs = dict[str, dict[int, list[dict[str, Any]]]]


def _ratios(runs: Runs, concurrency: Sequence[int]) -> dict[str, Any]:
    """Per pair measured in this run and client count: agent/peer throughput of the same repeat, as min/median/max."""
    out: dict[str, Any] = {}
    for agent, peer in PAIRS:
        if peer not in runs or agent not in runs:
            continue
        out[f"{agent}/{peer}"] = {str(c): spread([a["throughput_rps"] / p["throughput_rps"]
                                                   for a, p in zip(runs[agent][c], runs[peer][c], strict=True)
                                                   if p["throughput_rps"]]) for c in concurrency}
    return out


def _overhead(runs: Runs, kind: str) -> dict[str, float] | None:
    """The agent's p50 at one client over raw ``run``'s, repeat by repeat (None: not measured)."""
    if kind not in runs or "raw_run" not in runs or 1 not in runs[kind]:
        return None
    return spread([a["p50_ms"] - r["p50_ms"] for a, r in zip(runs[kind][1], runs["raw_run"][1], strict=True)])


def summarize(baseline: str, runs: Runs, results: dict[str, Any], concurrency: Sequence[int]) -> dict[str, Any]:
    """The figures the goals read, from one model's repeats (pure). A path this model was not
    measured on (the image model has no Flask rows; ``--quick`` leaves out 64 clients for it)
    gives None, never a made-up figure."""
    ratios = _ratios(runs, concurrency)
    at = str(RATIO_AT) if RATIO_AT in concurrency else str(max(concurrency))
    # The strongest peer: the highest median throughput at RATIO_AT clients, whatever its stack.
    peers = [p for p in ("fastapi_unix", "flask_ort", "flask") if p in results]
    strongest: str | None = max(peers, key=lambda p: results[p][at]["throughput_rps"]) if peers else None
    unix_overhead, tcp_overhead = _overhead(runs, "agent_unix"), _overhead(runs, "agent_tcp")
    tail = results.get("agent_unix", {}).get(str(TAIL_AT))

    def median(key: str) -> float | None:
        value = ratios.get(key, {}).get(at)
        return None if value is None else round(value["median"], 2)

    return {
        "baseline": baseline,
        "peer": PEERS["fastapi_unix"],
        "ratio_at": int(at),
        "agent_unix_p50_overhead_ms": unix_overhead and unix_overhead["median"],
        "agent_unix_p50_overhead_ms_range": unix_overhead,
        "agent_tcp_p50_overhead_ms": tcp_overhead and tcp_overhead["median"],
        "agent_tcp_p50_overhead_ms_range": tcp_overhead,
        f"agent_unix_over_fastapi_throughput_at_{at}": median("agent_unix/fastapi_unix"),
        f"agent_tcp_over_fastapi_throughput_at_{at}": median("agent_tcp/fastapi_tcp"),
        f"agent_unix_over_flask_ort_throughput_at_{at}": median("agent_unix/flask_ort"),
        f"agent_unix_over_flask_throughput_at_{at}": median("agent_unix/flask"),
        "headline": None if strongest is None else {
            "peer": strongest, "pair": f"agent_unix/{strongest}", "clients": int(at),
            "ratio": ratios.get(f"agent_unix/{strongest}", {}).get(at)},
        f"agent_unix_p99_ms_at_{TAIL_AT}": tail and tail["p99_ms"],
        f"agent_unix_p99_ms_at_{TAIL_AT}_range": tail and tail["p99_range"],
        "ratios": ratios,
    }


@dataclass(frozen=True)
class Workload:
    """One model as the inference benchmark measures it: what every path is sent and which paths run."""

    name: str
    bundle_path: Path
    onnx_path: Path
    feed: np.ndarray           # raw run's input: one row, or the preprocessed picture
    body: Body                 # every HTTP path's request: a JSON document, or PNG bytes
    content_type: str
    paths: tuple[str, ...]
    concurrency: tuple[int, ...]
    baseline: str              # the summary's baseline line
    baseline_path: Path | None = None  # the Flask baseline's model file (the ``flask`` path)

    def __post_init__(self) -> None:
        unknown = [p for p in self.paths if p not in (*PATHS, "cloud")]
        if unknown or "raw_run" not in self.paths:
            raise BenchError(f"paths {list(self.paths)} must hold raw_run and only known paths "
                             f"({', '.join(PATHS)}, cloud)")
        if "flask" in self.paths and self.baseline_path is None:
            raise BenchError(f"{self.name}: the flask path needs the baseline's model file")


def tabular_workload(model: BenchModel, *, cloud: bool) -> Workload:
    """A rows model (mlp, forest, cnn): one held-out row per request as JSON, every path."""
    features, _ = model.validation()
    row = features[0]
    return Workload(model.name, model.bundle_path, model.onnx_path, row.reshape(1, -1), {"inputs": [row.tolist()]},
                    "application/json", (*PATHS, *(("cloud",) if cloud else ())), CONCURRENCY,
                    f"Flask + {model.baseline_kind} model.predict", model.baseline_path)


def image_paths(quick: bool) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The image model's paths and client counts: against the FastAPI peer only (no Flask rows);
    ``--quick`` keeps the Unix socket pair at 1 and 16 clients (the p50 and ratio goals) to stay
    inside its 3 minutes, so the 64-client p99 is read from full runs only."""
    if quick:
        return ("raw_run", "agent_unix", "fastapi_unix"), (1, RATIO_AT)
    return ("raw_run", "agent_unix", "agent_tcp", "fastapi_unix", "fastapi_tcp"), CONCURRENCY


def image_workload(model: ImageBenchModel, *, quick: bool) -> Workload:
    """The image model: one held-out 32x32 RGB PNG a request (``image/png``) to the agent and the
    FastAPI peer, both decoding it with ``edgefleet.images``; raw run gets the preprocessed tensor,
    so the overhead over it is the decoding plus HTTP."""
    from edgefleet.images import preprocess

    png = model.png()
    paths, concurrency = image_paths(quick)
    return Workload(model.name, model.bundle_path, model.onnx_path, preprocess([png], model.spec()), png,
                    "image/png", paths, concurrency, "none (FastAPI peer only; both decode the PNG)")


def _measure_model(load: Workload, duration_s: float, repeats: int, work: Path,
                   cloud: fleet.ServerProcess | None) -> dict[str, Any]:
    server_cores, load_cores = processes.split_cores()
    state = work / f"agent-{load.name}"
    processes.install_bundle(load.bundle_path, state, PROFILE)
    paths = [p for p in load.paths if p != "cloud" or cloud is not None]
    runs: Runs = {p: {c: [] for c in load.concurrency} for p in paths}
    raw = _RawRun(load.onnx_path, load.feed, server_cores)
    kind = load.content_type
    with contextlib.ExitStack() as stack:
        agent = stack.enter_context(processes.agent(state, cores=server_cores))
        sockets = work / f"sockets-{load.name}"
        sockets.mkdir()
        predict = f"/v1/models/bench-{load.name}/predict"
        targets: dict[str, tuple[int, Target]] = {
            "agent_unix": (agent.proc.pid, Target(predict, unix_socket=str(agent.socket_path), content_type=kind)),
            "agent_tcp": (agent.proc.pid, Target(predict, port=agent.port, content_type=kind)),
        }
        # Only the servers this model is measured against are started (each holds a session and CPU).
        if "fastapi_unix" in paths:
            proc, _ = stack.enter_context(processes.peer("fastapi", load.bundle_path, socket_path=sockets / "fastapi",
                                                         cores=server_cores))
            targets["fastapi_unix"] = (proc.pid, Target("/predict", unix_socket=str(sockets / "fastapi"),
                                                        content_type=kind))
        if "fastapi_tcp" in paths:
            proc, port = stack.enter_context(processes.peer("fastapi", load.bundle_path, cores=server_cores))
            targets["fastapi_tcp"] = (proc.pid, Target("/predict", port=port, content_type=kind))
        if "flask_ort" in paths:
            proc, _ = stack.enter_context(processes.peer("flask", load.bundle_path, socket_path=sockets / "flask-ort",
                                                         cores=server_cores))
            targets["flask_ort"] = (proc.pid, Target("/predict", unix_socket=str(sockets / "flask-ort"),
                                                     content_type=kind))
        if "flask" in paths and load.baseline_path is not None:
            proc, _ = stack.enter_context(processes.flask_baseline(load.baseline_path, socket_path=sockets / "flask",
                                                                   cores=server_cores))
            targets["flask"] = (proc.pid, Target("/predict", unix_socket=str(sockets / "flask"), content_type=kind))
        if cloud is not None and "cloud" in paths:
            processes.pin_process(cloud.proc.pid, server_cores)
            targets["cloud"] = (cloud.proc.pid, Target(f"/api/v1/models/bench-{load.name}/predict", port=cloud.port,
                                                       headers=(("Authorization", f"Bearer {cloud.token}"),),
                                                       content_type=kind))
        for _repeat, clients, path in schedule(paths, load.concurrency, repeats):
            if path == "raw_run":
                runs[path][clients].append(raw(clients, duration_s))
            else:
                pid, target = targets[path]
                runs[path][clients].append(_served(pid, target, load.body, clients, duration_s, load_cores))
    results = {p: {str(c): combine_repeats(runs[p][c]) for c in load.concurrency} for p in paths}
    return {"model": load.name, "content_type": kind, "concurrency": list(load.concurrency), "results": results,
            "summary": summarize(load.baseline, runs, results, load.concurrency), "notes": []}


def run(*, quick: bool = False, models: tuple[str, ...] | None = None, repeats: int | None = None) -> dict[str, Any]:
    """The inference section of a run document (``--quick``: the MLP and the image model only,
    short windows, 3 repeats, no cloud; the image model at 1 and 16 clients, Unix socket)."""
    repeats = repeats or (QUICK_REPEATS if quick else REPEATS)
    names = models or (("mlp", IMAGE_MODEL) if quick else ("mlp", "forest", "cnn", IMAGE_MODEL))
    duration_s = 0.2 if quick else 1.5
    server_cores, load_cores = processes.split_cores()
    section: dict[str, Any] = {
        "concurrency": list(CONCURRENCY), "duration_s": duration_s, "repeats": repeats, "warmup_per_client": WARMUP,
        "order": "rotated per repeat", "pairs": [list(p) for p in PAIRS],
        "pinning": (f"servers on cores {sorted(server_cores)}, load generator on {sorted(load_cores)}"
                    if server_cores and load_cores else "none (one core)"),
        "models": []}
    tabular = [prepare(name) for name in names if name != IMAGE_MODEL]
    image = prepare_image() if IMAGE_MODEL in names else None
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-inference-") as tmp, contextlib.ExitStack() as stack:
        cloud = None
        if quick:
            section["cloud_predict"] = "not measured in --quick"
        elif cloud_endpoint_available():
            section["cloud_predict"] = "measured: edgefleet server (uvicorn, one process), POST /api/v1/models/{name}/predict"
            cloud = stack.enter_context(_cloud(Path(tmp) / "cloud", [m.bundle_path for m in tabular]))
        else:
            section["cloud_predict"] = "not available: the fleet server has no /api/v1/models/{name}/predict"
        loads = [tabular_workload(m, cloud=cloud is not None) for m in tabular]
        if image is not None:
            loads.append(image_workload(image, quick=quick))
        for load in loads:
            section["models"].append(_measure_model(load, duration_s, repeats, Path(tmp), cloud))
    return section
