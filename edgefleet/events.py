"""Update lifecycle events: their names, the reason codes they carry, and their payload.

One module for every side that speaks or reads the ``devices/{id}/events`` topic: the agent's
update machine publishes these names, the simulator's light devices publish the same, and
the server's rollout core counts them. A name written anywhere else is a bug that
tests/unit/core/test_events.py finds.

    assigned ─ downloaded ─ verified ─ staged ─ health_passed ─ activated      (progress)
    committed | failed | rolled_back                                            (outcomes)

A candidate (an assignment entry's ``candidate``, issue 18) goes the same way to
``health_passed``, then ``shadowing`` (progress: it runs beside the serving version, in shadow
or canary mode, and is never activated) instead of ``activated``; its events name the
candidate's version. A candidate refused or lost is a ``failed`` event with a reason (e.g.
``memory_budget``: a second model does not fit the profile's RAM); the serving version is
untouched either way.

A ``failed`` or ``rolled_back`` event carries a reason code (docs/update-path.md, "Reasons").
A few reasons are about the way to the bundle, not the bundle: the agent retries those by
itself (``RETRYABLE_REASONS``), so the rollout core must not count them against a wave while
the device is still trying; the device timeout still bounds the wait.

``UpdateEvent`` is the JSON document on the wire (docs/contracts.md, "MQTT payloads"); it
validates itself, so an object that exists names a known event and, for an outcome that is
not a commit, a reason.

    EdgefleetError (edgefleet.errors)
    └── EventError      an event document names an unknown event or lacks what its kind needs

Not here: when an event is emitted (agent/update_machine.py), what the server does with it
(fleet_server's rollout core), MQTT topics (edgefleet/topics.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.errors import EdgefleetError

# --- event names, in lifecycle order ------------------------------------------------------------
ASSIGNED = "assigned"
DOWNLOADED = "downloaded"
VERIFIED = "verified"
STAGED = "staged"
HEALTH_PASSED = "health_passed"
SHADOWING = "shadowing"
ACTIVATED = "activated"
COMMITTED = "committed"
FAILED = "failed"
ROLLED_BACK = "rolled_back"

PROGRESS_EVENTS: frozenset[str] = frozenset({ASSIGNED, DOWNLOADED, VERIFIED, STAGED, HEALTH_PASSED, SHADOWING,
                                             ACTIVATED})
OUTCOME_EVENTS: frozenset[str] = frozenset({COMMITTED, FAILED, ROLLED_BACK})
EVENTS: tuple[str, ...] = (ASSIGNED, DOWNLOADED, VERIFIED, STAGED, HEALTH_PASSED, SHADOWING, ACTIVATED, COMMITTED,
                           FAILED, ROLLED_BACK)

# --- reason codes -------------------------------------------------------------------------------
# An assignment refused before any update starts (edgefleet.assignment.verify_assignment).
BAD_SIGNATURE = "bad_signature"
WRONG_DEVICE = "wrong_device"
REPLAYED_COUNTER = "replayed_counter"
EXPIRED = "expired"
MALFORMED = "malformed"
WRONG_TYPE = "wrong_type"
BAD_TRUST_BUNDLE = "bad_trust_bundle"
# A step of the update refused the bundle, or the way to it failed.
TARGET_UNKNOWN = "target_unknown"
HASH_MISMATCH = "hash_mismatch"
TUF_REFUSED = "tuf_refused"
DOWNLOAD_FAILED = "download_failed"
BUNDLE_INVALID = "bundle_invalid"
PROFILE_MISMATCH = "profile_mismatch"
STAGE_FAILED = "stage_failed"
HEALTH_FAILED = "health_failed"
PROBATION_FAILED = "probation_failed"
SUPERSEDED = "superseded"
# A candidate (shadow or canary) refused or lost; the serving version keeps serving.
MEMORY_BUDGET = "memory_budget"      # a second model does not fit the profile's ram_mb
CANDIDATE_FAILED = "candidate_failed"  # the candidate could not be loaded or resumed after a restart

REFUSAL_REASONS: frozenset[str] = frozenset({BAD_SIGNATURE, WRONG_DEVICE, REPLAYED_COUNTER, EXPIRED, MALFORMED,
                                             WRONG_TYPE, BAD_TRUST_BUNDLE})
UPDATE_REASONS: frozenset[str] = frozenset({TARGET_UNKNOWN, HASH_MISMATCH, TUF_REFUSED, DOWNLOAD_FAILED,
                                            BUNDLE_INVALID, PROFILE_MISMATCH, STAGE_FAILED, HEALTH_FAILED,
                                            PROBATION_FAILED, SUPERSEDED, MEMORY_BUDGET, CANDIDATE_FAILED})
REASONS: frozenset[str] = REFUSAL_REASONS | UPDATE_REASONS

# The agent keeps the assignment after these and tries again (after ``retry_after_s``, or at
# its next restart): a network blip says nothing about the bundle.
RETRYABLE_REASONS: frozenset[str] = frozenset({DOWNLOAD_FAILED})


def is_retryable(reason: str | None) -> bool:
    """Whether a ``failed`` event with this reason code will be retried by the device itself."""
    return reason in RETRYABLE_REASONS


class EventError(EdgefleetError):
    """An event document names an unknown event or lacks what its kind needs."""


@dataclass(frozen=True)
class UpdateEvent:
    """One document on ``devices/{id}/events``: what happened to one model's update, and when.

    ``model``/``version``/``counter``/``rollout_id`` are None for an assignment refused before
    the device trusted it (a bad signature names nothing reliable). ``timings`` are seconds per
    finished phase; ``details`` is free-form (health report, probation figures, the message).
    """

    device_id: str
    event_id: str
    ts: float
    event: str
    model: str | None = None
    version: str | None = None
    counter: int | None = None
    rollout_id: str | None = None
    reason: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise EventError(f"event {self.event!r} is not one of {', '.join(EVENTS)}",
                             fix="use a name from edgefleet.events")
        if self.event in (FAILED, ROLLED_BACK) and not self.reason:
            raise EventError(f"a {self.event} event needs a reason code", fix="use a reason from edgefleet.events")
        if not self.device_id or not self.event_id:
            raise EventError("an event needs the device id and an event id")
        if not math.isfinite(self.ts) or any(not math.isfinite(v) for v in self.timings.values()):
            raise EventError("event times must be finite numbers")

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "event_id": self.event_id, "ts": self.ts, "event": self.event,
                "model": self.model, "version": self.version, "counter": self.counter,
                "rollout_id": self.rollout_id, "reason": self.reason, "timings": dict(self.timings),
                "details": dict(self.details)}

    @classmethod
    def from_dict(cls, data: Any) -> UpdateEvent:
        if not isinstance(data, Mapping):
            raise EventError("an event document is a JSON object")
        try:
            counter = data.get("counter")
            if isinstance(counter, bool) or not (counter is None or isinstance(counter, int)):
                raise TypeError(f"counter {counter!r} is not an integer")
            return cls(str(data["device_id"]), str(data["event_id"]), float(data["ts"]), str(data["event"]),
                       _opt_str(data.get("model")), _opt_str(data.get("version")), counter,
                       _opt_str(data.get("rollout_id")), _opt_str(data.get("reason")),
                       {str(k): float(v) for k, v in dict(data.get("timings") or {}).items()},
                       dict(data.get("details") or {}))
        except EventError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise EventError(f"event document is malformed: {exc}") from exc


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


__all__ = [
    "ACTIVATED", "ASSIGNED", "BAD_SIGNATURE", "BAD_TRUST_BUNDLE", "BUNDLE_INVALID", "CANDIDATE_FAILED", "COMMITTED",
    "DOWNLOADED", "DOWNLOAD_FAILED", "EVENTS", "EXPIRED", "FAILED", "HASH_MISMATCH", "HEALTH_FAILED", "HEALTH_PASSED",
    "MALFORMED", "MEMORY_BUDGET", "OUTCOME_EVENTS", "PROBATION_FAILED", "PROFILE_MISMATCH", "PROGRESS_EVENTS", "REASONS", "REFUSAL_REASONS",
    "REPLAYED_COUNTER", "RETRYABLE_REASONS", "ROLLED_BACK", "SHADOWING", "STAGED", "STAGE_FAILED", "SUPERSEDED", "TARGET_UNKNOWN",
    "TUF_REFUSED", "UPDATE_REASONS", "VERIFIED", "WRONG_DEVICE", "WRONG_TYPE", "EventError", "UpdateEvent",
    "is_retryable",
]
