"""The local HTTP API over loopback TCP and a Unix socket, with real sessions and a real client.

Every bad request must get a 4xx naming the problem, and the server must answer the next
request normally afterwards.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.api import ApiServer
from agent.errors import AgentError
from agent.runtime import ModelSession, load_session
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from edgefleet.profiles import Profile
from tests.unit.agent.models import FEATURES, BundleMaker
from tests.unit.agent.tally import Tally

ROW = [5.1, 3.5, 1.4, 0.2]


@dataclass
class Running:
    base: str
    socket_path: Path
    table: ServingTable
    server: ApiServer
    loop: asyncio.AbstractEventLoop

    def tcp(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=5)

    def unix(self) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket_path)), base_url="http://agent", timeout=5)

    def raw(self, data: bytes) -> bytes:
        host, port = self.server.tcp_address  # type: ignore[misc]
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
def api(state: StateDir, profile: Profile, linear_bundle: BundleMaker) -> Iterator[Running]:
    table = ServingTable(max_rows=100)
    table.swap("iris", load_session(ModelStore(state).stage(read_bundle(linear_bundle())), profile))
    server = ApiServer(table, max_body_bytes=64 * 1024, status=lambda: {"pid": 1}, reload=lambda: {"models": {}})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    short = Path(tempfile.mkdtemp(prefix="ef-", dir="/tmp"))  # AF_UNIX paths must stay under 108 bytes
    sock = short / "agent.sock"
    asyncio.run_coroutine_threadsafe(server.start(port=0, socket_path=sock), loop).result(5)
    host, port = server.tcp_address  # type: ignore[misc]
    yield Running(f"http://{host}:{port}", sock, table, server, loop)
    asyncio.run_coroutine_threadsafe(server.shutdown(2), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()
    short.rmdir()


def test_predict_over_tcp_and_over_the_unix_socket_agree(api: Running) -> None:
    with api.tcp() as tcp, api.unix() as unix:
        a = tcp.post("/v1/models/iris/predict", json={"inputs": [ROW, ROW]})
        b = unix.post("/v1/models/iris/predict", json={"inputs": ROW})
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    body = a.json()
    assert set(body) == {"model", "version", "request_id", "predictions", "probabilities"}
    assert body["model"] == "iris" and body["version"] == "1.0.0" and len(body["predictions"]) == 2
    assert b.json()["predictions"] == body["predictions"][:1]
    assert b.json()["probabilities"][0] == pytest.approx(body["probabilities"][0])
    assert a.json()["request_id"] != b.json()["request_id"]
    assert oct(api.socket_path.stat().st_mode & 0o777) == oct(0o660)


def test_named_features_give_the_same_answer(api: Running) -> None:
    named = {"instances": [dict(zip(reversed(FEATURES), reversed(ROW), strict=True))]}
    with api.unix() as client:
        by_name = client.post("/v1/models/iris/predict", json=named).json()
        by_row = client.post("/v1/models/iris/predict", json={"inputs": [ROW]}).json()
    assert by_name["predictions"] == by_row["predictions"]
    assert by_name["probabilities"][0] == pytest.approx(by_row["probabilities"][0])


def test_models_healthz_and_status(api: Running) -> None:
    with api.tcp() as client:
        client.post("/v1/models/iris/predict", json={"inputs": [ROW]})
        models = client.get("/v1/models").json()["models"]
        assert client.get("/healthz").json() == {"status": "ok", "models": {"iris": "1.0.0"}}
        assert client.get("/v1/status").json() == {"pid": 1}
        assert client.post("/v1/reload").json() == {"models": {}}
        one = client.get("/v1/models/iris").json()
    assert [m["name"] for m in models] == ["iris"]
    assert models[0]["input"]["feature_names"] == list(FEATURES) and models[0]["requests"] == 1
    assert models[0]["providers"] == ["CPUExecutionProvider"] and one["version"] == "1.0.0"


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"inputs": [[1, 2]]}).encode(), 400, "takes 4"),
    (json.dumps({"inputs": [[1, "x", 3, 4]]}).encode(), 400, "not a number"),
    (b'{"inputs": [[1, NaN, 3, 4]]}', 400, "NaN"),
    (json.dumps({"instances": [{"petal_width": 1, "bogus": 2}]}).encode(), 400, "unknown feature(s) 'bogus'"),
    (json.dumps({"instances": [{"petal_width": 1}]}).encode(), 400, "missing feature(s)"),
    (json.dumps({"inputs": [ROW] * 101}).encode(), 413, "101 rows"),
    (json.dumps({"inputs": []}).encode(), 400, "no rows"),
    (b"[1, 2]", 400, "takes 4"),
    (b'"text"', 400, "not an object"),
    (json.dumps({"instances": [dict.fromkeys(FEATURES, 10 ** 400)]}).encode(), 400, "too large for float32"),
])
def test_bad_input_gets_a_4xx_naming_the_problem_and_the_agent_stays_up(api: Running, body: bytes, status: int,
                                                                       words: str) -> None:
    with api.tcp() as client:
        response = client.post("/v1/models/iris/predict", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert words in problem["detail"] and problem["fix"] and problem["status"] == status
        assert problem["type"] == "urn:edgefleet:problem:input" and problem["title"]
        assert client.post("/v1/models/iris/predict", json={"inputs": [ROW]}).status_code == 200  # same connection


def test_json_nested_deeper_than_the_recursion_limit_is_a_400(api: Running) -> None:
    # Deeper than Python's default recursion limit (json raises RecursionError); not so deep that a process
    # which raised the limit (importing onnx2tf does) overflows the C stack: there the parser refuses it.
    with api.tcp() as client:
        response = client.post("/v1/models/iris/predict", content=b"[" * 5_000 + b"]" * 5_000)
        assert response.status_code == 400 and response.json()["fix"], response.text
        assert client.post("/v1/models/iris/predict", json={"inputs": [ROW]}).status_code == 200


def test_http_level_errors(api: Running) -> None:
    with api.tcp() as client:
        assert client.post("/v1/models/nope/predict", json={"inputs": [ROW]}).status_code == 404
        assert "no model named 'nope'" in client.post("/v1/models/nope/predict", json={"inputs": [ROW]}).json()["detail"]
        assert client.get("/v1/models/iris/predict").status_code == 405
        assert client.get("/nowhere").status_code == 404
        assert client.get("/v1/models/nope").status_code == 404
        big = client.post("/v1/models/iris/predict", content=b"[" + b"1," * 40000 + b"1]")
        assert big.status_code == 413 and "over this agent's limit" in big.json()["detail"]
    with api.tcp() as client:
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
    (b"POST /v1/models/iris/predict HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
    (b"POST /v1/models/iris/predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    (b"POST /v1/models/iris/predict HTTP/1.1\r\nHost: x\r\n\r\n{\"inputs\": [[1, 2, 3, 4]]}", 411),
    (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
    (b"GET /healthz HTTP/1.1\r\nno-colon-here\r\n\r\n", 400),
])
def test_malformed_http_is_answered_and_closed(api: Running, request_bytes: bytes, status: int) -> None:
    answer = api.raw(request_bytes)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
    assert b"Connection: close" in answer
    with api.tcp() as client:
        assert client.get("/healthz").status_code == 200


def test_keep_alive_serves_many_requests_on_one_connection_and_http10_closes(api: Running) -> None:
    body = json.dumps({"inputs": [ROW]}).encode()
    one = (f"POST /v1/models/iris/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    last = (f"POST /v1/models/iris/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    answer = api.raw(one * 3 + last)
    assert answer.count(b"HTTP/1.1 200 OK") == 4
    assert b"HTTP/1.1 200" in api.raw(b"GET /healthz HTTP/1.0\r\n\r\n")


def test_expect_100_continue(api: Running) -> None:
    body = json.dumps({"inputs": [ROW]}).encode()
    answer = api.raw(b"POST /v1/models/iris/predict HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")


def test_a_stale_socket_file_is_replaced_but_a_live_one_is_refused(api: Running) -> None:
    stale = Path(tempfile.mkdtemp(prefix="ef-", dir="/tmp")) / "agent.sock"
    with socket.socket(socket.AF_UNIX) as left_behind:
        left_behind.bind(str(stale))  # bound, never listening: what a crashed agent leaves
    other = ApiServer(api.table)
    asyncio.run_coroutine_threadsafe(other.start(host=None, socket_path=stale), api.loop).result(5)
    asyncio.run_coroutine_threadsafe(other.shutdown(1), api.loop).result(5)
    third = ApiServer(api.table)
    with pytest.raises(AgentError, match="already serving"):
        asyncio.run_coroutine_threadsafe(third.start(host=None, socket_path=api.socket_path), api.loop).result(5)
    stale.parent.rmdir()


def test_swap_while_clients_hammer_the_api_fails_no_request(api: Running, state: StateDir, profile: Profile,
                                                            linear_bundle: BundleMaker) -> None:
    stop = threading.Event()
    tally = Tally()

    def hammer(use_unix: bool) -> tuple[int, list[int], set[str]]:
        ok, bad, versions = 0, [], set()
        with (api.unix() if use_unix else api.tcp()) as client:
            while not stop.is_set():
                response = client.post("/v1/models/iris/predict", json={"inputs": [ROW, ROW]})
                if response.status_code == 200:
                    ok += 1
                    versions.add(response.json()["version"])
                else:
                    bad.append(response.status_code)
                tally.add()
        return ok, bad, versions

    store = ModelStore(state)
    slots = [store.stage(read_bundle(linear_bundle(v, seed=i))) for i, v in enumerate(["1.0.0", "2.0.0"])]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(hammer, i % 2 == 0) for i in range(4)]
        seen = 0
        for i in range(30):
            seen = tally.wait_for_more(seen + 1)  # requests in flight across every swap
            api.table.swap("iris", load_session(slots[(i + 1) % 2], profile))
        tally.wait_for_more(tally.count + 3)
        stop.set()
        results = [f.result(30) for f in futures]
    assert all(bad == [] for _, bad, _ in results)
    assert sum(ok for ok, _, _ in results) > 60
    assert set().union(*(v for _, _, v in results)) == {"1.0.0", "2.0.0"}


class NanSession:
    """A session whose model outputs NaN: the API must answer 500 with valid JSON, not NaN."""

    def __init__(self, inner: ModelSession) -> None:
        self.manifest, self.slot, self.providers, self.runtime = inner.manifest, inner.slot, inner.providers, inner.runtime

    def run_roles(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"probabilities": np.full((len(x), 3), np.nan, np.float32), "label": np.array(["setosa"] * len(x))}

    def close(self) -> None:
        pass


def test_a_model_answering_nan_gets_a_500_with_valid_json(api: Running) -> None:
    real = api.table.get("iris")
    assert real is not None
    api.table.swap("iris", NanSession(real))
    with api.tcp() as client:
        response = client.post("/v1/models/iris/predict", json={"inputs": [ROW]})
        assert response.status_code == 500 and "NaN" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200


def _request(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_pipelined_requests_are_answered_in_order_when_one_runs_off_the_loop(api: Running) -> None:
    # /v1/status runs in a worker thread; the predict behind it must wait for it, not overtake it.
    predict = _request("POST", "/v1/models/iris/predict", json.dumps({"inputs": [ROW]}).encode())
    answer = api.raw(_request("GET", "/v1/status") + predict + _request("GET", "/nowhere")
                     + _request("GET", "/healthz", extra="Connection: close\r\n"))
    statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]
    assert statuses == [200, 200, 404, 200]
    assert answer.index(b'"pid":1') < answer.index(b'"predictions"') < answer.index(b"no route '/nowhere'")


def test_a_request_trickling_in_byte_by_byte_and_a_half_close_still_get_the_answer(api: Running) -> None:
    data = _request("POST", "/v1/models/iris/predict", json.dumps({"inputs": [ROW]}).encode())
    host, port = api.server.tcp_address  # type: ignore[misc]
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            sock.send(data[i:i + 1])
        sock.shutdown(socket.SHUT_WR)  # the client sends nothing more but still reads
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.count(b"HTTP/1.1") == 1
    head, _, body = answer.partition(b"\r\n\r\n")
    assert json.loads(body)["predictions"] == api.table.predict("iris", [ROW]).predictions
    assert f"Content-Length: {len(body)}".encode() in head


def test_the_prediction_body_is_the_documented_json(api: Running) -> None:
    with api.unix() as client:
        body = client.post("/v1/models/iris/predict", json={"inputs": [ROW, ROW]}).json()
    assert list(body) == ["model", "version", "request_id", "predictions", "probabilities"]
    assert (body["model"], body["version"], len(body["request_id"])) == ("iris", "1.0.0", 32)
    assert len(body["predictions"]) == 2 and len(body["probabilities"][0]) == 3


def test_pictures_are_decoded_on_worker_threads_and_numbers_inline(api: Running) -> None:
    """A PNG/JPEG or multipart body goes off the loop (decoding releases the GIL, so several run at
    once: 0.30x -> 0.84x the FastAPI peer at 16 clients in the bench); a cheap JSON body stays inline."""
    server = api.server
    assert server._inline("iris", b'{"inputs": [[1, 2, 3, 4]]}', {"content-type": "application/json"})
    assert server._inline("iris", b"[[1, 2, 3, 4]]")
    for media in ("image/png", "Image/JPEG", "multipart/form-data; boundary=x"):
        assert not server._inline("iris", b"\x89PNG", {"content-type": media})
