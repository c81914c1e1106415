"""The micro-batcher: answers go to the request that asked, a bad row fails only its request, a lone request never waits."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.api import ApiServer
from agent.batcher import BatchPolicy, Decision, MicroBatcher, decide, merge, run_merged, split
from agent.runtime import load_session
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from edgefleet.profiles import load_profile
from tests.unit.agent.models import make_linear_bundle


class _Loop:
    """A fake event loop: ``schedule`` queues behind what is ready, like ``loop.call_soon``."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], None]] = []

    def schedule(self, fn: Callable[[], None]) -> None:
        self.ready.append(fn)

    def run_ready(self) -> None:
        while self.ready:
            self.ready.pop(0)()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _model(runs: list[int]) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Label = first value x 10; a negative first value makes the whole run fail (a row the runtime refuses)."""
    def run(matrix: np.ndarray) -> dict[str, np.ndarray]:
        runs.append(len(matrix))
        if (matrix[:, 0] < 0).any():
            raise ValueError("negative input")
        return {"label": matrix[:, 0] * 10, "probabilities": np.stack([matrix[:, 0], -matrix[:, 0]], axis=1)}
    return run


def _batcher(loop: _Loop, clock: _Clock, runs: list[int], others: Callable[[], bool],
             policy: BatchPolicy | None = None) -> MicroBatcher[np.ndarray, Any]:
    model = _model(runs)

    def run_batch(_key: str, matrices: list[np.ndarray]) -> list[Any]:
        return run_merged(model, matrices)

    return MicroBatcher(run_batch, policy=policy, others_ready=others, schedule=loop.schedule, clock=clock)


# Arrival patterns: loop iterations, each a list of requests (rows given by their first values;
# a request may carry several rows), with time passing between requests.
_request = st.lists(st.integers(-3, 1000), min_size=1, max_size=3)
_iteration = st.lists(st.tuples(_request, st.floats(0, 300e-6)), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(iterations=st.lists(_iteration, min_size=1, max_size=6), max_rows=st.integers(1, 16))
def test_every_answer_goes_to_the_request_that_asked(iterations: list[list[tuple[list[int], float]]],
                                                     max_rows: int) -> None:
    loop, clock, runs = _Loop(), _Clock(), []
    arrivals: list[int] = [0]  # requests still to arrive in this iteration
    batcher = _batcher(loop, clock, runs, lambda: arrivals[0] > 0 or bool(loop.ready), BatchPolicy(200e-6, max_rows))
    answers: dict[int, Any] = {}
    sent: dict[int, np.ndarray] = {}
    for iteration in iterations:
        arrivals[0] = len(iteration)
        for values, gap in iteration:
            clock.now += gap
            arrivals[0] -= 1
            rid = len(sent)
            matrix = np.array([[v, 0.5] for v in values], dtype=np.float32)
            sent[rid] = matrix

            def deliver(outcome: Any, rid: int = rid) -> None:
                assert rid not in answers, "answered twice"
                answers[rid] = outcome

            if batcher.submit("m", matrix, deliver, rows=len(matrix)) is Decision.ALONE:
                deliver(run_merged(_model(runs), [matrix])[0])
        loop.run_ready()  # the end of the iteration: queued flushes run
    assert sorted(answers) == sorted(sent)
    for rid, matrix in sent.items():
        outcome = answers[rid]
        if (matrix[:, 0] < 0).any():
            assert isinstance(outcome, ValueError)  # its own bad row fails it
        else:  # and never anyone else's
            assert not isinstance(outcome, Exception)
            assert outcome["label"].tolist() == (matrix[:, 0] * 10).tolist()
            assert outcome["probabilities"][:, 0].tolist() == matrix[:, 0].tolist()
    assert max(runs) <= max(max_rows, max(len(m) for m in sent.values()))


def test_one_bad_row_fails_only_its_own_request() -> None:
    loop, clock, runs = _Loop(), _Clock(), []
    pending = [3]
    batcher = _batcher(loop, clock, runs, lambda: pending[0] > 0)
    answers: dict[int, Any] = {}
    for rid, value in enumerate((1.0, -1.0, 2.0)):
        pending[0] -= 1
        batcher.submit("m", np.array([[value, 0.0]], dtype=np.float32), lambda o, rid=rid: answers.__setitem__(rid, o))
    loop.run_ready()
    assert answers[0]["label"].tolist() == [10.0] and answers[2]["label"].tolist() == [20.0]
    assert isinstance(answers[1], ValueError)
    assert runs == [3, 1, 1, 1]  # the merged run failed, so each request ran alone


def test_concurrent_requests_share_one_run() -> None:
    loop, clock, runs = _Loop(), _Clock(), []
    pending = [4]
    batcher = _batcher(loop, clock, runs, lambda: pending[0] > 0)
    answers: list[Any] = []
    decisions = []
    for value in range(4):
        pending[0] -= 1
        decisions.append(batcher.submit("m", np.array([[value, 0.0]], dtype=np.float32), answers.append))
    assert answers == [] and runs == []  # nothing ran yet: the flush waits behind the ready callbacks
    loop.run_ready()
    assert decisions == [Decision.JOIN] * 4 and runs == [4]
    assert [a["label"].tolist() for a in answers] == [[0.0], [10.0], [20.0], [30.0]]


def test_a_lone_request_does_not_wait() -> None:
    loop, clock, runs = _Loop(), _Clock(), []
    batcher = _batcher(loop, clock, runs, lambda: False)
    assert batcher.submit("m", np.ones((1, 2), dtype=np.float32), lambda _o: None) is Decision.ALONE
    assert loop.ready == [] and runs == []  # no flush scheduled, nothing held: the caller runs it now
    assert decide(BatchPolicy(), queued=0, waited_s=0.0, others_ready=False) is Decision.ALONE


def test_without_a_loop_to_flush_on_nothing_is_ever_batched() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda _k, items: items, others_ready=lambda: True)
    assert batcher.submit("m", 1, lambda _o: None) is Decision.ALONE


def test_a_batch_flushes_once_it_has_waited_its_limit() -> None:
    loop, clock, runs = _Loop(), _Clock(), []
    batcher = _batcher(loop, clock, runs, lambda: True, BatchPolicy(max_wait_s=200e-6))
    answers: list[Any] = []
    assert batcher.submit("m", np.zeros((1, 2), dtype=np.float32), answers.append) is Decision.JOIN
    clock.now += 150e-6
    assert batcher.submit("m", np.ones((1, 2), dtype=np.float32), answers.append) is Decision.JOIN
    clock.now += 60e-6  # the oldest has now waited 210 us
    assert batcher.submit("m", np.ones((1, 2), dtype=np.float32), answers.append) is Decision.FLUSH
    assert runs == [3] and len(answers) == 3
    loop.run_ready()  # the queued flush finds the batch gone
    assert runs == [3]


def test_a_full_batch_runs_at_once_and_a_big_request_runs_alone() -> None:
    loop, clock, runs = _Loop(), _Clock(), []
    batcher = _batcher(loop, clock, runs, lambda: True, BatchPolicy(max_rows=2))
    answers: list[Any] = []
    batcher.submit("m", np.zeros((1, 2), dtype=np.float32), answers.append)
    assert batcher.submit("m", np.ones((1, 2), dtype=np.float32), answers.append) is Decision.FLUSH
    assert runs == [2]
    assert batcher.submit("m", np.ones((5, 2), dtype=np.float32), answers.append, rows=5) is Decision.ALONE


def test_models_are_batched_apart() -> None:
    loop = _Loop()
    seen: list[tuple[str, list[int]]] = []

    def run_batch(key: str, items: list[int]) -> list[int]:
        seen.append((key, list(items)))
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(run_batch, others_ready=lambda: True, schedule=loop.schedule)
    for key, item in (("a", 1), ("b", 2), ("a", 3)):
        batcher.submit(key, item, lambda _o: None)
    loop.run_ready()
    assert seen == [("a", [1, 3]), ("b", [2])]


def test_merge_and_split_keep_request_order() -> None:
    merged, offsets = merge([np.zeros((2, 3)), np.ones((1, 3)), np.full((3, 3), 2.0)])
    assert merged.shape == (6, 3) and offsets == [2, 3, 6]
    parts = split({"label": np.arange(6)}, offsets)
    assert [p["label"].tolist() for p in parts] == [[0, 1], [2], [3, 4, 5]]


def test_policy_refuses_waits_that_would_hold_requests() -> None:
    with pytest.raises(ValueError, match="max_wait_s"):
        BatchPolicy(max_wait_s=0.5)
    with pytest.raises(ValueError, match="max_rows"):
        BatchPolicy(max_rows=0)


# -- through the real API: a burst of requests on many connections, one of them bad ----------------
@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ApiServer, Path]]:
    state = StateDir(tmp_path / "state").ensure()
    table = ServingTable(max_rows=100)
    table.swap("m", load_session(ModelStore(state).stage(read_bundle(make_linear_bundle())),
                                 load_profile("generic-x86_64")))
    server = ApiServer(table)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    short = Path(tempfile.mkdtemp(prefix="ef-", dir="/tmp"))  # AF_UNIX paths stay under 108 bytes
    asyncio.run_coroutine_threadsafe(server.start(host=None, socket_path=short / "a.sock"), loop).result(5)
    yield server, short / "a.sock"
    asyncio.run_coroutine_threadsafe(server.shutdown(2), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _post(row: list[float]) -> bytes:
    body = json.dumps({"inputs": [row]}).encode()
    return (f"POST /v1/models/m/predict HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), json.loads(rest[:length])


def test_a_burst_through_the_api_answers_every_connection_with_its_own_rows(served: tuple[ApiServer, Path]) -> None:
    server, path = served
    rows = [[float(i), 1.0 + i / 10, 2.0, 0.5] for i in range(24)]
    rows[7] = [1.0, 2.0]  # one bad request: the wrong number of features
    alone = {}
    with socket.socket(socket.AF_UNIX) as one:
        one.connect(str(path))
        for i, row in enumerate(rows):
            one.sendall(_post(row))
            alone[i] = _read_answer(one)
    for _ in range(5):  # several bursts: whether they merge depends on the scheduler, the answers must not
        socks = []
        for _ in rows:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(10)
            sock.connect(str(path))
            socks.append(sock)
        try:
            for sock, row in zip(socks, rows, strict=True):
                sock.sendall(_post(row))
            for i, sock in enumerate(socks):
                status, body = _read_answer(sock)
                assert status == alone[i][0], (i, body)
                if i == 7:
                    assert status == 400 and "4" in body["detail"]
                else:
                    assert body["predictions"] == alone[i][1]["predictions"]
                    assert body["probabilities"][0] == pytest.approx(alone[i][1]["probabilities"][0])
        finally:
            for sock in socks:
                sock.close()
    assert server._batcher is not None and sum(server._batcher.decisions.values()) > 0
    # How many joined a batch is the scheduler's business; print it for whoever reads -s output.
    print("batcher decisions:", {d.value: n for d, n in server._batcher.decisions.items()})
