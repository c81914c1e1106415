"""The rollout state machine: which device gets which version when, and when to stop.

A :class:`Rollout` takes a model version to the devices a selector matches, wave by wave
(:mod:`fleet_server.rollouts.waves` draws the waves). It is a pure core in the way python-tuf's
``TrustedMetadataSet`` is: no database, broker or clock inside. Every input is a method
call with the time passed in (``start``, ``device_event``, ``device_reported``,
``device_offline``/``online``, ``tick``, ``pause``, ``resume``, ``abort``, ``rollback``, ``yank``,
``add_device``, and ``assignment_issued``, which records the counter an assignment went out
under); every
output is a list of :data:`Action` values the I/O layer carries out (sign and publish an
assignment, record a halt, raise an alert). ``to_dict``/``from_dict`` is the whole state, in
three parts an engine may store apart (``spec_to_dict``, written once; ``header_to_dict``, small;
one ``DeviceRecord`` per device, rebuilt with ``from_parts``), and ``changed_devices`` names the
records changed since ``mark_stored``: an engine loads it under a row lock, calls one method,
stores the header and the changed records and executes the actions, so a batch of events
costs what it changes (issue 13). A server restart loses nothing, and two replicas never
advance a wave twice because the lock, not this object, serialises them.

The rules (docs/rollouts.md tells them with an example timeline):

* Only devices whose profile the version was validated for take part; the rest are
  ``ineligible`` and are never assigned.
* At most the members of waves 0..current are ever assigned; a wave's members are all
  assigned when it starts.
* A wave passes when its committed share >= ``min_success_rate`` and ``bake_time`` has gone
  by since the last commit among its members (each new commit restarts the bake, so the last
  device to commit is watched for the full bake time too).
* The rollout halts when any started wave's failures / size > ``max_failure_rate``, or when
  a wave can no longer reach ``min_success_rate`` even if all its in-flight devices commit.
  Failures are ``failed`` and ``timed_out`` devices; a device that rolled itself back in
  probation has failed. A ``failed`` event whose reason the device retries by itself
  (``edgefleet.events``, e.g. ``download_failed``) leaves the device in flight.
* An assigned device that has not committed ``device_timeout`` after its assignment (offline
  or not) is ``timed_out``: a failure. A late commit still counts while the rollout runs.
* A device's ``reported`` document (``device_reported``: on every (re)connect, and the engine
  replays the stored and retained ones when a server starts) is reconciled with its record:
  the last outcome it reports for this version, from an assignment counter no older than
  the one this rollout sent it, counts as that outcome's event would; a device that SERVES
  the version with no update of the model in flight has committed it. A device last
  reported serving the version is never timed out (it is in probation, which ends by itself),
  and one that had timed out is in flight again: so nobody who runs the version is counted
  failed, or rolled back, because its outcome's event was lost (issue 19).
* With a stage in the policy (``RolloutPolicy.stage``: shadow or canary,
  :mod:`fleet_server.rollouts.stage`), a wave starts by sending its members the version as a
  CANDIDATE beside the one they serve (``AssignCandidate``; status ``candidate``). A member
  that serves no version of the model has nothing to compare against: it waits (``pending``)
  and is assigned with the promotion; a wave where no member serves an earlier version skips
  its stage. The stage opens once ``min_success_rate`` of the candidate's devices report
  ``shadowing``; when its time is over the engine hands in the wave's figures
  (``stage_figures``) and the verdict decides: pass, and every member is assigned the version
  the usual way (``AssignVersion``: commit, bake, next wave, whose stage runs again); fail or
  too few requests, and the rollout halts with the figures as its reason. A device in the
  stage that already reports ``shadowing`` never times out (it waits on the stage, not on
  itself); one that fails the candidate (``memory_budget``, ``health_failed``) is a failure of
  its wave like any other.
* Whenever the rollout stops (halt, abort, rollback, yank), every device still holding the
  candidate gets it withdrawn (``WithdrawCandidate``: the serving version with no candidate;
  status ``withdrawn``), auto_rollback or not: a stage no rollout drives must not run on.
* With ``auto_rollback``, a halt moves every device the rollout touched back to its previous
  version (``AssignPrevious``); a device that had none gets nothing and is reported in an
  ``AlertNeeded``.
* A halted, aborted or rolled-back rollout never assigns its version again, nor does any
  rollout of a yanked version. Pause stops forward progress only: timeouts and halts still
  apply while paused.

What it deliberately does not do: sign or publish assignments, choose devices by querying
anything, or look up previous versions' TUF targets; the engine does, from the actions.

Errors: ``RolloutStateError`` (a ``ConflictError``, HTTP 409) for a command the current
state forbids, ``RolloutConfigError`` (``InvalidInputError``, HTTP 422) for bad settings,
``RolloutDataError`` (``ServerError``) for a stored document that does not parse.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from edgefleet.assignment import ModelTarget
from edgefleet.errors import EdgefleetError
from edgefleet.events import (
    COMMITTED,
    EVENTS,
    OUTCOME_EVENTS,
    PROGRESS_EVENTS,
    SHADOWING,
    is_retryable,
)
from edgefleet.version import ModelVersion, check_model_name
from fleet_server.errors import ConflictError, InvalidInputError, ServerError
from fleet_server.rollouts.reports import DeviceReport
from fleet_server.rollouts.stage import (
    CanaryPolicy,
    Figures,
    ShadowPolicy,
    StagePolicy,
    Verdict,
    VerdictCode,
    figures_from_dict,
    judge,
    stage_from_dict,
)
from fleet_server.rollouts.waves import (
    DEFAULT_WAVES,
    RolloutDevice,
    Selector,
    WavePlan,
    check_waves,
    plan_waves,
)

__all__ = [
    "EVENTS",
    "OUTCOME_EVENTS",
    "PROGRESS_EVENTS",
    "SCHEMA_VERSION",
    "Action",
    "AlertNeeded",
    "AssignCandidate",
    "AssignPrevious",
    "AssignVersion",
    "Completed",
    "DeviceRecord",
    "DeviceReport",
    "DeviceStatus",
    "Halt",
    "Rollout",
    "RolloutConfigError",
    "RolloutDataError",
    "RolloutPolicy",
    "RolloutState",
    "RolloutStateError",
    "StageState",
    "WaveSummary",
    "WithdrawCandidate",
    "action_to_dict",
]

SCHEMA_VERSION = 1


class RolloutStateError(ConflictError):
    """A command the rollout's current state does not allow (resume a halted rollout...)."""


class RolloutConfigError(InvalidInputError):
    """A rollout setting is out of range."""


class RolloutDataError(ServerError):
    """A stored rollout document does not parse."""


class RolloutState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


