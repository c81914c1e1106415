"""The load generator: separate processes, each driving its share of keep-alive connections from one event loop.

``run_load`` starts ``python -m bench.loadgen`` with the target, the request and the number
of concurrent clients, and reads back every request's latency as JSON. Keeping the client
in its own process means the server under test never shares a GIL with it. Each client is
one keep-alive connection (TCP or Unix socket) reused for every request, the way a local
app talks to the agent, and it deliberately does not pace requests: it sends its next
request when the previous answer arrives (closed loop), so throughput is what the server
gives at that concurrency.

Why not ``http.client`` in threads: on two cores the client shares the CPU with the server
under test, and ``http.client`` spent more CPU per request than the agent does serving it,
so the client, not the server, set the ceiling (profiled with py-spy). Here the request is
serialized once, every connection lives in one ``selectors`` loop, and a response is parsed
only as far as its status line and ``Content-Length``: a few microseconds per request.

Warm-up is left out of both figures: each client's first ``warmup`` answers give no latency,
and the throughput window opens only once every client has had its warm-up answers (a
server's first requests pay for lazy imports, allocator growth and caches) and lasts
``duration_s`` from there. Where the caller gives ``cpus`` (its own core on a machine with
two or more), the generator pins itself there so it never competes with the server under
test for the same core.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.errors import BenchError
from bench.stats import LatencySummary


@dataclass(frozen=True)
class Target:
    """Where to send: ``host:port`` over TCP, or a Unix socket path (``host`` then names the Host header).
    ``content_type`` is the body's media type (``image/png`` for a picture)."""

    path: str
    host: str = "127.0.0.1"
    port: int = 0
    unix_socket: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise BenchError(f"request path {self.path!r} must start with '/'", fix="use e.g. /v1/models/m/predict")
        if self.unix_socket is None and not 0 < self.port < 65536:
            raise BenchError(f"port {self.port} is not a TCP port", fix="give the server's port or a unix_socket")
        if not self.content_type or any(c in self.content_type for c in "\r\n"):
            raise BenchError(f"content type {self.content_type!r} cannot be a header value",
                             fix="use a media type such as application/json or image/png")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "host": self.host, "port": self.port, "unix_socket": self.unix_socket,
                "headers": [list(h) for h in self.headers], "content_type": self.content_type}

    def request_bytes(self, body: bytes) -> bytes:
        """The whole POST, serialized once and sent as is for every request."""
        host = "localhost" if self.unix_socket else f"{self.host}:{self.port}"
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {host}", f"Content-Type: {self.content_type}",
                 f"Content-Length: {len(body)}", "Connection: keep-alive",
                 *(f"{k}: {v}" for k, v in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def connect(self) -> socket.socket:
        if self.unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.unix_socket)
        else:
            sock = socket.create_connection((self.host, self.port), timeout=10.0)
            # Nagle would add up to 40 ms to a small request that follows a small request.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return sock


Body = Mapping[str, Any] | bytes
"""A request body: a JSON document, or bytes sent as they are (a PNG picture)."""


def encode_body(body: Body) -> dict[str, str]:
    """The body as it travels to the generator process in its JSON spec: JSON text, or bytes in base64."""
    if isinstance(body, bytes):
        return {"body_b64": base64.b64encode(body).decode("ascii")}
    return {"body": json.dumps(body)}


def decode_body(spec: Mapping[str, Any]) -> bytes:
    """The bytes to send, from a spec ``encode_body`` wrote into."""
    if "body_b64" in spec:
        return base64.b64decode(spec["body_b64"], validate=True)
    return str(spec["body"]).encode()


class ResponseError(Exception):
    """The server's bytes are not an HTTP/1.x response this client can frame."""


def parse_head(head: bytes) -> tuple[int, int | None, bool]:
    """Status, Content-Length (None when absent) and whether the server keeps the connection open."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ResponseError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    keep_alive = parts[0] == b"HTTP/1.1"
    length: int | None = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection":
            keep_alive = value.strip().lower() == b"keep-alive"
        elif name == b"transfer-encoding":
            raise ResponseError("chunked responses are not supported by the load generator")
    return int(parts[1]), length, keep_alive


@dataclass
class _Connection:
    """One closed-loop client: at most one request in flight on one socket."""

    sock: socket.socket
    started: float = 0.0
    buffer: bytearray = field(default_factory=bytearray)
    sent: int = 0

    def response_complete(self) -> tuple[int, bool] | None:
        """(status, keep_alive) once the whole response is buffered, else None."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        status, length, keep_alive = parse_head(bytes(self.buffer[:end]))
        if length is None:
            raise ResponseError("response without Content-Length")
        if len(self.buffer) < end + 4 + length:
            return None
        return status, keep_alive


