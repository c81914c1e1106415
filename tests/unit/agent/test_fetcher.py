"""The resuming TUF fetcher against a real HTTP server that cuts, stalls and ignores Range."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tuf.api import exceptions

from agent.fetcher import ResumingFetcher, content_addressed

DATA = os.urandom(300_000)
NAME = f"{hashlib.sha256(DATA).hexdigest()}.digits-1.0.0.tar.gz"


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-response is what these tests do on purpose


class RangeServer:
    """A real HTTP server (its own thread) serving bytes by path, with knobs for misbehaviour.

    ``cut_after``: close the connection once the response reaches this absolute byte offset
    (``cuts`` times). ``stall_after``: stop sending at this offset until released.
    ``ignore_range``: answer 200 with the whole file. ``wrong_content_range``: answer 206 from byte 0.
    ``root``: serve files from a directory too (a TUF repository's metadata and targets).
    ``token``: answer 401 to a request without ``Authorization: Bearer <token>`` (private targets).
    """

    def __init__(self, files: dict[str, bytes] | None = None, root: Path | None = None) -> None:
        self.files = dict(files or {})
        self.root = root
        self.cut_after: int | None = None
        self.cuts = 0
        self.stall_after: int | None = None
        self.stall_match = ""  # stall only paths containing this (e.g. "/targets/": metadata flows)
        self.ignore_range = False
        self.wrong_content_range = False
        self.token: str | None = None
        self.authorizations: list[str | None] = []
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                server.authorizations.append(self.headers.get("Authorization"))
                if server.token is not None and self.headers.get("Authorization") != f"Bearer {server.token}":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.lookup(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    shown = 0 if server.wrong_content_range else start
                    body = data[shown:]
                    self.send_header("Content-Range", f"bytes {shown}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                    body = data
                    start = 0
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self._send(body, start)

            def _send(self, body: bytes, start: int) -> None:
                stop = len(body)
                cut = server.cut_after is not None and server.cuts > 0 and server.cut_after > start
                if cut:
                    server.cuts -= 1
                    stop = min(stop, server.cut_after - start)  # type: ignore[operator]
                if server.stall_after is not None and server.stall_match in self.path:
                    self.wfile.write(body[: max(0, server.stall_after - start)])
                    self.wfile.flush()
                    server.release.wait(10)
                    return
                self.wfile.write(body[:stop])
                self.wfile.flush()
                if cut:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def lookup(self, path: str) -> bytes | None:
        if path in self.files:
            return self.files[path]
        if self.root is not None:
            candidate = (self.root / path.lstrip("/")).resolve()
            if candidate.is_file() and self.root.resolve() in candidate.parents:
                return candidate.read_bytes()
        return None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def serving(**knobs: object) -> Iterator[RangeServer]:
    with RangeServer({f"/t/{NAME}": DATA, "/meta/timestamp.json": b'{"x": 1}'}) as server:
        for key, value in knobs.items():
            setattr(server, key, value)
        yield server


def fetch(fetcher: ResumingFetcher, url: str, max_length: int = len(DATA)) -> bytes:
    with fetcher.download_file(url, max_length) as handle:
        return handle.read()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(1, len(DATA) - 1))
def test_resumes_after_a_cut_at_any_byte_offset(tmp_path: Path, cut: int) -> None:
    downloads = tmp_path / f"dl-{cut}"
    with serving(cut_after=cut, cuts=1) as server:
        url = f"{server.url}/t/{NAME}"
        with pytest.raises(exceptions.DownloadError, match="connection"):
            fetch(ResumingFetcher(downloads, attempts=1), url)
        partial = ResumingFetcher(downloads).partial_path(url)
        assert partial.stat().st_size == cut  # the bytes before the cut are kept on disk
        seen: list[int] = []
        got = fetch(ResumingFetcher(downloads, progress=lambda _u, n, _t: seen.append(n)), url)
    assert got == DATA
    assert server.requests[-1] == (f"/t/{NAME}", f"bytes={cut}-")
    assert seen[-1] == len(DATA) and min(seen) > cut
    assert not partial.exists()  # consumed


def test_retries_inside_one_call_resume_from_the_partial_file(tmp_path: Path) -> None:
    with serving(cut_after=100_000, cuts=1) as server:
        got = fetch(ResumingFetcher(tmp_path, attempts=3), f"{server.url}/t/{NAME}")
    assert got == DATA
    assert [r for _, r in server.requests] == [None, "bytes=100000-"]


def test_stalled_server_times_out_instead_of_hanging(tmp_path: Path) -> None:
    with serving(stall_after=5000) as server:
        fetcher = ResumingFetcher(tmp_path, read_timeout=0.3, attempts=1)
        began = time.monotonic()
        with pytest.raises(exceptions.SlowRetrievalError):
            fetch(fetcher, f"{server.url}/t/{NAME}")
        assert time.monotonic() - began < 3
        with pytest.raises(exceptions.SlowRetrievalError):  # metadata path bounded too
            server.stall_after = 2
            fetcher.download_bytes(f"{server.url}/meta/timestamp.json", 100)


def test_total_deadline_stops_a_trickling_transfer(tmp_path: Path) -> None:
    ticks = iter(range(0, 10_000, 100))
    fetcher = ResumingFetcher(tmp_path, total_timeout=150, attempts=1, chunk_size=1000, clock=lambda: next(ticks))
    with serving() as server, pytest.raises(exceptions.SlowRetrievalError, match="longer than 150"):
        fetch(fetcher, f"{server.url}/t/{NAME}")


@pytest.mark.parametrize("knob", ["ignore_range", "wrong_content_range"])
def test_server_not_honouring_range_restarts_from_zero(tmp_path: Path, knob: str) -> None:
    with serving(cut_after=123_457, cuts=1) as server:
        url = f"{server.url}/t/{NAME}"
        with pytest.raises(exceptions.DownloadError):
            fetch(ResumingFetcher(tmp_path, attempts=1), url)
        setattr(server, knob, True)
        assert fetch(ResumingFetcher(tmp_path, attempts=1), url) == DATA
    ranges = [r for _, r in server.requests]
    if knob == "ignore_range":  # the 200 answer to the Range request is taken whole, from byte 0
        assert ranges == [None, "bytes=123457-"]
    else:  # a 206 from the wrong offset is dropped and the file asked for again from byte 0
        assert ranges == [None, "bytes=123457-", None]


def test_partial_larger_than_allowed_is_discarded(tmp_path: Path) -> None:
    with serving() as server:
        url = f"{server.url}/t/{NAME}"
        fetcher = ResumingFetcher(tmp_path)
        fetcher.partial_path(url).parent.mkdir(parents=True)
        fetcher.partial_path(url).write_bytes(b"x" * (len(DATA) + 5))
        assert fetch(fetcher, url) == DATA


def test_more_than_max_length_is_refused_and_not_kept(tmp_path: Path) -> None:
    with serving() as server:
        url = f"{server.url}/t/{NAME}"
        fetcher = ResumingFetcher(tmp_path)
        with pytest.raises(exceptions.DownloadLengthMismatchError):
            fetch(fetcher, url, max_length=1000)
        assert not fetcher.partial_path(url).exists()


def test_http_error_is_a_download_http_error(tmp_path: Path) -> None:
    with serving() as server, pytest.raises(exceptions.DownloadHTTPError) as info:
        fetch(ResumingFetcher(tmp_path), f"{server.url}/t/{'0' * 64}.missing.tar.gz")
    assert info.value.status_code == 404


def test_unreachable_server_is_a_download_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(exceptions.DownloadError):
        fetch(ResumingFetcher(tmp_path, connect_timeout=0.5), f"http://127.0.0.1:{port}/t/{NAME}")


def test_metadata_is_fetched_whole_and_never_resumed(tmp_path: Path) -> None:
    assert content_addressed(f"http://h/t/{NAME}")
    assert not content_addressed("http://h/meta/timestamp.json")
    with serving() as server:
        assert ResumingFetcher(tmp_path).download_bytes(f"{server.url}/meta/timestamp.json", 100) == b'{"x": 1}'
    assert not (tmp_path / ".partial").exists()


def test_reported_progress_is_already_on_disk(tmp_path: Path) -> None:
    """What a SIGKILL right after a progress report leaves behind is exactly what was reported."""
    sizes: list[tuple[int, int]] = []
    with serving() as server:
        url = f"{server.url}/t/{NAME}"
        fetcher = ResumingFetcher(tmp_path, chunk_size=10_000)
        fetcher.progress = lambda _u, done, _t: sizes.append((done, fetcher.partial_path(url).stat().st_size))
        assert fetch(fetcher, url) == DATA
    assert len(sizes) > 5 and all(done == on_disk for done, on_disk in sizes)


def test_impossible_settings_are_refused(tmp_path: Path) -> None:
    from agent.fetcher import FetcherError

    with pytest.raises(FetcherError, match="positive"):
        ResumingFetcher(tmp_path, read_timeout=0)


def test_stale_keep_alive_connection_after_a_network_cut_is_retried(tmp_path: Path) -> None:
    """After a cut the pool holds a connection the peer reset; the next GET must not fail on it."""
    body = b'{"x": 1}'
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    answered: list[int] = []

    def serve() -> None:
        first, _ = listener.accept()
        first.recv(65536)
        first.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s" % (len(body), body))
        answered.append(1)
        first.recv(65536)  # the second request arrives on the kept-alive connection...
        first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        first.close()  # ...and is answered with a reset, as a peer that lost its state would
        second, _ = listener.accept()
        second.recv(65536)
        second.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        answered.append(2)
        second.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    fetcher = ResumingFetcher(tmp_path, connect_timeout=2, read_timeout=2)
    url = f"http://127.0.0.1:{port}/meta/timestamp.json"
    assert fetcher.download_bytes(url, 100) == body
    assert fetcher.download_bytes(url, 100) == body
    thread.join(5)
    listener.close()
    assert answered == [1, 2]


def test_the_credential_rides_on_every_request_and_without_it_a_private_target_is_refused(tmp_path: Path) -> None:
    with serving(token="device-token", cut_after=100_000, cuts=1) as server:
        fetcher = ResumingFetcher(tmp_path, credential="device-token")
        with fetcher.download_file(f"{server.url}/t/{NAME}", len(DATA)) as handle:
            assert handle.read() == DATA
        assert fetcher.fetch(f"{server.url}/meta/timestamp.json").__next__() == b'{"x": 1}'
        # The cut download resumed with a Range request: it carried the credential too.
        assert [r for _, r in server.requests] == [None, "bytes=100000-", None]
        assert server.authorizations == ["Bearer device-token"] * 3
        anonymous = ResumingFetcher(tmp_path / "anonymous")
        with pytest.raises(exceptions.DownloadHTTPError) as refused, \
                anonymous.download_file(f"{server.url}/t/{NAME}", len(DATA)):
            pass
        assert refused.value.status_code == 401 and server.authorizations[-1] is None