class DeviceStatus(StrEnum):
    PENDING = "pending"          # in a wave that has not started (or the rollout is not running)
    ASSIGNED = "assigned"        # sent the version, no result yet
    COMMITTED = "committed"      # runs the version after probation
    FAILED = "failed"            # refused, failed its health check, or rolled back in probation
    ROLLED_BACK = "rolled_back"  # sent back to its previous version by this rollout
    TIMED_OUT = "timed_out"      # no result within device_timeout: counts as failed
    INELIGIBLE = "ineligible"    # its profile is not one the version was validated for
    CANDIDATE = "candidate"      # sent the version as a candidate beside its serving one (shadow/canary stage)
    WITHDRAWN = "withdrawn"      # its candidate was withdrawn when the rollout stopped: serves its previous version


_LIVE = (RolloutState.RUNNING, RolloutState.PAUSED)
_FAILURES = (DeviceStatus.FAILED, DeviceStatus.TIMED_OUT)
_SENT = (DeviceStatus.ASSIGNED, DeviceStatus.CANDIDATE)          # waiting on the device
_IN_FLIGHT = (*_SENT, DeviceStatus.TIMED_OUT)                     # an outcome may still come
# The agent's reported ``update.state`` while a candidate's stage runs (docs/contracts.md).
_STAGE_STATES = frozenset({"shadow", "canary"})


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class AssignVersion:
    """Sign and publish an assignment naming ``version`` (``target``) to this device."""

    device_id: str
    model: str
    version: str
    target: ModelTarget
    kind: str = field(default="assign_version", init=False)


@dataclass(frozen=True)
class AssignPrevious:
    """Sign and publish a new assignment (higher counter) naming the device's previous version."""

    device_id: str
    model: str
    previous_version: str
    kind: str = field(default="assign_previous", init=False)


@dataclass(frozen=True)
class Halt:
    """The rollout stopped by itself; record and announce why."""

    reason: str
    kind: str = field(default="halt", init=False)


@dataclass(frozen=True)
class Completed:
    """Every wave passed."""

    kind: str = field(default="completed", init=False)


@dataclass(frozen=True)
class AlertNeeded:
    """Something a person must look at (``topic`` is a stable code, ``devices`` those concerned)."""

    topic: str
    message: str
    devices: tuple[str, ...] = ()
    kind: str = field(default="alert", init=False)


@dataclass(frozen=True)
class AssignCandidate:
    """Sign and publish an assignment: ``serving_version`` serves, ``target`` runs beside it as a candidate.

    ``mode`` is ``shadow`` (``rate``: the share of requests mirrored) or ``canary`` (``rate``:
    the share answered by the candidate).
    """

    device_id: str
    model: str
    serving_version: str
    target: ModelTarget
    mode: str
    rate: float
    kind: str = field(default="assign_candidate", init=False)


@dataclass(frozen=True)
class WithdrawCandidate:
    """Sign and publish an assignment naming ``serving_version`` with no candidate."""

    device_id: str
    model: str
    serving_version: str
    kind: str = field(default="withdraw_candidate", init=False)


Action = AssignVersion | AssignPrevious | AssignCandidate | WithdrawCandidate | Halt | Completed | AlertNeeded


def action_to_dict(action: Action) -> dict[str, Any]:
    """A JSON-able form of an action, for logs, audit rows and ``--json`` output."""
    return asdict(action)


# --------------------------------------------------------------------------- settings


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


@dataclass(frozen=True)
class RolloutPolicy:
    """How a rollout moves and when it stops (the ``rollouts create`` flags)."""

    waves: tuple[float, ...] = DEFAULT_WAVES
    bake_time: timedelta = timedelta(minutes=10)
    max_failure_rate: float = 0.05
    min_success_rate: float = 0.95
    device_timeout: timedelta = timedelta(minutes=30)
    auto_rollback: bool = False
    stage: StagePolicy | None = None   # a shadow or canary stage before each wave switches

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "waves", check_waves(self.waves))
        except EdgefleetError as exc:
            raise RolloutConfigError(exc.message, fix=exc.fix) from exc
        if self.bake_time < timedelta(0):
            raise RolloutConfigError(f"bake time {self.bake_time} is negative", fix="use e.g. --bake 10m")
        if self.device_timeout <= timedelta(0):
            raise RolloutConfigError(f"device timeout {self.device_timeout} must be positive",
                                     fix="use e.g. --device-timeout 30m")
        if not 0 <= self.max_failure_rate < 1:
            raise RolloutConfigError(f"max failure rate {self.max_failure_rate} must be in [0, 1)",
                                     fix="use e.g. --max-failure-rate 0.05 (5%)")
        if not 0 < self.min_success_rate <= 1:
            raise RolloutConfigError(f"min success rate {self.min_success_rate} must be in (0, 1]",
                                     fix="use e.g. --min-success-rate 0.95 (95%)")
        if self.stage is not None and not isinstance(self.stage, ShadowPolicy | CanaryPolicy):
            raise RolloutConfigError(f"a rollout stage is a ShadowPolicy or a CanaryPolicy, not {self.stage!r}",
                                     fix="use --shadow DURATION or --canary SHARE")

    def to_dict(self) -> dict[str, Any]:
        return {"waves": list(self.waves), "bake_time_s": _seconds(self.bake_time),
                "max_failure_rate": self.max_failure_rate, "min_success_rate": self.min_success_rate,
                "device_timeout_s": _seconds(self.device_timeout), "auto_rollback": self.auto_rollback,
                "stage": None if self.stage is None else self.stage.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPolicy:
        # "stage" came with issue 18: a policy stored before it has none.
        return cls(tuple(float(w) for w in data["waves"]), timedelta(seconds=float(data["bake_time_s"])),
                   float(data["max_failure_rate"]), float(data["min_success_rate"]),
                   timedelta(seconds=float(data["device_timeout_s"])), bool(data["auto_rollback"]),
                   stage_from_dict(data.get("stage")))


# --------------------------------------------------------------------------- per device


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        raise ValueError(f"time {value!r} has no time zone")
    return moment


@dataclass(frozen=True)
class DeviceRecord:
    """One device's part in a rollout; replaced (not mutated) at every change."""

    device_id: str
    profile: str
    wave: int | None                  # None for ineligible devices
    status: DeviceStatus
    previous_version: str | None      # what it ran before: the rollback target
    online: bool = True
    joined_late: bool = False
    last_event: str | None = None
    reason: str = ""
    assigned_at: datetime | None = None
    finished_at: datetime | None = None     # committed, failed or timed out
    offline_since: datetime | None = None
    rolled_back_at: datetime | None = None
    serves: str | None = None         # the version of the model its last online report served
    counter: int | None = None        # the assignment counter this rollout's version went out under

    @property
    def touched(self) -> bool:
        """Whether this rollout ever sent the device its version."""
        return self.assigned_at is not None

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "profile": self.profile, "wave": self.wave,
                "status": self.status.value, "previous_version": self.previous_version,
                "online": self.online, "joined_late": self.joined_late, "last_event": self.last_event,
                "reason": self.reason, "assigned_at": _time(self.assigned_at),
                "finished_at": _time(self.finished_at), "offline_since": _time(self.offline_since),
                "rolled_back_at": _time(self.rolled_back_at), "serves": self.serves, "counter": self.counter}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceRecord:
        wave = data["wave"]
        # serves and counter came later: documents stored before them read as unknown.
        serves, counter = data.get("serves"), data.get("counter")
        if isinstance(counter, bool) or not (counter is None or isinstance(counter, int)):
            raise ValueError(f"counter {counter!r} is not an integer")
        return cls(str(data["device_id"]), str(data["profile"]), None if wave is None else int(wave),
                   DeviceStatus(data["status"]),
                   None if data["previous_version"] is None else str(data["previous_version"]),
                   bool(data["online"]), bool(data["joined_late"]),
                   None if data["last_event"] is None else str(data["last_event"]), str(data["reason"]),
                   _parse_time(data["assigned_at"]), _parse_time(data["finished_at"]),
                   _parse_time(data["offline_since"]), _parse_time(data["rolled_back_at"]),
                   None if serves is None else str(serves), counter)


