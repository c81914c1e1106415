"""The agent's HTTP request parsing under hostile input: the real parser, and a real API server on a Unix socket.

Properties, over request heads and bodies hypothesis makes up:
- a Content-Length is read only when it is plain ASCII digits (``int()`` also reads ``1_0``,
  ``+10``, `` 10`` and other scripts' digits: a strict proxy in front would see another request end);
- the parser raises nothing but a 4xx ``HttpError`` (or 505 for a well-formed HTTP/2+ version);
- a real server answers whatever bytes a client sends and then half-closes, within a deadline,
  never with a 5xx, every refusal an RFC 9457 problem document, and keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.api import ApiServer, HttpError, _parse_head
from agent.metrics import Metrics
from agent.reporter import Reporter
from agent.runtime import load_session
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from edgefleet.profiles import load_profile
from tests.unit.agent.models import make_linear_bundle

DEADLINE_S = 10.0
PROBLEM_MEMBERS = {"type", "title", "status", "detail", "fix"}


def _head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- the parser, directly ----------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1_0", "+10", "1 0", "\xa010", "0x0a", "1e1", "10.0", "-0", "", "١٠", "10,10",
                                   "ten", "\u0661"])
def test_a_content_length_that_int_would_read_but_is_not_plain_digits_is_a_400(value: str) -> None:
    head = f"POST /v1/models/iris/predict HTTP/1.1\r\nContent-Length: {value}\r\n\r\n".encode()
    with pytest.raises(HttpError) as refused:
        _parse_head(head)
    assert refused.value.status == 400 and refused.value.close
    assert "Content-Length" in refused.value.message or "control character" in refused.value.message


@pytest.mark.parametrize(("lines", "status", "words"), [
    (("POST /p HTTP/1.1", "Content-Length: 10", "Content-Length: 10"), 400, "given twice"),
    (("POST /p HTTP/1.1", "Content-Length: 10", "Transfer-Encoding: gzip"), 411, "Transfer-Encoding"),
    (("POST /p HTTP/1.1", "Content-Length : 10"), 400, "malformed header line"),
    (("GET /p HTTP/1.1", "X-A: 1", " folded"), 400, "malformed header line"),
    (("GET /p HTTP/1.1", "X-A: a\x00b"), 400, "control character"),
    (("GET /p HTTP/1.1", "X-A: a\nContent-Length: 5"), 400, "control character"),
    (("GET  /p HTTP/1.1",), 400, "malformed request line"),
    (("GET p HTTP/1.1",), 400, "malformed request target"),
    (("G@T /p HTTP/1.1",), 400, "malformed method"),
    (("GET /p HTTP/1",), 400, "malformed HTTP version"),
    (("GET /p http/1.1",), 400, "malformed HTTP version"),
    (("GET /p HTTP/3.0",), 505, "not supported"),
])
def test_heads_a_strict_proxy_could_read_differently_are_refused(lines: tuple[str, ...], status: int,
                                                                 words: str) -> None:
    with pytest.raises(HttpError) as refused:
        _parse_head(_head(*lines))
    assert refused.value.status == status and words in refused.value.message and refused.value.close


def test_well_formed_heads_read_as_rfc_9112_says() -> None:
    assert _parse_head(_head("POST /v1/x?q=1 HTTP/1.1", "content-length:\t 0042 ", "Host: a")) == (
        "POST", "/v1/x", True, 42, False)
    assert _parse_head(_head("GET http://agent/healthz HTTP/1.0", "Connection: keep-alive")) == (
        "GET", "/healthz", True, 0, False)
    assert _parse_head(_head("GET /healthz HTTP/1.2"))[2] is True  # a later 1.x reads as 1.1
    huge = _parse_head(_head("POST /p HTTP/1.1", "Content-Length: " + "9" * 400, "Expect: 100-continue"))
    assert huge[3] >= 10 ** 18 and huge[4] is True  # too large (413 later), never int()'s 4300-digit ValueError


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(max_codepoint=0xFF), max_size=24))
def test_content_length_is_accepted_exactly_when_it_is_ascii_digits(value: str) -> None:
    head = _head("POST /p HTTP/1.1", f"Content-Length: {value}")
    plain = value.strip(" \t")
    try:
        length = _parse_head(head)[3]
    except HttpError as refused:
        assert refused.status == 400
        assert not re.fullmatch(r"[0-9]+", plain)
    else:
        assert re.fullmatch(r"[0-9]+", plain) and length == int(plain)


_LINE = st.binary(max_size=80).map(lambda b: b.replace(b"\r\n", b""))


@st.composite
def _raw_heads(draw: st.DrawFn) -> bytes:
    """A head that ends at its first CRLF CRLF, as the connection hands it to the parser."""
    lines = draw(st.lists(_LINE, min_size=1, max_size=6))
    return b"\r\n".join(lines).replace(b"\r\n\r\n", b"\r\n") + b"\r\n\r\n"


@settings(max_examples=500, deadline=None)
@given(_raw_heads())
def test_the_parser_raises_nothing_but_a_4xx_http_error(head: bytes) -> None:
    try:
        method, path, _, length, _ = _parse_head(head)
    except HttpError as refused:
        assert 400 <= refused.status < 500 or refused.status == 505, refused.status
        assert refused.close and refused.problem.to_dict()["status"] == refused.status
        assert len(refused.message) < 400  # whatever the client sent, it is not echoed whole
    else:
        assert method and (path.startswith("/") or path == "*") and length >= 0


# -- a real server on a Unix socket ------------------------------------------------------------

class Agent:
    def __init__(self, socket_path: Path, server: ApiServer, loop: asyncio.AbstractEventLoop) -> None:
        self.socket_path, self.server, self.loop = socket_path, server, loop

    def exchange(self, data: bytes) -> tuple[bytes, float]:
        """Send ``data``, half-close, read until the server closes; the answer and the seconds it took."""
        began = time.monotonic()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(DEADLINE_S)
            sock.connect(str(self.socket_path))
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed before reading everything: read what it said
            chunks = []
            while time.monotonic() - began < DEADLINE_S:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            else:
                pytest.fail(f"no end of the answer within {DEADLINE_S} s for {data[:200]!r}")
        return b"".join(chunks), time.monotonic() - began


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    state = StateDir(tmp_path_factory.mktemp("state") / "state").ensure()
    profile = load_profile("generic-x86_64")
    table = ServingTable(max_rows=100)
    table.swap("iris", load_session(ModelStore(state).stage(read_bundle(make_linear_bundle())), profile))
    reporter = Reporter(Metrics(remember_limit=100))
    reporter.attach(table)
    server = ApiServer(table, max_body_bytes=4096, status=lambda: {"pid": 1}, reload=lambda: {"models": {}},
                       feedback=reporter.feedback)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    short = Path(tempfile.mkdtemp(prefix="ef-", dir="/tmp"))  # AF_UNIX paths must stay under 108 bytes
    asyncio.run_coroutine_threadsafe(server.start(host=None, socket_path=short / "agent.sock"), loop).result(5)
    yield Agent(short / "agent.sock", server, loop)
    asyncio.run_coroutine_threadsafe(server.shutdown(2), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()
    short.rmdir()


def _responses(answer: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The answers in the order sent: (status, headers, body); interim 100s included."""
    found = []
    rest = answer
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"an answer's head does not end: {head[:200]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        match = re.fullmatch(r"HTTP/1\.1 (\d{3}) .+", status_line)
        assert match, status_line
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        status = int(match.group(1))
        length = 0 if status == 100 else int(headers["content-length"])
        assert len(rest) >= length, "an answer's body is cut short"
        found.append((status, headers, rest[:length]))
        rest = rest[length:]
    return found


