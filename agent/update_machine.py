"""The agent's update state machine: pure, persisted as ONE record, replayable.

    idle ─assign─> assigned ─begin_download─> downloading ─downloaded─> downloading
      ─verified─> verified ─staged─> staged ─begin_health_check─> health_check
      ─health_passed─> health_check ─activated─> activated (probation) ─commit─> committed
    activated ─observe─> activated              serving stats folded into probation
    any state before activated ─fail─> failed;  activated ─fail─> rolled_back
    committed | rolled_back | failed ─assign─> assigned      (the next update)

    A CANDIDATE target (an assignment entry's ``candidate``: shadow or canary, issue 18) goes
    the same way to a passed health check, then never activates:
    health_check ─stage_started─> shadow | canary        (beside the serving version; `shadowing`)
    shadow | canary ─fail─> failed                         (withdrawn, superseded, lost)
    shadow | canary ─assign─> assigned                     (promotion: the same bundle, as the version)
    shadow | canary ─restart─> health_check                (the staged slot is checked and loaded again)
    failed (retryable reason) ─retry_now─> failed             (the retry is due at once)
    any state ─restart─> the same state, with what a restart means there:
        activated      the restart counts toward probation's crash-loop limit
        health_check   a check cut short proves nothing: it must pass again
        failed         a retryable failure is due now

``step(machine, input)`` returns the next machine and the event record the transition
produced (``None`` for ``begin_download``, ``begin_health_check``, ``observe``, ``restart``
and ``retry_now``); an input the current state does not accept raises
``IllegalTransitionError`` and changes nothing. ``next_work(machine)`` says which I/O the
driver does next (its result is the next input), so the driver is a loop over this table,
never a second copy of it. ``recovery(machine)`` names the rule a restarted agent applies in
each state (docs/update-path.md has the table).

Everything the update needs across a crash is in the one ``UpdateMachine`` record: the
target, the phase flags, the probation totals AND its restart times, when a retryable
failure is due, and which bundle was last tried per model. agent/updater.py writes it to
update.json atomically once per step, so no crash can separate a counter from the decision
that reads it (issue 19: two kills in one probation once committed instead of rolling back,
because the restart count and the probation's copy of it were two writes).

An outcome (committed, rolled_back, failed) stays until the next assignment, across
restarts: ``report()`` is what ``reported.update`` shows, so a server that missed the
outcome's event still reads it there.

Deliberately NOT here: the clock, the disk, the network, the model runtime, and the
judgement of probation's figures (agent/probation.py, which this record carries). Time is an
argument (seconds since the epoch) so tests drive it directly.

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
from agent.probation import Probation, ProbationConfig, ProbationError, StatsSnapshot
from edgefleet import events
from edgefleet.events import UpdateEvent, is_retryable


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
    SHADOW = "shadow"    # a candidate mirrored off the response path (never answers)
    CANARY = "canary"    # a candidate answering a share of the requests
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


# A candidate's stage: it runs beside the serving version, which stays active throughout.
STAGE_STATES = frozenset({State.SHADOW, State.CANARY})
_STAGE_OF_MODE = {"shadow": State.SHADOW, "canary": State.CANARY}
TERMINAL = frozenset({State.COMMITTED, State.ROLLED_BACK, State.FAILED})
# States in which the new model has never served a request: a failure here is "failed".
BEFORE_ACTIVATION = frozenset({State.ASSIGNED, State.DOWNLOADING, State.VERIFIED, State.STAGED, State.HEALTH_CHECK})
_ANY = frozenset(State)


class Work(enum.StrEnum):
    """The I/O the driver does next in an in-flight state; what it returns is the next input."""

    BEGIN_DOWNLOAD = "begin_download"          # nothing to do: feed BeginDownload (persisted first)
    DOWNLOAD = "download"                      # fetch through TUF: feed Downloaded
    VERIFY = "verify"                          # read and check the bundle: feed Verified
    STAGE = "stage"                            # extract the slot beside the active one: feed Staged
    BEGIN_HEALTH_CHECK = "begin_health_check"  # nothing to do: feed BeginHealthCheck
    CHECK_HEALTH = "check_health"              # golden samples on the staged slot: feed HealthPassed
    ACTIVATE = "activate"                      # switch the pointer, then serving: feed Activated
    START_STAGE = "start_stage"                # a candidate: serve it beside the active one: feed StageStarted
    WATCH = "watch"                            # probation, on the daemon's tick: Observe, then Commit or Fail


_WORK = {State.ASSIGNED: Work.BEGIN_DOWNLOAD, State.VERIFIED: Work.STAGE, State.STAGED: Work.BEGIN_HEALTH_CHECK,
         State.ACTIVATED: Work.WATCH}


def next_work(machine: UpdateMachine) -> Work | None:
    """The work the machine waits on; None when idle or finished."""
    if machine.state is State.DOWNLOADING:
        return Work.VERIFY if machine.downloaded else Work.DOWNLOAD
    if machine.state is State.HEALTH_CHECK:
        if not machine.health_passed:
            return Work.CHECK_HEALTH
        return Work.START_STAGE if machine.target is not None and machine.target.mode else Work.ACTIVATE
    return _WORK.get(machine.state)


class Recovery(enum.StrEnum):
    """What a restarted agent does for a machine found in some state (after the Restart input)."""

    NOTHING = "nothing"                  # idle, committed, rolled_back, non-retryable failed: the outcome stays
    START_DOWNLOAD = "start_download"    # assigned: nothing was fetched yet
    RESUME_DOWNLOAD = "resume_download"  # downloading: Range-resume the partial file
    REVERIFY = "reverify"                # verified/staged: re-check the bundle/slot before trusting it
    REDO_HEALTH_CHECK = "redo_health_check"  # health_check: nothing served yet, run it again
    RESUME_PROBATION = "resume_probation"    # activated: the restart counted; reconcile with the pointer, judge
    RETRY = "retry"                      # failed with a retryable reason: try the same assignment again now


_RECOVERY = {
    State.IDLE: Recovery.NOTHING,
    State.ASSIGNED: Recovery.START_DOWNLOAD,
    State.DOWNLOADING: Recovery.RESUME_DOWNLOAD,
    State.VERIFIED: Recovery.REVERIFY,
    State.STAGED: Recovery.REVERIFY,
    State.HEALTH_CHECK: Recovery.REDO_HEALTH_CHECK,
    State.ACTIVATED: Recovery.RESUME_PROBATION,
    State.SHADOW: Recovery.REDO_HEALTH_CHECK,  # Restart already moved it back to health_check
    State.CANARY: Recovery.REDO_HEALTH_CHECK,
    State.COMMITTED: Recovery.NOTHING,
    State.ROLLED_BACK: Recovery.NOTHING,
    State.FAILED: Recovery.NOTHING,
}


def recovery(machine: UpdateMachine) -> Recovery:
    """The recovery rule for the state a restarted agent finds persisted."""
    if machine.state is State.FAILED and is_retryable(machine.reason):
        return Recovery.RETRY
    return _RECOVERY[machine.state]


@dataclass(frozen=True)
class Target:
    """What is being installed: one model of one accepted assignment.

    ``mode`` (``shadow`` | ``canary``) and ``rate`` (its sample or share) are set for a
    candidate, which is staged and run beside the serving version and never activated.
    """

    model: str
    version: str
    counter: int
    rollout_id: str | None
    target_path: str
    sha256: str
    length: int
    mode: str | None = None
    rate: float | None = None

    def __post_init__(self) -> None:
        if not self.model or not self.version or not self.target_path:
            raise UpdateMachineError("an update target needs a model, a version and a target path")
        if self.counter < 1 or self.length < 1:
            raise UpdateMachineError("an update target needs a positive counter and length")
        if self.mode is not None and (self.mode not in _STAGE_OF_MODE or self.rate is None
                                      or not 0.0 < self.rate <= 1.0):
            raise UpdateMachineError(f"a candidate target needs a mode (shadow or canary) and a rate in (0, 1], "
                                     f"not {self.mode!r} and {self.rate!r}")
        if self.mode is None and self.rate is not None:
            raise UpdateMachineError("a rate belongs to a candidate target only")

    @property
    def attempt(self) -> str:
        """The key of one try of this bundle: the same content re-issued by the same rollout is the same try.

        A candidate's try is its own, so the promotion of a candidate that passed its stage (the
        same bundle, the same rollout) is a new try, and so is a canary after a shadow stage.
        """
        key = attempt_key(self.sha256, self.rollout_id)
        return f"{key}#{self.mode}" if self.mode else key

    @property
    def stage(self) -> State | None:
        """The state a candidate's stage runs in (None for an ordinary update)."""
        return _STAGE_OF_MODE[self.mode] if self.mode else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "version": self.version, "counter": self.counter,
                               "rollout_id": self.rollout_id, "target_path": self.target_path, "sha256": self.sha256,
                               "length": self.length}
        if self.mode is not None:
            out["mode"], out["rate"] = self.mode, self.rate
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Target:
        rollout = data.get("rollout_id")
        mode, rate = data.get("mode"), data.get("rate")
        return cls(str(data["model"]), str(data["version"]), int(data["counter"]),
                   None if rollout is None else str(rollout), str(data["target_path"]), str(data["sha256"]),
                   int(data["length"]), None if mode is None else str(mode), None if rate is None else float(rate))


