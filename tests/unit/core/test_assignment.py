"""Signed assignments: each way an attacker or a stale message could mislead a device is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.assignment import Assignment, DirectorSigner, ModelTarget, verify_assignment
from edgefleet.errors import AssignmentError

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SIGNER = DirectorSigner.generate()
OTHER = DirectorSigner.generate()


def _assignment(counter: int = 5, device: str = "dev-a", expires: timedelta = timedelta(hours=1)) -> Assignment:
    return Assignment(
        device_id=device, counter=counter, issued_at=NOW - timedelta(minutes=1), expires_at=NOW + expires,
        rollout_id="r-1",
        models={"digits": ModelTarget("1.2.0", "digits/digits-1.2.0.tar.gz", "ab" * 32, 1234)},
    )


def _verify(envelope: bytes, last: int = 4, device: str = "dev-a", key: str = SIGNER.public_b64) -> Assignment:
    return verify_assignment(envelope, director_public_b64=key, device_id=device, last_counter=last, now=NOW)


def test_accepts_a_good_assignment() -> None:
    accepted = _verify(SIGNER.sign(_assignment()))
    assert accepted.models["digits"].version == "1.2.0"
    assert accepted == _assignment()


def _reason(envelope: bytes, **kwargs: object) -> str:
    with pytest.raises(AssignmentError) as info:
        _verify(envelope, **kwargs)  # type: ignore[arg-type]
    return info.value.reason


def test_rejects_signature_from_another_key() -> None:
    assert _reason(OTHER.sign(_assignment())) == "bad_signature"


def test_rejects_altered_payload() -> None:
    doc = json.loads(SIGNER.sign(_assignment()))
    doc["signed"]["models"]["digits"]["version"] = "9.9.9"
    assert _reason(json.dumps(doc).encode()) == "bad_signature"


def test_rejects_another_devices_assignment() -> None:
    assert _reason(SIGNER.sign(_assignment(device="dev-b"))) == "wrong_device"


def test_rejects_replayed_counter() -> None:
    envelope = SIGNER.sign(_assignment(counter=5))
    _verify(envelope, last=4)
    assert _reason(envelope, last=5) == "replayed_counter"


def test_rejects_expired_assignment() -> None:
    stale = Assignment(device_id="dev-a", counter=5, issued_at=NOW - timedelta(hours=2),
                       expires_at=NOW - timedelta(hours=1), rollout_id=None, models={})
    assert _reason(SIGNER.sign(stale)) == "expired"


def test_round_trips_signer_through_pem() -> None:
    again = DirectorSigner.from_pem(SIGNER.private_pem())
    assert again.public_b64 == SIGNER.public_b64
    assert _verify(again.sign(_assignment())).counter == 5


@settings(max_examples=80, deadline=None)
@given(junk=st.binary(max_size=300))
def test_garbage_is_malformed_never_a_crash(junk: bytes) -> None:
    with pytest.raises(AssignmentError):
        _verify(junk)
