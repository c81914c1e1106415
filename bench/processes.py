"""Start and stop the servers the benchmarks measure: the agent daemon, the Flask baseline, the peers.

Each runs as its own OS process started exactly as a user would (``edgefleet agent run``,
``python -m bench.baseline``, ``python -m bench.peers``), so ``psutil`` can read its RSS and
CPU and the load generator never shares a process with it. Readiness is polled over HTTP; no
sleeping on a guess. ``split_cores`` gives the servers and the load generator disjoint cores
where there are two or more; a server started with ``cores`` is pinned before it runs a line
of Python, so every thread it starts (onnxruntime's pool, executors) inherits the pinning.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError
from simulation.fleet import FleetError, free_port, wait_until

EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]

Cores = frozenset[int] | None


def split_cores() -> tuple[Cores, Cores]:
    """(server cores, load generator cores): the last usable core for the generator, the rest
    for the servers under test; (None, None) on one core, where pinning would only serialize."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return None, None
    return frozenset(usable[:-1]), frozenset(usable[-1:])


def _pinned(cores: Cores) -> Callable[[], None] | None:
    if not cores:
        return None

    def pin() -> None:  # runs in the child between fork and exec
        os.sched_setaffinity(0, cores)
    return pin


def pin_process(pid: int, cores: Cores) -> None:
    """Pin every thread of a running process (one started by someone else, e.g. the fleet server)."""
    if not cores:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cores)


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
def agent(state_dir: Path, *, timeout: float = 60.0, cores: Cores = None) -> Iterator[AgentProcess]:
    """``edgefleet agent run --no-mqtt`` on a free port and ``STATE_DIR/agent.sock``."""
    port = free_port()
    env = {**os.environ, "EDGEFLEET_LOG_LEVEL": "40"}
    start = time.perf_counter()
    proc = subprocess.Popen([*EDGEFLEET, "agent", "run", "--state-dir", str(state_dir), "--no-mqtt",
                             "--http-port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            preexec_fn=_pinned(cores))
    try:
        wait_http(proc, "edgefleet agent run", timeout, port=port)
        yield AgentProcess(proc, port, state_dir / "agent.sock", time.perf_counter() - start)
    finally:
        stop(proc)


@contextlib.contextmanager
def flask_baseline(model_file: Path, *, timeout: float = 120.0, socket_path: Path | None = None,
                   cores: Cores = None) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The joblib/Keras Flask baseline on a free TCP port, or on ``socket_path`` (then the port is 0)."""
    port = 0 if socket_path else free_port()
    where = f"unix://{socket_path}" if socket_path else str(port)
    proc = subprocess.Popen([sys.executable, "-m", "bench.baseline", str(model_file), where],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_pinned(cores))
    try:
        wait_http(proc, "the Flask baseline", timeout, port=port or None, socket_path=socket_path)
        yield proc, port
    finally:
        stop(proc)


@contextlib.contextmanager
def peer(kind: str, bundle: Path, *, socket_path: Path | None = None, timeout: float = 60.0,
         cores: Cores = None) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``python -m bench.peers KIND BUNDLE`` on a free TCP port or on ``socket_path`` (port 0)."""
    port = 0 if socket_path else free_port()
    where = ["--uds", str(socket_path)] if socket_path else ["--port", str(port)]
    proc = subprocess.Popen([sys.executable, "-m", "bench.peers", kind, str(bundle), *where],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_pinned(cores))
    try:
        wait_http(proc, f"the {kind} peer", timeout, port=port or None, socket_path=socket_path)
        yield proc, port
    finally:
        stop(proc)
