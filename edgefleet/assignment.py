"""Signed per-device assignments: what a device should run, and the checks before it may.

The server's director key (Ed25519) signs an assignment; the agent verifies it. The wire
form mirrors TUF's envelope so it reads familiar::

    {"signed": {"_type": "edgefleet-assignment", "spec_version": 1, "device_id": ...,
                "counter": 7, "issued_at": "...Z", "expires_at": "...Z", "rollout_id": ...,
                "models": {"digits": {"version": "1.2.0", "target_path": "...",
                                      "sha256": "...", "length": 1234}}},
     "signatures": [{"keyid": "<sha256 of the raw public key>", "sig": "<hex>"}]}

A model entry may carry a ``candidate`` (issue 18, docs/contracts.md "Shadow and canary"): a
second version the device stages BESIDE the serving one and runs on live traffic without
switching to it, either mirrored off the response path (``mode`` ``shadow``, ``sample`` the
share of requests mirrored, 0 < sample <= 1) or answering a share of requests (``mode``
``canary``, 0 < share < 1)::

    "digits": {"version": "1.0.0", ..., "candidate": {"version": "1.1.0", "target_path": "...",
               "sha256": "...", "length": 1234, "mode": "shadow", "sample": 1.0}}

``version`` stays the serving version, so an agent that does not know ``candidate`` never
switches to it. A candidate entry is strict: the field of the other mode, an unknown key or a
candidate naming the serving version is ``malformed``.

The signature covers the canonical JSON of ``signed`` (edgefleet.canonical).
``verify_assignment`` is pure: bytes, a key, the device's state and the time in; an
``Assignment`` or an ``AssignmentError`` with a stable ``reason`` code out. It checks, in
order: envelope shape, signature, type, device id, counter (strictly higher than any
accepted, so a replay or an old assignment is refused), expiry. Rolling back is a new
assignment with a higher counter that names an older version.

Whatever the bytes, the answer is one of those two, never another exception: NaN, Infinity
and numbers out of float range, nesting deeper than the parser's recursion limit, strings
that cannot be encoded, and fields of the wrong JSON type (fields are never coerced: ``true``
is not a counter, an object is not a device id) are all ``malformed``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edgefleet.canonical import canonical_json
from edgefleet.errors import AssignmentError, EdgefleetError
from edgefleet.version import ModelVersion, check_model_name

ASSIGNMENT_TYPE = "edgefleet-assignment"
SPEC_VERSION = 1

SHADOW = "shadow"
CANARY = "canary"
CANDIDATE_MODES = (SHADOW, CANARY)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


_CANDIDATE_KEYS = frozenset({"version", "target_path", "sha256", "length", "mode", "sample", "share"})


@dataclass(frozen=True)
class Candidate:
    """A version a device runs beside the serving one without switching to it (issue 18).

    ``target`` is the candidate's TUF target, checked like any other; ``mode`` is ``shadow``
    (``sample``: the share of live requests mirrored to it off the response path, 0 < sample
    <= 1, every answer from the serving version) or ``canary`` (``share``: the share of live
    requests it answers, 0 < share < 1). The field of the other mode is None. Build one with
    ``Candidate.shadow(...)`` or ``Candidate.canary(...)``.
    """

    target: ModelTarget
    mode: str
    sample: float | None = None
    share: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.target, ModelTarget):
            raise TypeError("a candidate's target is a ModelTarget")
        if self.target.candidate is not None:
            raise ValueError("a candidate cannot carry a candidate of its own")
        if self.mode == SHADOW:
            if self.share is not None:
                raise ValueError("a shadow candidate has a sample, not a share")
            object.__setattr__(self, "sample", _fraction(self.sample, "sample", upper_inclusive=True))
        elif self.mode == CANARY:
            if self.sample is not None:
                raise ValueError("a canary candidate has a share, not a sample")
            object.__setattr__(self, "share", _fraction(self.share, "share", upper_inclusive=False))
        else:
            raise ValueError(f"candidate mode {self.mode!r} is not one of {', '.join(CANDIDATE_MODES)}")

    @classmethod
    def shadow(cls, target: ModelTarget, sample: float = 1.0) -> Candidate:
        """Mirror ``sample`` of the live requests to ``target``; it never answers."""
        return cls(target, SHADOW, sample=sample)

    @classmethod
    def canary(cls, target: ModelTarget, share: float) -> Candidate:
        """Let ``target`` answer ``share`` of the live requests."""
        return cls(target, CANARY, share=share)

    @property
    def version(self) -> str:
        return self.target.version

    @property
    def rate(self) -> float:
        """The share of live requests the candidate sees: ``sample`` (shadow) or ``share`` (canary)."""
        value = self.sample if self.mode == SHADOW else self.share
        assert value is not None  # __post_init__ set the one of this mode
        return value

    def to_dict(self) -> dict[str, Any]:
        out = {**self.target.to_dict(), "mode": self.mode}
        if self.mode == SHADOW:
            out["sample"] = self.sample
        else:
            out["share"] = self.share
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        if not isinstance(data, Mapping):
            raise TypeError(f"candidate must be an object, not {type(data).__name__}")
        unknown = sorted(set(data) - _CANDIDATE_KEYS)
        if unknown:
            raise ValueError(f"candidate has unknown key(s) {', '.join(map(str, unknown))}")
        mode = _typed(data, "mode", str)
        sample, share = data.get("sample"), data.get("share")
        if mode == SHADOW and sample is None:
            raise ValueError("a shadow candidate needs its sample")
        if mode == CANARY and share is None:
            raise ValueError("a canary candidate needs its share")
        return cls(ModelTarget.from_dict(data), mode, sample=sample, share=share)


def _fraction(value: Any, what: str, *, upper_inclusive: bool) -> float:
    """``value`` as a float in (0, 1] or (0, 1); TypeError for a bool or a non-number (never coerced)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"candidate {what} must be a number, not {type(value).__name__}")
    number = float(value)
    if not (0.0 < number < 1.0 or (upper_inclusive and number == 1.0)):
        bound = "1]" if upper_inclusive else "1)"
        raise ValueError(f"candidate {what} {value!r} is outside (0, {bound}")
    return number