def _check(answer: bytes, sent: bytes) -> list[int]:
    """Every answer well formed, no 5xx, every refusal a problem document; the statuses."""
    statuses = []
    for status, headers, body in _responses(answer):
        statuses.append(status)
        event(f"answered {status}")  # --hypothesis-show-statistics: which paths the inputs reached
        if status == 100:
            continue
        well_formed_other_version = re.search(rb"(?:\A|\n)[^\r\n ]+ [^\r\n ]+ HTTP/[02-9]\.[0-9]\r\n", sent)
        assert status < 500 or (status == 505 and well_formed_other_version), (status, body[:300], sent[:300])
        document: Any = json.loads(body)
        if status >= 400:
            assert headers["content-type"] == "application/problem+json", headers
            assert set(document) >= PROBLEM_MEMBERS and document["status"] == status, document
            assert isinstance(document["detail"], str) and len(document["detail"]) <= 1200
        else:
            assert headers["content-type"] == "application/json"
    return statuses


_METHODS = st.one_of(st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "get", "POST ", "", "G\x00T"]),
                     st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=8))
_ROUTES = ["/healthz", "/v1/models", "/v1/models/iris", "/v1/models/iris/predict", "/v1/feedback", "/v1/status",
           "/v1/reload", "/v1/models/nope/predict"]
_TARGETS = st.one_of(
    st.sampled_from([*_ROUTES, "*", "http://agent/healthz", "/", "/v1/models/" + "x" * 3000 + "/predict",
                     "/healthz?x=1", "healthz", "/a b"]),
    st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=40))
_VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/1.9", "HTTP/2.0", "HTTP/11", "http/1.1", "HTTP/1.1 ", ""])
_LENGTHS = st.one_of(st.integers(0, 5000).map(str), st.sampled_from(
    ["1_0", "+10", " 10", "0x10", "-1", "", "10, 10", "99999999999999999999999", str(64 * 1024 * 1024 + 1), "\xa05"]))
