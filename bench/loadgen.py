"""The load generator: a separate process of client threads, each on one keep-alive connection.

``run_load`` starts ``python -m bench.loadgen`` with the target, the request and the number
of concurrent clients, and reads back every request's latency as JSON. Keeping the client
in its own process means the server under test never shares a GIL with it; each client is a
plain ``http.client`` connection (TCP or Unix socket) reused for every request, the way a
local app talks to the agent. It deliberately does not pace requests: each client sends its
next request when the previous answer arrives (closed loop), so throughput is what the
server gives at that concurrency.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench.errors import BenchError
from bench.stats import LatencySummary


@dataclass(frozen=True)
class Target:
    """Where to send: ``host:port`` over TCP, or a Unix socket path (``host`` then names the Host header)."""

    path: str
    host: str = "127.0.0.1"
    port: int = 0
    unix_socket: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise BenchError(f"request path {self.path!r} must start with '/'", fix="use e.g. /v1/models/m/predict")
        if self.unix_socket is None and not 0 < self.port < 65536:
            raise BenchError(f"port {self.port} is not a TCP port", fix="give the server's port or a unix_socket")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "host": self.host, "port": self.port, "unix_socket": self.unix_socket,
                "headers": [list(h) for h in self.headers]}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._socket_path)
        self.sock = sock


def _connection(target: Target) -> http.client.HTTPConnection:
    if target.unix_socket:
        return _UnixConnection(target.unix_socket, 10.0)
    conn = http.client.HTTPConnection(target.host, target.port, timeout=10.0)
    conn.connect()
    # Nagle would add up to 40 ms to a small request that follows a small request.
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _client(target: Target, body: bytes, deadline: float, warmup: int, out: list[float], errors: list[int],
            completed: list[int]) -> None:
    headers = {"Content-Type": "application/json", "Connection": "keep-alive", **dict(target.headers)}
    conn = _connection(target)
    try:
        sent = 0
        while True:
            start = time.perf_counter()
            if start >= deadline:
                break
            try:
                conn.request("POST", target.path, body, headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = _connection(target)
            elapsed = time.perf_counter() - start
            sent += 1
            if ok:
                completed.append(1)
            if sent <= warmup:
                continue
            if ok:
                out.append(elapsed)
            else:
                errors.append(1)
    finally:
        conn.close()


def _main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    target = Target(**{**spec["target"], "headers": tuple(tuple(h) for h in spec["target"]["headers"])})
    body = spec["body"].encode()
    clients, duration, warmup = int(spec["clients"]), float(spec["duration_s"]), int(spec.get("warmup", 3))
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[int] = []
    completed: list[int] = []
    start = time.perf_counter()
    deadline = start + duration
    threads = [threading.Thread(target=_client, args=(target, body, deadline, warmup, latencies[i], errors,
                                                                   completed))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    json.dump({"latencies_s": [v for per in latencies for v in per], "errors": len(errors), "wall_s": wall,
               "completed": len(completed)},
              sys.stdout)
    return 0


def run_load(target: Target, body: dict[str, Any], clients: int, duration_s: float, *,
             workers: int | None = None) -> LatencySummary:
    """Drive ``target`` with ``clients`` closed-loop clients for ``duration_s`` from separate processes.

    The clients are spread over ``workers`` processes (default: two from 4 clients up) so that
    one client process's GIL does not cap what a fast server can show; more than two did not
    help on two cores (measured: 1, 2 and 4 workers gave the same agent throughput).
    """
    if clients < 1 or duration_s <= 0:
        raise BenchError(f"need at least one client and a positive duration (got {clients}, {duration_s})")
    workers = max(1, min(clients, workers or (2 if clients >= 4 else 1)))
    shares = [clients // workers + (1 if i < clients % workers else 0) for i in range(workers)]
    procs = []
    for share in shares:
        spec = {"target": target.to_dict(), "body": json.dumps(body), "clients": share, "duration_s": duration_s}
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.loadgen", json.dumps(spec)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=duration_s + 60)
        if proc.returncode != 0:
            raise BenchError(f"the load generator failed: {err.strip()[-500:]}",
                             fix="check that the server under test is up and answers 200")
        results.append(json.loads(out))
    latencies = [v for r in results for v in r["latencies_s"]]
    errors = sum(r["errors"] for r in results)
    if not latencies:
        raise BenchError(f"no request to {target.path} succeeded ({errors} errors)",
                         fix="check the server's log: it answered every request with an error")
    # Throughput counts the warm-up requests too: they took wall time, and leaving them out
    # would understate a slow server (the baseline) more than a fast one. The workers run
    # side by side, so the rates add up.
    rate = sum(r["completed"] / r["wall_s"] for r in results)
    return LatencySummary.of(latencies, errors, 1.0, completed=round(rate))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
