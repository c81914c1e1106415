"""The device side of the verified update path: assignment in, a committed or rolled-back model out.

``Updater.handle_assignment(envelope)`` verifies a signed assignment (signature, device,
counter, expiry: ``edgefleet.assignment.verify_assignment``), records its counter in
assignment.json, and for each model whose bundle differs from the active one drives the
pure update machine (agent/update_machine.py). The driver is a loop: ``next_work(machine)``
names the I/O to do, the method for it returns the machine's next input, ``step`` applies it:

    download   TUF refresh + target facts; the assignment's sha256/length must equal TUF's;
               download through the TUF client (TUF checks hash and length)
    verify     read_bundle; the bundle is the assigned one and validated for this profile
    stage      extract beside the active slot
    check      health check on the golden samples (a staged slot is re-verified first)
    activate   switch (ModelStore.activate, then ServingTable.swap)
    watch      probation on ``tick(now)``: commit, or roll back to the previous slot

A model entry with a ``candidate`` (issue 18) is a candidate target once the entry's version
serves: the same download, verify and stage, then the memory budget for a second model
(agent/memory.py: estimated before loading, measured after; ``memory_budget`` if it does not
fit), the health check, and instead of activate:

    start stage   shadow: a ``Mirror`` (agent/mirror.py) on the candidate, loaded single-threaded;
                  canary: the candidate answers ``share`` of the requests (ServingTable); the
                  active pointer never moves, so whatever happens the serving version serves

The stage runs until an assignment ends it: the same candidate again keeps it; the candidate's
bundle as the entry's version (promotion) ends it and starts that bundle's ordinary update,
which finds the verified download (TUF's cached target) and the staged slot and reuses them;
anything else (withdrawal, another bundle) fails it with ``superseded`` and drops its slot.
A restart in a stage checks the staged slot and loads it again (a new ``shadowing`` event), or
fails with the reason. One update runs at a time: while a stage runs, another model's update waits.

Each step's machine is written to update.json atomically, once, before its event is
published through ``publish_event(dict)``; the record holds everything the update needs
(probation totals and restarts included), so a crash loses at most unwritten probation
totals of the last 10 s, never a restart or a decision. A refused assignment changes nothing
on the device and emits a ``failed`` event with the reason. ``resume()`` feeds the machine a
``Restart`` and applies the recovery rule of the state it finds (docs/update-path.md).

Ordering chosen for crash safety: the pointer switch happens BEFORE update.json says
``activated``, and the rollback switch BEFORE it says ``rolled_back``; ``resume()`` reconciles a
machine with the pointer it finds, so a SIGKILL between the two never judges (or commits) a
model that is not the one serving.

Not here: MQTT, agent.toml and the environment (agent/update_service.py wires the daemon to
this class), TUF itself (agent/tuf_client.py, injected as a factory), the runtime, the slot
layout and the probation/health judgements themselves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.errors import AgentError
from agent.health import check_health
from agent.memory import DEFAULT_RAM_SHARE, check_after_load, check_before_load
from agent.metrics import ResourceReader
from agent.mirror import DEFAULT_CPU_SHARE, DEFAULT_QUEUE_SIZE, Mirror
from agent.probation import ProbationConfig, StatsSnapshot, Verdict, output_problems
from agent.runtime import ModelSession, load_session
from agent.shadow import ShadowTally
from agent.slots import ModelStore, Slot
from agent.state import StateDir
from agent.tuf_client import TufClientError, TufClientFactory, ngclient_factory
from agent.update_machine import (
    STAGE_STATES,
    Activated,
    Assign,
    BeginDownload,
    BeginHealthCheck,
    Commit,
    Downloaded,
    Event,
    Fail,
    HealthPassed,
    Input,
    Observe,
    Recovery,
    Restart,
    RetryNow,
    Staged,
    StageStarted,
    State,
    Target,
    UpdateMachine,
    UpdateMachineError,
    Verified,
    Work,
    next_work,
    recovery,
    refusal,
    step,
)
from edgefleet.assignment import Assignment, verify_assignment
from edgefleet.atomic import atomic_write_json
from edgefleet.bundle import Bundle, bundle_filename, read_bundle
from edgefleet.errors import AssignmentError, EdgefleetError
from edgefleet.events import (
    BUNDLE_INVALID,
    CANDIDATE_FAILED,
    HASH_MISMATCH,
    HEALTH_FAILED,
    MEMORY_BUDGET,
    PROBATION_FAILED,
    PROFILE_MISMATCH,
    STAGE_FAILED,
    SUPERSEDED,
    TARGET_UNKNOWN,
    is_retryable,
)
from edgefleet.manifest import Manifest
from edgefleet.profiles import Profile

log = logging.getLogger("agent.updater")

# Probation totals are kept across a crash, but an fsync on every tick would wear SD cards.
PROBATION_PERSIST_S = 10.0


class UpdaterError(AgentError):
    """The updater cannot run: the device is not enrolled or its trust bundle is incomplete."""


class Serving(Protocol):
    """What the updater needs from agent.serving.ServingTable."""

    def swap(self, name: str, session: ModelSession) -> ModelSession | None: ...
    def remove(self, name: str) -> None: ...
    def start_shadow(self, name: str, mirror: Mirror) -> None: ...
    def start_canary(self, name: str, session: ModelSession, share: float) -> None: ...
    def end_candidate(self, name: str) -> None: ...
    def get(self, name: str) -> ModelSession | None: ...
    def stats(self, name: str) -> Any: ...


class _Refused(Exception):
    """One update step refused the model; becomes a Fail input with this reason."""

    def __init__(self, reason: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.details = {"message": message, **(details or {})}


class WatchedSession:
    """A ModelSession that counts NaN/out-of-range outputs it serves, for probation."""

    def __init__(self, inner: ModelSession) -> None:
        self.inner = inner
        self.manifest: Manifest = inner.manifest
        self.slot: Slot = inner.slot
        self.providers: tuple[str, ...] = inner.providers
        self.runtime: str = inner.runtime
        self.bad_outputs = 0
        self._lock = threading.Lock()

    def run_roles(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self._watched(self.inner.run_roles(x))

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._watched(self.inner.run_feeds(feeds))

    def _watched(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        bad = output_problems(outputs)
        if bad:
            with self._lock:
                self.bad_outputs += bad
        return outputs

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True)
class AssignmentResult:
    """What ``handle_assignment`` did: accepted (with the counter) or refused (with the reason)."""

    accepted: bool
    reason: str | None = None
    counter: int | None = None
    duplicate: bool = False   # the very envelope already accepted (a retained message re-delivered)


class Updater:
    """Drives updates for one device. Thread-safe: one lock serialises every entry point."""

    def __init__(
        self,
        state_dir: StateDir,
        store: ModelStore,
        serving: Serving,
        publish_event: Callable[[dict[str, Any]], Any],
        clock: Callable[[], float] = time.time,
        *,
        tuf: TufClientFactory | None = None,
        profile: Profile | None = None,
        probation: ProbationConfig | None = None,
        load: Callable[[Slot, Profile], ModelSession] = load_session,
        on_persist: Callable[[UpdateMachine], Any] | None = None,
        retry_after_s: float = 60.0,
        health_latency_runs: int = 50,
        candidate_ram_share: float = DEFAULT_RAM_SHARE,
        shadow_queue_size: int = DEFAULT_QUEUE_SIZE,
        shadow_cpu_share: float = DEFAULT_CPU_SHARE,
        rss: Callable[[], int | None] | None = None,
    ) -> None:
        self.state = state_dir
        self.store = store
        self.serving = serving
        self.publish_event = publish_event
        self.clock = clock
        self.tuf = tuf or ngclient_factory(state_dir)
        self.profile = profile or state_dir.profile()
        self.probation_config = probation or ProbationConfig()
        self.load = load
        self.on_persist = on_persist
        self.retry_after_s = retry_after_s
        self.health_latency_runs = health_latency_runs
        self.candidate_ram_share = candidate_ram_share
        self.shadow_queue_size = shadow_queue_size
        self.shadow_cpu_share = shadow_cpu_share
        self.rss = rss or (lambda: ResourceReader().read().rss_bytes)
        self._lock = threading.RLock()
        self.machine = self._load()
        self._bundle: Bundle | None = None
        self._checked: tuple[Slot, ModelSession] | None = None  # passed its health check, not yet serving
        self._session: WatchedSession | None = None
        self._persisted_at = float("-inf")
        # The I/O behind each kind of work; the machine's table decides which comes next.
        self._work: dict[Work, Callable[[], Input]] = {
            Work.BEGIN_DOWNLOAD: lambda: BeginDownload(self.clock()),
            Work.DOWNLOAD: self._download,
            Work.VERIFY: self._verify,
            Work.STAGE: self._stage,
            Work.BEGIN_HEALTH_CHECK: lambda: BeginHealthCheck(self.clock()),
            Work.CHECK_HEALTH: self._check_health,
            Work.ACTIVATE: self._activate,
            Work.START_STAGE: self._start_stage,
        }

    # -- the persisted record -----------------------------------------------------------------
    def _load(self) -> UpdateMachine:
        try:
            document = json.loads(self.state.update_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return UpdateMachine()
        except (OSError, ValueError) as exc:
            # The active pointer, not update.json, decides what serves: starting idle is safe.
            log.error("update.json is unreadable (%s); starting idle, the active model keeps serving", exc)
            return UpdateMachine()
        try:
            record = dict(document["machine"])
            for key in ("probation", "retry_at", "attempted"):  # update.json before these moved into the machine
                record.setdefault(key, document.get(key))
            return UpdateMachine.from_dict(record)
        except (KeyError, TypeError, ValueError, UpdateMachineError) as exc:
            log.error("update.json holds no readable update state (%s); starting idle, the active model keeps "
                      "serving", exc)
            return UpdateMachine()

    def _persist(self) -> None:
        # One atomic write of the whole record; the flat keys are what `reported.update` shows.
        atomic_write_json(self.state.update_file, {**self.machine.report(), "machine": self.machine.to_dict()})
        self._persisted_at = self.clock()
        if self.on_persist is not None:
            try:
                self.on_persist(self.machine)
            except Exception:
                log.exception("reporting the update state failed")

    def _apply(self, inp: Input, *, durable: bool = True) -> None:
        machine, event = step(self.machine, inp)
        changed = machine != self.machine
        self.machine = machine
        if durable and (changed or event is not None):
            self._persist()
        if event is not None:
            self._publish(event)

    def _publish(self, event: Event) -> None:
        payload = event.payload(self.state.load_identity().device_id, uuid.uuid4().hex)
        try:
            self.publish_event(payload)
        except Exception:  # a broker hiccup must not abort an update that is safely persisted
            log.exception("publishing the %s event failed", event.event)

    # -- the accepted assignment --------------------------------------------------------------
    def _accepted_envelope(self) -> dict[str, Any] | None:
        try:
            document = json.loads(self.state.assignment_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("assignment.json is unreadable (%s)", exc)
            return None
        return document if isinstance(document, dict) else None

    def _last_counter(self) -> int:
        try:
            document = json.loads(self.state.assignment_file.read_text(encoding="utf-8"))
            return int(document["counter"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UpdaterError(f"{self.state.assignment_file} is unreadable ({exc})",
                               fix="restore it from a backup or re-enroll; deleting it would allow replays") from exc

    def _accepted(self) -> Assignment | None:
        """The last accepted assignment (re-read from assignment.json, already verified once)."""
        document = self._accepted_envelope()
        if document is None:
            return None
        try:
            return Assignment.from_dict(document["envelope"]["signed"])
        except (ValueError, KeyError, TypeError) as exc:
            log.error("assignment.json holds no readable assignment (%s)", exc)
            return None

    # -- entry points -------------------------------------------------------------------------
    def handle_assignment(self, envelope: bytes) -> AssignmentResult:
        """Verify an assignment and start the updates it asks for (runs until activation)."""
        with self._lock:
            now = self.clock()
            accepted = self._accepted_envelope()
            if accepted is not None and _same_document(envelope, accepted.get("envelope")):
                # The broker re-delivers the retained `desired` on every (re)connect: not a replay.
                self._advance(now)
                return AssignmentResult(True, None, int(accepted["counter"]), duplicate=True)
            try:
                identity = self.state.load_identity()
                director = base64.b64encode(self.state.director_public_key()).decode()
                assignment = verify_assignment(envelope, director_public_b64=director, device_id=identity.device_id,
                                               last_counter=self._last_counter(),
                                               now=datetime.fromtimestamp(now, UTC))
            except AssignmentError as exc:
                counter = _peek_counter(envelope)
                log.warning("refused assignment: %s", exc)
                self._publish(refusal(exc.reason, now, counter=counter, details={"message": exc.message}))
                return AssignmentResult(False, exc.reason, counter)
            # Accepted: only now may the counter move (a refused document must not burn counters).
            atomic_write_json(self.state.assignment_file,
                              {"counter": assignment.counter, "envelope": json.loads(envelope), "accepted_at": now})
            if self.machine.state is State.FAILED and is_retryable(self.machine.reason):
                self._apply(RetryNow(now))
            if self.machine.state in STAGE_STATES:
                self._stage_assignment(assignment, now)
            elif self.machine.active and not self._still_wanted(assignment):
                log.info("a newer assignment supersedes the update in progress")
                self._fail(SUPERSEDED, {"message": f"assignment {assignment.counter} names another bundle"})
            self._advance(now)
            return AssignmentResult(True, None, assignment.counter)

    def tick(self, now: float | None = None) -> None:
        """Called periodically by the daemon: judge probation, retry, start pending updates."""
        with self._lock:
            now = self.clock() if now is None else now
            if next_work(self.machine) is Work.WATCH:
                self._judge(now)
            self._advance(now)

    def resume(self) -> None:
        """After a restart: count it (one write), apply the recovery rule of the state found, carry on."""
        with self._lock:
            now = self.clock()
            self._apply(Restart(now))
            rule = recovery(self.machine)
            log.info("resuming after a restart: update state %s, recovery %s", self.machine.state, rule)
            if rule is Recovery.RESUME_PROBATION:
                self._resume_probation(now)
            # Every other rule is the machine's next work: resume the download, re-verify the
            # bundle or slot from disk (nothing is cached in a new process), redo the check.
            self._drive()
            self._advance(now)

    def close(self) -> None:
        """Nothing to release: every state lives on disk."""

    # -- starting updates ---------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        """Start the next pending model update, if any; a finished one stays reported until then."""
        while not self.machine.active and not self.machine.waiting(now):
            target = self._pending()
            if target is None:
                return
            self._apply(Assign(target, now))
            self._drive()
            if self.machine.state is State.FAILED and is_retryable(self.machine.reason):
                return  # tried again when due, not in this loop

    def _pending(self) -> Target | None:
        assignment = self._accepted()
        if assignment is None:
            return None
        for name, model in sorted(assignment.models.items()):
            target = Target(name, model.version, assignment.counter, assignment.rollout_id, model.target_path,
                            model.sha256, model.length)
            if self._active_sha(name) != model.sha256:
                if self.machine.may_try(name, target.attempt):
                    return target
                continue
            # The entry's version serves: its candidate, if any, is staged beside it.
            candidate = _candidate_target(assignment, name)
            if candidate is not None and self.machine.may_try(name, candidate.attempt):
                return candidate
        return None

    def _stage_assignment(self, assignment: Assignment, now: float) -> None:
        """A new assignment during a stage: keep it, promote its candidate, or end it (superseded)."""
        target = self._target()
        wanted = _candidate_target(assignment, target.model)
        if wanted is not None and wanted.sha256 == target.sha256 and wanted.mode == target.mode:
            return  # the same candidate (a re-issued assignment): the stage goes on
        entry = assignment.models.get(target.model)
        if entry is not None and entry.candidate is None and entry.sha256 == target.sha256:
            # Promotion: the stage ends here and the same bundle installs as the version; its
            # download (TUF's cached target) and staged slot are reused by the ordinary update.
            log.info("candidate %s@%s promoted: installing it", target.model, target.version)
            self.serving.end_candidate(target.model)
            self._apply(Assign(Target(target.model, entry.version, assignment.counter, assignment.rollout_id,
                                      entry.target_path, entry.sha256, entry.length), now))
            self._drive()
            return
        log.info("the candidate %s@%s is withdrawn", target.model, target.version)
        self._fail(SUPERSEDED, {"message": f"assignment {assignment.counter} no longer names candidate "
                                           f"{target.model}@{target.version}"})

    def _active_sha(self, name: str) -> str | None:
        try:
            slot = self.store.active(name, verify=False)
        except AgentError:
            return None
        return slot.sha256 if slot else None

    def _still_wanted(self, assignment: Assignment) -> bool:
        """Whether the new assignment still names the bundle being installed (as a candidate of
        the same mode, for a candidate)."""
        target = self.machine.target
        if target is None:
            return False
        if target.mode is not None:
            wanted = _candidate_target(assignment, target.model)
            return wanted is not None and wanted.sha256 == target.sha256 and wanted.mode == target.mode
        entry = assignment.models.get(target.model)
        return entry is not None and entry.sha256 == target.sha256

    # -- the update of one model --------------------------------------------------------------
    def _drive(self) -> None:
        """Do the machine's next work and feed it the result, until it watches probation or is done."""
        while (work := next_work(self.machine)) in self._work:
            assert work is not None
            try:
                inp = self._work[work]()
            except _Refused as refused:
                self._fail(refused.reason, refused.details)
            else:
                self._apply(inp)

    def _fail(self, reason: str, details: Mapping[str, Any]) -> None:
        now = self.clock()
        if self._target().mode is not None:
            self.serving.end_candidate(self._target().model)  # the serving version was never touched
        # The swap inside _switch_back retires the failed session; serving closes it when idle.
        if self.machine.state is State.ACTIVATED and not self._switch_back(keep_if_alone=reason == SUPERSEDED):
            details = {**details, "kept_serving": True}
        self._session = None
        self._bundle = None
        if self._checked is not None:
            self._checked[1].close()
            self._checked = None
        log.warning("update of %s failed: %s (%s)", self._target().model, reason, details.get("message", ""))
        self._apply(Fail(now, reason, details, self.retry_after_s))
        if not is_retryable(reason):
            self._clean_download()
            self._gc(self._target().model)  # a refused staged slot will never serve

    def _target(self) -> Target:
        target = self.machine.target
        assert target is not None, "no update in progress"
        return target

    def _download_path(self) -> Path:
        target = self._target()
        return self.state.downloads_dir / bundle_filename(target.model, target.version)

    def _download(self) -> Downloaded:
        target = self._target()
        began = self.clock()
        try:
            tuf = self.tuf()
            facts = tuf.target(target.target_path)
            if facts is None:
                raise _Refused(TARGET_UNKNOWN, f"TUF targets metadata does not list {target.target_path}")
            if facts.sha256 != target.sha256 or facts.length != target.length:
                raise _Refused(HASH_MISMATCH, "the assignment's sha256/length disagree with TUF's targets metadata",
                               {"assignment": {"sha256": target.sha256, "length": target.length},
                                "tuf": {"sha256": facts.sha256, "length": facts.length}})
            # A candidate promoted after its stage left its verified download here: checked against
            # the TUF facts just refreshed, it is not fetched again.
            reused = _holds(self._download_path(), target.sha256, target.length)
            if not reused:
                tuf.download(target.target_path, self._download_path())
        except TufClientError as exc:
            raise _Refused(exc.reason, exc.message) from exc
        details: dict[str, Any] = {"bytes": target.length, "seconds": round(self.clock() - began, 3)}
        if reused:
            details["reused"] = True
        return Downloaded(self.clock(), details)

    def _verify(self) -> Verified:
        self._verify_bundle()
        return Verified(self.clock(), {"sha256": self._target().sha256, "profile": self.profile.name})

    def _verify_bundle(self) -> Bundle:
        """Read and check the downloaded bundle (also the re-verification after a restart)."""
        target = self._target()
        try:
            # The bound also caps the unpacked size: the profile's storage budget is all a device has.
            bundle = read_bundle(self._download_path(), max_bytes=max(target.length, self.profile.storage_budget_bytes))
        except EdgefleetError as exc:
            raise _Refused(BUNDLE_INVALID, str(exc)) from exc
        m = bundle.manifest
        if bundle.sha256 != target.sha256:
            raise _Refused(HASH_MISMATCH, "the bundle on disk is not the one the assignment names")
        if m.name != target.model or m.version != target.version:
            raise _Refused(BUNDLE_INVALID, f"the bundle holds {m.ref}, not {target.model}@{target.version}")
        if self.profile.name not in m.profiles:
            raise _Refused(PROFILE_MISMATCH, f"{m.ref} was validated for {', '.join(m.profiles)}, "
                                             f"not this device's profile {self.profile.name}",
                           {"profiles": list(m.profiles), "device_profile": self.profile.name})
        if m.format not in self.profile.allowed_formats:
            raise _Refused(PROFILE_MISMATCH, f"profile {self.profile.name} does not run {m.format} models")
        self._bundle = bundle
        return bundle

    def _stage(self) -> Staged:
        bundle = self._bundle or self._verify_bundle()
        try:
            slot = self.store.stage(bundle)
        except AgentError as exc:
            raise _Refused(STAGE_FAILED, str(exc)) from exc
        self._bundle = None
        return Staged(self.clock(), slot.sha256, {"slot": slot.sha256})

    def _check_health(self) -> HealthPassed:
        target = self._target()
        try:
            slot = self.store.slot(target.model, target.sha256)  # verifies every file again
        except AgentError as exc:
            raise _Refused(BUNDLE_INVALID, f"the staged slot failed re-verification: {exc}") from exc
        memory: dict[str, Any] | None = None
        rss_before = self.rss() if target.mode is not None else None
        if target.mode is not None:
            memory = self._check_memory_before(slot, rss_before)
        profile = self.profile
        if target.mode == "shadow":
            # Single-threaded: its runs stay on the mirror's low-priority thread (agent/mirror.py).
            profile = replace(profile, intra_op_threads=1, inter_op_threads=1)
        try:
            session = self.load(slot, profile)
        except AgentError as exc:
            raise _Refused(HEALTH_FAILED, f"the runtime cannot load the model: {exc}", {"cause": "load_error"}) from exc
        report = check_health(session, slot.manifest, slot.golden(), latency_budget_ms=self.profile.latency_budget_ms,
                              latency_runs=self.health_latency_runs)
        if not report.passed:
            session.close()
            raise _Refused(HEALTH_FAILED, report.message, {"cause": report.reason, "health": report.to_dict()})
        if target.mode is not None:
            # Measured after the golden samples ran: ONNX Runtime allocates its arenas on first use.
            memory = self._check_memory_after(session, rss_before) or memory
        self._checked = (slot, session)
        details: dict[str, Any] = {"health": report.to_dict()}
        if memory is not None:
            details["memory"] = memory
        return HealthPassed(self.clock(), details)

    # -- a candidate's stage ------------------------------------------------------------------
    def _check_memory_before(self, slot: Slot, rss: int | None) -> dict[str, Any] | None:
        """Refuse a candidate whose estimated cost breaks the budget, before loading it."""
        if rss is None:
            log.warning("cannot read the agent's RSS: the memory budget is checked after loading only")
            return None
        verdict = check_before_load(rss, slot.model_path.stat().st_size, ram_mb=self.profile.ram_mb,
                                    share=self.candidate_ram_share)
        if not verdict.fits:
            raise _Refused(MEMORY_BUDGET, f"{verdict.message} ({self.candidate_ram_share:g} of the "
                                          f"{self.profile.name} profile's {self.profile.ram_mb} MB)",
                           {"memory": verdict.to_dict(), "ram_mb": self.profile.ram_mb,
                            "fix": "convert a smaller model (int8), or raise candidate_ram_share in agent.toml"})
        return verdict.to_dict()

    def _check_memory_after(self, session: ModelSession, rss_before: int | None) -> dict[str, Any] | None:
        """Unload and refuse a candidate whose MEASURED cost breaks the budget."""
        rss_after = self.rss()
        if rss_before is None or rss_after is None:
            return None
        verdict = check_after_load(rss_before, rss_after, ram_mb=self.profile.ram_mb, share=self.candidate_ram_share)
        if not verdict.fits:
            session.close()
            raise _Refused(MEMORY_BUDGET, f"{verdict.message} ({self.candidate_ram_share:g} of the "
                                          f"{self.profile.name} profile's {self.profile.ram_mb} MB)",
                           {"memory": verdict.to_dict(), "ram_mb": self.profile.ram_mb,
                            "fix": "convert a smaller model (int8), or raise candidate_ram_share in agent.toml"})
        return verdict.to_dict()

    def _start_stage(self) -> StageStarted:
        """Run the checked candidate beside the serving version: mirrored (shadow) or answering (canary)."""
        if self._checked is None:  # only a bug gets here (a restart clears the passed check)
            self._check_health()
        assert self._checked is not None
        (_slot, session), self._checked = self._checked, None
        target = self._target()
        assert target.mode is not None and target.rate is not None
        serving = self.serving.get(target.model)
        if serving is None:
            session.close()
            raise _Refused(CANDIDATE_FAILED, f"{target.model} serves nothing to compare the candidate with")
        serving_version = serving.manifest.version
        if target.mode == "shadow":
            tally = ShadowTally(target.model, target.version, serving_version, "shadow")
            self.serving.start_shadow(target.model, Mirror(session, tally, sample=target.rate,
                                                           queue_size=self.shadow_queue_size,
                                                           cpu_share=self.shadow_cpu_share))
            details: dict[str, Any] = {"mode": "shadow", "sample": target.rate}
        else:
            self.serving.start_canary(target.model, session, target.rate)
            details = {"mode": "canary", "share": target.rate}
        log.info("%s of %s@%s beside %s", target.mode, target.model, target.version, serving_version)
        return StageStarted(self.clock(), {**details, "serving_version": serving_version})

    def _activate(self) -> Activated:
        if self._checked is None:  # only a bug gets here (a restart clears the passed check)
            self._check_health()
        assert self._checked is not None
        (slot, session), self._checked = self._checked, None
        name = self._target().model
        watched = WatchedSession(session)
        # Switch first, then record it: a crash in between redoes the check and finds the pointer set.
        self.store.activate(name, slot)
        self.serving.swap(name, watched)
        self._session = watched
        return Activated(self.clock(), self.probation_config, self.profile.latency_budget_ms,
                         {"previous_version": self._previous_version(name), "providers": list(session.providers)})

    def _previous_version(self, name: str) -> str | None:
        try:
            slot = self.store.previous(name, verify=False)
        except AgentError:
            return None
        return slot.version if slot else None

    # -- probation ----------------------------------------------------------------------------
    def _judge(self, now: float) -> None:
        snapshot = self._snapshot(now)
        if snapshot is not None:
            self._apply(Observe(now, snapshot), durable=False)
        assert self.machine.probation is not None
        decision = self.machine.probation.decide(now)
        if decision.verdict is Verdict.CONTINUE:
            if now - self._persisted_at >= PROBATION_PERSIST_S:
                self._persist()
            return
        if decision.verdict is Verdict.COMMIT:
            self._session = None
            self._apply(Commit(now, {"probation": dict(decision.details)}))
            self._clean_download()
            self._gc(self._target().model)
            return
        self._fail(PROBATION_FAILED, {"cause": decision.reason, "probation": dict(decision.details),
                                      "message": f"probation failed: {decision.reason}"})

    def _snapshot(self, now: float) -> StatsSnapshot | None:
        name = self._target().model
        try:
            stats = self.serving.stats(name)
        except AgentError as exc:
            log.warning("no serving stats for %s during probation: %s", name, exc)
            return None
        bad = self._session.bad_outputs if self._session is not None else 0
        return StatsSnapshot(now, int(stats.requests), int(stats.errors), bad, tuple(stats.latencies_ms))

    def _switch_back(self, *, keep_if_alone: bool) -> bool:
        """Roll the pointer back to the previous slot and serve it again; False if nothing changed.

        With no previous slot (a first install) the model stops serving, unless ``keep_if_alone``:
        a model superseded in probation passed its health check and is better than no model
        while its successor installs (which may fail).
        """
        name = self._target().model
        try:
            previous = self.store.rollback(name)
        except AgentError as exc:
            log.error("cannot read the previous slot of %s: %s", name, exc)
            previous = None
        if previous is not None:
            self.serving.swap(name, self.load(previous, self.profile))
            return True
        if keep_if_alone:
            return False
        self.store.deactivate(name)  # a first install: nothing to go back to, so it stops serving
        self.serving.remove(name)
        return True

    def _resume_probation(self, now: float) -> None:
        """The restart is already counted (and written); serve the slot in probation and judge it."""
        target = self._target()
        if self._active_sha(target.model) != target.sha256:
            # The rollback switch happened before the crash; finish what it started.
            self._session = None
            self._apply(Fail(now, PROBATION_FAILED, {"cause": "rolled_back_before_restart"}, self.retry_after_s))
            return
        slot = self.store.active(target.model)
        if slot is not None:
            self._session = WatchedSession(self.load(slot, self.profile))
            self.serving.swap(target.model, self._session)
        self._judge(now)

    # -- housekeeping -------------------------------------------------------------------------
    def _clean_download(self) -> None:
        try:
            self._download_path().unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", self._download_path(), exc)

    def _gc(self, name: str) -> None:
        try:
            removed = self.store.gc(name, keep=set())
        except (AgentError, OSError) as exc:
            log.warning("slot cleanup for %s failed: %s", name, exc)
            return
        if removed:
            log.info("removed %d old slot(s) of %s", len(removed), name)


def _holds(path: Path, sha256: str, length: int) -> bool:
    """Whether ``path`` holds exactly the bytes of that hash and length."""
    try:
        if path.stat().st_size != length:
            return False
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == sha256


def _candidate_target(assignment: Assignment, name: str) -> Target | None:
    """The candidate of ``name``'s entry as an update target, or None."""
    entry = assignment.models.get(name)
    if entry is None or entry.candidate is None:
        return None
    c = entry.candidate
    return Target(name, c.version, assignment.counter, assignment.rollout_id, c.target.target_path,
                  c.target.sha256, c.target.length, c.mode, c.rate)


def _same_document(envelope: bytes, stored: Any) -> bool:
    try:
        return stored is not None and json.loads(envelope) == stored
    except ValueError:
        return False


def _peek_counter(envelope: bytes) -> int | None:
    """The counter a refused document claims, for the event (never trusted for anything else)."""
    try:
        value = json.loads(envelope)["signed"]["counter"]
        return int(value) if isinstance(value, int) else None
    except (ValueError, KeyError, TypeError):
        return None


__all__ = ["AssignmentResult", "Serving", "Updater", "UpdaterError", "WatchedSession"]
