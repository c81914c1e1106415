"""Start and stop the servers the benchmarks measure: the agent daemon and the Flask baseline.

Each runs as its own OS process started exactly as a user would (``edgefleet agent run``,
``python -m bench.baseline``), so ``psutil`` can read its RSS and CPU and the load generator
never shares a process with it. Readiness is polled over HTTP; no sleeping on a guess.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError
from simulation.fleet import FleetError, free_port, wait_until

EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]


def unix_http(socket_path: Path, timeout: float) -> http.client.HTTPConnection:
    """An ``http.client`` connection over the agent's Unix socket (connected now)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(socket_path))
    conn = http.client.HTTPConnection("localhost", timeout=timeout)
    conn.sock = sock
    return conn


def _get(port: int | None, socket_path: Path | None, path: str) -> int:
    if socket_path is not None:
        conn = unix_http(socket_path, 1)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def wait_http(proc: subprocess.Popen[bytes], what: str, timeout: float, *, port: int | None = None,
              socket_path: Path | None = None, path: str = "/healthz") -> float:
    """Poll until ``path`` answers 200; returns the seconds it took. Fails fast if the process exits."""
    start = time.perf_counter()

    def answered() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-800:] if proc.stderr else ""
            raise BenchError(f"{what} exited with status {proc.returncode} before it served: {err}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            return _get(port, socket_path, path) == 200
        return False

    try:
        wait_until(answered, timeout, f"{what} to answer {path}", every=0.01)
    except FleetError as exc:
        raise BenchError(str(exc), fix="run it by hand and read its log") from exc
    return time.perf_counter() - start


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class AgentProcess:
    proc: subprocess.Popen[bytes]
    port: int
    socket_path: Path
    started_s: float   # process start to /healthz answering


def install_bundle(bundle: Path, state_dir: Path, profile: str) -> None:
    done = subprocess.run([*EDGEFLEET, "agent", "install", str(bundle), "--state-dir", str(state_dir),
                           "--profile", profile, "--json"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"edgefleet agent install {bundle.name} failed: {done.stderr.strip()[-500:]}")


@contextlib.contextmanager
def agent(state_dir: Path, *, timeout: float = 60.0) -> Iterator[AgentProcess]:
    """``edgefleet agent run --no-mqtt`` on a free port and ``STATE_DIR/agent.sock``."""
    port = free_port()
    env = {**os.environ, "EDGEFLEET_LOG_LEVEL": "40"}
    start = time.perf_counter()
    proc = subprocess.Popen([*EDGEFLEET, "agent", "run", "--state-dir", str(state_dir), "--no-mqtt",
                             "--http-port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        wait_http(proc, "edgefleet agent run", timeout, port=port)
        yield AgentProcess(proc, port, state_dir / "agent.sock", time.perf_counter() - start)
    finally:
        stop(proc)


@contextlib.contextmanager
def flask_baseline(model_file: Path, *, timeout: float = 120.0) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.baseline", str(model_file), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_http(proc, "the Flask baseline", timeout, port=port)
        yield proc, port
    finally:
        stop(proc)
