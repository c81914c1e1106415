"""Random event sequences against the rollout state machine, checking its safety invariants.

Hypothesis drives a rollout with everything the engine can feed it, in any order: starts,
device events for any version, devices going offline and coming back, time passing, pause,
resume, abort, rollback, yank, devices joining, `reported` documents of every shape the
contract allows (what a device serves, its update in flight or its last outcome, for any
counter), and restarts (a round trip through the JSON the engine stores). After every step:

* never more devices assigned than the waves started so far hold;
* no device is sent the version twice, nor one whose profile the version was not validated for;
* after a halt, abort, rollback or yank: no AssignVersion ever again;
* a halt with auto-rollback sends every touched device its previous version (or reports it);
* a copy restored from ``to_dict`` at any point answers every later step identically;
* a device whose last online report served the version is never timed out (issue 19);
* a report fed a second time changes nothing (the engine replays reports when it starts);
* with a shadow or canary stage (issue 18): no device is assigned the version before its
  wave's stage passed (unless it already serves it), and a stopped rollout leaves no device
  holding the candidate (each got a ``WithdrawCandidate``).
"""

from __future__ import annotations

import json
from datetime import timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fleet_server.rollouts.machine import (
    EVENTS,
    Action,
    AlertNeeded,
    AssignCandidate,
    AssignPrevious,
    AssignVersion,
    DeviceStatus,
    Halt,
    Rollout,
    RolloutPolicy,
    RolloutState,
    RolloutStateError,
    WithdrawCandidate,
)
from fleet_server.rollouts.reports import DeviceReport, ReportedUpdate
from fleet_server.rollouts.stage import CanaryFigures, CanaryPolicy, ShadowFigures, ShadowPolicy
from fleet_server.rollouts.waves import RolloutDevice, Selector
from tests.unit.fleet_server.rollout.fleet import MODEL, PREVIOUS, T0, VERSION, target

ELIGIBLE = ("rpi4-64", "rpi5")
PROFILES = (*ELIGIBLE, "jetson-nano")
STOPPED = (RolloutState.HALTED, RolloutState.ABORTED, RolloutState.ROLLED_BACK)

_device = st.tuples(st.sampled_from(PROFILES), st.sampled_from(("a", "b")), st.sampled_from((PREVIOUS, None)))
_policy = st.builds(
    RolloutPolicy,
    waves=st.sampled_from([(100.0,), (10.0, 100.0), (1.0, 10.0, 50.0, 100.0), (25.0, 50.0, 75.0, 100.0)]),
    bake_time=st.sampled_from([timedelta(0), timedelta(minutes=5), timedelta(minutes=20)]),
    max_failure_rate=st.sampled_from([0.0, 0.1, 0.3, 0.6]),
    min_success_rate=st.sampled_from([0.3, 0.8, 1.0]),
    device_timeout=st.sampled_from([timedelta(minutes=10), timedelta(minutes=30)]),
    auto_rollback=st.booleans(),
    # stages shorter than most time steps, so runs reach their verdicts often enough to check them
    stage=st.sampled_from([None, None, ShadowPolicy(timedelta(minutes=2), 0.98, min_requests=10),
                           CanaryPolicy(0.1, timedelta(minutes=2), min_labels=10)]),
)
_update = st.one_of(st.none(), st.builds(
    ReportedUpdate,
    state=st.sampled_from(["downloading", "activated", "committed", "committed", "failed", "rolled_back"]),
    model=st.sampled_from([MODEL, MODEL, "other"]),
    version=st.sampled_from([VERSION, VERSION, PREVIOUS, None]),
    counter=st.one_of(st.none(), st.integers(min_value=0, max_value=12)),
    reason=st.sampled_from(["", "download_failed", "health_failed", "probation_failed"]),
))
_report = st.one_of(
    st.just(DeviceReport(False)),  # the last will
    st.builds(DeviceReport, online=st.just(True),
              models=st.sampled_from([{}, {MODEL: VERSION}, {MODEL: PREVIOUS}, {MODEL: VERSION, "other": "1.0.0"}]),
              update=_update),
)