_HEADERS = st.lists(st.one_of(
    st.tuples(st.just("Host"), st.just("agent")),
    st.tuples(st.just("Content-Length"), _LENGTHS),
    st.tuples(st.sampled_from(["Transfer-Encoding", "Connection", "Expect", "Host", "Content-Type"]),
              st.sampled_from(["chunked", "close", "keep-alive", "100-continue", "x", "", "application/json"])),
    st.tuples(st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=12),
              st.text(st.characters(max_codepoint=0xFF, exclude_characters="\r\n"), max_size=30)),
), max_size=6)
_CLEAN_HEADERS = st.lists(st.sampled_from([("Host", "agent"), ("Content-Type", "application/json"),
                                            ("Connection", "close"), ("Connection", "keep-alive"),
                                            ("Expect", "100-continue"), ("Accept", "*/*")]), max_size=4, unique=True)
_BODIES = st.one_of(
    st.binary(max_size=600),
    st.sampled_from([b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}', b'{"request_id": "r", "label": "setosa"}', b"{}",
                     b"[" * 3000 + b"]" * 3000, b'{"inputs": [[1, 2]]}', b"null", b'[{"request_id": 1}]']),
)


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    """One or more requests, mostly well shaped, with hostile parts; sometimes cut or spliced."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):  # a request line a client would send, so that the routes are reached
            line = f"{draw(st.sampled_from(['GET', 'POST']))} {draw(st.sampled_from(_ROUTES))} HTTP/1.1"
        else:
            line = f"{draw(_METHODS)} {draw(_TARGETS)} {draw(_VERSIONS)}"
        headers = [f"{name}: {value}" for name, value in draw(_HEADERS if draw(st.booleans()) else _CLEAN_HEADERS)]
        body = draw(_BODIES)
        if draw(st.booleans()):  # a truthful length for the body most clients would send
            headers.append(f"Content-Length: {len(body)}")
        parts.append(("\r\n".join([line, *headers]) + "\r\n\r\n").encode("latin-1") + body)
    data = b"".join(parts)
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut] + draw(st.binary(max_size=20))


def _still_serves(agent: Agent) -> None:
    answer, _ = agent.exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=_requests())
def test_any_request_bytes_get_4xx_problems_or_answers_never_a_5xx_or_a_hang(agent: Agent, data: bytes) -> None:
    answer, seconds = agent.exchange(data)
    assert seconds < DEADLINE_S
    statuses = _check(answer, data)
    if data.strip(b"\r\n"):
        assert statuses, f"no answer at all to {data[:200]!r}"  # a cut request is answered 400 too
    _still_serves(agent)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=1, max_size=2000))
def test_arbitrary_bytes_get_an_answer_and_a_close(agent: Agent, data: bytes) -> None:
    answer, seconds = agent.exchange(data)
    assert seconds < DEADLINE_S
    statuses = _check(answer, data)
    if data.strip(b"\r\n"):
        assert statuses, f"no answer at all to {data[:200]!r}"
    _still_serves(agent)


@pytest.mark.parametrize("value", ["1_0", "+10", "0x0a", "\xa010"])
def test_the_server_answers_a_content_length_int_would_misread_with_a_400_problem(agent: Agent, value: str) -> None:
    sent = (f"POST /v1/models/iris/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n"
            '{"inputs": [[5.1, 3.5, 1.4, 0.2]]}').encode("latin-1")
    answer, _ = agent.exchange(sent)
    [(status, headers, body)] = _responses(answer)  # one answer, then the connection closes
    assert status == 400 and headers["content-type"] == "application/problem+json"
    assert "is not a decimal number" in json.loads(body)["detail"] and headers["connection"] == "close"


def test_a_request_cut_short_by_the_client_is_answered_400(agent: Agent) -> None:
    for sent, words in [(b"POST /v1/models/iris/predict HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"inputs\"",
                         "ended after 9 of the 40 body bytes"),
                        (b"GET /healthz HTTP/1.1\r\nHost: x", "ended inside a request head")]:
        [(status, _, body)] = _responses(agent.exchange(sent)[0])
        assert status == 400 and words in json.loads(body)["detail"]


def test_remembered_heads_answer_as_a_fresh_read_and_stay_bounded() -> None:
    from agent import api

    good = b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n"
    bad = b"POST /v1/models/m/predict HTTP/1.1\r\nContent-Length: 1_2\r\n\r\n"
    assert api._head_of(good) == api._read_head(good) == api._head_of(good)
    for _ in range(2):  # a refused head is refused every time, never remembered as good
        with pytest.raises(HttpError, match="not a decimal number"):
            api._head_of(bad)
    for n in range(3 * api._HEAD_CACHE):  # a client sending ever new heads
        api._head_of(b"GET /healthz HTTP/1.1\r\nX-N: %d\r\n\r\n" % n)
        assert len(api._heads_read) <= api._HEAD_CACHE
    long = b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * api._HEAD_CACHE_BYTES + b"\r\n\r\n"
    assert api._head_of(long)[1] == "/healthz" and long not in api._heads_read
