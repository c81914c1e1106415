"""Console routes in-process (no broker): login, the redirect target, headers, the relay's checks.

The full paths run in a real browser against real processes in tests/e2e/console; these pin
what needs no fleet: a wrong token, an open redirect refused, the cookie's flags, CSP.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet_server.app import create_app
from fleet_server.config import ServerConfig
from fleet_server.errors import ConfigError

ADMIN = "admin-token-" + "a" * 20
VIEWER = "viewer-token-" + "v" * 20


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(ServerConfig(data_dir=tmp_path, admin_token=ADMIN, viewer_token=VIEWER), mqtt=False)
    with TestClient(app, follow_redirects=False) as test_client:
        yield test_client


def test_a_wrong_token_is_refused_and_sets_no_cookie(client: TestClient) -> None:
    answer = client.post("/console/login", data={"token": "nope", "next": "/console/"})
    assert answer.status_code == 401 and "not the admin or the viewer token" in answer.text
    assert "set-cookie" not in answer.headers


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/console/", "/api/v1/devices",
                                    "/console/\\evil"])
def test_login_never_redirects_off_the_console(client: TestClient, target: str) -> None:
    answer = client.post("/console/login", data={"token": ADMIN, "next": target})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/"


def test_pages_carry_a_strict_policy_and_the_csrf_token(client: TestClient) -> None:
    client.post("/console/login", data={"token": ADMIN, "next": "/console/"})
    page = client.get("/console/models")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    assert re.search(r'<meta name="csrf-token" content="[^"]{40,}">', page.text)
    assert 'data-role="admin"' in page.text


def test_path_values_are_escaped_in_the_page(client: TestClient) -> None:
    client.post("/console/login", data={"token": VIEWER, "next": "/console/"})
    page = client.get('/console/devices/"><img src=x onerror=alert(1)>')
    assert page.status_code == 200 and 'data-role="viewer"' in page.text
    assert "<img src=x" not in page.text and 'data-arg="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"' in page.text


def test_the_relay_reaches_the_api_for_reads_only_with_a_session(client: TestClient) -> None:
    assert client.get("/console/api/v1/models").status_code == 401
    client.post("/console/login", data={"token": VIEWER, "next": "/console/"})
    assert client.get("/console/api/v1/models").json() == []
    assert client.get("/console/api/v1/alerts").json() == {"firing": 0, "episodes": []}
    assert client.get("/console/api/v1/devices/dev-none/events").status_code == 404


def test_viewer_token_is_checked_in_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shorter than 16"):
        ServerConfig(data_dir=tmp_path, viewer_token="short")
    with pytest.raises(ConfigError, match="viewer would be an admin"):
        ServerConfig(data_dir=tmp_path, admin_token=VIEWER, viewer_token=VIEWER)
