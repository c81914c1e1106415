"""The load generator frames real HTTP/1.x responses, keeps connections alive and counts errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.errors import BenchError
from bench.loadgen import ResponseError, Target, decode_body, drive, encode_body, parse_head


class _Echo(BaseHTTPRequestHandler):
    """Answers 200 with the request's row count, or 500 for rows whose first value is negative."""

    protocol_version = "HTTP/1.1"
    connections: ClassVar[set[int]] = set()
    close_each = False

    def do_POST(self) -> None:
        type(self).connections.add(self.client_address[1])  # one client port per connection
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = 500 if body["inputs"][0][0] < 0 else 200
        payload = json.dumps({"rows": len(body["inputs"])}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        if self.request_version == "HTTP/1.0" or type(self).close_each:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    _Echo.connections = set()
    _Echo.close_each = False
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_closed_loop_clients_reuse_their_connections(server: ThreadingHTTPServer) -> None:
    target = Target("/predict", port=server.server_address[1])
    result = drive(target, json.dumps({"inputs": [[1.0, 2.0]]}).encode(), clients=3, duration_s=0.5, warmup=2)
    assert result["errors"] == 0
    assert result["answered_ok"] >= 3 * 3 and len(result["latencies_s"]) == result["answered_ok"] - 3 * 2
    assert all(v > 0 for v in result["latencies_s"])
    # The throughput window holds only answers after every client's warm-up.
    assert 0 < result["completed"] <= len(result["latencies_s"]) and 0 < result["wall_s"] <= 0.5 + 0.1
    assert len(_Echo.connections) == 3  # one keep-alive connection per client, never re-opened


def test_a_server_that_closes_each_connection_is_reconnected(server: ThreadingHTTPServer) -> None:
    _Echo.close_each = True
    target = Target("/predict", port=server.server_address[1])
    result = drive(target, json.dumps({"inputs": [[1.0]]}).encode(), clients=2, duration_s=0.3, warmup=1)
    assert result["errors"] == 0 and result["answered_ok"] >= 4
    assert len(result["latencies_s"]) == result["answered_ok"] - 2  # warm-up is per client, not per connection
    assert len(_Echo.connections) > 2


def test_error_answers_are_counted_not_timed(server: ThreadingHTTPServer) -> None:
    target = Target("/predict", port=server.server_address[1])
    result = drive(target, json.dumps({"inputs": [[-1.0]]}).encode(), clients=1, duration_s=0.2, warmup=0)
    assert result["completed"] == 0 and result["latencies_s"] == [] and result["errors"] > 0


def test_a_refused_connection_is_an_error_not_a_crash() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = drive(Target("/x", port=port), b"{}", clients=2, duration_s=0.1)
    assert result == {"latencies_s": [], "errors": 2, "wall_s": result["wall_s"], "completed": 0, "answered_ok": 0,
                      "warmup_s": result["warmup_s"]}


class _Slow(_Echo):
    """Answers a client's first request after a pause: a server paying for its warm-up."""

    seen: ClassVar[set[int]] = set()

    def do_POST(self) -> None:
        port = self.client_address[1]
        if port not in type(self).seen:
            type(self).seen.add(port)
            threading.Event().wait(0.3)  # the server side of the test: a slow first answer
        super().do_POST()


def test_warm_up_answers_are_left_out_of_the_throughput_window() -> None:
    _Slow.seen = set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        result = drive(Target("/predict", port=httpd.server_address[1]), json.dumps({"inputs": [[1.0]]}).encode(),
                       clients=2, duration_s=0.3, warmup=1)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result["warmup_s"] >= 0.3           # the window opened after the slow first answers
    assert result["wall_s"] <= 0.3 + 0.05      # and it lasted the duration, not the warm-up too
    assert result["completed"] > 0 and max(result["latencies_s"]) < 0.3


def test_the_request_is_serialized_with_its_headers() -> None:
    raw = Target("/p", port=8080, headers=(("Authorization", "Bearer t"),)).request_bytes(b'{"a":1}')
    head, body = raw.split(b"\r\n\r\n")
    assert head.splitlines()[0] == b"POST /p HTTP/1.1" and body == b'{"a":1}'
    assert b"Content-Length: 7" in head and b"Authorization: Bearer t" in head and b"Host: 127.0.0.1:8080" in head


def test_a_picture_is_sent_with_its_content_type() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\xff"
    raw = Target("/p", unix_socket="/tmp/s", content_type="image/png").request_bytes(png)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert body == png and b"Content-Type: image/png" in head and b"Content-Length: 10" in head
    assert b"Content-Type: application/json" in Target("/p", port=1).request_bytes(b"{}")
    with pytest.raises(BenchError, match="header value"):
        Target("/p", port=1, content_type="image/png\r\nX-Injected: 1")


@given(body=st.binary(max_size=2048))
def test_bytes_bodies_reach_the_generator_process_unchanged(body: bytes) -> None:
    spec = json.loads(json.dumps(encode_body(body)))  # as it travels on the generator's command line
    assert decode_body(spec) == body


@given(document=st.dictionaries(st.text(max_size=5), st.lists(st.floats(allow_nan=False, allow_infinity=False))))
def test_json_bodies_reach_the_generator_process_as_json(document: dict[str, list[float]]) -> None:
    spec = json.loads(json.dumps(encode_body(document)))
    assert json.loads(decode_body(spec)) == document


@given(status=st.integers(100, 599), length=st.none() | st.integers(0, 10**9), version=st.sampled_from(["1.0", "1.1"]),
       connection=st.sampled_from([None, "close", "keep-alive", "Keep-Alive"]))
def test_parse_head_reads_status_length_and_keep_alive(status: int, length: int | None, version: str,
                                                       connection: str | None) -> None:
    lines = [f"HTTP/{version} {status} Whatever"]
    if length is not None:
        lines.append(f"content-length: {length}")
    if connection is not None:
        lines.append(f"Connection: {connection}")
    expected_keep_alive = connection.lower() == "keep-alive" if connection else version == "1.1"
    assert parse_head("\r\n".join(lines).encode()) == (status, length, expected_keep_alive)


@pytest.mark.parametrize("head", [b"SSH-2.0-OpenSSH", b"HTTP/1.1 abc OK", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"])
def test_parse_head_refuses_what_it_cannot_frame(head: bytes) -> None:
    with pytest.raises(ResponseError):
        parse_head(head)
