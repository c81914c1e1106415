"""Signed assignments: each way an attacker or a stale message could mislead a device is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.assignment import (
    CANARY,
    SHADOW,
    Assignment,
    Candidate,
    DirectorSigner,
    ModelTarget,
    verify_assignment,
)
from edgefleet.canonical import canonical_json
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


# --- candidates (issue 18: shadow and canary) -----------------------------------------------------
B = ModelTarget("1.3.0", "digits/digits-1.3.0.tar.gz", "cd" * 32, 4321)


def _with(candidate: Candidate | None) -> Assignment:
    base = _assignment()
    return Assignment(base.device_id, base.counter, base.issued_at, base.expires_at, base.rollout_id,
                      {"digits": base.models["digits"].with_candidate(candidate)})


def test_a_candidate_travels_signed_and_the_serving_version_stays_the_version() -> None:
    accepted = _verify(SIGNER.sign(_with(Candidate.shadow(B, 0.25))))
    entry = accepted.models["digits"]
    assert entry.version == "1.2.0" and entry.candidate is not None
    assert (entry.candidate.mode, entry.candidate.sample, entry.candidate.share) == (SHADOW, 0.25, None)
    assert entry.candidate.target == B and entry.candidate.rate == 0.25
    assert entry.serving() == _assignment().models["digits"]
    canary = _verify(SIGNER.sign(_with(Candidate.canary(B, 0.1)))).models["digits"].candidate
    assert canary is not None and (canary.mode, canary.share, canary.sample) == (CANARY, 0.1, None)


def test_the_wire_form_of_a_candidate_is_flat_and_names_only_its_modes_field() -> None:
    doc = _with(Candidate.shadow(B)).to_dict()["models"]["digits"]["candidate"]
    assert doc == {"version": "1.3.0", "target_path": B.target_path, "sha256": B.sha256, "length": 4321,
                   "mode": "shadow", "sample": 1.0}
    assert "candidate" not in _assignment().to_dict()["models"]["digits"]  # old agents see the same document


def _signed_candidate(**changes: object) -> bytes:
    signed = _with(Candidate.shadow(B, 0.5)).to_dict()
    signed["models"]["digits"]["candidate"].update(changes)
    for key in [k for k, v in changes.items() if v is ...]:
        del signed["models"]["digits"]["candidate"][key]
    payload = canonical_json(signed)
    return json.dumps({"signed": signed, "signatures": [{"keyid": SIGNER.keyid,
                                                         "sig": SIGNER._key.sign(payload).hex()}]}).encode()


@pytest.mark.parametrize("changes", [
    {"mode": "blue-green"}, {"sample": 0}, {"sample": 1.5}, {"sample": -0.1}, {"sample": True}, {"sample": "0.5"},
    {"sample": ...}, {"share": 0.1}, {"mode": "canary"}, {"mode": "canary", "sample": ..., "share": 1.0},
    {"mode": "canary", "sample": ..., "share": 0}, {"version": "1.2.0"}, {"sha256": "zz"}, {"length": 0},
    {"target_path": "../x"}, {"extra": 1}, {"candidate": {}}, {"version": ...},
])
def test_a_bad_candidate_is_malformed(changes: dict[str, object]) -> None:
    assert _reason(_signed_candidate(**changes)) == "malformed"


def test_a_null_or_non_object_candidate_is_malformed() -> None:
    for value in (None, [], "shadow", 1):
        signed = _assignment().to_dict()
        signed["models"]["digits"]["candidate"] = value
        payload = canonical_json(signed)
        envelope = json.dumps({"signed": signed, "signatures": [{"keyid": SIGNER.keyid,
                                                                 "sig": SIGNER._key.sign(payload).hex()}]}).encode()
        assert _reason(envelope) == "malformed", value


@settings(max_examples=120, deadline=None)
@given(mode=st.sampled_from([SHADOW, CANARY]),
       rate=st.floats(0, 1, allow_nan=False, exclude_min=True),
       version=st.sampled_from(["1.3.0", "1.1.0", "2.0.0-rc.1", "1.2.0+b1"]))
def test_any_valid_candidate_round_trips_through_signing(mode: str, rate: float, version: str) -> None:
    target = ModelTarget(version, f"digits/digits-{version}.tar.gz", "ef" * 32, 99)
    if mode == CANARY and rate == 1.0:
        with pytest.raises(ValueError, match="outside"):
            Candidate.canary(target, rate)
        return
    candidate = Candidate.shadow(target, rate) if mode == SHADOW else Candidate.canary(target, rate)
    try:
        assignment = _with(candidate)
    except ValueError as exc:  # "1.2.0+b1" is the serving version 1.2.0 (build metadata does not order)
        assert "serving version" in str(exc)
        return
    assert _verify(SIGNER.sign(assignment)) == assignment
    assert Assignment.from_dict(assignment.to_dict()) == assignment