def attempt_key(sha256: str, rollout_id: str | None) -> str:
    # The server re-issues the same content under new counters (half-life refresh), which must
    # not retry a bundle that failed; a new rollout of that bundle (another id) is a new try.
    return f"{sha256}@{rollout_id or ''}"


@dataclass(frozen=True)
class Event:
    """One lifecycle event as the machine produced it: the payload of `events` less its sender."""

    event: str
    model: str | None
    version: str | None
    counter: int | None
    rollout_id: str | None
    reason: str | None
    ts: float
    timings: Mapping[str, float] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.event not in events.EVENTS:
            raise UpdateMachineError(f"event {self.event!r} is not one of {', '.join(events.EVENTS)}")

    def payload(self, device_id: str, event_id: str) -> dict[str, Any]:
        """The JSON document published on ``devices/{id}/events`` (edgefleet.events.UpdateEvent)."""
        return UpdateEvent(device_id, event_id, self.ts, self.event, self.model, self.version, self.counter,
                           self.rollout_id, self.reason, dict(self.timings), dict(self.details)).to_dict()


def refusal(reason: str, ts: float, *, model: str | None = None, version: str | None = None,
            counter: int | None = None, rollout_id: str | None = None,
            details: Mapping[str, Any] | None = None) -> Event:
    """The ``failed`` event for an assignment refused before any update started (bad signature...).

    A refused assignment never enters the machine: the update in progress, if any, is untouched.
    """
    return Event(events.FAILED, model, version, counter, rollout_id, reason, ts, {}, dict(details or {}))


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
    """The new slot serves; its probation starts now with ``config`` against the profile's budget."""

    now: float
    config: ProbationConfig
    latency_budget_ms: float
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageStarted:
    """A candidate that passed its health check runs beside the serving version (shadow or canary)."""

    now: float
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Observe:
    """A serving-stats snapshot of the model in probation."""

    now: float
    snapshot: StatsSnapshot


