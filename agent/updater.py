"""The device side of the verified update path: assignment in, a committed or rolled-back model out.

``Updater.handle_assignment(envelope)`` verifies a signed assignment (signature, device,
counter, expiry: ``edgefleet.assignment.verify_assignment``), records its counter in
assignment.json, and for each model whose bundle differs from the active one drives the
update state machine (agent/update_machine.py):

    TUF refresh + targetinfo ─ assignment sha256/length must equal TUF's ─ download through
    our ResumingFetcher (TUF checks hash and length) ─ read_bundle ─ bundle validated for this
    device's profile ─ stage beside the active slot ─ health check on golden samples ─
    switch (ModelStore.activate, then ServingTable.swap) ─ probation (``tick(now)``) ─
    commit, or roll back to the previous slot.

update.json is written atomically after every step and every event is published through
``publish_event(dict)``. A refused assignment changes nothing on the device and emits a
``failed`` event with the reason. ``resume()`` applies the recovery rule of the persisted
state after a restart (see docs/update-path.md).

Ordering chosen for crash safety: the pointer switch happens BEFORE update.json says
``activated``, and the rollback switch BEFORE it says ``rolled_back``; ``resume()`` reconciles a
machine with the pointer it finds, so a SIGKILL between the two never judges (or commits) a
model that is not the one serving.

Not here: MQTT (the daemon hands us payloads and a publish function; ``attach`` is that glue),
the runtime, the slot layout and the probation/health judgements themselves.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.config import AgentConfig
from agent.errors import AgentError
from agent.fetcher import ResumingFetcher
from agent.health import check_health
from agent.probation import Probation, ProbationConfig, StatsSnapshot, Verdict, output_problems
from agent.runtime import ModelSession, load_session
from agent.slots import ModelStore, Slot
from agent.state import StateDir
from agent.update_machine import (
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
    Recovery,
    Reset,
    Restart,
    Staged,
    State,
    Target,
    UpdateMachine,
    Verified,
    recovery,
    refusal,
    step,
)
from edgefleet.assignment import Assignment, verify_assignment
from edgefleet.atomic import atomic_write_json
from edgefleet.bundle import Bundle, bundle_filename, read_bundle
from edgefleet.errors import AssignmentError, EdgefleetError
from edgefleet.manifest import Manifest
from edgefleet.outcomes import DOWNLOAD_FAILED, RETRYABLE_REASONS
from edgefleet.profiles import Profile

log = logging.getLogger("agent.updater")

# Reason codes beyond AssignmentError.reason (docs/update-path.md lists them all).
HASH_MISMATCH = "hash_mismatch"
PROFILE_MISMATCH = "profile_mismatch"
BUNDLE_INVALID = "bundle_invalid"
HEALTH_FAILED = "health_failed"
PROBATION_FAILED = "probation_failed"
TARGET_UNKNOWN = "target_unknown"
TUF_REFUSED = "tuf_refused"
STAGE_FAILED = "stage_failed"
SUPERSEDED = "superseded"
PROBATION_PERSIST_S = 10.0

# Fault injection for the end-to-end crash tests (tests/integration/update_path), off unless set:
# the updater stops (bounded by EDGEFLEET_FAULT_PAUSE_S, default 60) right after update.json says
# the named state, or right after the download has that many bytes on disk, so the test can
# SIGKILL the process at exactly that point.
FAULT_PAUSE_AT = "EDGEFLEET_FAULT_PAUSE_AT"
FAULT_PAUSE_AT_BYTE = "EDGEFLEET_FAULT_PAUSE_AT_BYTE"
FAULT_PAUSE_S = "EDGEFLEET_FAULT_PAUSE_S"
# Probation settings for short-lived fleets (tests, walkthroughs); agent.toml has no keys for them yet.
PROBATION_S = "EDGEFLEET_PROBATION_S"
PROBATION_MIN_REQUESTS = "EDGEFLEET_PROBATION_MIN_REQUESTS"


def _fault_pause(where: str) -> None:
    seconds = float(os.environ.get(FAULT_PAUSE_S, "60"))
    log.warning("fault injection: pausing %g s %s", seconds, where)
    time.sleep(seconds)


class UpdaterError(AgentError):
    """The updater cannot run: the device is not enrolled or its trust bundle is incomplete."""


class Serving(Protocol):
    """What the updater needs from agent.serving.ServingTable."""

    def swap(self, name: str, session: ModelSession) -> ModelSession | None: ...
    def remove(self, name: str) -> None: ...
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
        outputs = self.inner.run_roles(x)
        bad = output_problems(outputs)
        if bad:
            with self._lock:
                self.bad_outputs += bad
        return outputs

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True)
class Outcome:
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
        fetcher: ResumingFetcher | None = None,
        profile: Profile | None = None,
        probation: ProbationConfig | None = None,
        load: Callable[[Slot, Profile], ModelSession] = load_session,
        on_change: Callable[[], Any] | None = None,
        retry_after_s: float = 60.0,
        health_latency_runs: int = 50,
    ) -> None:
        self.state = state_dir
        self.store = store
        self.serving = serving
        self.publish_event = publish_event
        self.clock = clock
        self.fetcher = fetcher or ResumingFetcher(state_dir.downloads_dir)
        self.profile = profile or state_dir.profile()
        self.probation_config = probation or ProbationConfig()
        self.load = load
        self.on_change = on_change
        self.retry_after_s = retry_after_s
        self.health_latency_runs = health_latency_runs
        self._lock = threading.RLock()
        self.machine = UpdateMachine()
        self.probation: Probation | None = None
        self.retry_at: float | None = None
        # model -> "sha256@rollout_id" last tried for it. The server re-issues the same content
        # under new counters (half-life refresh), which must not retry a bundle that failed; a
        # new rollout of that bundle (another rollout id) does get a fresh attempt.
        self.attempted: dict[str, str] = {}
        self._bundle: Bundle | None = None
        self._session: WatchedSession | None = None
        self._persisted_at = float("-inf")
        self._pause_at = os.environ.get(FAULT_PAUSE_AT)
        self._load_persisted()

    # -- persisted state ----------------------------------------------------------------------
    def _load_persisted(self) -> None:
        path = self.state.update_file
        if not path.exists():
            return
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            self.machine = UpdateMachine.from_dict(document.get("machine"))
            raw = document.get("probation")
            self.probation = Probation.from_dict(raw) if raw else None
            self.retry_at = document.get("retry_at")
            self.attempted = {str(k): str(v) for k, v in dict(document.get("attempted") or {}).items()}
        except (OSError, ValueError, AttributeError, EdgefleetError) as exc:
            # The active pointer, not update.json, decides what serves: starting idle is safe.
            log.error("update.json is unreadable (%s); starting idle, the active model keeps serving", exc)
            self.machine = UpdateMachine()

    def _persist(self) -> None:
        m = self.machine
        document = {
            # The flat keys are what `reported` shows (agent.daemon reads them).
            "state": m.state.value,
            "model": m.target.model if m.target else None,
            "version": m.target.version if m.target else None,
            "counter": m.target.counter if m.target else None,
            "reason": m.reason,
            "machine": m.to_dict(),
            "probation": self.probation.to_dict() if self.probation else None,
            "retry_at": self.retry_at,
            "attempted": dict(self.attempted),
        }
        atomic_write_json(self.state.update_file, document)
        self._persisted_at = self.clock()
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("reporting the update state failed")

    def _apply(self, inp: Input) -> None:
        self.machine, event = step(self.machine, inp)
        self._persist()
        if self._pause_at == self.machine.state.value:
            self._pause_at = None
            _fault_pause(f"after persisting {self.machine.state.value}")
        if event is not None:
            self._publish(event)

    def _publish(self, event: Event) -> None:
        payload = event.payload(self._device_id(), uuid.uuid4().hex)
        try:
            self.publish_event(payload)
        except Exception:  # a broker hiccup must not abort an update that is safely persisted
            log.exception("publishing the %s event failed", event.event)

    def _device_id(self) -> str:
        return self.state.load_identity().device_id

    def _last_counter(self) -> int:
        try:
            document = json.loads(self.state.assignment_file.read_text(encoding="utf-8"))
            return int(document["counter"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UpdaterError(f"{self.state.assignment_file} is unreadable ({exc})",
                               fix="restore it from a backup or re-enroll; deleting it would allow replays") from exc

    def _accepted_envelope(self) -> dict[str, Any] | None:
        try:
            document = json.loads(self.state.assignment_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("assignment.json is unreadable (%s)", exc)
            return None
        return document if isinstance(document, dict) else None

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
    def handle_assignment(self, envelope: bytes) -> Outcome:
        """Verify an assignment and start the updates it asks for (runs until activation)."""
        with self._lock:
            now = self.clock()
            accepted = self._accepted_envelope()
            if accepted is not None and _same_document(envelope, accepted.get("envelope")):
                # The broker re-delivers the retained `desired` on every (re)connect: not a replay.
                self._advance()
                return Outcome(True, None, int(accepted["counter"]), duplicate=True)
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
                return Outcome(False, exc.reason, counter)
            # Accepted: only now may the counter move (a refused document must not burn counters).
            atomic_write_json(self.state.assignment_file,
                              {"counter": assignment.counter, "envelope": json.loads(envelope), "accepted_at": now})
            self.retry_at = None
            if self.machine.active and not self._still_wanted(assignment):
                log.info("a newer assignment supersedes the update in progress")
                self._fail(SUPERSEDED, {"message": f"assignment {assignment.counter} names another bundle"})
            self._advance()
            return Outcome(True, None, assignment.counter)

    def tick(self, now: float | None = None) -> None:
        """Called periodically by the daemon: judge probation, retry, start pending updates."""
        with self._lock:
            now = self.clock() if now is None else now
            if self.machine.state is State.ACTIVATED:
                self._judge(now)
            if not self.machine.active:
                self._advance(now)

    def resume(self) -> None:
        """After a restart: apply the recovery rule of the persisted state, then carry on."""
        with self._lock:
            now = self.clock()
            m = self.machine
            rule = recovery(m)
            if rule is Recovery.RESET:
                if m.state is State.FAILED and m.reason in RETRYABLE_REASONS and m.target is not None:
                    self.attempted.pop(m.target.model, None)  # a restart is as good a time as any to retry
                self.retry_at = None
                self._apply(Reset(now))
            elif rule is Recovery.COUNT_RESTART:
                self._resume_probation(now)
            elif rule is Recovery.REVERIFY:
                self._bundle = None  # _drive re-reads and re-verifies the bundle or slot from disk
            elif rule is Recovery.REDO_HEALTH_CHECK:
                self._apply(BeginHealthCheck(now))  # a check cut short proves nothing: run it again
            # START_DOWNLOAD and RESUME_DOWNLOAD: _drive carries on; the fetcher resumes the partial file.
            if self.machine.active:
                self._drive()
            self._advance()

    def close(self) -> None:
        """Nothing to release: every state lives on disk. Kept for the daemon's extension API."""

    # -- the update of one model --------------------------------------------------------------
    def _pending(self) -> Target | None:
        assignment = self._accepted()
        if assignment is None:
            return None
        for name, target in sorted(assignment.models.items()):
            if self.attempted.get(name) == _attempt_key(target.sha256, assignment.rollout_id):
                continue
            active = self._active_sha(name)
            if active == target.sha256:
                continue
            return Target(name, target.version, assignment.counter, assignment.rollout_id, target.target_path,
                          target.sha256, target.length)
        return None

    def _active_sha(self, name: str) -> str | None:
        try:
            slot = self.store.active(name, verify=False)
        except AgentError:
            return None
        return slot.sha256 if slot else None

    def _advance(self, now: float | None = None) -> None:
        """Start the next pending model update, if any (and retry a failed download when due)."""
        now = self.clock() if now is None else now
        m = self.machine
        if m.active:
            return
        if m.state is State.FAILED and m.reason in RETRYABLE_REASONS and m.target is not None:
            if self.retry_at is not None and now < self.retry_at:
                return
            self.attempted.pop(m.target.model, None)  # due: try the same assignment again
        while True:
            target = self._pending()
            if target is None:
                return  # a finished update stays reported (committed/failed/rolled_back) until the next
            self.attempted[target.model] = _attempt_key(target.sha256, target.rollout_id)
            self.retry_at = None
            self._apply(Assign(target, now))
            self._drive()
            if self.machine.active:  # activated: probation continues in tick()
                return

    def _still_wanted(self, assignment: Assignment) -> bool:
        """Whether the new assignment still names the bundle being installed."""
        target = self.machine.target
        wanted = assignment.models.get(target.model) if target else None
        return wanted is not None and target is not None and wanted.sha256 == target.sha256

    def _drive(self) -> None:
        """Run the machine from its current state until activated or finished."""
        while self.machine.active and self.machine.state is not State.ACTIVATED:
            state = self.machine.state
            try:
                if state is State.ASSIGNED:
                    self._apply(BeginDownload(self.clock()))
                elif state is State.DOWNLOADING:
                    self._download_and_verify()
                elif state is State.VERIFIED:
                    self._stage()
                elif state is State.STAGED:
                    self._apply(BeginHealthCheck(self.clock()))
                elif state is State.HEALTH_CHECK:
                    self._check_and_activate()
            except _Refused as refused:
                self._fail(refused.reason, refused.details)

    def _fail(self, reason: str, details: Mapping[str, Any]) -> None:
        now = self.clock()
        # The swap inside _switch_back retires the failed session; serving closes it when idle.
        if self.machine.state is State.ACTIVATED and not self._switch_back(keep_if_alone=reason == SUPERSEDED):
            details = {**details, "kept_serving": True}
        self._session = None
        self._bundle = None
        self.probation = None
        self.retry_at = now + self.retry_after_s if reason in RETRYABLE_REASONS else None
        log.warning("update of %s failed: %s (%s)", self.machine.target.model if self.machine.target else "?", reason,
                    details.get("message", ""))
        self._apply(Fail(now, reason, details))
        if reason not in RETRYABLE_REASONS:
            self._clean_download()
            if self.machine.target is not None:
                self._gc(self.machine.target.model)  # a refused staged slot will never serve

    def _download_path(self) -> Path:
        target = self.machine.target
        assert target is not None
        return self.state.downloads_dir / bundle_filename(target.model, target.version)

    def _tuf(self) -> Any:
        from tuf.ngclient.updater import Updater as TufUpdater

        identity = self.state.load_identity()
        base = identity.server_url.rstrip("/")
        metadata_url = identity.tuf_metadata_url or f"{base}/tuf/metadata/"
        targets_url = identity.tuf_targets_url or f"{base}/tuf/targets/"
        if not self.state.tuf_root_file.exists():
            raise UpdaterError(f"{self.state.tuf_root_file} does not exist: this device has no TUF root",
                               fix="enroll the device (edgefleet agent enroll)")
        self.state.downloads_dir.mkdir(parents=True, exist_ok=True)
        # bootstrap=None: the root.json in the state dir (from enrollment, then updated in place by
        # ngclient as the server rotates root) is the trust anchor.
        return TufUpdater(metadata_dir=str(self.state.tuf_dir), metadata_base_url=metadata_url,
                          target_dir=str(self.state.downloads_dir), target_base_url=targets_url,
                          fetcher=self.fetcher, bootstrap=None)

    def _download_and_verify(self) -> None:
        from tuf.api import exceptions as tuf_errors

        target = self.machine.target
        assert target is not None
        began = self.clock()
        path = self._download_path()
        try:
            tuf = self._tuf()
            tuf.refresh()
            info = tuf.get_targetinfo(target.target_path)
            if info is None:
                raise _Refused(TARGET_UNKNOWN, f"TUF targets metadata does not list {target.target_path}")
            tuf_sha = info.hashes.get("sha256")
            if tuf_sha != target.sha256 or info.length != target.length:
                raise _Refused(HASH_MISMATCH, "the assignment's sha256/length disagree with TUF's targets metadata",
                               {"assignment": {"sha256": target.sha256, "length": target.length},
                                "tuf": {"sha256": tuf_sha, "length": info.length}})
            cached = tuf.find_cached_target(info, str(path))
            if cached is None:
                tuf.download_target(info, str(path))
        except tuf_errors.LengthOrHashMismatchError as exc:
            raise _Refused(HASH_MISMATCH, f"downloaded bytes do not match TUF's hash ({exc})") from exc
        except tuf_errors.DownloadError as exc:
            raise _Refused(DOWNLOAD_FAILED, f"download failed: {exc}") from exc
        except tuf_errors.RepositoryError as exc:
            raise _Refused(TUF_REFUSED, f"TUF metadata refused: {type(exc).__name__}: {exc}") from exc
        except (OSError, UpdaterError) as exc:
            raise _Refused(DOWNLOAD_FAILED, f"download failed: {exc}") from exc
        if not self.machine.downloaded:
            self._apply(Downloaded(self.clock(), {"bytes": target.length, "seconds": round(self.clock() - began, 3)}))
        self._verify_bundle()
        self._apply(Verified(self.clock(), {"sha256": target.sha256, "profile": self.profile.name}))

    def _verify_bundle(self) -> Bundle:
        """Read and check the downloaded bundle (also the re-verification after a restart)."""
        target = self.machine.target
        assert target is not None
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

    def _stage(self) -> None:
        bundle = self._bundle or self._verify_bundle()
        try:
            slot = self.store.stage(bundle)
        except AgentError as exc:
            raise _Refused(STAGE_FAILED, str(exc)) from exc
        self._apply(Staged(self.clock(), slot.sha256, {"slot": slot.sha256}))

    def _staged_slot(self) -> Slot:
        target = self.machine.target
        assert target is not None
        try:
            return self.store.slot(target.model, target.sha256)  # verifies every file again
        except AgentError as exc:
            raise _Refused(BUNDLE_INVALID, f"the staged slot failed re-verification: {exc}") from exc

    def _check_and_activate(self) -> None:
        target = self.machine.target
        assert target is not None
        slot = self._staged_slot()
        try:
            session = self.load(slot, self.profile)
        except AgentError as exc:
            raise _Refused(HEALTH_FAILED, f"the runtime cannot load the model: {exc}", {"cause": "load_error"}) from exc
        report = check_health(session, slot.manifest, slot.golden(), latency_budget_ms=self.profile.latency_budget_ms,
                              latency_runs=self.health_latency_runs)
        if not report.passed:
            session.close()
            raise _Refused(HEALTH_FAILED, report.message, {"cause": report.reason, "health": report.to_dict()})
        if not self.machine.health_passed:
            self._apply(HealthPassed(self.clock(), {"health": report.to_dict()}))
        watched = WatchedSession(session)
        # Switch first, then record it: a crash in between redoes the check and finds the pointer set.
        self.store.activate(target.model, slot)
        self.serving.swap(target.model, watched)
        self._session = watched
        now = self.clock()
        self.probation = Probation(self.probation_config, started_at=now,
                                   latency_budget_ms=self.profile.latency_budget_ms)
        previous = self._previous_version(target.model)
        self._apply(Activated(now, {"previous_version": previous, "providers": list(session.providers)}))
        self._bundle = None

    def _previous_version(self, name: str) -> str | None:
        try:
            slot = self.store.previous(name, verify=False)
        except AgentError:
            return None
        return slot.version if slot else None

    # -- probation ----------------------------------------------------------------------------
    def _judge(self, now: float) -> None:
        target = self.machine.target
        assert target is not None
        if self.probation is None:  # persisted without one (older file): start watching now
            self.probation = Probation(self.probation_config, now, self.profile.latency_budget_ms)
        try:
            stats = self.serving.stats(target.model)
            bad = self._session.bad_outputs if self._session is not None else 0
            snapshot = StatsSnapshot(now, int(stats.requests), int(stats.errors), bad, tuple(stats.latencies_ms))
            self.probation = self.probation.observe(snapshot)
        except AgentError as exc:
            log.warning("no serving stats for %s during probation: %s", target.model, exc)
        decision = self.probation.decide(now)
        if decision.verdict is Verdict.CONTINUE:
            # Keep the totals across a crash, but spare SD cards an fsync on every tick.
            if now - self._persisted_at >= PROBATION_PERSIST_S:
                self._persist()
            return
        if decision.verdict is Verdict.COMMIT:
            self.probation = None
            self._session = None
            self._apply(Commit(now, {"probation": dict(decision.details)}))
            self._clean_download()
            self._gc(target.model)
            return
        self._fail(PROBATION_FAILED, {"cause": decision.reason, "probation": dict(decision.details),
                                      "message": f"probation failed: {decision.reason}"})

    def _switch_back(self, *, keep_if_alone: bool) -> bool:
        """Roll the pointer back to the previous slot and serve it again; False if nothing changed.

        With no previous slot (a first install) the model stops serving, unless ``keep_if_alone``:
        a model superseded in probation passed its health check and is better than no model
        while its successor installs (which may fail).
        """
        target = self.machine.target
        assert target is not None
        name = target.model
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
        # First install of this model: nothing to go back to, so it stops serving.
        # ModelStore has no "deactivate"; removing the pointer is what it would do.
        pointer = self.state.models_dir / name / "active.json"
        pointer.unlink(missing_ok=True)
        self.serving.remove(name)
        return True

    def _resume_probation(self, now: float) -> None:
        target = self.machine.target
        assert target is not None
        if self._active_sha(target.model) != target.sha256:
            # The rollback switch happened before the crash; finish what it started.
            self._session = None
            self._apply(Fail(now, PROBATION_FAILED, {"cause": "rolled_back_before_restart"}))
            return
        self._apply(Restart(now))
        base = self.probation or Probation(self.probation_config, now, self.profile.latency_budget_ms)
        self.probation = base.restart(now)
        slot = self.store.active(target.model)
        if slot is not None:
            self._session = WatchedSession(self.load(slot, self.profile))
            self.serving.swap(target.model, self._session)
        self._persist()
        self._judge(now)

    # -- housekeeping -------------------------------------------------------------------------
    def _clean_download(self) -> None:
        if self.machine.target is None:
            return
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


