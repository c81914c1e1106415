"""The hybrid path: the server runs the registry's converter-made bundle and answers like the agent."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from edgefleet.bundle import Bundle, read_bundle
from fleet_server.app import create_app
from tests.integration.server.harness import server_config

ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture
def client(tmp_path: Path, digits_bundle: Path) -> Iterator[TestClient]:
    app = create_app(server_config(tmp_path / "data"), mqtt=False)
    app.state.ctx.registry.push(digits_bundle)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def bundle(digits_bundle: Path) -> Bundle:
    return read_bundle(digits_bundle)


def _direct(bundle: Bundle, rows: np.ndarray) -> tuple[list[int], np.ndarray]:
    session = ort.InferenceSession(bundle.model_bytes, providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], {"input": rows.astype(np.float32)})
    return [int(v) for v in label], np.asarray(probabilities)


def test_server_predict_agrees_with_onnxruntime_and_the_golden_samples(client: TestClient, bundle: Bundle) -> None:
    golden = bundle.golden()
    rows = np.asarray(golden["inputs"], dtype=np.float32)
    answer = client.post("/api/v1/models/digits/predict", json={"inputs": rows.tolist()}, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    labels, probabilities = _direct(bundle, rows)
    assert (body["model"], body["version"]) == ("digits", "1.0.0") and len(body["request_id"]) == 32
    assert body["predictions"] == labels
    np.testing.assert_allclose(np.asarray(body["probabilities"]), probabilities, atol=1e-5)
    agreement = np.mean(np.asarray(body["predictions"]) == np.asarray(golden["outputs"]["label"]))
    assert agreement >= bundle.manifest.health_check.min_agreement

    names = bundle.manifest.input.feature_names or ()
    instances = [dict(zip(names, row, strict=True)) for row in rows[:3].tolist()]
    named = client.post("/api/v1/models/digits/predict?version=1.0.0", json={"instances": instances}, headers=ADMIN)
    assert named.json()["predictions"] == labels[:3]
    one = client.post("/api/v1/models/digits/predict", json={"inputs": rows[0].tolist()}, headers=ADMIN)
    assert one.json()["predictions"] == labels[:1]


def test_batch_upload_answers_csv_for_csv_and_npy(client: TestClient, bundle: Bundle) -> None:
    rows = np.asarray(bundle.golden()["inputs"], dtype=np.float32)
    labels, probabilities = _direct(bundle, rows)
    header = ",".join(bundle.manifest.input.feature_names or ())
    csv_body = header + "\n" + "\n".join(",".join(str(v) for v in row) for row in rows.tolist())
    npy = io.BytesIO()
    np.save(npy, rows)
    for name, data in (("rows.csv", csv_body.encode()), ("rows.npy", npy.getvalue())):
        answer = client.post("/api/v1/models/digits/predict/batch", files={"file": (name, data)}, headers=ADMIN)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/csv")
        lines = answer.text.strip().splitlines()
        assert lines[0].split(",")[:3] == ["prediction", "p_0", "p_1"]
        assert [int(line.split(",")[0]) for line in lines[1:]] == labels
        np.testing.assert_allclose([[float(v) for v in line.split(",")[1:]] for line in lines[1:]], probabilities,
                                   atol=1e-5)


def test_a_device_token_may_predict(client: TestClient) -> None:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    token = ctx.devices.create_token("generic-x86_64", {}, timedelta(hours=1))
    grant = ctx.devices.enroll(token.token)
    answer = client.post("/api/v1/models/digits/predict", json={"inputs": [[0.0] * 64]},
                         headers={"Authorization": f"Bearer {grant.api_token}"})
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1


@pytest.mark.parametrize("body, status, words", [
    ({"inputs": [[0.0] * 63]}, 422, "has 63 values; the model takes 64"),
    ({"inputs": [["1"] + [0.0] * 63]}, 422, "not a number"),
    ({"inputs": [[True] + [0.0] * 63]}, 422, "not a number"),
    ({"inputs": [[None] + [0.0] * 63]}, 422, "not a number"),
    ({"instances": [{"pixel_0_0": 1.0}]}, 422, "missing"),
    ({"rows": [[0.0] * 64]}, 422, "one key, 'inputs' or 'instances'"),
    ({"inputs": []}, 422, "no rows"),
    ({"inputs": [[0]] * 10_001}, 413, "10001 rows is over the limit"),  # counted before the width
])
def test_bad_predict_input_is_refused_with_a_reason(client: TestClient, body: object, status: int, words: str) -> None:
    answer = client.post("/api/v1/models/digits/predict", json=body, headers=ADMIN)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]


def test_predict_refuses_unknown_models_bad_json_and_no_token(client: TestClient) -> None:
    assert client.post("/api/v1/models/nope/predict", json={"inputs": [[0.0]]}, headers=ADMIN).status_code == 404
    assert client.post("/api/v1/models/digits/predict?version=9.9.9", json={"inputs": [[0.0] * 64]},
                       headers=ADMIN).status_code == 404
    assert client.post("/api/v1/models/digits/predict", content=b"{", headers=ADMIN).status_code == 422
    assert client.post("/api/v1/models/digits/predict", json={"inputs": [[0.0] * 64]}).status_code == 401
    bad_csv = client.post("/api/v1/models/digits/predict/batch", files={"file": ("x.csv", b"a,b\n1,2\n")},
                          headers=ADMIN)
    assert bad_csv.status_code == 422 and "unknown feature" in bad_csv.json()["detail"]


def test_server_and_agent_answer_the_same_on_the_same_inputs(client: TestClient, bundle: Bundle,
                                                             tmp_path: Path) -> None:
    """The hybrid path's promise: the cloud answer is the edge answer (agent runtime and parser)."""
    from agent.inputs import to_matrix as agent_matrix
    from agent.runtime import load_session
    from agent.slots import Slot
    from edgefleet.profiles import load_profile

    rng = np.random.default_rng(7)
    rows = rng.uniform(0, 16, size=(50, 64)).round(1)
    names = bundle.manifest.input.feature_names or ()
    payloads = [{"inputs": rows.tolist()}, {"instances": [dict(zip(names, r, strict=True)) for r in rows.tolist()]}]
    session = load_session(Slot.open(bundle.extract(tmp_path / "slot")), load_profile("generic-x86_64"))
    try:
        for payload in payloads:
            edge = session.run_roles(agent_matrix(payload, bundle.manifest.input))
            cloud = client.post("/api/v1/models/digits/predict", json=payload, headers=ADMIN).json()
            assert cloud["predictions"] == edge["label"].tolist()
            np.testing.assert_allclose(np.asarray(cloud["probabilities"]), edge["probabilities"], atol=1e-5)
    finally:
        session.close()