@dataclass(frozen=True)
class Commit:
    now: float
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fail:
    """A step refused the model; a retryable reason is due again ``retry_after_s`` from now."""

    now: float
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)
    retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.reason:
            raise UpdateMachineError("a failure needs a reason code")
        if not self.retry_after_s >= 0:
            raise UpdateMachineError("retry_after_s must be >= 0 seconds")


@dataclass(frozen=True)
class Restart:
    """The agent process started again and found this machine on disk."""

    now: float


@dataclass(frozen=True)
class RetryNow:
    """A new assignment arrived: a retryable failure need not wait for its due time."""

    now: float


Input = (Assign | BeginDownload | Downloaded | Verified | Staged | BeginHealthCheck | HealthPassed | Activated
         | StageStarted | Observe | Commit | Fail | Restart | RetryNow)

# input type -> (states that accept it, state reached or None for "same state", event or None)
_TABLE: dict[type, tuple[frozenset[State], State | None, str | None]] = {
    Assign: (frozenset({State.IDLE}) | TERMINAL | STAGE_STATES, State.ASSIGNED, events.ASSIGNED),
    BeginDownload: (frozenset({State.ASSIGNED}), State.DOWNLOADING, None),
    Downloaded: (frozenset({State.DOWNLOADING}), None, events.DOWNLOADED),
    Verified: (frozenset({State.DOWNLOADING}), State.VERIFIED, events.VERIFIED),
    Staged: (frozenset({State.VERIFIED}), State.STAGED, events.STAGED),
    BeginHealthCheck: (frozenset({State.STAGED}), State.HEALTH_CHECK, None),
    HealthPassed: (frozenset({State.HEALTH_CHECK}), None, events.HEALTH_PASSED),
    Activated: (frozenset({State.HEALTH_CHECK}), State.ACTIVATED, events.ACTIVATED),
    StageStarted: (frozenset({State.HEALTH_CHECK}), None, events.SHADOWING),  # shadow or canary: the target's mode
    Observe: (frozenset({State.ACTIVATED}), None, None),
    Commit: (frozenset({State.ACTIVATED}), State.COMMITTED, events.COMMITTED),
    Fail: (BEFORE_ACTIVATION | {State.ACTIVATED} | STAGE_STATES, None, None),  # target and event depend on the state
    Restart: (_ANY, None, None),
    RetryNow: (frozenset({State.FAILED}), None, None),
}


