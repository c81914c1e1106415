"""Benchmark 5, footprint: what the agent costs a device.

For an ONNX bundle and a TFLite bundle of the MLP: RSS (and USS) of the real ``edgefleet
agent run`` process at idle after one prediction, its CPU share over an idle window, and cold
start (process start to the first successful prediction over the Unix socket, median of a
few starts). Plus the install size of ``edgefleet[agent]`` (and of ``ai-edge-litert`` on
top): edgefleet installed with ``--no-deps`` into a fresh venv, then the agent extra's
dependencies, measured as the venv's site-packages against an empty venv. The install is cached
by the hash of pyproject.toml because it downloads from PyPI. It does not measure on a Pi.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import processes
from bench.errors import BenchError
from bench.models import CACHE, PROFILE, BenchModel, convert_variant, prepare

ROOT = Path(__file__).resolve().parent.parent
# The [agent] extra's direct dependencies, read from pyproject.toml at run time (see _agent_requirements).
TFLITE_EXTRA = "litert"


def _predict_unix(socket_path: Path, path: str, body: bytes) -> int:
    conn = processes.unix_http(socket_path, 2)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _cold_start(state: Path, path: str, body: bytes, timeout: float = 30.0) -> float:
    """Seconds from spawning ``edgefleet agent run`` to its first 200 prediction."""
    env = {**os.environ, "EDGEFLEET_LOG_LEVEL": "40"}
    socket_path = state / "agent.sock"
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    start = time.perf_counter()
    proc = subprocess.Popen([*processes.EDGEFLEET, "agent", "run", "--state-dir", str(state), "--no-mqtt",
                             "--http-host", ""], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        while time.perf_counter() - start < timeout:
            if proc.poll() is not None:
                raise BenchError(f"the agent exited with {proc.returncode} during a cold start")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if _predict_unix(socket_path, path, body) == 200:
                    return time.perf_counter() - start
            time.sleep(0.005)
        raise BenchError(f"the agent served no prediction within {timeout} s of starting")
    finally:
        processes.stop(proc)


def _idle(state: Path, path: str, body: bytes, idle_s: float) -> dict[str, Any]:
    import psutil

    with processes.agent(state) as agent:
        if _predict_unix(agent.socket_path, path, body) != 200:
            raise BenchError("the agent refused the footprint benchmark's prediction")
        time.sleep(1.0)  # let allocator and lazy imports settle before reading memory
        proc = psutil.Process(agent.proc.pid)
        before = proc.cpu_times()
        began = time.perf_counter()
        time.sleep(idle_s)
        after = proc.cpu_times()
        wall = time.perf_counter() - began
        memory = proc.memory_full_info()
        cpu = (after.user + after.system) - (before.user + before.system)
        return {"rss_mb": round(memory.rss / 2**20, 1), "uss_mb": round(memory.uss / 2**20, 1),
                "idle_cpu_percent": round(100 * cpu / wall, 3), "idle_window_s": round(wall, 1),
                "threads": proc.num_threads()}


def _measure_format(model: BenchModel, fmt: str, work: Path, *, idle_s: float, starts: int) -> dict[str, Any]:
    if fmt == "onnx":
        bundle = model.bundle_path
    else:
        out = CACHE / model.name / "tflite"
        bundle = out / f"bench-{model.name}-1.0.0.tar.gz"
        if not bundle.exists():
            convert_variant(model, PROFILE, "tflite", "none", out)
    state = work / f"agent-{fmt}"
    processes.install_bundle(bundle, state, PROFILE)
    features, _ = model.validation()
    body = json.dumps({"inputs": [features[0].tolist()]}).encode()
    path = f"/v1/models/bench-{model.name}/predict"
    colds = [_cold_start(state, path, body) for _ in range(starts)]
    return {"format": fmt, "bundle_bytes": bundle.stat().st_size, **_idle(state, path, body, idle_s),
            "cold_start_s": round(statistics.median(colds), 3), "cold_start_runs_s": [round(c, 3) for c in colds]}


def _agent_requirements() -> dict[str, list[str]]:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {"agent": list(extras["agent"]), "litert": list(extras[TFLITE_EXTRA])}


def _site_packages_bytes(venv: Path) -> int:
    total = 0
    for site in venv.glob("lib/python*/site-packages"):
        for dirpath, _dirs, files in os.walk(site):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _pip(venv: Path, *args: str) -> None:
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"pip install {' '.join(args)} failed: {done.stderr.strip()[-500:]}",
                         fix="check that PyPI is reachable (the install size needs a download once)")


def install_size(cache: Path = CACHE) -> dict[str, Any]:
    """Bytes of site-packages that ``edgefleet[agent]`` (and the LiteRT extra) add to a fresh venv; cached."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    cached = cache / f"install-size-{key}.json"
    if cached.exists():
        return {**json.loads(cached.read_text()), "cached": True}
    requirements = _agent_requirements()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-venv-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        empty = _site_packages_bytes(venv)
        _pip(venv, "--no-deps", str(ROOT))
        core = _site_packages_bytes(venv)
        _pip(venv, "cryptography>=42", *requirements["agent"])
        agent = _site_packages_bytes(venv)
        _pip(venv, *requirements["litert"])
        litert = _site_packages_bytes(venv)
    result = {"edgefleet_only_mb": round((core - empty) / 2**20, 1),
              "edgefleet_agent_mb": round((agent - empty) / 2**20, 1),
              "litert_extra_mb": round((litert - agent) / 2**20, 1),
              "requirements": requirements, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result, indent=2))
    return {**result, "cached": False}


def run(*, quick: bool = False) -> dict[str, Any]:
    """The footprint section of a run document."""
    model = prepare("mlp")
    formats = ("onnx",) if quick else ("onnx", "tflite")
    section: dict[str, Any] = {"model": model.name, "formats": []}
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-footprint-") as tmp:
        for fmt in formats:
            section["formats"].append(_measure_format(model, fmt, Path(tmp), idle_s=3.0 if quick else 10.0,
                                                      starts=2 if quick else 5))
    try:
        section["install"] = install_size()
    except BenchError as exc:
        section["install"] = {"error": str(exc)}
    return section