# How often the engine gathers a running stage's figures for the status views (the verdict
# takes the first figures gathered once the stage time is over, whenever that is).
STAGE_FIGURES_EVERY = timedelta(seconds=15)


@dataclass(frozen=True)
class StageState:
    """One wave's shadow or canary stage: when it began and opened, its latest figures, its verdict."""

    wave: int
    mode: str
    started_at: datetime
    sent: int = 0                          # devices sent the candidate
    opened_at: datetime | None = None      # enough of them report ``shadowing``: the stage clock runs
    figures: Mapping[str, Any] | None = None
    figures_at: datetime | None = None
    verdict: str | None = None             # a VerdictCode value once decided
    reason: str = ""
    decided_at: datetime | None = None

    @property
    def decided(self) -> bool:
        return self.verdict is not None

    @property
    def passed(self) -> bool:
        return self.verdict in (VerdictCode.PASSED.value, VerdictCode.SKIPPED.value)

    def ends_at(self, policy: StagePolicy) -> datetime | None:
        return None if self.opened_at is None else self.opened_at + policy.duration

    def to_dict(self) -> dict[str, Any]:
        return {"wave": self.wave, "mode": self.mode, "started_at": _time(self.started_at), "sent": self.sent,
                "opened_at": _time(self.opened_at), "figures": None if self.figures is None else dict(self.figures),
                "figures_at": _time(self.figures_at), "verdict": self.verdict, "reason": self.reason,
                "decided_at": _time(self.decided_at)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageState:
        started = _parse_time(data["started_at"])
        if started is None:
            raise ValueError("a stage has no start time")
        figures = data.get("figures")
        figures_from_dict(figures)  # it must parse
        return cls(int(data["wave"]), str(data["mode"]), started, int(data["sent"]), _parse_time(data["opened_at"]),
                   None if figures is None else dict(figures), _parse_time(data["figures_at"]),
                   None if data["verdict"] is None else VerdictCode(data["verdict"]).value, str(data["reason"]),
                   _parse_time(data["decided_at"]))


@dataclass(frozen=True)
class StageQuery:
    """What figures the engine should gather for the running stage (``Rollout.stage_query``)."""

    wave: int
    mode: str
    model: str
    version: str
    device_ids: tuple[str, ...]
    since: datetime


@dataclass(frozen=True)
class WaveSummary:
    """Counts for one wave, for ``rollouts status`` and for the pass/fail rules."""

    index: int
    percent: float
    size: int
    pending: int
    in_flight: int
    committed: int
    failed: int
    rolled_back: int
    last_commit_at: datetime | None
    candidate: int = 0                 # holding the candidate in the stage
    shadowing: int = 0                 # of those, reporting ``shadowing``
    withdrawn: int = 0
    stage: StageState | None = None

    @property
    def failure_rate(self) -> float:
        return self.failed / self.size if self.size else 0.0

    @property
    def success_rate(self) -> float:
        return self.committed / self.size if self.size else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "percent": self.percent, "size": self.size, "pending": self.pending,
                "in_flight": self.in_flight, "committed": self.committed, "failed": self.failed,
                "rolled_back": self.rolled_back, "last_commit_at": _time(self.last_commit_at),
                "failure_rate": self.failure_rate, "success_rate": self.success_rate, "candidate": self.candidate,
                "shadowing": self.shadowing, "withdrawn": self.withdrawn,
                "stage": None if self.stage is None else self.stage.to_dict()}


# --------------------------------------------------------------------------- the machine


