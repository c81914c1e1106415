"""Feedback and per-request telemetry through the real local API, serving table and runtime.

A prediction's request_id takes a ground-truth label later (``POST /v1/feedback``); accuracy is
kept per model version, an unknown id is a 404 that does not echo it, a prediction takes one
label (a second is a 409), and bad requests count as input errors of the model they were meant for.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.api import ApiServer
from agent.metrics import Metrics
from agent.reporter import Reporter
from agent.runtime import load_session
from agent.serving import ServingTable
from agent.slots import ModelStore
from agent.state import StateDir
from edgefleet.bundle import read_bundle
from edgefleet.profiles import Profile
from tests.unit.agent.models import LABELS, BundleMaker

ROW = [5.1, 3.5, 1.4, 0.2]


@dataclass
class Agent:
    client: httpx.Client
    table: ServingTable
    metrics: Metrics
    reporter: Reporter
    store: ModelStore
    profile: Profile

    def predict(self, rows: list[list[float]]) -> dict[str, Any]:
        answer = self.client.post("/v1/models/iris/predict", json={"inputs": rows})
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def serve(self, bundle: bytes) -> None:
        self.table.swap("iris", load_session(self.store.stage(read_bundle(bundle)), self.profile))


@pytest.fixture
def agent(state: StateDir, profile: Profile, linear_bundle: BundleMaker) -> Iterator[Agent]:
    table = ServingTable(max_rows=100)
    store = ModelStore(state)
    table.swap("iris", load_session(store.stage(read_bundle(linear_bundle())), profile))
    metrics = Metrics(remember_limit=50)
    reporter = Reporter(metrics)
    reporter.attach(table)  # after the first swap: attach must see models already serving
    server = ApiServer(table, feedback=reporter.feedback)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    short = Path(tempfile.mkdtemp(prefix="ef-", dir="/tmp"))
    asyncio.run_coroutine_threadsafe(server.start(host=None, socket_path=short / "agent.sock"), loop).result(5)
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(short / "agent.sock")), base_url="http://agent",
                          timeout=5)
    yield Agent(client, table, metrics, reporter, store, profile)
    client.close()
    asyncio.run_coroutine_threadsafe(server.shutdown(2), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()
    short.rmdir()


def test_feedback_on_a_request_id_scores_it_and_reports_rolling_accuracy(agent: Agent) -> None:
    answers = [agent.predict([ROW, [-x for x in ROW]]) for _ in range(4)]
    predicted = [a["predictions"] for a in answers]
    # Three right labels for row 0, one wrong label for row 1 of the last request.
    items = [{"request_id": a["request_id"], "label": p[0]} for a, p in zip(answers[:3], predicted[:3], strict=True)]
    wrong = next(label for label in LABELS if label != predicted[3][1])
    items.append({"request_id": answers[3]["request_id"], "label": wrong, "row": 1})
    done = agent.client.post("/v1/feedback", json=items)
    assert done.status_code == 200, done.text
    body = done.json()
    assert [a["correct"] for a in body["accepted"]] == [True, True, True, False] and body["rejected"] == []
    assert body["accuracy"] == [{"model": "iris", "version": "1.0.0", "labels": 4, "correct": 3, "accuracy": 0.75}]
    # Row 1 of the first request has no label yet: it takes one.
    one = agent.client.post("/v1/feedback", json={"request_id": answers[0]["request_id"], "label": predicted[0][1],
                                                  "row": 1})
    assert one.json()["accuracy"][0]["accuracy"] == 0.8
    records = agent.metrics.take_records()
    assert [(r.model, r.count, r.feedback.labels, r.feedback.correct) for r in records] == [("iris", 4, 5, 4)]


def test_unknown_or_expired_request_id_is_a_404_that_does_not_echo_it(agent: Agent) -> None:
    first = agent.predict([ROW])["request_id"]
    for _ in range(agent.metrics.remember_limit):  # push the first request out of memory
        agent.predict([ROW])
    for request_id in ("no-such-request", first, "x" * 128):
        answer = agent.client.post("/v1/feedback", json={"request_id": request_id, "label": LABELS[0]})
        assert answer.status_code == 404 and answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert "no prediction with that request id" in problem["detail"] and request_id not in answer.text
        assert problem["type"] == "urn:edgefleet:problem:feedback" and problem["status"] == 404
        assert "request_id the predict API returned" in problem["fix"]
    # Longer than any request id: refused as malformed, and not echoed either.
    huge = agent.client.post("/v1/feedback", json={"request_id": "y" * 1_000_000, "label": LABELS[0]})
    assert huge.status_code == 400 and len(huge.content) < 1_000 and "request_id string of 1 to 128" in huge.text
    # In a list, unknown ids are rejected one by one and the known ones still count.
    known = agent.predict([ROW])["request_id"]
    mixed = agent.client.post("/v1/feedback", json=[{"request_id": "gone", "label": "x"},
                                                    {"request_id": known, "label": LABELS[0]}])
    assert mixed.status_code == 200
    assert [r["request_id"] for r in mixed.json()["rejected"]] == ["gone"]
    assert len(mixed.json()["accepted"]) == 1


def test_a_prediction_takes_one_label_and_a_second_is_a_409(agent: Agent) -> None:
    answer = agent.predict([ROW, ROW])
    label = {"request_id": answer["request_id"], "label": answer["predictions"][0]}
    assert agent.client.post("/v1/feedback", json=label).status_code == 200
    for again in (label, {**label, "label": LABELS[-1]}):  # the same label, or another one
        conflict = agent.client.post("/v1/feedback", json=again)
        assert conflict.status_code == 409, conflict.text
        problem = conflict.json()
        assert problem["type"] == "urn:edgefleet:problem:feedback-conflict" and problem["status"] == 409
        assert "labelled already" in problem["detail"] and "one label per prediction" in problem["fix"]
    # In a list, the labelled row is rejected and the other row of the request still takes its label;
    # a row named twice in one list counts once.
    row1 = {**label, "row": 1}
    mixed = agent.client.post("/v1/feedback", json=[label, row1, row1])
    assert mixed.status_code == 200, mixed.text
    assert len(mixed.json()["accepted"]) == 1 and len(mixed.json()["rejected"]) == 2
    assert mixed.json()["accuracy"][0]["labels"] == 2  # not 5: no prediction counted twice
    # A list of nothing but second labels is a conflict too, not "unknown request".
    again = agent.client.post("/v1/feedback", json=[label, row1])
    assert again.status_code == 409 and again.json()["type"] == "urn:edgefleet:problem:feedback-conflict"


@pytest.mark.parametrize(("body", "words"), [
    (b"{nope", "not valid JSON"),
    (b"[" * 5_000 + b"]" * 5_000, "not valid JSON"),  # deeper than the recursion limit: a 400, not a 500
    (b"[]", "1 to"),
    (b'{"label": "setosa"}', "request_id"),
    (b'{"request_id": "r"}', "label"),
    (b'{"request_id": "r", "label": "setosa", "row": -1}', "row"),
    (b'{"request_id": "r", "label": "setosa", "extra": 1}', "unknown keys"),
    (b'[{"request_id": "r", "label": "a"}, 3]', "item 1"),
])
def test_a_malformed_feedback_body_is_a_400_that_teaches_the_shape(agent: Agent, body: bytes, words: str) -> None:
    answer = agent.client.post("/v1/feedback", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and words in answer.json()["detail"], answer.text
    assert "request_id" in answer.json()["fix"]


def test_bad_requests_count_as_input_errors_of_the_model_and_never_reach_it(agent: Agent) -> None:
    agent.predict([ROW])
    assert agent.client.post("/v1/models/iris/predict", json={"inputs": [[1.0, 2.0]]}).status_code == 400
    bad_json = agent.client.post("/v1/models/iris/predict", content=b"{x", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400
    assert agent.client.post("/v1/models/nope/predict", json={"inputs": [ROW]}).status_code == 404
    [record] = agent.metrics.take_records()
    assert (record.count, record.errors) == (1, {"input": 2})


def test_each_version_swapped_in_gets_its_own_drift_window_and_accuracy(agent: Agent,
                                                                        linear_bundle: BundleMaker) -> None:
    old = agent.predict([ROW])
    agent.serve(linear_bundle("1.1.0", seed=1))
    new = agent.predict([ROW])
    assert (old["version"], new["version"]) == ("1.0.0", "1.1.0")
    assert set(agent.reporter.windows()) == {("iris", "1.0.0"), ("iris", "1.1.0")}
    for answer in (old, new):
        agent.client.post("/v1/feedback", json={"request_id": answer["request_id"],
                                                "label": answer["predictions"][0]})
    assert [(a.version, a.labels) for a in agent.metrics.accuracies()] == [("1.0.0", 1), ("1.1.0", 1)]
    records = agent.metrics.take_records(agent.reporter.windows())
    assert [(r.version, r.count) for r in records] == [("1.0.0", 1), ("1.1.0", 1)]