class RolloutMachine(RuleBasedStateMachine):
    rollout: Rollout
    twin: Rollout

    @initialize(fleet=st.lists(_device, min_size=1, max_size=25), policy=_policy,
                seed=st.integers(min_value=0, max_value=2**32), start_now=st.booleans())
    def create(self, fleet: list[tuple[str, str, str | None]], policy: RolloutPolicy, seed: int,
               start_now: bool) -> None:
        devices = [RolloutDevice(f"d{i:02d}", p, {"site": s}, v) for i, (p, s, v) in enumerate(fleet)]
        devices.append(RolloutDevice("d-anchor", "rpi4-64", {"site": "a"}, PREVIOUS))  # at least one eligible
        self.rollout = Rollout.create("ro-p", MODEL, VERSION, selector=Selector.everything(),
                                      targets={p: target(p) for p in ELIGIBLE}, devices=devices, seed=seed,
                                      policy=policy)
        self.twin = self._restored()
        self.now = T0
        self.ever_assigned: set[str] = set()
        self.ever_touched: set[str] = set()
        self.withdrawn: set[str] = set()
        self.stopped = False
        self.joined = 0
        if start_now:
            self._step("start", self.now)

    # ------------------------------------------------------------------ driving both copies

    def _restored(self) -> Rollout:
        return Rollout.from_dict(json.loads(json.dumps(self.rollout.to_dict())))

    def _step(self, name: str, *args: object) -> list[Action]:
        was_stopped = self.stopped or self.rollout.yanked
        outcomes = []
        for machine in (self.rollout, self.twin):
            before = machine.to_dict()
            try:
                outcomes.append(getattr(machine, name)(*args))
            except RolloutStateError:
                assert machine.to_dict() == before, "a refused command changed the rollout"
                outcomes.append(None)
        assert outcomes[0] == outcomes[1], "the restored copy answered differently"
        assert self.rollout.to_dict() == self.twin.to_dict()
        actions = outcomes[0] or []
        self._check(actions, was_stopped)
        return actions

    def _check(self, actions: list[Action], was_stopped: bool) -> None:
        for action in actions:
            if isinstance(action, AssignVersion):
                assert not was_stopped, f"{action} after the rollout stopped"
                assert not self.rollout.yanked
                assert action.device_id not in self.ever_assigned, f"{action.device_id} assigned twice"
                self.ever_assigned.add(action.device_id)
                self.ever_touched.add(action.device_id)
                record = self.rollout.devices[action.device_id]
                assert record.profile in ELIGIBLE and action.target == target(record.profile)
                stage = self.rollout.stages.get(record.wave) if record.wave is not None else None
                assert stage is None or stage.passed or record.previous_version == VERSION, \
                    f"{action.device_id} switched before its wave's stage passed"
            elif isinstance(action, AssignCandidate):
                assert not was_stopped and not self.rollout.yanked
                assert action.device_id not in self.ever_touched, f"{action.device_id} sent the candidate twice"
                self.ever_touched.add(action.device_id)
                assert action.serving_version == PREVIOUS and action.target.version == VERSION
            elif isinstance(action, WithdrawCandidate):
                assert action.device_id in self.ever_touched and action.device_id not in self.ever_assigned
                assert action.device_id not in self.withdrawn
                self.withdrawn.add(action.device_id)
            elif isinstance(action, AssignPrevious):
                record = self.rollout.devices[action.device_id]
                assert record.previous_version == action.previous_version == PREVIOUS
                assert action.device_id in self.ever_touched and action.device_id not in self.withdrawn
        halts = [a for a in actions if isinstance(a, Halt)]
        if halts and self.rollout.policy.auto_rollback:
            sent_back = {a.device_id for a in actions if isinstance(a, AssignPrevious | WithdrawCandidate)}
            stranded = {d for a in actions if isinstance(a, AlertNeeded) for d in a.devices}
            assert sent_back | stranded == self.ever_touched
            assert not sent_back & stranded
        if self.rollout.state in STOPPED:
            self.stopped = True
            holding = [d for d, r in self.rollout.devices.items() if r.status is DeviceStatus.CANDIDATE]
            assert not holding, f"{holding} still hold the candidate of a stopped rollout"

    # ------------------------------------------------------------------ rules

    @rule()
    def start(self) -> None:
        self._step("start", self.now)

    @rule(minutes=st.sampled_from([0.5, 3, 6, 11, 25, 40]))
    def time_passes(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)
        before = {d: r.status for d, r in self.rollout.devices.items()}
        self._step("tick", self.now)
        for device, record in self.rollout.devices.items():
            if record.status.value == "timed_out" and before.get(device) is not record.status:
                assert record.serves != VERSION, f"{device} serves {VERSION} yet timed out"

    @rule(data=st.data(), report=_report)
    def device_reports(self, data: st.DataObject, report: DeviceReport) -> None:
        device = data.draw(st.sampled_from(sorted(self.rollout.devices)))
        self._step("device_reported", device, report, self.now)
        if report.online:
            assert self.rollout.devices[device].serves == report.serves(MODEL)
        # Replayed (a restarted engine reads the stored and retained reports again): no change.
        before = self.rollout.to_dict()
        assert self._step("device_reported", device, report, self.now) == []
        assert self.rollout.to_dict() == before

    @rule(data=st.data())
    def in_flight_devices_enter_probation(self, data: st.DataObject) -> None:
        # What the hole-2 sequence looks like to the core: the device serves the version and
        # watches it; its outcome may never arrive as an event.
        in_flight = sorted(d.device_id for d in self.rollout.devices.values()
                           if d.status.value in ("assigned", "timed_out"))
        probation = DeviceReport(True, {MODEL: VERSION}, ReportedUpdate("activated", MODEL, VERSION, None))
        for device in data.draw(st.lists(st.sampled_from(in_flight), unique=True) if in_flight else st.just([])):
            self._step("device_reported", device, probation, self.now)

    @rule(data=st.data(), counter=st.integers(min_value=1, max_value=12))
    def assignment_goes_out(self, data: st.DataObject, counter: int) -> None:
        in_flight = sorted(d.device_id for d in self.rollout.devices.values() if d.status.value == "assigned")
        if in_flight:
            self._step("assignment_issued", data.draw(st.sampled_from(in_flight)), counter)

    # Outcomes are drawn with commits most likely, and the commands that end a rollout are
    # rare, so that runs get past the first wave often enough for the invariants to bite.
    @rule(data=st.data(), kind=st.sampled_from([*sorted(EVENTS), *["committed"] * 6]),
          version=st.sampled_from([VERSION, VERSION, VERSION, None, PREVIOUS]))
    def device_event(self, data: st.DataObject, kind: str, version: str | None) -> None:
        device = data.draw(st.sampled_from(sorted(self.rollout.devices)))
        self._step("device_event", device, kind, self.now, "", version)

    @rule(data=st.data(), reason=st.sampled_from(["download_failed", "health_failed"]))
    def device_fails_with_a_reason(self, data: st.DataObject, reason: str) -> None:
        device = data.draw(st.sampled_from(sorted(self.rollout.devices)))
        before = self.rollout.devices[device]
        self._step("device_event", device, "failed", self.now, reason, VERSION)
        if reason == "download_failed":  # retried by the device: never a failure by itself
            assert self.rollout.devices[device].status is before.status

    @rule(data=st.data())
    def in_flight_devices_commit(self, data: st.DataObject) -> None:
        in_flight = sorted(d.device_id for d in self.rollout.devices.values() if d.status.value == "assigned")
        for device in data.draw(st.lists(st.sampled_from(in_flight), unique=True) if in_flight else st.just([])):
            self._step("device_event", device, "committed", self.now, "", VERSION)

    @rule(data=st.data(), online=st.booleans())
    def presence(self, data: st.DataObject, online: bool) -> None:
        device = data.draw(st.sampled_from(sorted(self.rollout.devices)))
        self._step("device_online" if online else "device_offline", device, self.now)

    @rule(command=st.sampled_from(["pause", "resume", "resume"]))
    def operator_pauses_or_resumes(self, command: str) -> None:
        self._step(command, self.now)

    @rule(command=st.sampled_from([*[None] * 6, "abort", "rollback", "yank"]))
    def operator_stops(self, command: str | None) -> None:
        if command is not None:
            self._step(command, self.now)

    @rule(device=_device)
    def device_joins(self, device: tuple[str, str, str | None]) -> None:
        profile, site, version = device
        self.joined += 1
        self._step("add_device", RolloutDevice(f"late{self.joined:02d}", profile, {"site": site}, version), self.now)

    @rule(data=st.data())
    def candidates_run_their_stage(self, data: st.DataObject) -> None:
        holding = sorted(d.device_id for d in self.rollout.devices.values() if d.status.value == "candidate")
        for device in data.draw(st.lists(st.sampled_from(holding), unique=True) if holding else st.just([])):
            self._step("device_event", device, "shadowing", self.now, "", VERSION)

    @rule(passing=st.booleans())
    def stage_figures_arrive(self, passing: bool) -> None:
        query = self.rollout.stage_query(self.now)
        if query is None:
            return
        figures: ShadowFigures | CanaryFigures
        if query.mode == "shadow":
            figures = ShadowFigures(100, 100 if passing else 50)
        else:
            figures = CanaryFigures(100, 90, 100, 95 if passing else 40)
        self._step("stage_figures", query.wave, figures, self.now)

    @rule()
    def server_restarts(self) -> None:
        self.twin = self._restored()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def never_more_assigned_than_the_started_waves_allow(self) -> None:
        rollout = self.rollout
        assert rollout.assigned_count() <= rollout.allowed_count()
        assert all(d.wave is not None and d.wave <= rollout.current_wave
                   for d in rollout.devices.values() if d.touched)
        assert {d.device_id for d in rollout.devices.values() if d.touched} == self.ever_touched

    @invariant()
    def wave_counts_agree_with_a_fresh_count(self) -> None:
        # The core keeps per-wave counts incrementally; recount from the records themselves.
        for summary in self.rollout.wave_summaries():
            members = [d for d in self.rollout.devices.values() if d.wave == summary.index]
            status = [d.status.value for d in members]
            commits = [d.finished_at for d in members if d.status.value == "committed" and d.finished_at]
            shadowing = [d for d in members if d.status.value == "candidate" and d.last_event == "shadowing"]
            assert (summary.size, summary.pending, summary.in_flight, summary.committed, summary.failed,
                    summary.rolled_back, summary.last_commit_at, summary.candidate, summary.shadowing,
                    summary.withdrawn) == (
                len(members), status.count("pending"), status.count("assigned"), status.count("committed"),
                status.count("failed") + status.count("timed_out"), status.count("rolled_back"),
                max(commits, default=None), status.count("candidate"), len(shadowing), status.count("withdrawn"))

    @invariant()
    def ineligible_devices_are_never_touched(self) -> None:
        assert not any(d.touched for d in self.rollout.devices.values() if d.profile not in ELIGIBLE)


RolloutMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_rollout_state_machine = RolloutMachine.TestCase