@dataclass(frozen=True)
class ModelTarget:
    """One model named by an assignment: the version and the TUF target that carries it, and
    optionally a ``candidate`` to run beside it (shadow or canary) without switching."""

    version: str
    target_path: str
    sha256: str
    length: int
    candidate: Candidate | None = None

    def __post_init__(self) -> None:
        ModelVersion.parse(self.version)
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        if self.length <= 0 or not self.target_path or ".." in self.target_path.split("/"):
            raise ValueError("target_path and length must be set and sane")
        if self.candidate is not None:
            if not isinstance(self.candidate, Candidate):
                raise TypeError("candidate must be a Candidate")
            if ModelVersion.parse(self.candidate.version) == ModelVersion.parse(self.version):
                raise ValueError(f"the candidate names the serving version {self.version}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "target_path": self.target_path, "sha256": self.sha256,
                               "length": self.length}
        if self.candidate is not None:
            out["candidate"] = self.candidate.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelTarget:
        # A present "candidate" must be an object: null is not "no candidate" (the server never writes it).
        candidate = Candidate.from_dict(data["candidate"]) if isinstance(data, Mapping) and "candidate" in data else None
        return cls(_typed(data, "version", str), _typed(data, "target_path", str), _typed(data, "sha256", str),
                   _typed(data, "length", int), candidate)

    def serving(self) -> ModelTarget:
        """This entry without its candidate: what serves."""
        return ModelTarget(self.version, self.target_path, self.sha256, self.length)

    def with_candidate(self, candidate: Candidate | None) -> ModelTarget:
        """This serving entry with ``candidate`` (None: withdraw it)."""
        return ModelTarget(self.version, self.target_path, self.sha256, self.length, candidate)