@dataclass(frozen=True)
class UpdateMachine:
    """Everything the update path keeps across a crash: the update of one model (or none) and its history."""

    state: State = State.IDLE
    target: Target | None = None
    reason: str | None = None
    started_at: float | None = None     # when the assignment was accepted
    entered_at: float | None = None     # when the current state was entered
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds spent per finished phase
    downloaded: bool = False
    health_passed: bool = False
    slot: str | None = None
    probation: Probation | None = None  # while activated: totals, restart times, latency
    retry_at: float | None = None       # a retryable failure is due again then
    attempted: Mapping[str, str] = field(default_factory=dict)  # model -> attempt key last tried

    def __post_init__(self) -> None:
        if not isinstance(self.state, State):
            raise UpdateMachineError(f"unknown update state {self.state!r}")
        if self.state is State.IDLE:
            if self.target is not None:
                raise UpdateMachineError("an idle update machine has no target")
        elif self.target is None:
            raise UpdateMachineError(f"update state {self.state} needs a target")
        if self.state in {State.VERIFIED, State.STAGED, State.HEALTH_CHECK, State.ACTIVATED, State.COMMITTED,
                          *STAGE_STATES} and not self.downloaded:
            raise UpdateMachineError(f"update state {self.state} without a finished download")
        # The safety property of the whole update path: nothing serves before its health check passed.
        if self.state in {State.ACTIVATED, State.COMMITTED, *STAGE_STATES} and not self.health_passed:
            raise UpdateMachineError(f"update state {self.state} without a passed health check")
        # A candidate never becomes the active version; the stage it runs in is the one its mode names.
        if self.target is not None and self.target.mode and self.state in {State.ACTIVATED, State.COMMITTED}:
            raise UpdateMachineError(f"a candidate ({self.target.mode}) is never {self.state}")
        if self.state in STAGE_STATES and (self.target is None or self.target.stage is not self.state):
            raise UpdateMachineError(f"update state {self.state} needs a candidate target of that mode")
        if (self.state is State.ACTIVATED) != (self.probation is not None):
            raise UpdateMachineError("an activated model, and only an activated one, has a probation")
        if self.state in {State.ROLLED_BACK, State.FAILED} and not self.reason:
            raise UpdateMachineError(f"update state {self.state} needs a reason")
        if self.retry_at is not None and not (self.state is State.FAILED and is_retryable(self.reason)):
            raise UpdateMachineError("only a retryable failure has a retry time")
        if any(not math.isfinite(v) for v in self.timings.values()):
            raise UpdateMachineError("timings must be finite numbers")

    @property
    def active(self) -> bool:
        """True while an update is in flight (not idle, not finished)."""
        return self.state is not State.IDLE and self.state not in TERMINAL

    @property
    def restarts(self) -> int:
        """Agent restarts counted in the probation under way (0 outside probation)."""
        return len(self.probation.restarts) if self.probation is not None else 0

    def waiting(self, now: float) -> bool:
        """A retryable failure not yet due: the driver starts nothing before ``retry_at``."""
        return self.state is State.FAILED and self.retry_at is not None and now < self.retry_at

    def may_try(self, model: str, attempt: str) -> bool:
        """Whether the bundle ``attempt`` names may be installed for ``model`` (ask ``waiting`` first).

        A bundle is tried once per rollout, except after a retryable failure: that one is tried
        again when due.
        """
        if self.attempted.get(model) != attempt:
            return True
        return (self.state is State.FAILED and is_retryable(self.reason) and self.target is not None
                and self.target.model == model)

    def report(self) -> dict[str, Any]:
        """``reported.update`` (docs/contracts.md): the update in flight or the last outcome, for its counter."""
        t = self.target
        return {"state": self.state.value, "model": t.model if t else None, "version": t.version if t else None,
                "counter": t.counter if t else None, "rollout_id": t.rollout_id if t else None,
                "reason": self.reason}

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
            "probation": self.probation.to_dict() if self.probation else None,
            "retry_at": self.retry_at,
            "attempted": dict(self.attempted),
        }

    @classmethod
    def from_dict(cls, data: Any) -> UpdateMachine:
        if not isinstance(data, Mapping):
            raise UpdateMachineError("update.json is not a JSON object", fix="delete update.json; the agent starts idle")
        try:
            target = data.get("target")
            probation = data.get("probation")
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
                probation=Probation.from_dict(probation) if probation is not None else None,
                retry_at=_opt_float(data.get("retry_at")),
                attempted={str(k): str(v) for k, v in dict(data.get("attempted") or {}).items()},
            )
        except UpdateMachineError:
            raise
        except (KeyError, ValueError, TypeError, ProbationError) as exc:
            raise UpdateMachineError(f"update.json is malformed: {exc}",
                                     fix="delete update.json; the agent starts idle") from exc