def _attempt_key(sha256: str, rollout_id: str | None) -> str:
    return f"{sha256}@{rollout_id or ''}"


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


def attach(daemon: Any) -> _Ticker | None:
    """The daemon's extension hook: verified updates over MQTT for an enrolled device.

    Returns None (no updates) when the device has no MQTT link, no identity or no TUF root.
    """
    state: StateDir = daemon.state
    if daemon.link is None or not state.is_enrolled() or not state.tuf_root_file.exists():
        return None
    link = daemon.link
    config = getattr(daemon, "config", None) or AgentConfig()
    updater = Updater(state, daemon.store, daemon.serving, lambda doc: link.publish("events", doc),
                      profile=daemon.profile, on_change=daemon.publish_reported,
                      fetcher=_fault_fetcher(state), probation=_probation_config(config))
    link.on_desired = updater.handle_assignment
    ticker = _Ticker(updater, float(os.environ.get("EDGEFLEET_UPDATE_TICK_S", config.update_tick_s)))
    ticker.start()
    return ticker


def _probation_config(config: AgentConfig) -> ProbationConfig:
    """Probation settings from agent.toml; the environment (tests, the demo) may override them."""
    defaults = ProbationConfig(duration_s=config.probation_s, min_requests=config.probation_min_requests,
                               max_error_rate=config.probation_max_error_rate,
                               max_restarts=config.probation_max_restarts)
    return _probation_from_env(defaults) or defaults