def _typed(data: Mapping[str, Any], key: str, kind: type[Any]) -> Any:
    """``data[key]`` if it is a ``kind``, else TypeError: a signed document is never coerced.

    ``str(...)``/``int(...)`` would turn an object into its repr and ``true`` into 1, so a
    document the server never wrote could still come out as an Assignment.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"expected an object holding {key!r}, got {type(data).__name__}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key} must be {kind.__name__}, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Assignment:
    device_id: str
    counter: int
    issued_at: datetime
    expires_at: datetime
    rollout_id: str | None
    models: Mapping[str, ModelTarget]

    def __post_init__(self) -> None:
        if self.counter < 1:
            raise ValueError("counter must be >= 1")
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        for name in self.models:
            check_model_name(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "_type": ASSIGNMENT_TYPE,
            "spec_version": SPEC_VERSION,
            "device_id": self.device_id,
            "counter": self.counter,
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
            "rollout_id": self.rollout_id,
            "models": {n: t.to_dict() for n, t in sorted(self.models.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Assignment:
        rollout_id = data.get("rollout_id")
        if rollout_id is not None and not isinstance(rollout_id, str):
            raise TypeError(f"rollout_id must be str or null, not {type(rollout_id).__name__}")
        models = _typed(data, "models", Mapping)
        return cls(
            device_id=_typed(data, "device_id", str),
            counter=_typed(data, "counter", int),
            issued_at=parse_time(_typed(data, "issued_at", str)),
            expires_at=parse_time(_typed(data, "expires_at", str)),
            rollout_id=rollout_id,
            models={n: ModelTarget.from_dict(t) for n, t in models.items()},  # names checked in __post_init__
        )


def _raw_public(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # type: ignore[no-any-return]


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


class DirectorSigner:
    """Signs assignments with the director's Ed25519 private key (server side)."""

    def __init__(self, private_key: Any) -> None:
        self._key = private_key
        self.public_raw = _raw_public(private_key.public_key())
        self.keyid = key_id(self.public_raw)

    @classmethod
    def generate(cls) -> DirectorSigner:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> DirectorSigner:
        from cryptography.hazmat.primitives import serialization

        return cls(serialization.load_pem_private_key(pem, password=None))

    def private_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.private_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def public_b64(self) -> str:
        """The public key as the trust bundle carries it (base64 of the 32 raw bytes)."""
        return base64.b64encode(self.public_raw).decode()

    def sign(self, assignment: Assignment) -> bytes:
        signed = assignment.to_dict()
        sig = self._key.sign(canonical_json(signed))
        envelope = {"signed": signed, "signatures": [{"keyid": self.keyid, "sig": sig.hex()}]}
        return canonical_json(envelope)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf without passing through parse_constant
        raise ValueError(f"{text} is out of range for a JSON number")
    return value


def _strict_json(data: bytes) -> Any:
    """``json.loads`` that refuses NaN and Infinity, which canonical JSON cannot sign."""
    return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)


def verify_assignment(
    envelope: bytes,
    *,
    director_public_b64: str,
    device_id: str,
    last_counter: int,
    now: datetime,
) -> Assignment:
    """Verify a signed assignment for this device; raise AssignmentError(reason=...) if refused.

    ``last_counter`` is the highest counter this device has accepted (0 if none).
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        document = _strict_json(envelope)
        signed = document["signed"]
        signatures = document["signatures"]
        if not isinstance(signed, dict) or not isinstance(signatures, list):
            raise TypeError("signed must be an object and signatures a list")
        # The bytes that were signed; a string the signer could not have encoded (a lone
        # surrogate) fails here, as a malformed document rather than a UnicodeEncodeError.
        payload = canonical_json(signed)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise AssignmentError(f"assignment is malformed: {exc}", reason="malformed") from exc
    try:
        raw = base64.b64decode(director_public_b64, validate=True)
        public = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise AssignmentError("the trust bundle's director key is not a valid Ed25519 key", reason="bad_trust_bundle",
                              fix="re-enroll the device") from exc
    wanted = key_id(raw)
    verified = False
    for entry in signatures:
        if not isinstance(entry, dict) or entry.get("keyid") != wanted:
            continue
        try:
            public.verify(bytes.fromhex(str(entry.get("sig", ""))), payload)
            verified = True
            break
        except (InvalidSignature, ValueError):
            continue
    if not verified:
        raise AssignmentError("assignment signature does not verify with the director key", reason="bad_signature")
    if signed.get("_type") != ASSIGNMENT_TYPE or signed.get("spec_version") != SPEC_VERSION:
        raise AssignmentError(f"document is not an {ASSIGNMENT_TYPE} v{SPEC_VERSION}", reason="wrong_type")
    try:
        assignment = Assignment.from_dict(signed)
    except (KeyError, ValueError, TypeError, EdgefleetError) as exc:  # EdgefleetError: a bad name or version
        raise AssignmentError(f"assignment is malformed: {exc}", reason="malformed") from exc
    if assignment.device_id != device_id:
        raise AssignmentError(f"assignment names device {assignment.device_id!r}, not this device {device_id!r}",
                              reason="wrong_device")
    if assignment.counter <= last_counter:
        raise AssignmentError(f"assignment counter {assignment.counter} is not above the last accepted {last_counter} (replay)",
                              reason="replayed_counter")
    if now >= assignment.expires_at:
        raise AssignmentError(f"assignment expired at {format_time(assignment.expires_at)}", reason="expired")
    return assignment
