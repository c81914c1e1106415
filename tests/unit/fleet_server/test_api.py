"""The REST API against a real database (SQLite and PostgreSQL) and a real TUF repository.

The app runs in-process (FastAPI's TestClient) without a broker; the network-facing tests
(python-tuf's client, the broker, the CLI) are in tests/integration/server.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edgefleet.bundle import build_bundle_bytes, read_bundle
from fleet_server.app import create_app
from tests.integration.server.harness import make_bundle, server_config

ADMIN = {"Authorization": "Bearer test-admin-token"}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(tmp_path: Path, database_url: str, clock: Clock) -> Iterator[TestClient]:
    config = server_config(tmp_path / "data", database_url, max_upload_bytes=200_000)
    with TestClient(create_app(config, mqtt=False, clock=clock)) as test_client:
        yield test_client


def push(client: TestClient, data: bytes, headers: dict[str, str] = ADMIN) -> Any:
    return client.post("/api/v1/models", files={"bundle": ("b.tar.gz", data)}, headers=headers)


def enroll_token(client: TestClient, **body: Any) -> str:
    response = client.post("/api/v1/devices/enrollment-tokens", json={"profile": "rpi4-64", **body}, headers=ADMIN)
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def enroll(client: TestClient) -> dict[str, Any]:
    response = client.post("/api/v1/enroll", json={"token": enroll_token(client), "hostname": "pi-17"})
    assert response.status_code == 200, response.text
    grant: dict[str, Any] = response.json()
    return grant


def test_a_bundle_for_no_profile_this_server_knows_is_refused(client: TestClient) -> None:
    original = read_bundle(make_bundle("digits", "1.0.0"))
    fields = {**{k: v for k, v in original.manifest.to_dict().items() if k != "files"}, "profiles": ["no-such-board"]}
    response = push(client, build_bundle_bytes(fields, original.files))
    assert response.status_code == 422
    problem = response.json()
    assert problem["detail"].startswith("profiles: this server knows none") and "'no-such-board'" in problem["detail"]
    assert "rpi4-64" in problem["fix"]
    assert client.get("/api/v1/models", headers=ADMIN).json() == []
    fields["profiles"] = ["no-such-board", "rpi4-64"]  # one known profile is enough
    assert push(client, build_bundle_bytes(fields, original.files)).status_code == 201


def test_push_then_list_and_show(client: TestClient) -> None:
    data = make_bundle("digits", "1.0.0")
    response = push(client, data)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["target_path"] == "digits/digits-1.0.0.tar.gz"
    assert body["created"] is True
    push(client, make_bundle("digits", "1.10.0"))
    push(client, make_bundle("digits", "1.2.0"))
    listed = client.get("/api/v1/models", headers=ADMIN).json()
    assert [m["version"] for m in listed] == ["1.0.0", "1.2.0", "1.10.0"]  # semver order, not string order
    shown = client.get("/api/v1/models/digits/1.0.0", headers=ADMIN).json()
    assert shown["manifest"]["name"] == "digits"


def test_duplicate_push_with_different_bytes_is_refused(client: TestClient) -> None:
    assert push(client, make_bundle("digits", "1.0.0", seed=0)).status_code == 201
    response = push(client, make_bundle("digits", "1.0.0", seed=1))
    assert response.status_code == 409
    assert "different bytes" in response.json()["detail"]
    shown = client.get("/api/v1/models/digits/1.0.0", headers=ADMIN).json()
    assert shown["sha256"] == hashlib.sha256(make_bundle("digits", "1.0.0", seed=0)).hexdigest()


def test_identical_push_is_idempotent(client: TestClient) -> None:
    data = make_bundle("digits", "1.0.0")
    first = push(client, data)
    second = push(client, data)
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["created"] is False
    assert len(client.get("/api/v1/models", headers=ADMIN).json()) == 1


def test_published_bundle_is_a_tuf_target(client: TestClient) -> None:
    data = make_bundle("digits", "1.0.0")
    push(client, data)
    timestamp = client.get("/tuf/metadata/timestamp.json").json()
    version = timestamp["signed"]["meta"]["snapshot.json"]["version"]
    snapshot = client.get(f"/tuf/metadata/{version}.snapshot.json").json()
    targets_version = snapshot["signed"]["meta"]["targets.json"]["version"]
    targets = client.get(f"/tuf/metadata/{targets_version}.targets.json").json()
    entry = targets["signed"]["targets"]["digits/digits-1.0.0.tar.gz"]
    sha = hashlib.sha256(data).hexdigest()
    assert entry == {"length": len(data), "hashes": {"sha256": sha}}
    served = client.get(f"/tuf/targets/digits/{sha}.digits-1.0.0.tar.gz")
    assert served.content == data


def test_targets_honor_range_requests(client: TestClient) -> None:
    data = make_bundle("digits", "1.0.0")
    sha = push(client, data).json()["sha256"]
    response = client.get(f"/tuf/targets/digits/{sha}.digits-1.0.0.tar.gz", headers={"Range": "bytes=100-"})
    assert response.status_code == 206
    assert response.content == data[100:]


@pytest.mark.parametrize("path", ["/tuf/targets/../keys/director.pem", "/tuf/targets/%2e%2e/keys/director.pem",
                                  "/tuf/targets/.lock", "/tuf/metadata/..%2Froot.json", "/tuf/targets/digits/%2e%2e%2f%2e%2e%2fadmin-token"])
def test_tuf_paths_cannot_escape_the_repository(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert b"PRIVATE KEY" not in response.content and b"test-admin" not in response.content


def test_yank_marks_the_version(client: TestClient) -> None:
    push(client, make_bundle("digits", "1.0.0"))
    response = client.post("/api/v1/models/digits/1.0.0/yank", headers=ADMIN)
    assert response.status_code == 200 and response.json()["yanked"] is True
    assert client.get("/api/v1/models/digits/1.0.0", headers=ADMIN).json()["yanked"] is True
    assert client.post("/api/v1/models/digits/9.9.9/yank", headers=ADMIN).status_code == 404


def test_upload_over_the_limit_is_413(client: TestClient) -> None:
    response = push(client, b"\x1f\x8b" + b"x" * 300_000)
    assert response.status_code == 413


def test_garbage_upload_is_422_naming_the_bundle(client: TestClient) -> None:
    response = push(client, b"not a bundle at all")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("bundle:")


def test_admin_calls_need_the_admin_token(client: TestClient) -> None:
    assert client.get("/api/v1/models").status_code == 401
    assert client.get("/api/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert push(client, make_bundle(), headers={}).status_code == 401


def test_enrollment_returns_the_contract_shape(client: TestClient) -> None:
    token = enroll_token(client, labels={"site": "a"})
    response = client.post("/api/v1/enroll", json={"token": token, "hostname": "pi-17", "agent_version": "0.1.0"})
    assert response.status_code == 200, response.text
    grant = response.json()
    assert set(grant) == {"device_id", "profile", "profile_toml", "labels", "broker_url", "broker_urls",
                          "mqtt_username", "mqtt_password", "api_token", "server_url", "tuf_root", "tuf_metadata_url",
                          "tuf_targets_url", "director_public_key"}
    # broker_url is the first of broker_urls, for agents that read one broker (docs/contracts.md)
    assert grant["broker_urls"][:1] == ([grant["broker_url"]] if grant["broker_url"] else [])
    assert grant["profile"] == "rpi4-64" and grant["labels"] == {"site": "a"}
    assert grant["tuf_root"]["signed"]["_type"] == "root"
    assert grant["mqtt_username"] == grant["device_id"]
    me = client.get("/api/v1/device/self", headers={"Authorization": f"Bearer {grant['api_token']}"})
    assert me.status_code == 200 and me.json()["id"] == grant["device_id"]
    assert me.json()["hostname"] == "pi-17"


def test_enrollment_token_works_once(client: TestClient) -> None:
    token = enroll_token(client)
    assert client.post("/api/v1/enroll", json={"token": token}).status_code == 200
    again = client.post("/api/v1/enroll", json={"token": token})
    assert again.status_code == 410
    assert "already used" in again.json()["detail"]
    assert len(client.get("/api/v1/devices", headers=ADMIN).json()) == 1


def test_expired_enrollment_token_is_refused(client: TestClient, clock: Clock) -> None:
    token = enroll_token(client, ttl_seconds=600)
    clock.now += timedelta(seconds=601)
    response = client.post("/api/v1/enroll", json={"token": token})
    assert response.status_code == 410
    assert "expired" in response.json()["detail"]


def test_unknown_enrollment_token_is_refused(client: TestClient) -> None:
    assert client.post("/api/v1/enroll", json={"token": "made-up"}).status_code == 401


def test_enrollment_token_needs_a_known_profile(client: TestClient) -> None:
    for profile in ("no-such-board", "../../etc/passwd", "/tmp/evil.toml"):
        response = client.post("/api/v1/devices/enrollment-tokens", json={"profile": profile}, headers=ADMIN)
        assert response.status_code == 422
        assert response.json()["detail"].startswith("profile:")


def test_labels_patch_sets_and_removes(client: TestClient) -> None:
    device = enroll(client)["device_id"]
    body = client.patch(f"/api/v1/devices/{device}/labels", json={"labels": {"ring": "canary", "site": "b"}},
                        headers=ADMIN).json()
    assert body["labels"] == {"ring": "canary", "site": "b"}
    body = client.patch(f"/api/v1/devices/{device}/labels", json={"labels": {"ring": None}}, headers=ADMIN).json()
    assert body["labels"] == {"site": "b"}
    bad = client.patch(f"/api/v1/devices/{device}/labels", json={"labels": {"bad key!": "x"}}, headers=ADMIN)
    assert bad.status_code == 422 and "label key" in bad.json()["detail"]


def test_revoked_device_token_stops_working(client: TestClient) -> None:
    grant = enroll(client)
    auth = {"Authorization": f"Bearer {grant['api_token']}"}
    assert client.get("/api/v1/device/self", headers=auth).status_code == 200
    revoked = client.post(f"/api/v1/devices/{grant['device_id']}/revoke", headers=ADMIN).json()
    assert revoked["status"] == "revoked"
    assert client.get("/api/v1/device/self", headers=auth).status_code == 401
    listed = client.get("/api/v1/devices?status=revoked", headers=ADMIN).json()
    assert [d["id"] for d in listed] == [grant["device_id"]]


def test_validation_errors_name_the_field(client: TestClient) -> None:
    response = client.post("/api/v1/devices/enrollment-tokens", json={"profile": "rpi4-64", "ttl_seconds": -5},
                           headers=ADMIN)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:edgefleet:problem:validation" and problem["status"] == 422
    assert problem["detail"].startswith("ttl_seconds:") and problem["fix"]
    assert [err["field"] for err in problem["errors"]] == ["ttl_seconds"]
    assert "-5" not in problem["detail"]  # the input is never echoed
    response = client.get("/api/v1/models/digits/not-a-version", headers=ADMIN)
    assert response.status_code == 422 and response.json()["detail"].startswith("version:")


def test_every_refusal_is_a_problem_document(client: TestClient) -> None:
    """One error shape (RFC 9457 + fix) for our own errors, routing 404/405 and auth."""
    answers = [client.get("/api/v1/models/nope/1.0.0", headers=ADMIN), client.get("/no/such/route"),
               client.put("/healthz"), client.get("/api/v1/models")]
    for response, status in zip(answers, [404, 404, 405, 401], strict=True):
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert set(problem) >= {"type", "title", "status", "detail", "fix"} and problem["status"] == status
    assert answers[0].json()["type"] == "urn:edgefleet:problem:not-found"
    assert answers[3].headers["www-authenticate"] == "Bearer"


def test_a_404_does_not_echo_a_long_path_whole(client: TestClient) -> None:
    sent = "x" * 5000
    response = client.get(f"/tuf/targets/{sent}")
    assert response.status_code == 404 and len(response.text) < 400 and "5000 characters" in response.json()["detail"]


def test_openapi_lists_the_endpoints(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    assert {"EnrollmentOut", "DeviceOut", "PushOut", "TokenRequest"} <= set(document["components"]["schemas"])
    for path in ("/api/v1/models", "/api/v1/enroll", "/api/v1/devices/{device_id}/revoke", "/tuf/targets/{target}"):
        assert path in paths
    assert client.get("/healthz").json()["status"] == "ok"


def test_openapi_documents_problems_not_fastapi_validation_errors(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert {"type", "title", "status", "detail", "fix"} <= set(schemas["Problem"]["required"])
    show = document["paths"]["/api/v1/models/{name}/{version}"]["get"]
    for status in ("401", "404", "422", "4XX", "5XX"):
        assert show["responses"][status]["content"] == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    version = next(p for p in show["parameters"] if p["name"] == "version")
    assert version["schema"]["pattern"].startswith("^(0|[1-9][0-9]*)")
    push = document["paths"]["/api/v1/models"]["post"]["responses"]
    assert "application/problem+json" in push["409"]["content"] and "413" in push


def test_admin_token_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    config = server_config(tmp_path / "data", admin_token=None)
    first = create_app(config, mqtt=False).state.ctx
    second = create_app(config, mqtt=False).state.ctx
    assert first.admin_token.created and not second.admin_token.created
    assert first.admin_token.value == second.admin_token.value
    assert (config.admin_token_file.stat().st_mode & 0o777) == 0o600
    assert json.loads(first.repo.root_json()) == json.loads(second.repo.root_json())
    first.close()
    second.close()


def test_chunked_upload_over_the_limit_is_413_without_content_length(client: TestClient) -> None:
    boundary = "edgefleetboundary"

    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"b.tar.gz\"\r\n"
               "Content-Type: application/gzip\r\n\r\n").encode()
        for _ in range(40):
            yield b"x" * 16384  # 640 KiB in all, over the 200 kB limit + multipart slack
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post("/api/v1/models", content=body(), headers={
        **ADMIN, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.request.headers.get("content-length") is None
    assert response.status_code == 413