def report_of(document: Any) -> dict[str, Any]:
    """``reported.update`` read back from a parsed update.json (idle when it holds none)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("state"), str):
        return {"state": State.IDLE.value}
    return {key: document.get(key) for key in UpdateMachine().report()}


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


_PHASE_OF = {State.DOWNLOADING: "download_s", State.VERIFIED: "verify_s", State.STAGED: "stage_s",
             State.HEALTH_CHECK: "health_check_s", State.ACTIVATED: "probation_s", State.ASSIGNED: "queue_s",
             State.SHADOW: "shadow_s", State.CANARY: "canary_s"}


def step(machine: UpdateMachine, inp: Input) -> tuple[UpdateMachine, Event | None]:
    """Apply one input; return the next machine and the event to publish, if any."""
    accepts, reached, event_name = _TABLE[type(inp)]
    if machine.state not in accepts:
        raise IllegalTransitionError(
            f"update input {type(inp).__name__} is not allowed in state {machine.state}",
            fix="this is an agent bug; the update state is left unchanged")
    now = inp.now
    if isinstance(inp, Assign):
        if machine.state in STAGE_STATES:
            # Only the promotion of the candidate in its stage: the same bundle, now as the version.
            current = machine.target
            assert current is not None
            if inp.target.mode is not None or inp.target.sha256 != current.sha256 \
                    or inp.target.model != current.model:
                raise IllegalTransitionError(
                    "during a stage only the promotion of its candidate may be assigned",
                    fix="this is an agent bug; end the stage with a failure (superseded) first")
        nxt = UpdateMachine(state=State.ASSIGNED, target=inp.target, started_at=now, entered_at=now,
                            attempted={**machine.attempted, inp.target.model: inp.target.attempt})
        return nxt, _event(nxt, events.ASSIGNED, now, {})
    if isinstance(inp, Restart):
        return _restarted(machine, now), None
    if isinstance(inp, RetryNow):
        if not is_retryable(machine.reason):
            raise IllegalTransitionError(f"a {machine.reason} failure is not retried")
        return replace(machine, retry_at=None), None
    if isinstance(inp, Observe):
        assert machine.probation is not None  # the invariant of ACTIVATED
        return replace(machine, probation=machine.probation.observe(inp.snapshot)), None
    if isinstance(inp, Fail):
        reached = State.ROLLED_BACK if machine.state is State.ACTIVATED else State.FAILED
        retry_at = now + inp.retry_after_s if reached is State.FAILED and is_retryable(inp.reason) else None
        nxt = replace(_leave(machine, now), state=reached, reason=inp.reason, entered_at=now, probation=None,
                      retry_at=retry_at)
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
        nxt = _enter(machine, State.STAGED, now, slot=inp.slot)
    elif isinstance(inp, HealthPassed):
        if machine.health_passed:
            raise IllegalTransitionError("the health check was already reported passed")
        nxt = replace(machine, health_passed=True)
    elif isinstance(inp, StageStarted):
        target = machine.target
        if not machine.health_passed or target is None or target.stage is None:
            raise IllegalTransitionError("only a candidate whose health check passed starts a stage")
        nxt = replace(_leave(machine, now), state=target.stage, entered_at=now)
    elif isinstance(inp, Activated):
        if not machine.health_passed:
            raise IllegalTransitionError("cannot activate a model whose health check has not passed")
        if machine.target is not None and machine.target.mode:
            raise IllegalTransitionError("a candidate is never activated; it is promoted by a new assignment")
        try:
            probation = Probation(inp.config, started_at=now, latency_budget_ms=inp.latency_budget_ms)
        except ProbationError as exc:
            raise IllegalTransitionError(f"cannot start probation: {exc.message}") from exc
        nxt = replace(_leave(machine, now), state=State.ACTIVATED, entered_at=now, probation=probation)
    elif isinstance(inp, Commit):
        nxt = _enter(machine, State.COMMITTED, now, probation=None)
    else:  # BeginDownload, BeginHealthCheck
        assert reached is not None
        nxt = _enter(machine, reached, now, health_passed=False)
    if event_name is None:
        return nxt, None
    details = getattr(inp, "details", {})
    return nxt, _event(nxt, event_name, now, details)


def _restarted(machine: UpdateMachine, now: float) -> UpdateMachine:
    """What a restart means in each state; one record, so one write keeps all of it."""
    if machine.state is State.ACTIVATED:
        assert machine.probation is not None
        return replace(machine, probation=machine.probation.restart(now))
    if machine.state is State.HEALTH_CHECK:
        return replace(machine, health_passed=False)  # a check cut short proves nothing: run it again
    if machine.state in STAGE_STATES:
        # The candidate lived in the dead process only (the active pointer never moved): check the
        # staged slot and load it again, then the stage goes on (a new `shadowing` event).
        return _enter(machine, State.HEALTH_CHECK, now, health_passed=False)
    if machine.state is State.FAILED and machine.retry_at is not None:
        return replace(machine, retry_at=None)  # a restart is as good a time as any to retry
    return machine


def _leave(machine: UpdateMachine, now: float) -> UpdateMachine:
    """Record the time spent in the current phase."""
    phase = _PHASE_OF.get(machine.state)
    if phase is None or machine.entered_at is None:
        return machine
    timings = dict(machine.timings)
    timings[phase] = timings.get(phase, 0.0) + max(0.0, now - machine.entered_at)
    return replace(machine, timings=timings)


def _enter(machine: UpdateMachine, state: State, now: float, **changes: Any) -> UpdateMachine:
    return replace(_leave(machine, now), state=state, entered_at=now, **changes)


def _event(machine: UpdateMachine, name: str, now: float, details: Mapping[str, Any]) -> Event:
    target = machine.target
    timings = dict(machine.timings)
    if machine.started_at is not None:
        timings["total_s"] = max(0.0, now - machine.started_at)
    return Event(
        event=name, model=target.model if target else None,
        version=target.version if target else None, counter=target.counter if target else None,
        rollout_id=target.rollout_id if target else None, reason=machine.reason, ts=now, timings=timings,
        details=dict(details),
    )
