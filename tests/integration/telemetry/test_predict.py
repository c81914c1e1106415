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
    ({"inputs": [[0.0] * 63]}, 422, "have 63 values per row but model input 'input' takes 64"),
    ({"inputs": [["1"] + [0.0] * 63]}, 422, "not a number"),
    ({"inputs": [[True] + [0.0] * 63]}, 422, "not a number"),
    ({"inputs": [[None] + [0.0] * 63]}, 422, "not a number"),
    ({"instances": [{"pixel_0_0": 1.0}]}, 422, "missing"),
    ({"rows": [[0.0] * 64]}, 422, "unknown field(s) 'rows'"),
    ("[[0.0]]", 422, "not an object"),
    ({"inputs": []}, 422, "no rows"),
    ({"inputs": [[0]] * 10_001}, 413, "10001 rows, over the limit of 10000"),  # counted before the width
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
    assert bad_csv.status_code == 422 and "missing feature" in bad_csv.json()["detail"]


def test_batch_csv_skips_columns_the_model_does_not_take_as_the_agent_does(client: TestClient, bundle: Bundle,
                                                                            tmp_path: Path) -> None:
    """An id and a (string) label column beside the features: skipped by name on both sides (issue 17)."""
    from agent.batch import _chunks  # the agent's batch reader: `edgefleet agent predict`

    rows = np.asarray(bundle.golden()["inputs"], dtype=np.float32)[:10]
    names = list(bundle.manifest.input.feature_names or ())
    header = ["id", *reversed(names), "label"]
    lines = [",".join(header)] + [",".join([f"r{i}", *(str(v) for v in reversed(row)), "cat"])
                                  for i, row in enumerate(rows.tolist())]
    upload = ("\n".join(lines) + "\n").encode()
    answer = client.post("/api/v1/models/digits/predict/batch", files={"file": ("labelled.csv", upload)},
                         headers=ADMIN)
    assert answer.status_code == 200, answer.text
    labels, _ = _direct(bundle, rows)
    assert [int(line.split(",")[0]) for line in answer.text.strip().splitlines()[1:]] == labels
    path = tmp_path / "labelled.csv"
    path.write_bytes(upload)
    total, chunks = _chunks(path, ".csv", bundle.manifest, 1000)
    assert total == 10
    np.testing.assert_array_equal(np.concatenate(list(chunks)), rows)  # the same features, the same order


def test_a_bare_list_of_rows_is_accepted_like_the_agent_does(client: TestClient) -> None:
    answer = client.post("/api/v1/models/digits/predict", json=[[0.0] * 64, [1.0] * 64], headers=ADMIN)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2


def _forged_npy() -> bytes:
    """A 100-byte .npy whose header claims 10^12 rows: np.load would try to allocate them."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 64)})
    return buffer.getvalue() + b"\0" * 64


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("body", [
    # Deeper than Python's default recursion limit (not valid JSON to the server, then); not so deep that
    # the C stack overflows where the limit was raised (importing onnx2tf does it): the parser refuses it.
    b"[" * 5_000 + b"]" * 5_000,
    b'{"inputs": [[' + b"1e400, " * 63 + b"1]]}",
    b'{"inputs": [[' + b"9" * 400 + b", " + b"0, " * 62 + b"0]]}",
    b'{"instances": [{"pixel_0_0": ' + b"9" * 400 + b"}]}",
    b'{"inputs": [[NaN' + b", 0" * 63 + b"]]}",
    b'{"inputs": [[' + b"[" * 500 + b"]" * 500 + b", 0" * 63 + b"]]}",
    b"\xff\xfe",
])
def test_every_bad_json_body_is_a_4xx_never_a_500(client: TestClient, body: bytes) -> None:
    answer = client.post("/api/v1/models/digits/predict", content=body, headers=ADMIN)
    assert answer.status_code == 422, answer.text


@pytest.mark.parametrize("name, data", [
    ("x.npy", _forged_npy()),
    ("x.npy", b"\x93NUMPY\x01\x00garbage"),
    ("x.npy", _npy(np.zeros((2, 64, 1)))),
    ("x.npy", _npy(np.array(["a"] * 64))),
    ("x.npy", _npy(np.zeros((0, 64)))),
    ("x.csv", b"1,2\n"),
    ("x.csv", b"\xff\xfe\x00"),
    ("x.csv", b"pixel_0_0\n1\n"),
    ("x.csv", ",".join(["1"] * 63 + ["oops"]).encode()),
    ("x.csv", ",".join(["1"] * 63 + ["1e400"]).encode()),
])
def test_every_bad_upload_is_a_4xx_never_a_500(client: TestClient, name: str, data: bytes) -> None:
    answer = client.post("/api/v1/models/digits/predict/batch", files={"file": (name, data)}, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"].startswith(name)


def test_server_and_agent_answer_the_same_on_the_same_inputs(client: TestClient, bundle: Bundle,
                                                             tmp_path: Path) -> None:
    """The hybrid path's promise: the cloud answer is the edge answer (agent runtime and parser)."""
    from agent.runtime import load_session
    from agent.slots import Slot
    from edgefleet.inputs import to_matrix  # the agent's parser, shared with the server
    from edgefleet.profiles import load_profile

    rng = np.random.default_rng(7)
    rows = rng.uniform(0, 16, size=(50, 64)).round(1)
    names = bundle.manifest.input.feature_names or ()
    payloads = [{"inputs": rows.tolist()}, {"instances": [dict(zip(names, r, strict=True)) for r in rows.tolist()]}]
    session = load_session(Slot.open(bundle.extract(tmp_path / "slot")), load_profile("generic-x86_64"))
    try:
        for payload in payloads:
            edge = session.run_roles(to_matrix(payload, bundle.manifest.input))
            cloud = client.post("/api/v1/models/digits/predict", json=payload, headers=ADMIN).json()
            assert cloud["predictions"] == edge["label"].tolist()
            np.testing.assert_allclose(np.asarray(cloud["probabilities"]), edge["probabilities"], atol=1e-5)
    finally:
        session.close()
