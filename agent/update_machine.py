"""The agent's update state machine for one model: pure, persisted, replayable.

    idle ─assign─> assigned ─begin_download─> downloading ─downloaded─> downloading
      ─verified─> verified ─staged─> staged ─begin_health_check─> health_check
      ─health_passed─> health_check ─activated─> activated (probation) ─commit─> committed
    any state before activated ─fail─> failed;  activated ─fail─> rolled_back
    committed | rolled_back | failed ─assign─> assigned,  ─reset─> idle

``step(machine, input)`` returns the next machine and the event record the transition
produced (``None`` for the two internal steps, ``begin_download`` and
``begin_health_check``, and for ``restart`` and ``reset``); an input the current state does not
accept raises ``IllegalTransitionError``. ``UpdateMachine.to_dict``/``from_dict`` is the
``update.json`` form; ``recovery`` says what the I/O layer must do after a crash in each
state (docs/update-path.md has the table).

Deliberately NOT here: the clock, the disk, the network, the model runtime and the decision
whether probation passed (agent/probation.py). Time is an argument (seconds since the epoch)
so tests drive it directly. Writing update.json atomically is agent/updater.py's job.

Errors:

    AgentError (agent.errors)
    └── UpdateMachineError          update.json cannot be read back (fix: delete it)
        └── IllegalTransitionError  an input the current state does not accept (a bug)
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agent.errors import AgentError


class UpdateMachineError(AgentError):
    """The persisted update state is unreadable or inconsistent."""


class IllegalTransitionError(UpdateMachineError):
    """An input arrived in a state that does not accept it."""


class State(enum.StrEnum):
    IDLE = "idle"
    ASSIGNED = "assigned"
    DOWNLOADING = "downloading"
    VERIFIED = "verified"
    STAGED = "staged"
    HEALTH_CHECK = "health_check"
    ACTIVATED = "activated"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


TERMINAL = frozenset({State.COMMITTED, State.ROLLED_BACK, State.FAILED})
# States in which the new model has never served a request: a failure here is "failed".
BEFORE_ACTIVATION = frozenset({State.ASSIGNED, State.DOWNLOADING, State.VERIFIED, State.STAGED, State.HEALTH_CHECK})
# Event names exactly as docs/contracts.md lists them for the `events` topic.
EVENTS = ("assigned", "downloaded", "verified", "staged", "health_passed", "activated", "committed", "failed",
          "rolled_back")


class Recovery(enum.StrEnum):
    """What the I/O layer does for a machine found in some state after a restart."""

    NOTHING = "nothing"                  # idle
    START_DOWNLOAD = "start_download"    # assigned: nothing was fetched yet
    RESUME_DOWNLOAD = "resume_download"  # downloading: Range-resume the partial file
    REVERIFY = "reverify"                # verified/staged: re-check the bundle/slot before trusting it
    REDO_HEALTH_CHECK = "redo_health_check"  # health_check: nothing served yet, run it again
    COUNT_RESTART = "count_restart"      # activated: a restart in probation counts toward the crash loop
    RESET = "reset"                      # committed/rolled_back/failed: the update is over, back to idle


_RECOVERY = {
    State.IDLE: Recovery.NOTHING,
    State.ASSIGNED: Recovery.START_DOWNLOAD,
    State.DOWNLOADING: Recovery.RESUME_DOWNLOAD,
    State.VERIFIED: Recovery.REVERIFY,
    State.STAGED: Recovery.REVERIFY,
    State.HEALTH_CHECK: Recovery.REDO_HEALTH_CHECK,
    State.ACTIVATED: Recovery.COUNT_RESTART,
    State.COMMITTED: Recovery.RESET,
    State.ROLLED_BACK: Recovery.RESET,
    State.FAILED: Recovery.RESET,
}


def recovery(machine: UpdateMachine) -> Recovery:
    """The recovery rule for the state a restarted agent finds persisted."""
    return _RECOVERY[machine.state]


@dataclass(frozen=True)
class Target:
    """What is being installed: one model of one accepted assignment."""

    model: str
    version: str
    counter: int
    rollout_id: str | None
    target_path: str
    sha256: str
    length: int

    def __post_init__(self) -> None:
        if not self.model or not self.version or not self.target_path:
            raise UpdateMachineError("an update target needs a model, a version and a target path")
        if self.counter < 1 or self.length < 1:
            raise UpdateMachineError("an update target needs a positive counter and length")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "counter": self.counter, "rollout_id": self.rollout_id,
                "target_path": self.target_path, "sha256": self.sha256, "length": self.length}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Target:
        rollout = data.get("rollout_id")
        return cls(str(data["model"]), str(data["version"]), int(data["counter"]),
                   None if rollout is None else str(rollout), str(data["target_path"]), str(data["sha256"]),
                   int(data["length"]))


@dataclass(frozen=True)
class Event:
    """One lifecycle event: the payload of `events` less device_id and event_id."""

    event: str
    state: State
    model: str | None
    version: str | None
    counter: int | None
    rollout_id: str | None
    reason: str | None
    ts: float
    timings: Mapping[str, float] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise UpdateMachineError(f"event {self.event!r} is not one of {', '.join(EVENTS)}")

    def payload(self, device_id: str, event_id: str) -> dict[str, Any]:
        """The JSON document published on ``devices/{id}/events`` (docs/contracts.md)."""
        return {"device_id": device_id, "event_id": event_id, "ts": self.ts, "event": self.event,
                "model": self.model, "version": self.version, "counter": self.counter,
                "rollout_id": self.rollout_id, "reason": self.reason, "timings": dict(self.timings),
                "details": dict(self.details)}


def refusal(reason: str, ts: float, *, model: str | None = None, version: str | None = None,
            counter: int | None = None, rollout_id: str | None = None,
            details: Mapping[str, Any] | None = None) -> Event:
    """The ``failed`` event for an assignment refused before any update started (bad signature...).

    A refused assignment never enters the machine: the update in progress, if any, is untouched.
    """
    return Event("failed", State.FAILED, model, version, counter, rollout_id, reason, ts, {}, dict(details or {}))


# --- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assign:
    target: Target
    now: float


@dataclass(frozen=True)
class BeginDownload:
    now: float


@dataclass(frozen=True)
class Downloaded:
    now: float
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verified:
    now: float
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Staged:
    now: float
    slot: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BeginHealthCheck:
    now: float


@dataclass(frozen=True)
class HealthPassed:
    now: float
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Activated:
    now: float
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Commit:
    now: float
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fail:
    now: float
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.reason:
            raise UpdateMachineError("a failure needs a reason code")


@dataclass(frozen=True)
class Restart:
    """The agent restarted while a new model was in probation."""

    now: float


@dataclass(frozen=True)
class Reset:
    """The update is over and reported; forget it."""

    now: float


Input = (Assign | BeginDownload | Downloaded | Verified | Staged | BeginHealthCheck | HealthPassed | Activated
         | Commit | Fail | Restart | Reset)

# input type -> (states that accept it, state reached or None for "same state", event or None)
_TABLE: dict[type, tuple[frozenset[State], State | None, str | None]] = {
    Assign: (frozenset({State.IDLE}) | TERMINAL, State.ASSIGNED, "assigned"),
    BeginDownload: (frozenset({State.ASSIGNED}), State.DOWNLOADING, None),
    Downloaded: (frozenset({State.DOWNLOADING}), None, "downloaded"),
    Verified: (frozenset({State.DOWNLOADING}), State.VERIFIED, "verified"),
    Staged: (frozenset({State.VERIFIED}), State.STAGED, "staged"),
    # Re-entering health_check from itself is the recovery rule: a crash mid-check redoes it.
    BeginHealthCheck: (frozenset({State.STAGED, State.HEALTH_CHECK}), State.HEALTH_CHECK, None),
    HealthPassed: (frozenset({State.HEALTH_CHECK}), None, "health_passed"),
    Activated: (frozenset({State.HEALTH_CHECK}), State.ACTIVATED, "activated"),
    Commit: (frozenset({State.ACTIVATED}), State.COMMITTED, "committed"),
    Fail: (BEFORE_ACTIVATION | {State.ACTIVATED}, None, None),  # target and event depend on the state
    Restart: (frozenset({State.ACTIVATED}), None, None),
    Reset: (frozenset({State.IDLE}) | TERMINAL, State.IDLE, None),
}


@dataclass(frozen=True)
class UpdateMachine:
    """The persisted state of the update of one model (or of none, when idle)."""

    state: State = State.IDLE
    target: Target | None = None
    reason: str | None = None
    started_at: float | None = None     # when the assignment was accepted
    entered_at: float | None = None     # when the current state was entered
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds spent per finished phase
    downloaded: bool = False
    health_passed: bool = False
    slot: str | None = None
    probation_started_at: float | None = None
    restarts: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.state, State):
            raise UpdateMachineError(f"unknown update state {self.state!r}")
        if self.state is State.IDLE:
            if self.target is not None:
                raise UpdateMachineError("an idle update machine has no target")
        elif self.target is None:
            raise UpdateMachineError(f"update state {self.state} needs a target")
        if self.state in {State.VERIFIED, State.STAGED, State.HEALTH_CHECK, State.ACTIVATED, State.COMMITTED} \
                and not self.downloaded:
            raise UpdateMachineError(f"update state {self.state} without a finished download")
        # The safety property of the whole update path: nothing serves before its health check passed.
        if self.state in {State.ACTIVATED, State.COMMITTED} and not self.health_passed:
            raise UpdateMachineError(f"update state {self.state} without a passed health check")
        if self.state is State.ACTIVATED and self.probation_started_at is None:
            raise UpdateMachineError("an activated model needs the time its probation started")
        if self.state in {State.ROLLED_BACK, State.FAILED} and not self.reason:
            raise UpdateMachineError(f"update state {self.state} needs a reason")
        if self.restarts < 0:
            raise UpdateMachineError("restart count cannot be negative")
        if any(not math.isfinite(v) for v in self.timings.values()):
            raise UpdateMachineError("timings must be finite numbers")

    @property
    def active(self) -> bool:
        """True while an update is in flight (not idle, not finished)."""
        return self.state is not State.IDLE and self.state not in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "target": self.target.to_dict() if self.target else None,
            "reason": self.reason,
            "started_at": self.started_at,
            "entered_at": self.entered_at,
            "timings": dict(self.timings),
            "downloaded": self.downloaded,
            "health_passed": self.health_passed,
            "slot": self.slot,
            "probation_started_at": self.probation_started_at,
            "restarts": self.restarts,
        }

    @classmethod
    def from_dict(cls, data: Any) -> UpdateMachine:
        if not isinstance(data, Mapping):
            raise UpdateMachineError("update.json is not a JSON object", fix="delete update.json; the agent starts idle")
        try:
            target = data.get("target")
            return cls(
                state=State(data["state"]),
                target=Target.from_dict(target) if target is not None else None,
                reason=data.get("reason"),
                started_at=_opt_float(data.get("started_at")),
                entered_at=_opt_float(data.get("entered_at")),
                timings={str(k): float(v) for k, v in dict(data.get("timings") or {}).items()},
                downloaded=bool(data.get("downloaded", False)),
                health_passed=bool(data.get("health_passed", False)),
                slot=data.get("slot"),
                probation_started_at=_opt_float(data.get("probation_started_at")),
                restarts=int(data.get("restarts", 0)),
            )
        except UpdateMachineError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise UpdateMachineError(f"update.json is malformed: {exc}",
                                     fix="delete update.json; the agent starts idle") from exc


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


_PHASE_OF = {State.DOWNLOADING: "download_s", State.VERIFIED: "verify_s", State.STAGED: "stage_s",
             State.HEALTH_CHECK: "health_check_s", State.ACTIVATED: "probation_s", State.ASSIGNED: "queue_s"}


def step(machine: UpdateMachine, inp: Input) -> tuple[UpdateMachine, Event | None]:
    """Apply one input; return the next machine and the event to publish, if any."""
    accepts, reached, event_name = _TABLE[type(inp)]
    if machine.state not in accepts:
        raise IllegalTransitionError(
            f"update input {type(inp).__name__} is not allowed in state {machine.state}",
            fix="this is an agent bug; the update state is left unchanged")
    now = inp.now
    if isinstance(inp, Assign):
        nxt = UpdateMachine(state=State.ASSIGNED, target=inp.target, started_at=now, entered_at=now)
        return nxt, _event(nxt, "assigned", now, {})
    if isinstance(inp, Reset):
        return UpdateMachine(), None
    if isinstance(inp, Restart):
        return replace(machine, restarts=machine.restarts + 1), None
    if isinstance(inp, Fail):
        reached = State.ROLLED_BACK if machine.state is State.ACTIVATED else State.FAILED
        nxt = replace(_leave(machine, now), state=reached, reason=inp.reason, entered_at=now)
        return nxt, _event(nxt, reached.value, now, inp.details)
    if isinstance(inp, Downloaded):
        if machine.downloaded:
            raise IllegalTransitionError("the download was already reported finished")
        nxt = replace(machine, downloaded=True)
    elif isinstance(inp, Verified):
        if not machine.downloaded:
            raise IllegalTransitionError("cannot verify before the download finished")
        nxt = _enter(machine, State.VERIFIED, now)
    elif isinstance(inp, Staged):
        nxt = replace(_enter(machine, State.STAGED, now), slot=inp.slot)
    elif isinstance(inp, HealthPassed):
        if machine.health_passed:
            raise IllegalTransitionError("the health check was already reported passed")
        nxt = replace(machine, health_passed=True)
    elif isinstance(inp, Activated):
        if not machine.health_passed:
            raise IllegalTransitionError("cannot activate a model whose health check has not passed")
        nxt = replace(_leave(machine, now), state=State.ACTIVATED, entered_at=now, probation_started_at=now,
                      restarts=0)
    elif isinstance(inp, Commit):
        nxt = _enter(machine, State.COMMITTED, now)
    else:  # BeginDownload, BeginHealthCheck
        assert reached is not None
        nxt = _enter(machine, reached, now)
        if reached is State.HEALTH_CHECK:
            # A redone check after a crash must pass again before activation.
            nxt = replace(nxt, health_passed=False)
    if event_name is None:
        return nxt, None
    details = getattr(inp, "details", {})
    return nxt, _event(nxt, event_name, now, details)


def _leave(machine: UpdateMachine, now: float) -> UpdateMachine:
    """Record the time spent in the current phase."""
    phase = _PHASE_OF.get(machine.state)
    if phase is None or machine.entered_at is None:
        return machine
    timings = dict(machine.timings)
    timings[phase] = timings.get(phase, 0.0) + max(0.0, now - machine.entered_at)
    return replace(machine, timings=timings)


def _enter(machine: UpdateMachine, state: State, now: float) -> UpdateMachine:
    return replace(_leave(machine, now), state=state, entered_at=now)


def _event(machine: UpdateMachine, name: str, now: float, details: Mapping[str, Any]) -> Event:
    target = machine.target
    timings = dict(machine.timings)
    if machine.started_at is not None:
        timings["total_s"] = max(0.0, now - machine.started_at)
    return Event(
        event=name, state=machine.state, model=target.model if target else None,
        version=target.version if target else None, counter=target.counter if target else None,
        rollout_id=target.rollout_id if target else None, reason=machine.reason, ts=now, timings=timings,
        details=dict(details),
    )
