"""The auth callout's pure core: nkeys, JWTs, grants and the answer to a node's request."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_server.broker.nats_auth import (
    PREFIX_SERVER,
    PREFIX_USER,
    CalloutError,
    Login,
    authorize,
    decide,
    decode_nkey,
    device_grant,
    encode_nkey,
    parse_request,
    public_nkey,
    read_jwt,
    sign_jwt,
)

NOW = 1_800_000_000.0


def node_request(node: Ed25519PrivateKey, **client: str) -> str:
    """An authorization request as a node signs it (the fields nats-server 2.15 sends that we read)."""
    claims = {"aud": "nats-authorization-request", "iss": public_nkey(node, PREFIX_SERVER), "sub": "x",
              "nats": {"type": "authorization_request", "version": 2,
                       "server_id": {"id": public_nkey(node, PREFIX_SERVER), "name": "edgefleet-a"},
                       "user_nkey": encode_nkey(PREFIX_USER, b"u" * 32),
                       "client_info": {"host": "127.0.0.1", "type": client.get("type", "mqtt"),
                                       "mqtt_id": client.get("mqtt_id", "dev-1")},
                       "connect_opts": {"user": client.get("user", "dev-1"), "pass": "pw"}}}
    return sign_jwt(claims, node, NOW)


def test_nkey_round_trip_and_its_checksum() -> None:
    raw = bytes(range(32))
    text = encode_nkey(PREFIX_USER, raw)
    assert text.startswith("U") and decode_nkey(PREFIX_USER, text) == raw
    with pytest.raises(CalloutError):
        decode_nkey(PREFIX_SERVER, text)  # another kind
    with pytest.raises(CalloutError):
        decode_nkey(PREFIX_USER, text[:-1] + ("A" if text[-1] != "A" else "B"))


def test_a_request_signed_by_another_key_is_refused() -> None:
    node, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    token = node_request(node)
    head, body, _ = token.split(".")
    forged = f"{head}.{body}.{sign_jwt({}, other, NOW).split('.')[2]}"
    assert parse_request(read_jwt(token)).login.user == "dev-1"
    with pytest.raises(CalloutError):
        read_jwt(forged)


def test_device_is_granted_its_own_subjects_in_fleet() -> None:
    node, issuer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    request = parse_request(read_jwt(node_request(node)))
    grant, why = decide(request.login, device_grant("dev-1"))
    response = read_jwt(authorize(request, grant, why, issuer, NOW), issuer_prefix=0)
    assert response["aud"] == request.server_id and response["sub"] == request.user_nkey
    user = read_jwt(response["nats"]["jwt"], issuer_prefix=0)
    assert user["aud"] == "FLEET" and user["sub"] == request.user_nkey
    assert user["nats"]["pub"]["allow"] == [f"edgefleet.v1.devices.dev-1.{k}" for k in ("reported", "events", "telemetry")]
    assert user["nats"]["sub"]["allow"] == [f"edgefleet.v1.devices.dev-1.{k}" for k in ("desired", "commands")]


@pytest.mark.parametrize(("login", "grant", "why"), [
    (Login("dev-1", "pw", "mqtt", "dev-2"), device_grant("dev-1"), "client id"),
    (Login("dev-1", "bad", "mqtt", "dev-1"), None, "wrong password"),
])
def test_refusals_say_why(login: Login, grant: object, why: str) -> None:
    decided, reason = decide(login, grant)  # type: ignore[arg-type]
    assert decided is None and why in reason
    node, issuer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    request = parse_request(read_jwt(node_request(node)))
    response = read_jwt(authorize(request, decided, reason, issuer, NOW), issuer_prefix=0)
    assert "jwt" not in response["nats"] and why in response["nats"]["error"]
