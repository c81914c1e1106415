"""Enrollment with a control character in a text field is a 422, not a 500 (issue 14).

PostgreSQL cannot store NUL in text, so before the check the insert failed inside the request.
The check runs before the token is spent, so the device can retry with the same token.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet_server.app import create_app
from tests.integration.server.harness import server_config

ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture(params=["sqlite", "postgres"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path}/db.sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    with TestClient(create_app(server_config(tmp_path / "data", url), mqtt=False)) as test_client:
        yield test_client


def _token(client: TestClient) -> str:
    answer = client.post("/api/v1/devices/enrollment-tokens", json={"profile": "rpi4-64"}, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["token"])


@pytest.mark.parametrize("field, value, shown", [("hostname", "edge\x00host", "'\\x00' at position 4"),
                                                  ("hostname", "\x1b[31mred", "'\\x1b' at position 0"),
                                                  ("agent_version", "1.0\x00", "'\\x00' at position 3")])
def test_a_control_character_is_a_422_naming_the_field_and_spends_no_token(client: TestClient, field: str,
                                                                           value: str, shown: str) -> None:
    token = _token(client)
    refused = client.post("/api/v1/enroll", json={"token": token, field: value})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == f"{field}: holds the control character {shown}"
    assert "printable" in refused.json()["fix"]
    accepted = client.post("/api/v1/enroll", json={"token": token, "hostname": "edge-host"})
    assert accepted.status_code == 200, accepted.text