def _check_now(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise RolloutConfigError("rollout times must be timezone-aware datetimes",
                                 fix="pass datetime.now(UTC)")
    return now


class Rollout:
    """One model version going to a selected fleet. Build with :meth:`create` or :meth:`from_dict`."""

    def __init__(self, *, rollout_id: str, model: str, version: str, selector: Selector,
                 targets: Mapping[str, ModelTarget], policy: RolloutPolicy, plan: WavePlan,
                 devices: Mapping[str, DeviceRecord], state: RolloutState = RolloutState.PENDING,
                 current_wave: int = 0, wave_started_at: datetime | None = None,
                 started_at: datetime | None = None, finished_at: datetime | None = None,
                 yanked: bool = False, halt_reason: str = "", stages: Iterable[StageState] = ()) -> None:
        if not rollout_id:
            raise RolloutConfigError("a rollout needs an id")
        check_model_name(model)
        ModelVersion.parse(version)
        for profile, target in targets.items():
            if target.version != version:
                raise RolloutConfigError(f"the target for profile {profile!r} is version {target.version}, "
                                         f"not {version}", fix="pass the targets of the version rolled out")
        if not targets:
            raise RolloutConfigError(f"{model}@{version} is validated for no profile",
                                     fix="convert it for the fleet's profiles and push it again")
        if not 0 <= current_wave < len(plan.waves):
            raise RolloutConfigError(f"current wave {current_wave + 1} is not one of the plan's {len(plan.waves)}")
        if any(d.wave is not None and not 0 <= d.wave < len(plan.waves) for d in devices.values()):
            raise RolloutConfigError("a device is placed in a wave the plan does not have")
        self.id = rollout_id
        self.model = model
        self.version = version
        self.selector = selector
        self.targets: dict[str, ModelTarget] = dict(targets)
        self.policy = policy
        self.plan = plan
        self.devices: dict[str, DeviceRecord] = dict(devices)
        self.state = state
        self.current_wave = current_wave
        self.wave_started_at = wave_started_at
        self.started_at = started_at
        self.finished_at = finished_at
        self.yanked = yanked
        self.halt_reason = halt_reason
        self.stages: dict[int, StageState] = {s.wave: s for s in stages}
        if any(not 0 <= w < len(plan.waves) for w in self.stages):
            raise RolloutConfigError("a stage belongs to a wave the plan does not have")
        # Indexes kept in step by ``_put`` (the one place a record changes), so a device event
        # costs O(waves), not a scan of the fleet: a wave of thousands reports one by one.
        self._wave_members: list[dict[str, DeviceRecord]] = [{} for _ in plan.waves]
        self._wave_counts: list[Counter[DeviceStatus]] = [Counter() for _ in plan.waves]
        self._last_commit: list[datetime | None] = [None for _ in plan.waves]
        self._shadowing: list[int] = [0 for _ in plan.waves]
        self._stale_commits: set[int] = set()
        self._assigned: set[str] = set()
        self._status_counts: Counter[DeviceStatus] = Counter()  # every record, ineligible ones too
        self._touched = 0                                       # records with assigned_at set
        # Never later than the earliest device timeout; may be earlier after devices finish.
        self._timeouts_from: datetime | None = None
        for record in self.devices.values():
            self._index(record)
        # Ids of the records ``_put`` replaced or added since ``mark_stored``: what an engine
        # that keeps one row per device has to write back (a batch costs what it changes).
        self._changed: set[str] = set()

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, rollout_id: str, model: str, version: str, *, selector: Selector,
               targets: Mapping[str, ModelTarget], devices: Iterable[RolloutDevice], seed: int,
               policy: RolloutPolicy | None = None) -> Rollout:
        """A pending rollout over the ``devices`` that ``selector`` matches.

        ``targets`` maps each profile the version was validated for to its TUF target;
        matching devices of other profiles are recorded as ineligible.
        """
        policy = policy or RolloutPolicy()
        matching = [d for d in devices if selector.matches(d)]
        eligible = [d for d in matching if d.profile in targets]
        if not eligible:
            profiles = sorted({d.profile for d in matching})
            raise RolloutConfigError(
                f"no device both matches {str(selector)!r} and runs a profile {model}@{version} was "
                f"validated for ({', '.join(sorted(targets))}); matching devices run "
                f"{', '.join(profiles) or 'nothing: none matches'}",
                fix="widen the selector, or convert the model for those profiles and push it")
        plan = plan_waves(eligible, policy.waves, seed)
        wave_of = {d: index for index, members in enumerate(plan.waves) for d in members}
        records: dict[str, DeviceRecord] = {}
        for device in matching:
            if device.device_id in records:
                raise RolloutConfigError(f"device {device.device_id!r} is listed twice")
            wave = wave_of.get(device.device_id)
            status = DeviceStatus.PENDING if wave is not None else DeviceStatus.INELIGIBLE
            reason = "" if wave is not None else f"profile {device.profile} is not one the version was validated for"
            records[device.device_id] = DeviceRecord(device.device_id, device.profile, wave, status,
                                                     device.version, reason=reason)
        return cls(rollout_id=rollout_id, model=model, version=version, selector=selector,
                   targets=targets, policy=policy, plan=plan, devices=records)

    # ------------------------------------------------------------------ inputs

    def start(self, now: datetime) -> list[Action]:
        """Begin the first wave: every member of wave 1 is assigned."""
        self._require((RolloutState.PENDING,), "start", "only a pending rollout can start")
        now = _check_now(now)
        if self.yanked:
            raise RolloutStateError(f"{self.model}@{self.version} is yanked and can never be assigned",
                                    fix="roll out another version")
        self.state = RolloutState.RUNNING
        self.started_at = now
        return self._begin_wave(0, now)

    def device_event(self, device_id: str, kind: str, now: datetime, reason: str = "",
                     version: str | None = None) -> list[Action]:
        """A lifecycle event from a device (``events`` topic). Unknown devices are ignored.

        ``version`` is the version the event is about; events about another version (the
        previous one, after a rollback) do not change this rollout's view of the device.
        """
        now = _check_now(now)
        if kind not in EVENTS:
            raise RolloutConfigError(f"unknown device event {kind!r}", fix=f"use one of {', '.join(sorted(EVENTS))}")
        record = self.devices.get(device_id)
        if record is None or (version is not None and version != self.version):
            return []
        if record.status not in _IN_FLIGHT:
            return []
        if kind in PROGRESS_EVENTS:
            if record.last_event != kind:
                self._put(replace(record, last_event=kind))
            # A device reaching the stage may open it.
            return self._evaluate(now) if kind == SHADOWING and record.status is DeviceStatus.CANDIDATE else []
        if kind == "committed" and record.status is DeviceStatus.CANDIDATE:
            return []  # a candidate is never activated, so this commit is about an older assignment
        if kind == "committed":
            self._put(replace(record, status=DeviceStatus.COMMITTED, last_event=kind, finished_at=now,
                              reason=reason))
        elif kind == "failed" and is_retryable(reason):
            # The device keeps the assignment and tries again; it stays in flight (and the
            # device timeout still bounds the wait) instead of counting against the wave.
            if record.status in _SENT:
                self._put(replace(record, last_event=kind, reason=f"{reason}; the device retries"))
            return []
        elif record.status in _SENT:
            why = reason or ("rolled back on the device" if kind == "rolled_back" else "failed on the device")
            if kind == "rolled_back" and reason:
                why = f"rolled back on the device: {reason}"
            self._put(replace(record, status=DeviceStatus.FAILED, last_event=kind, finished_at=now, reason=why))
        return self._evaluate(now)

    def device_reported(self, device_id: str, report: DeviceReport, now: datetime) -> list[Action]:
        """A device's ``reported`` document: presence, the version it serves, its last outcome.

        The device's record learns whether it is online and (from an online report) which
        version of the model it serves; then, if the report proves an outcome for this
        rollout's version (``reported_outcome``), it counts as that outcome's event would.
        Feeding the same report again changes nothing, so the engine may replay stored and
        retained reports whenever it starts.
        """
        now = _check_now(now)
        record = self.devices.get(device_id)
        if record is None:
            return []
        if not report.online:
            return self.device_offline(device_id, now)
        seen = self._seen(record, report)
        if seen != record:
            self._put(seen)
        outcome = self.reported_outcome(device_id, report)
        if outcome is not None:
            kind, reason = outcome
            return self.device_event(device_id, kind, now, reason, self.version)
        if self._reports_stage(seen, report):
            # its ``shadowing`` event was lost: the report's update state says the stage runs
            return self.device_event(device_id, SHADOWING, now, "", self.version)
        return self._evaluate(now)

    def reported_outcome(self, device_id: str, report: DeviceReport) -> tuple[str, str] | None:
        """The outcome event (kind, reason) ``report`` proves for a device still in flight, if any.

        Only an assigned or timed-out device of this rollout takes one. Its report proves

        * the outcome it reports for this version (committed, failed, rolled_back), unless the
          counter the outcome was reached under is older than the one this rollout's
          assignment went out under (then it is about an earlier assignment);
        * ``committed``, when it serves this version and no update of the model is in flight:
          an agent that already runs the bundle it is assigned installs nothing and sends no
          event, and one restarted after its commit may have lost the event.
        """
        record = self.devices.get(device_id)
        if record is None or record.status not in _IN_FLIGHT or not report.online:
            return None
        update = report.update_of(self.model)
        if update is not None and update.finished and update.version == self.version and (
                record.counter is None or update.counter is None or update.counter >= record.counter):
            return update.state, update.reason
        if report.serves(self.model) == self.version and (update is None or not update.in_flight):
            return COMMITTED, f"serves {self.version} (from its report)"
        return None

    def report_changes(self, device_id: str, report: DeviceReport) -> bool:
        """Whether ``device_reported`` would change anything (the engine skips a batch that changes nothing)."""
        record = self.devices.get(device_id)
        if record is None:
            return False
        if not report.online:
            return record.online
        return self._seen(record, report) != record or self.reported_outcome(device_id, report) is not None \
            or self._reports_stage(record, report)

    def _reports_stage(self, record: DeviceRecord, report: DeviceReport) -> bool:
        """Whether a candidate device not yet known to shadow reports its stage running (update state shadow/canary)."""
        if record.status is not DeviceStatus.CANDIDATE or record.last_event == SHADOWING or not report.online:
            return False
        update = report.update_of(self.model)
        return update is not None and update.version == self.version and update.state in _STAGE_STATES

    def assignment_issued(self, device_id: str, counter: int) -> None:
        """This rollout's assignment reached the device under ``counter`` (the engine signed it).

        An outcome reported for an older counter is then not about this rollout's assignment.
        """
        record = self.devices.get(device_id)
        if record is not None and record.status in _SENT and record.counter != counter:
            self._put(replace(record, counter=counter))

    def _seen(self, record: DeviceRecord, report: DeviceReport) -> DeviceRecord:
        """``record`` after an online report: online, and serving what the report says."""
        seen = replace(record, online=True, offline_since=None, serves=report.serves(self.model))
        if seen.status is DeviceStatus.TIMED_OUT and seen.serves == self.version and self.state in _LIVE:
            # It runs the version (its probation is under way): in flight again, not a failure.
            seen = replace(seen, status=DeviceStatus.ASSIGNED, finished_at=None,
                           reason=f"serves {self.version}: in probation after its timeout")
        return seen

    def device_offline(self, device_id: str, now: datetime) -> list[Action]:
        """The broker reported the device gone (its last will). It keeps its place and timer."""
        now = _check_now(now)
        record = self.devices.get(device_id)
        if record is not None and record.online:
            self._put(replace(record, online=False, offline_since=now))
        return self._evaluate(now)

    def device_online(self, device_id: str, now: datetime) -> list[Action]:
        now = _check_now(now)
        record = self.devices.get(device_id)
        if record is not None and not record.online:
            self._put(replace(record, online=True, offline_since=None))
        return self._evaluate(now)

    def tick(self, now: datetime) -> list[Action]:
        """Let time pass: time devices out, halt on failures, pass waves whose bake is over."""
        return self._evaluate(_check_now(now))

    def pause(self, now: datetime) -> list[Action]:
        self._require((RolloutState.RUNNING,), "pause", "only a running rollout can be paused")
        _check_now(now)
        self.state = RolloutState.PAUSED
        return []

    def resume(self, now: datetime) -> list[Action]:
        self._require((RolloutState.PAUSED,), "resume",
                      "only a paused rollout can resume; a halted one never assigns again: "
                      "roll back, then create a new rollout")
        now = _check_now(now)
        self.state = RolloutState.RUNNING
        # Devices that joined the current wave while paused are assigned now.
        actions = self._assign_wave(self.current_wave, now)
        return actions + self._evaluate(now)

    def abort(self, now: datetime, reason: str = "aborted by an operator") -> list[Action]:
        """Stop for good, leaving devices where they are (``rollback`` moves them back)."""
        self._require((RolloutState.PENDING, RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.HALTED),
                      "abort", "the rollout has already finished")
        self.state = RolloutState.ABORTED
        self.finished_at = _check_now(now)
        self.halt_reason = reason
        return self._withdraw(self.finished_at, "the rollout was aborted")

    def rollback(self, now: datetime, reason: str = "rolled back by an operator") -> list[Action]:
        """Send every device this rollout touched back to its previous version."""
        self._require((RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.HALTED, RolloutState.COMPLETED,
                       RolloutState.ABORTED), "roll back",
                      "a pending rollout touched no device, and a rolled-back one is done")
        now = _check_now(now)
        if not self.halt_reason:
            self.halt_reason = reason
        return self._roll_back(now)

    def yank(self, now: datetime, reason: str = "version yanked") -> list[Action]:
        """The version was yanked from the registry: it is never assigned again.

        A live or pending rollout halts (and rolls back if ``auto_rollback``); a finished one
        only records it, and a completed one raises an alert, since devices still run it.
        """
        now = _check_now(now)
        if self.yanked:
            return []
        self.yanked = True
        if self.state in (*_LIVE, RolloutState.PENDING):
            return self._halt(f"{self.model}@{self.version} was yanked: {reason}", now)
        if self.state is RolloutState.COMPLETED:
            on_it = tuple(sorted(d.device_id for d in self.devices.values() if d.status is DeviceStatus.COMMITTED))
            return [AlertNeeded("yanked_version_in_use",
                                f"{self.model}@{self.version} was yanked but {len(on_it)} device(s) run it; "
                                f"`edgefleet rollouts rollback {self.id}` moves them back", on_it)]
        return []

    def add_device(self, device: RolloutDevice, now: datetime) -> list[Action]:
        """A device enrolled or started to match the selector. Others are ignored.

        It joins the wave :meth:`WavePlan.place` picks (the current one or a later one) and
        is assigned at once if that wave is running. A device already known is left as is.
        """
        now = _check_now(now)
        if device.device_id in self.devices or not self.selector.matches(device):
            return []
        if device.profile not in self.targets:
            self._put(DeviceRecord(device.device_id, device.profile, None, DeviceStatus.INELIGIBLE, device.version,
                                   joined_late=True,
                                   reason=f"profile {device.profile} is not one the version was validated for"))
            return []
        wave = self.plan.place(device.device_id, self.current_wave)
        self._put(DeviceRecord(device.device_id, device.profile, wave, DeviceStatus.PENDING, device.version,
                               joined_late=True))
        if self.state in (RolloutState.RUNNING, RolloutState.COMPLETED) and wave <= self.current_wave:
            return self._assign_wave(wave, now)
        return []

    # ------------------------------------------------------------------ queries

    def wave_summaries(self) -> tuple[WaveSummary, ...]:
        return tuple(self._summary(i) for i in range(len(self.plan.waves)))

    def assigned_count(self) -> int:
        """Devices this rollout ever sent its version."""
        return self._touched

    def status_counts(self) -> dict[str, int]:
        """How many records have each status (those with none are left out), by status name."""
        return {status.value: n for status, n in sorted(self._status_counts.items()) if n}

    def changed_devices(self) -> frozenset[str]:
        """Ids of the device records changed or added since the rollout was built or ``mark_stored``.

        Everything else about the rollout is in ``header_to_dict``, which is small. An engine
        that stores one row per device writes these rows and the header, then calls
        ``mark_stored``; reloading what it stored gives back this rollout (a property test checks it).
        """
        return frozenset(self._changed)

    def mark_stored(self) -> None:
        """The changed records were stored: start counting changes afresh."""
        self._changed.clear()

    def allowed_count(self) -> int:
        """The most devices the rollout may have assigned by now: members of started waves."""
        if self.state is RolloutState.PENDING or self.started_at is None:
            return 0
        return sum(1 for d in self.devices.values() if d.wave is not None and d.wave <= self.current_wave)

    def next_deadline(self, *, exact: bool = True) -> datetime | None:
        """When a ``tick`` could next change something (a bake or a stage ends, a device times out).

        ``exact=False`` may answer earlier (never later) without looking at every device in
        flight: the earliest device timeout is then the bound the core keeps as records change.
        """
        if self.state not in _LIVE:
            return None
        if exact:
            assigned = (self.devices[d] for d in self._assigned)
            moments = [d.assigned_at + self.policy.device_timeout for d in assigned
                       if d.assigned_at is not None and self._may_time_out(d)]
        else:
            moments = [] if self._timeouts_from is None else [self._timeouts_from]
        if self.state is RolloutState.RUNNING:
            summary = self._summary(self.current_wave)
            if summary.last_commit_at is not None:
                moments.append(summary.last_commit_at + self.policy.bake_time)
            stage = self.stages.get(self.current_wave)
            if stage is not None and not stage.decided and self.policy.stage is not None:
                ends = stage.ends_at(self.policy.stage)
                if ends is not None:
                    moments.append(ends)
        return min(moments, default=None)

    def stage_query(self, now: datetime) -> StageQuery | None:
        """The figures the engine should gather now for the current wave's running stage, if any.

        While the stage runs, every ``STAGE_FIGURES_EVERY`` (for the status views); once its
        time is over, at once (the verdict needs figures gathered after the end).
        """
        now = _check_now(now)
        stage = self.stages.get(self.current_wave)
        if self.state not in _LIVE or stage is None or stage.decided or self.policy.stage is None:
            return None
        ends = stage.ends_at(self.policy.stage)
        due = ends is not None and now >= ends and (stage.figures_at is None or stage.figures_at < ends)
        if not due and stage.figures_at is not None and now < stage.figures_at + STAGE_FIGURES_EVERY:
            return None
        members = tuple(sorted(self._wave_members[self.current_wave]))
        return StageQuery(self.current_wave, stage.mode, self.model, self.version, members, stage.started_at)

    def stage_figures(self, wave: int, figures: Figures, now: datetime) -> list[Action]:
        """The figures of wave ``wave``'s stage, gathered at ``now``; once its time is over they decide it.

        Pass: every member of the wave is assigned the version (the usual commit and bake follow).
        Fail (agreement, latency, accuracy, or too few requests or labels): the rollout halts
        with the figures as its reason, and the candidate is withdrawn.
        """
        now = _check_now(now)
        stage = self.stages.get(wave)
        if stage is None or stage.decided or self.policy.stage is None or figures.kind != stage.mode:
            return []
        self.stages[wave] = replace(stage, figures=figures.to_dict(), figures_at=now)
        return self._evaluate(now)

    # ------------------------------------------------------------------ persistence

    # The whole state is three parts, so that an engine may store them apart: the spec (fixed
    # once created: what, to whom, how, the wave plan), the header (what changes per rollout:
    # state, current wave, stages) and one record per device. ``to_dict`` is the three together.

    def spec_to_dict(self) -> dict[str, Any]:
        """What never changes after ``create`` (the plan holds every eligible device id: write it once)."""
        return {"schema": SCHEMA_VERSION, "id": self.id, "model": self.model, "version": self.version,
                "selector": str(self.selector),
                "targets": {p: t.to_dict() for p, t in sorted(self.targets.items())},
                "policy": self.policy.to_dict(), "plan": self.plan.to_dict()}

    def header_to_dict(self) -> dict[str, Any]:
        """What changes as the rollout runs, besides the device records: small, whatever the fleet size."""
        return {"state": self.state.value, "current_wave": self.current_wave,
                "wave_started_at": _time(self.wave_started_at), "started_at": _time(self.started_at),
                "finished_at": _time(self.finished_at), "yanked": self.yanked, "halt_reason": self.halt_reason,
                "stages": [self.stages[w].to_dict() for w in sorted(self.stages)]}

    def to_dict(self) -> dict[str, Any]:
        return {**self.spec_to_dict(), **self.header_to_dict(),
                "devices": [self.devices[k].to_dict() for k in sorted(self.devices)]}

    @classmethod
    def from_parts(cls, spec: Mapping[str, Any], header: Mapping[str, Any],
                   records: Iterable[DeviceRecord]) -> Rollout:
        """The rollout ``spec_to_dict``, ``header_to_dict`` and its device records were taken from."""
        return cls._build({**spec, **header}, list(records))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        cls._check_schema(data)
        try:
            records = [DeviceRecord.from_dict(d) for d in data["devices"]]
        except (KeyError, TypeError, ValueError, EdgefleetError) as exc:
            raise RolloutDataError(f"stored rollout is malformed: {exc}",
                                   fix="restore the row from a backup") from exc
        return cls._build(data, records)

    @staticmethod
    def _check_schema(data: Any) -> None:
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA_VERSION:
            raise RolloutDataError("stored rollout is not a schema-1 rollout document",
                                   fix="it was written by another edgefleet version; migrate the database")

    @classmethod
    def _build(cls, data: Mapping[str, Any], records: list[DeviceRecord]) -> Rollout:
        cls._check_schema(data)
        try:
            return cls(
                rollout_id=str(data["id"]), model=str(data["model"]), version=str(data["version"]),
                selector=Selector.parse(str(data["selector"])),
                targets={str(p): ModelTarget.from_dict(t) for p, t in dict(data["targets"]).items()},
                policy=RolloutPolicy.from_dict(data["policy"]), plan=WavePlan.from_dict(data["plan"]),
                devices={r.device_id: r for r in records}, state=RolloutState(data["state"]),
                current_wave=int(data["current_wave"]), wave_started_at=_parse_time(data["wave_started_at"]),
                started_at=_parse_time(data["started_at"]), finished_at=_parse_time(data["finished_at"]),
                yanked=bool(data["yanked"]), halt_reason=str(data["halt_reason"]),
                # stages came with issue 18: documents stored before have none
                stages=[StageState.from_dict(s) for s in data.get("stages", ())])
        except (KeyError, TypeError, ValueError, EdgefleetError) as exc:
            if isinstance(exc, RolloutDataError):
                raise
            raise RolloutDataError(f"stored rollout is malformed: {exc}",
                                   fix="restore the row from a backup") from exc

    # ------------------------------------------------------------------ internals

    def _require(self, states: tuple[RolloutState, ...], verb: str, why: str) -> None:
        if self.state not in states:
            raise RolloutStateError(f"cannot {verb} rollout {self.id}: it is {self.state.value}", fix=why)

    def _put(self, record: DeviceRecord) -> None:
        old = self.devices.get(record.device_id)
        if old is not None:
            self._unindex(old, record)
        self.devices[record.device_id] = record
        self._index(record)
        self._changed.add(record.device_id)

    def _may_time_out(self, record: DeviceRecord) -> bool:
        """Whether the device timeout runs for an assigned device.

        Not for one that serves the version (it is in probation, which ends by itself), nor
        for a candidate that reports its stage running (it waits on the stage, not on itself).
        """
        if record.assigned_at is None or record.serves == self.version:
            return False
        return not (record.status is DeviceStatus.CANDIDATE and record.last_event == SHADOWING)

    def _index(self, record: DeviceRecord) -> None:
        self._status_counts[record.status] += 1
        self._touched += record.touched
        if record.status in _SENT:
            self._assigned.add(record.device_id)
            if self._may_time_out(record):
                assert record.assigned_at is not None
                due = record.assigned_at + self.policy.device_timeout
                self._timeouts_from = due if self._timeouts_from is None else min(self._timeouts_from, due)
        if record.wave is None:
            return
        self._wave_members[record.wave][record.device_id] = record
        self._wave_counts[record.wave][record.status] += 1
        if record.status is DeviceStatus.CANDIDATE and record.last_event == SHADOWING:
            self._shadowing[record.wave] += 1
        if record.status is DeviceStatus.COMMITTED and record.finished_at is not None:
            last = self._last_commit[record.wave]
            self._last_commit[record.wave] = record.finished_at if last is None else max(last, record.finished_at)

    def _unindex(self, record: DeviceRecord, successor: DeviceRecord | None = None) -> None:
        self._status_counts[record.status] -= 1
        self._touched -= record.touched
        self._assigned.discard(record.device_id)
        if record.wave is None:
            return
        del self._wave_members[record.wave][record.device_id]
        self._wave_counts[record.wave][record.status] -= 1
        if record.status is DeviceStatus.CANDIDATE and record.last_event == SHADOWING:
            self._shadowing[record.wave] -= 1
        last = self._last_commit[record.wave]
        if record.status is DeviceStatus.COMMITTED and (last is None or record.finished_at is None
                                                        or record.finished_at >= last) and not (
                successor is not None and successor.status is DeviceStatus.COMMITTED
                and successor.wave == record.wave and successor.finished_at == record.finished_at):
            # The latest commit may be the one leaving: recount the wave when next asked. Not
            # when an earlier commit leaves, nor when the record stays committed at the same
            # time (a committed device reporting again, as each does after its commit): a
            # recount per report is a pass over the wave per message.
            self._stale_commits.add(record.wave)

    def _members(self, wave: int) -> list[DeviceRecord]:
        return list(self._wave_members[wave].values())

    def _summary(self, wave: int) -> WaveSummary:
        if wave in self._stale_commits:
            self._stale_commits.discard(wave)
            self._last_commit[wave] = max((d.finished_at for d in self._wave_members[wave].values()
                                           if d.status is DeviceStatus.COMMITTED and d.finished_at), default=None)
        count = self._wave_counts[wave]
        return WaveSummary(wave, self.plan.percentages[wave], len(self._wave_members[wave]),
                           count[DeviceStatus.PENDING], count[DeviceStatus.ASSIGNED], count[DeviceStatus.COMMITTED],
                           count[DeviceStatus.FAILED] + count[DeviceStatus.TIMED_OUT],
                           count[DeviceStatus.ROLLED_BACK], self._last_commit[wave], count[DeviceStatus.CANDIDATE],
                           self._shadowing[wave], count[DeviceStatus.WITHDRAWN], self.stages.get(wave))

    def _begin_wave(self, wave: int, now: datetime) -> list[Action]:
        self.current_wave = wave
        self.wave_started_at = now
        if self.policy.stage is not None:
            self.stages[wave] = StageState(wave, self.policy.stage.mode, now)
        actions = self._assign_wave(wave, now)
        stage = self.stages.get(wave)
        if stage is not None and not stage.decided and not stage.sent:
            # Nobody to compare against: the members waiting for the stage are assigned now.
            self.stages[wave] = replace(stage, verdict=VerdictCode.SKIPPED.value, decided_at=now,
                                        reason=f"no device of wave {wave + 1} serves an earlier version of "
                                               f"{self.model} to compare against")
            actions += self._assign_wave(wave, now)
        return actions

    def _assign_wave(self, wave: int, now: datetime) -> list[Action]:
        # Every path that sends the version goes through here, so the guards live here.
        if self.yanked or self.state not in (RolloutState.RUNNING, RolloutState.COMPLETED) \
                or wave > self.current_wave:
            return []
        stage = self.stages.get(wave)
        staging = self.policy.stage is not None and stage is not None and not stage.decided
        actions: list[Action] = []
        for record in sorted(self._members(wave), key=lambda d: d.device_id):
            if record.status is not DeviceStatus.PENDING:
                continue
            target = self.targets.get(record.profile)
            if target is None:
                self._put(replace(record, wave=None, status=DeviceStatus.INELIGIBLE,
                                  reason=f"profile {record.profile} is not one the version was validated for"))
                continue
            if staging and record.previous_version != self.version:
                assert stage is not None and self.policy.stage is not None
                if record.previous_version is None:
                    continue  # serves nothing to compare against: assigned when the stage passes
                self._put(replace(record, status=DeviceStatus.CANDIDATE, assigned_at=now))
                rate = self.policy.stage.sample if isinstance(self.policy.stage, ShadowPolicy) \
                    else self.policy.stage.share
                actions.append(AssignCandidate(record.device_id, self.model, record.previous_version, target,
                                               self.policy.stage.mode, rate))
                stage = replace(stage, sent=stage.sent + 1)
                self.stages[wave] = stage
                continue
            self._put(replace(record, status=DeviceStatus.ASSIGNED, assigned_at=now))
            actions.append(AssignVersion(record.device_id, self.model, self.version, target))
        return actions

    def _stage_step(self, now: datetime) -> list[Action]:
        """Open the current wave's stage once enough devices run it; decide it once its time is over."""
        wave = self.current_wave
        stage, policy = self.stages.get(wave), self.policy.stage
        if stage is None or stage.decided or policy is None:
            return []
        if stage.opened_at is None:
            summary = self._summary(wave)
            waiting = summary.candidate - summary.shadowing
            if not summary.shadowing or (summary.shadowing < self.policy.min_success_rate * stage.sent and waiting):
                return []
            stage = replace(stage, opened_at=now)
            self.stages[wave] = stage
        ends = stage.ends_at(policy)
        figures = figures_from_dict(stage.figures)
        if ends is None or now < ends or stage.figures_at is None or stage.figures_at < ends or figures is None:
            return []  # the engine hands in figures gathered after the end (stage_query says when)
        verdict: Verdict = judge(policy, figures, wave)
        self.stages[wave] = replace(stage, verdict=verdict.code.value, reason=verdict.reason, decided_at=now)
        if not verdict.passed:
            return self._halt(verdict.reason, now)
        return self._promote(wave, now)

    def _promote(self, wave: int, now: datetime) -> list[Action]:
        """The stage passed: every candidate of the wave is assigned the version, then those that waited."""
        actions: list[Action] = []
        for record in sorted(self._members(wave), key=lambda d: d.device_id):
            if record.status is not DeviceStatus.CANDIDATE:
                continue
            self._put(replace(record, status=DeviceStatus.ASSIGNED, assigned_at=now, last_event=None, counter=None,
                              reason=""))
            actions.append(AssignVersion(record.device_id, self.model, self.version, self.targets[record.profile]))
        return actions + self._assign_wave(wave, now)

    def _withdraw(self, now: datetime, why: str) -> list[Action]:
        """Withdraw the candidate from every device that still holds it in its assignment.

        Those are the devices sent it in a wave whose stage did not pass: in the stage still,
        or failed or timed out there (their assignment still names the candidate).
        """
        actions: list[Action] = []
        for wave, stage in sorted(self.stages.items()):
            if stage.passed:
                continue
            for record in sorted(self._members(wave), key=lambda d: d.device_id):
                holds = record.status is DeviceStatus.CANDIDATE or (
                    record.status in _FAILURES and record.touched and record.previous_version not in (None, self.version))
                if not holds or record.previous_version is None:
                    continue
                before = f"{record.reason}; " if record.reason else ""
                self._put(replace(record, status=DeviceStatus.WITHDRAWN, finished_at=record.finished_at or now,
                                  reason=f"{before}candidate withdrawn: {why}"))
                actions.append(WithdrawCandidate(record.device_id, self.model, record.previous_version))
        return actions

    def _evaluate(self, now: datetime) -> list[Action]:
        if self.state not in _LIVE:
            return []
        self._time_out(now)
        for wave in range(self.current_wave + 1):
            summary = self._summary(wave)
            if not summary.size:
                continue
            if summary.failure_rate > self.policy.max_failure_rate:
                return self._halt(f"wave {wave + 1}: {summary.failed} of {summary.size} device(s) failed "
                                  f"({summary.failure_rate:.0%} > max {self.policy.max_failure_rate:.0%})", now)
            reachable = (summary.committed + summary.in_flight + summary.pending + summary.candidate) / summary.size
            if reachable < self.policy.min_success_rate:
                return self._halt(f"wave {wave + 1} can no longer reach the {self.policy.min_success_rate:.0%} "
                                  f"success rate: {summary.failed} of {summary.size} device(s) failed", now)
        if self.state is RolloutState.RUNNING:
            staged = self._stage_step(now)
            if self.state is not RolloutState.RUNNING:
                return staged  # the stage failed: halted
            return staged + self._advance(now)
        return []

    def _time_out(self, now: datetime) -> None:
        if self._timeouts_from is None or now < self._timeouts_from:
            return
        still: list[datetime] = []
        for device_id in sorted(self._assigned):
            record = self.devices[device_id]
            if not self._may_time_out(record):
                continue  # in probation, or waiting on its stage: both end by themselves
            assert record.assigned_at is not None
            due = record.assigned_at + self.policy.device_timeout
            if now >= due:
                where = f"offline since {record.offline_since.isoformat()}" if record.offline_since else "online"
                self._put(replace(record, status=DeviceStatus.TIMED_OUT, finished_at=now,
                                  reason=f"no result within the device timeout ({where})"))
            else:
                still.append(due)
        self._timeouts_from = min(still, default=None)

    def _advance(self, now: datetime) -> list[Action]:
        summary = self._summary(self.current_wave)
        if not summary.size or summary.success_rate < self.policy.min_success_rate:
            return []
        if summary.stage is not None and not summary.stage.passed:
            return []
        if summary.last_commit_at is None or now < summary.last_commit_at + self.policy.bake_time:
            return []
        if self.current_wave + 1 >= len(self.plan.waves):
            self.state = RolloutState.COMPLETED
            self.finished_at = now
            return [Completed()]
        return self._begin_wave(self.current_wave + 1, now)

    def _halt(self, reason: str, now: datetime) -> list[Action]:
        self.state = RolloutState.HALTED
        self.halt_reason = reason
        self.finished_at = now
        actions: list[Action] = [Halt(reason), *self._withdraw(now, f"the rollout halted: {reason}")]
        if self.policy.auto_rollback:
            actions += self._roll_back(now)
        return actions

    def _roll_back(self, now: datetime) -> list[Action]:
        self.state = RolloutState.ROLLED_BACK
        self.finished_at = self.finished_at or now
        actions: list[Action] = self._withdraw(now, "the rollout was rolled back")
        stranded: list[str] = []
        for record in sorted(self.devices.values(), key=lambda d: d.device_id):
            if not record.touched or record.status in (DeviceStatus.ROLLED_BACK, DeviceStatus.WITHDRAWN):
                continue  # a withdrawn device never left its previous version
            if record.previous_version is None:
                stranded.append(record.device_id)
                continue
            # Keep why it failed (if it did): the status alone no longer says.
            why = f"{record.reason}; " if record.reason else ""
            self._put(replace(record, status=DeviceStatus.ROLLED_BACK, rolled_back_at=now,
                              reason=f"{why}sent back to {record.previous_version}"))
            actions.append(AssignPrevious(record.device_id, self.model, record.previous_version))
        if stranded:
            actions.append(AlertNeeded(
                "no_previous_version",
                f"{len(stranded)} device(s) ran no earlier version of {self.model}, so there is nothing to "
                f"roll them back to; they keep {self.version} until a new rollout", tuple(stranded)))
        return actions
