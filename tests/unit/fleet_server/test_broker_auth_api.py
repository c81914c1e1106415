"""The HTTP broker-auth endpoint (docs/contracts.md "Broker auth"), in-process with a real registry.

Shaped for the brokers that call it: EMQX's authenticator/authorizer (``result``, ``action``,
``client_id``-style fields), mosquitto-go-auth's JSON mode (``ok``, numeric ``acc``) and the
edgefleet Mosquitto plugin. Only callers with the broker token get an answer.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edgefleet import topics
from fleet_server.app import create_app
from fleet_server.config import ServerConfig
from fleet_server.errors import ConfigError
from tests.integration.server.harness import server_config

TOKEN = "broker-token-for-the-tests-0123456789"
BROKER = {"Authorization": f"Bearer {TOKEN}"}
SERVER_USER, SERVER_PASSWORD = "edgefleet-server", "server-password-for-tests"


@pytest.fixture
def client(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    config = server_config(tmp_path / "data", database_url, broker_auth_token=TOKEN, mqtt_username=SERVER_USER,
                           mqtt_password=SERVER_PASSWORD)
    with TestClient(create_app(config, mqtt=False)) as test_client:
        yield test_client


def enroll(client: TestClient) -> Any:
    devices = client.app.state.ctx.devices  # type: ignore[attr-defined]
    return devices.enroll(devices.create_token("generic-x86_64", {}, timedelta(hours=1)).token)


def auth(client: TestClient, headers: dict[str, str] = BROKER, **body: Any) -> Any:
    return client.post("/api/v1/broker/auth", json=body, headers=headers)


def acl(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/api/v1/broker/acl", json=body, headers=BROKER)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_an_enrolled_device_is_allowed_on_its_own_client_id_only(client: TestClient) -> None:
    grant = enroll(client)
    ok = auth(client, username=grant.mqtt_username, password=grant.mqtt_password, clientid=grant.device_id)
    assert ok.status_code == 200
    assert ok.json() == {"result": "allow", "ok": True, "error": "", "is_superuser": False,
                         "device_id": grant.device_id}
    for body in ({"username": grant.mqtt_username, "password": "wrong", "clientid": grant.device_id},
                 {"username": grant.mqtt_username, "password": grant.mqtt_password, "clientid": "dev-other"},
                 {"username": "dev-nobody", "password": grant.mqtt_password, "clientid": "dev-nobody"}):
        denied = auth(client, **body)
        assert denied.status_code == 200 and denied.json()["result"] == "deny" and not denied.json()["ok"]
    metrics = client.get("/metrics").text
    assert 'edgefleet_broker_auth_total{check="auth",result="allow"} 1.0' in metrics
    assert 'edgefleet_broker_auth_total{check="auth",result="deny"} 3.0' in metrics


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_revoked_device_is_denied_though_its_login_was_cached(client: TestClient) -> None:
    grant = enroll(client)
    login = {"username": grant.mqtt_username, "password": grant.mqtt_password, "client_id": grant.device_id}
    assert auth(client, **login).json()["result"] == "allow"
    client.app.state.ctx.devices.revoke(grant.device_id)  # type: ignore[attr-defined]
    assert auth(client, **login).json()["result"] == "deny"
    assert acl(client, username=grant.mqtt_username, clientid=grant.device_id, topic=topics.desired(grant.device_id),
               access="subscribe")["result"] == "deny"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_servers_account_is_a_superuser_under_the_prefix(client: TestClient) -> None:
    answer = auth(client, username=SERVER_USER, password=SERVER_PASSWORD, clientid="replica-a").json()
    assert answer["result"] == "allow" and answer["is_superuser"] and answer["device_id"] is None
    assert auth(client, username=SERVER_USER, password="wrong", clientid="x").json()["result"] == "deny"
    shared = f"$share/{topics.SHARE_GROUP}/{topics.PREFIX}/devices/+/telemetry"
    assert acl(client, username=SERVER_USER, clientid="replica-a", topic=shared, action="subscribe")["ok"]
    assert not acl(client, username=SERVER_USER, clientid="replica-a", topic="#", action="subscribe")["ok"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_acl_as_emqx_and_mosquitto_go_auth_ask_it(client: TestClient) -> None:
    grant = enroll(client)
    me, other = grant.device_id, "dev-someone-else"
    who = {"username": grant.mqtt_username, "clientid": me}
    assert acl(client, **who, topic=topics.telemetry(me), action="publish")["result"] == "allow"  # EMQX
    assert acl(client, **who, topic=topics.desired(me), acc=4)["ok"]  # go-auth: subscribe
    assert acl(client, **who, topic=topics.desired(me), acc=1)["ok"]  # go-auth: read
    assert not acl(client, **who, topic=topics.desired(me), action="publish")["ok"]
    assert not acl(client, **who, topic=topics.telemetry(other), action="publish")["ok"]
    assert not acl(client, username=grant.mqtt_username, clientid=other, topic=topics.telemetry(me),
                   action="publish")["ok"]
    assert "not one of" in acl(client, **who, topic=topics.desired(me), access="all")["error"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_only_a_caller_with_the_broker_token_gets_an_answer(client: TestClient) -> None:
    body = {"username": "dev-x", "password": "p", "clientid": "dev-x"}
    for headers in ({}, {"Authorization": "Bearer test-admin-token"}, {"Authorization": f"Basic {TOKEN}"}):
        refused = auth(client, headers, **body)
        assert refused.status_code == 401, headers
        assert "broker_auth_token" in refused.json()["fix"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_endpoint_is_off_without_a_token(tmp_path: Path, database_url: str) -> None:
    with TestClient(create_app(server_config(tmp_path / "off", database_url), mqtt=False)) as off:
        response = auth(off, username="dev-x", password="p", clientid="dev-x")
    assert response.status_code == 404 and "broker_auth_token" in response.json()["fix"]


def test_config_refuses_mosquitto_http_without_a_broker_and_a_short_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs broker_url") as no_broker:
        ServerConfig(data_dir=tmp_path, broker_accounts="mosquitto-http")
    assert "mqtt://" in (no_broker.value.fix or "")
    with pytest.raises(ConfigError, match="shorter than 16"):
        ServerConfig(data_dir=tmp_path, broker_auth_token="short")
    with pytest.raises(ConfigError, match="equals the admin"):
        ServerConfig(data_dir=tmp_path, broker_auth_token=TOKEN, admin_token=TOKEN)


def vernemq(client: TestClient, hook: str, body: dict[str, Any], headers: dict[str, str] = BROKER) -> Any:
    response = client.post("/api/v1/broker/vernemq", json=body, headers={**headers, "vernemq-hook": hook})
    assert response.status_code == 200, response.text
    return response.json()["result"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_vernemq_webhooks_get_its_own_answers(client: TestClient) -> None:
    grant = enroll(client)
    me = {"username": grant.mqtt_username, "client_id": grant.device_id, "mountpoint": ""}
    # VerneMQ puts credentials in the endpoint URL (http://broker:<token>@fleet/...): Basic auth.
    basic = {"Authorization": "Basic " + base64.b64encode(f"broker:{TOKEN}".encode()).decode()}
    assert vernemq(client, "auth_on_register", {**me, "password": grant.mqtt_password, "peer_addr": "10.0.0.9",
                                                "clean_session": False}, basic) == "ok"
    assert vernemq(client, "auth_on_register_m5", {**me, "password": "wrong"})["error"]
    assert vernemq(client, "auth_on_publish", {**me, "topic": topics.telemetry(grant.device_id), "qos": 1,
                                               "payload": "e30=", "retain": False}) == "ok"
    assert "may not" in vernemq(client, "auth_on_publish", {**me, "topic": topics.desired(grant.device_id)})["error"]
    own = [{"topic": topics.desired(grant.device_id), "qos": 1}, {"topic": topics.commands(grant.device_id), "qos": 1}]
    assert vernemq(client, "auth_on_subscribe_m5", {**me, "topics": own}) == "ok"
    assert vernemq(client, "auth_on_subscribe", {**me, "topics": [*own, {"topic": "#", "qos": 0}]})["error"]
    assert "mountpoints" in vernemq(client, "auth_on_publish", {**me, "mountpoint": "tenant-a",
                                                                  "topic": topics.telemetry(grant.device_id)})["error"]
    assert "not served" in vernemq(client, "on_deliver", me)["error"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_basic_auth_needs_the_token_as_its_password(client: TestClient) -> None:
    for userinfo in ("broker:wrong-token-0123456789", f"{TOKEN}:", "not base64 at all"):
        encoded = base64.b64encode(userinfo.encode()).decode() if "at all" not in userinfo else userinfo
        refused = client.post("/api/v1/broker/vernemq", json={}, headers={"Authorization": f"Basic {encoded}",
                                                                        "vernemq-hook": "auth_on_register"})
        assert refused.status_code == 401, userinfo