def drive(target: Target, body: bytes, clients: int, duration_s: float, warmup: int = 3, *,
          warmup_limit_s: float = 30.0) -> dict[str, Any]:
    """Run ``clients`` closed-loop connections; latencies after each client's warm-up, and the
    answers counted over ``duration_s`` from the moment every client finished its warm-up.

    ``completed`` counts 200s inside that window and ``wall_s`` is its length (``answered_ok``:
    every 200, warm-up and stragglers included); ``warmup_s`` is
    how long the warm-up took (capped at ``warmup_limit_s``: a server that slow is measured
    from then on, warmed or not).
    """
    request = target.request_bytes(body)
    selector = selectors.DefaultSelector()
    latencies: list[float] = []
    errors = completed = answered_ok = 0
    warming = clients  # clients that have not had their ``warmup`` answers yet

    def send(conn: _Connection) -> None:
        conn.buffer.clear()
        conn.started = time.perf_counter()
        conn.sock.sendall(request)  # small enough for the socket buffer at once

    def open_connection(sent: int = 0) -> None:
        nonlocal errors, warming
        try:
            # ``sent`` carries over to the new connection: warm-up is per client, not per connection.
            conn = _Connection(target.connect(), sent=sent)
            send(conn)
        except OSError:
            errors += 1  # the server refused or dropped the connection: that client is gone for this run
            if sent < warmup:
                warming -= 1  # it will never warm up: do not hold the window for it
            return
        selector.register(conn.sock, selectors.EVENT_READ, conn)

    start = time.perf_counter()
    window_start: float | None = start if warmup == 0 else None
    deadline = start + warmup_limit_s + duration_s if window_start is None else start + duration_s
    for _ in range(clients):
        open_connection()
    while selector.get_map():
        for key, _ in selector.select(timeout=1.0):
            conn: _Connection = key.data
            try:
                chunk = conn.sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("the server closed the connection")
                conn.buffer += chunk
                outcome = conn.response_complete()
            except (OSError, ResponseError):
                outcome = (0, False)
            if outcome is None:
                continue
            now = time.perf_counter()
            status, keep_alive = outcome
            conn.sent += 1
            ok = status == 200
            answered_ok += ok
            if window_start is not None and now <= deadline:
                completed += ok
            if conn.sent > warmup:
                if ok:
                    latencies.append(now - conn.started)
                else:
                    errors += 1
            elif conn.sent == warmup:
                warming -= 1
            if window_start is None and (warming <= 0 or now - start >= warmup_limit_s):
                window_start = now
                deadline = now + duration_s
            if not keep_alive:
                selector.unregister(conn.sock)
                conn.sock.close()
                if now < deadline:
                    open_connection(conn.sent)
            elif now < deadline:
                try:
                    send(conn)
                except OSError:  # the server went away between two requests
                    errors += 1
                    selector.unregister(conn.sock)
                    conn.sock.close()
            else:
                selector.unregister(conn.sock)
                conn.sock.close()
        if time.perf_counter() > deadline + 30:
            break  # a server that stopped answering: what is in flight counts as lost
    opened = window_start if window_start is not None else start
    wall = max(min(time.perf_counter(), deadline) - opened, 1e-9)
    return {"latencies_s": latencies, "errors": errors, "wall_s": wall, "completed": completed,
            "answered_ok": answered_ok, "warmup_s": opened - start}


def _main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    if spec.get("cpus"):
        os.sched_setaffinity(0, set(spec["cpus"]))
    target = Target(**{**spec["target"], "headers": tuple(tuple(h) for h in spec["target"]["headers"])})
    result = drive(target, decode_body(spec), int(spec["clients"]), float(spec["duration_s"]),
                   int(spec.get("warmup", 3)))
    json.dump(result, sys.stdout)
    return 0
def run_load(target: Target, body: Body, clients: int, duration_s: float, *,
             workers: int | None = None, cpus: frozenset[int] | None = None) -> LatencySummary:
    """Drive ``target`` with ``clients`` closed-loop clients for ``duration_s`` from separate processes.

    The clients are spread over ``workers`` processes (default one: a single event loop
    costs a few microseconds per request, and on two cores a second client process only
    takes CPU away from the server under test). ``cpus``: the cores the generator pins itself
    to (``os.sched_setaffinity``), None to let the scheduler place it.
    """
    if clients < 1 or duration_s <= 0:
        raise BenchError(f"need at least one client and a positive duration (got {clients}, {duration_s})")
    workers = max(1, min(clients, workers or 1))
    shares = [clients // workers + (1 if i < clients % workers else 0) for i in range(workers)]
    procs = []
    for share in shares:
        spec = {"target": target.to_dict(), **encode_body(body), "clients": share, "duration_s": duration_s,
                "cpus": sorted(cpus) if cpus else None}
        procs.append(subprocess.Popen([sys.executable, "-m", "bench.loadgen", json.dumps(spec)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=duration_s + 90)
        if proc.returncode != 0:
            raise BenchError(f"the load generator failed: {err.strip()[-500:]}",
                             fix="check that the server under test is up and answers 200")
        results.append(json.loads(out))
    latencies = [v for r in results for v in r["latencies_s"]]
    errors = sum(r["errors"] for r in results)
    if not latencies:
        raise BenchError(f"no request to {target.path} succeeded ({errors} errors)",
                         fix="check the server's log: it answered every request with an error")
    # Warm-up is out of the throughput (issue 15): each worker counts its answers over its own
    # window after warm-up. The workers run side by side, so the rates add up.
    rate = sum(r["completed"] / r["wall_s"] for r in results)
    return LatencySummary.of(latencies, errors, 1.0, completed=round(rate))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