def _probation_from_env(defaults: ProbationConfig) -> ProbationConfig | None:
    duration = os.environ.get(PROBATION_S)
    requests = os.environ.get(PROBATION_MIN_REQUESTS)
    if duration is None and requests is None:
        return None
    try:
        return replace(defaults, duration_s=float(duration) if duration is not None else defaults.duration_s,
                       min_requests=int(requests) if requests is not None else defaults.min_requests)
    except ValueError as exc:
        raise UpdaterError(f"{PROBATION_S}={duration!r} / {PROBATION_MIN_REQUESTS}={requests!r} are not numbers",
                           fix="e.g. EDGEFLEET_PROBATION_S=5 EDGEFLEET_PROBATION_MIN_REQUESTS=10") from exc


def _fault_fetcher(state: StateDir) -> ResumingFetcher | None:
    """The default fetcher, or (fault injection) one that stops once N bytes of a target are on disk."""
    raw = os.environ.get(FAULT_PAUSE_AT_BYTE)
    if raw is None:
        return None
    at_byte = int(raw)
    paused = threading.Event()

    def progress(url: str, received: int, total: int | None) -> None:
        if received >= at_byte and not paused.is_set():
            paused.set()
            _fault_pause(f"with {received} bytes of {url} on disk")

    # Small chunks so the pause lands close to the requested byte.
    return ResumingFetcher(state.downloads_dir, chunk_size=1024, progress=progress)


class _Ticker:
    """Runs ``resume()`` once and ``tick()`` every ``interval`` seconds on its own thread."""

    def __init__(self, updater: Updater, interval: float) -> None:
        self.updater = updater
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgefleet-updater", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self.updater.resume()
        except Exception:
            log.exception("resuming the update failed")
        while not self._stop.wait(self.interval):
            try:
                self.updater.tick()
            except Exception:
                log.exception("update tick failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


__all__ = ["Outcome", "Updater", "UpdaterError", "WatchedSession", "attach"]
