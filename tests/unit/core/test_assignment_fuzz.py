"""Hostile assignment documents: whatever the bytes, verify_assignment returns an Assignment or
refuses with an AssignmentError, never another exception (issue 14)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.assignment import Assignment, DirectorSigner, ModelTarget, verify_assignment
from edgefleet.canonical import canonical_json
from edgefleet.errors import AssignmentError

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()
SIGNER = DirectorSigner(KEY)
GOOD = Assignment(device_id="dev-a", counter=5, issued_at=NOW - timedelta(minutes=1), expires_at=NOW + timedelta(hours=1),
                  rollout_id="r-1",
                  models={"digits": ModelTarget("1.2.0", "digits/digits-1.2.0.tar.gz", "ab" * 32, 1234)})


def _verify(envelope: bytes) -> Assignment:
    return verify_assignment(envelope, director_public_b64=SIGNER.public_b64, device_id="dev-a", last_counter=4, now=NOW)


def _sign_raw(signed: Any, dumps: Callable[[Any], bytes] = canonical_json) -> bytes:
    """An envelope whose signature is good over ``dumps(signed)``: the hostile part gets past the signature."""
    payload = dumps(signed)
    return json.dumps({"signed": json.loads(payload), "signatures": [{"keyid": SIGNER.keyid, "sig": KEY.sign(payload).hex()}]},
                      allow_nan=True).encode()


def _reason(envelope: bytes) -> str:
    with pytest.raises(AssignmentError) as info:
        _verify(envelope)
    return info.value.reason


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_nan_or_infinity_anywhere_is_malformed(token: str) -> None:
    # A signer that let NaN through (json.dumps' default) and a field that is a float: the
    # document never reaches the signature check as anything but malformed.
    text = SIGNER.sign(GOOD).decode()
    for field in ('"counter":5', '"length":1234', '"rollout_id":"r-1"'):
        hostile = text.replace(field, field.split(":")[0] + ":" + token).encode()
        assert _reason(hostile) == "malformed", field


def test_nan_inside_a_signed_document_is_malformed() -> None:
    signed = GOOD.to_dict() | {"counter": float("nan")}
    envelope = _sign_raw(signed, dumps=lambda d: json.dumps(d, sort_keys=True, separators=(",", ":")).encode())
    assert _reason(envelope) == "malformed"


def test_deep_nesting_is_malformed() -> None:
    assert _reason(b'{"signed":' + b"[" * 200_000 + b"]" * 200_000 + b',"signatures":[]}') == "malformed"


def test_lone_surrogate_is_malformed() -> None:
    text = SIGNER.sign(GOOD).decode().replace('"r-1"', '"\\ud800"')
    assert _reason(text.encode()) == "malformed"


@pytest.mark.parametrize("field, value", [("counter", True), ("counter", "6"), ("device_id", {"a": 1}),
                                          ("rollout_id", 7), ("models", [["digits", {}]]), ("issued_at", 0)])
def test_signed_fields_of_the_wrong_type_are_not_coerced(field: str, value: Any) -> None:
    assert _reason(_sign_raw(GOOD.to_dict() | {field: value})) == "malformed"


def test_bad_model_name_or_version_is_malformed() -> None:
    doc = GOOD.to_dict()
    bad_name = doc | {"models": {"Not A Name": doc["models"]["digits"]}}
    bad_version = doc | {"models": {"digits": doc["models"]["digits"] | {"version": "one"}}}
    assert _reason(_sign_raw(bad_name)) == "malformed"
    assert _reason(_sign_raw(bad_version)) == "malformed"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
PATHS = st.sampled_from([("device_id",), ("counter",), ("issued_at",), ("expires_at",), ("rollout_id",), ("models",),
                         ("models", "digits"), ("models", "digits", "version"), ("models", "digits", "target_path"),
                         ("models", "digits", "sha256"), ("models", "digits", "length"), ("_type",), ("extra",)])


def _replace(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(document))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return copy  # type: ignore[no-any-return]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=PATHS, value=JSON_VALUES)
def test_any_signed_field_value_gives_an_assignment_or_a_refusal(path: tuple[str, ...], value: Any) -> None:
    # Signed with the real director key, so the hostile value reaches the parser behind the signature.
    envelope = _sign_raw(_replace(GOOD.to_dict(), path, value))
    try:
        accepted = _verify(envelope)
    except AssignmentError as exc:
        assert exc.reason in {"malformed", "wrong_type", "wrong_device", "replayed_counter", "expired"}
        return
    assert isinstance(accepted, Assignment)
    assert accepted == Assignment.from_dict(accepted.to_dict())  # an object that exists is valid


FRAGMENTS = st.sampled_from([b"{", b"}", b"[", b"]", b",", b":", b'"signed"', b'"signatures"', b'"counter"', b"NaN",
                             b"Infinity", b"-", b"1e999", b"0", b"true", b"null", b'"\\ud800"', b'"', b"\xff", b" "])


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(FRAGMENTS | st.binary(max_size=8), max_size=40))
def test_any_bytes_give_an_assignment_or_a_refusal(parts: list[bytes]) -> None:
    try:
        _verify(b"".join(parts))
    except AssignmentError as exc:
        assert exc.reason in {"malformed", "bad_signature", "wrong_type"}


CANDIDATE_PATHS = st.sampled_from([("models", "digits", "candidate"), *(("models", "digits", "candidate", k) for k in
                                   ("version", "target_path", "sha256", "length", "mode", "sample", "share", "extra"))])
WITH_CANDIDATE = GOOD.to_dict()
WITH_CANDIDATE["models"]["digits"]["candidate"] = {"version": "1.3.0", "target_path": "digits/digits-1.3.0.tar.gz",
                                                   "sha256": "cd" * 32, "length": 99, "mode": "shadow", "sample": 0.5}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=CANDIDATE_PATHS, value=JSON_VALUES)
def test_any_candidate_field_value_gives_an_assignment_or_a_refusal(path: tuple[str, ...], value: Any) -> None:
    try:
        accepted = _verify(_sign_raw(_replace(WITH_CANDIDATE, path, value)))
    except AssignmentError as exc:
        assert exc.reason == "malformed"
        return
    assert accepted == Assignment.from_dict(accepted.to_dict())
    assert accepted.models["digits"].version == "1.2.0"  # whatever the candidate, the serving version is unchanged
