"""The rollout engine: drives the pure ``fleet_server.rollouts.machine.Rollout`` from the database and the broker.

Every change to a rollout is one database transaction that holds the rollout's row lock:
load the rollout (``fleet_server.rollouts.store``: its header row and one row per device, or the
copy this process holds when the header's revision says nobody changed it since), feed it ONE
input (a device event, a presence change, a tick, an operator command; or a batch of them),
execute the actions it returns (sign and store
assignments through ``fleet_server.rollouts.assignments``; record halts, completion and alerts in the
rollout's log), store the header and the device rows that changed, commit, and only then
publish the assignments. The
devices a change assigns are row-locked in id order first (as the presence writer locks
them), so two transactions holding many device rows never deadlock. The
lock is ``SELECT ... FOR UPDATE`` on PostgreSQL and, on SQLite, a no-op ``UPDATE`` that takes
the database's single writer lock first; either way several server replicas (or threads)
serialise on the row, so a wave is never advanced twice, and because the state lives in the
database only, a restarted server carries on where the last one stopped. A replica that dies
between commit and publish leaves the assignment stored and unpublished; the periodic
``Assignments.maintain`` pass publishes it.

Inputs arrive from three places: ``handle_message`` (the MQTT handler for ``events`` and
``reported``), ``tick`` (periodic: device timeouts, bake times, devices that enrolled or
started matching the selector since, versions yanked since), and the operator commands the
REST API calls. ``RolloutWorker`` runs them on one thread: queued messages, then ``tick``
and ``Assignments.maintain`` every few seconds.

Every ``reported`` document is reconciled with the device's record (the core's
``device_reported``: the last outcome it reports, the version it serves), so an outcome
whose event was lost is learned from the report. Reports are replayed on three more
occasions, because a server that was down, or died with messages in its queues (paho has
acknowledged them to the broker by then), may have missed both the event and the report:

* ``reconcile`` (the worker's first step, retried each tick until it succeeds): for every
  device still in flight in a live rollout, the report stored in the database, then the one
  the broker retains (``RetainedReports``, read by ``FleetMqtt.retained`` over a separate
  short-lived connection, since shared subscriptions never get retained messages);
* right after a device is assigned: its stored report, so a device that already serves the
  version commits at once instead of timing out (its agent installs nothing, sends nothing).

A report whose shape is not the contract's (``models`` a list, a counter that is a string)
is skipped for reconciliation, counted in ``malformed_reports`` and logged once per device;
its presence still counts. A worker also takes over the engine's
publishing: what any change issues (an operator's ``create`` included) is handed to the
worker's thread, which publishes it with ``Assignments.publish_all`` (every envelope sent,
then every PUBACK awaited together), so a request returns once the change is committed, not
once thousands of devices have been told. Without a worker the engine publishes on the
caller's thread before returning.

A rollout with a shadow or canary stage (issue 18) asks, on each tick, for its running stage's
figures (``Rollout.stage_query``: every 15 s, and once its time is over); the engine reads them
from the database (``fleet_server.rollouts.figures.gather``: the wave's shadow records, or its
feedback per version) in a transaction of its own, then hands them in
(``Rollout.stage_figures``) under the rollout's lock, where the core decides. Candidates go out as assignments whose entry carries a ``candidate``
(``Assignments`` with ``WithCandidate``), and are withdrawn with a plain entry of the serving version.

This module does not decide anything about waves or thresholds (the pure core does) and owns
no broker connection (the ``Publisher`` inside ``Assignments`` is injected).
"""

from __future__ import annotations

import copy
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import exists, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, defer

from edgefleet import topics
from edgefleet.assignment import ModelTarget
from fleet_server.db import Database
from fleet_server.errors import ConflictError, NotFoundError, ServerError
from fleet_server.rollouts.assignments import (
    ENROLLED,
    Assignments,
    IssuedAssignment,
    Wanted,
    WithCandidate,
)
from fleet_server.rollouts.figures import gather
from fleet_server.rollouts.machine import (
    EVENTS,
    Action,
    AlertNeeded,
    AssignCandidate,
    AssignPrevious,
    AssignVersion,
    Completed,
    Halt,
    Rollout,
    RolloutPolicy,
    RolloutState,
    WithdrawCandidate,
)
from fleet_server.rollouts.quiet import REPORT_COMMAND, QuietDevices, QuietPolicy, Send
from fleet_server.rollouts.reports import DeviceReport, ReportError, parse_reported
from fleet_server.rollouts.stage import summary as stage_summary
from fleet_server.rollouts.store import RolloutStore
from fleet_server.rollouts.waves import RolloutDevice, Selector, new_seed
from fleet_server.tables import (
    DeviceAssignmentRow,
    DeviceRow,
    ModelRow,
    RolloutDeviceRow,
    RolloutRow,
)

log = logging.getLogger(__name__)

LIVE_STATES = (RolloutState.PENDING.value, RolloutState.RUNNING.value, RolloutState.PAUSED.value)
LOG_LIMIT = 500
# An action that fails a device feeds the core again; a core that kept answering with more
# actions would be a bug, and this bound turns it into an error instead of a hang.
_MAX_ACTION_ROUNDS = 10_000
# Messages the worker applies per transaction at most. A transaction stores what it changed,
# plus the header: a bigger batch saves header writes and lock round trips under a backlog.
_BATCH = 2000
_LOCK_CHUNK = 1000  # device ids per locking statement
RETAINED_TIMEOUT_S = 30.0  # for reading the retained reports of the devices in flight


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rollout_view(row: RolloutRow, rollout: Rollout, *, devices: bool = False) -> dict[str, Any]:
    """What the API returns for one rollout (and the CLI's --json prints)."""
    view = _view(row, rollout_summary(rollout))
    if devices:
        view["device_records"] = [rollout.devices[k].to_dict() for k in sorted(rollout.devices)]
    return view


def rollout_summary(rollout: Rollout) -> dict[str, Any]:
    """The part of ``rollout_view`` that comes from the core: O(waves), the core keeps its counts."""
    return {
        "id": rollout.id, "model": rollout.model, "version": rollout.version, "selector": str(rollout.selector),
        "state": rollout.state.value, "current_wave": rollout.current_wave, "halt_reason": rollout.halt_reason,
        "policy": rollout.policy.to_dict(), "seed": rollout.plan.seed, "profiles": sorted(rollout.targets),
        "started_at": _iso(rollout.started_at), "finished_at": _iso(rollout.finished_at),
        "waves": [_wave_view(s.to_dict()) for s in rollout.wave_summaries()],
        "devices": rollout.status_counts(), "assigned": rollout.assigned_count(),
    }


_BEFORE_TIMES = ("id", "model", "version", "selector", "state", "current_wave", "halt_reason", "policy", "seed",
                 "profiles")


def _view(row: RolloutRow, summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` with the header row's times and log, in the view's order (a copy: summaries are shared)."""
    rest: dict[str, Any] = copy.deepcopy(dict(summary))
    view = {k: rest.pop(k) for k in _BEFORE_TIMES}
    return {**view, "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at), **rest,
            "log": list(row.log[-50:])}


def _wave_view(wave: dict[str, Any]) -> dict[str, Any]:
    if wave.get("stage") is not None:
        wave["stage_summary"] = stage_summary(wave)
    return wave


class RetainedReports(Protocol):
    """Reads the retained message of each topic named (absent: none retained); ``FleetMqtt`` is the real one."""

    def retained(self, topic_names: Sequence[str], timeout: float) -> dict[str, bytes]: ...


@dataclass(frozen=True)
class _Input:
    """One thing a device said, as the rollout core takes it."""

    device_id: str
    kind: str                   # "event", "report", "online" or "offline"
    event: str = ""
    model: str | None = None    # None: concerns every rollout (presence, reports)
    version: str | None = None
    reason: str = ""
    report: DeviceReport | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("event", "report", "online", "offline") or (self.kind == "event") != (self.event in EVENTS) \
                or (self.kind == "report") != (self.report is not None):
            raise ValueError(f"not a rollout input: kind {self.kind!r}, event {self.event!r}")

    def matters(self, rollout: Rollout) -> bool:
        record = rollout.devices.get(self.device_id)
        if record is None:
            return False
        if self.report is not None:
            return rollout.report_changes(self.device_id, self.report)
        return self.kind == "event" or record.online != (self.kind == "online")

    def feed(self, rollout: Rollout, now: datetime) -> list[Action]:
        if self.report is not None:
            return rollout.device_reported(self.device_id, self.report, now)
        if self.kind == "online":
            return rollout.device_online(self.device_id, now)
        if self.kind == "offline":
            return rollout.device_offline(self.device_id, now)
        return rollout.device_event(self.device_id, self.event, now, self.reason, self.version)


def _event_inputs(device_id: str, event: Mapping[str, Any]) -> list[_Input]:
    kind, model, version = event.get("event"), event.get("model"), event.get("version")
    if kind not in EVENTS or not isinstance(model, str):
        return []  # a refusal before the device trusted the document names no model: timeouts cover it
    return [_Input(device_id, "event", str(kind), model, version if isinstance(version, str) else None,
                   str(event.get("reason") or ""))]


def _served(reported: Any, model: str) -> str | None:
    """The version of ``model`` a stored ``reported`` document says the device serves, whatever its shape."""
    models = reported.get("models") if isinstance(reported, Mapping) else None
    entry = models.get(model) if isinstance(models, Mapping) else None
    version = entry.get("version") if isinstance(entry, Mapping) else None
    return version if isinstance(version, str) else None


def _stored_messages(device_id: str, reported: Any, online: bool) -> list[tuple[str, bytes]]:
    """The ``reported`` messages a stored report stands for: it, then the last will if the device left since."""
    topic = topics.reported(device_id)
    messages = [(topic, json.dumps(reported).encode())] if isinstance(reported, dict) else []
    if not online:
        messages.append((topic, json.dumps({"device_id": device_id, "online": False}).encode()))
    return messages


_Assigning = AssignVersion | AssignPrevious | AssignCandidate | WithdrawCandidate


@dataclass(frozen=True)
class _Change:
    """A rollout changed (or looked at) in a transaction: to keep and publish once it commits."""

    row: RolloutRow
    rollout: Rollout
    issued: list[IssuedAssignment]
    view: dict[str, Any]


def _wanted(action: _Assigning) -> Wanted:
    """The desired entry an assigning action names."""
    if isinstance(action, AssignVersion):
        return action.version
    if isinstance(action, AssignPrevious):
        return action.previous_version
    if isinstance(action, AssignCandidate):
        return WithCandidate(action.serving_version, action.target.version, action.mode, action.rate)
    return action.serving_version


def _named(action: _Assigning) -> str:
    wanted = _wanted(action)
    if isinstance(wanted, WithCandidate):
        return f"{wanted.version} with candidate {wanted.candidate} ({wanted.mode})"
    return wanted


class RolloutEngine:
    """Creates rollouts and feeds them inputs, one locked transaction per rollout change."""

    def __init__(self, db: Database, assignments: Assignments, *,
                 clock: Callable[[], datetime] = _utcnow, reports: RetainedReports | None = None) -> None:
        self.db = db
        self.assignments = assignments
        self.clock = clock
        self.reports = reports
        self.malformed_reports = 0  # reported documents skipped for their shape (docs/contracts.md)
        self._malformed_devices: set[str] = set()  # logged once each
        self._handoff: Callable[[list[IssuedAssignment]], None] | None = None
        self.store = RolloutStore(rollout_summary)

    def hand_publishing_to(self, handoff: Callable[[list[IssuedAssignment]], None] | None) -> None:
        """Let ``handoff`` publish what this engine issues from now on (None: publish inline again).

        ``RolloutWorker`` calls this with its own queue: the assignments are stored and
        committed before the hand-off, so if they never go out, ``Assignments.maintain`` sends them.
        """
        self._handoff = handoff

    # -- operator commands -----------------------------------------------------------------

    def create(self, model: str, version: str, selector: str = "", policy: RolloutPolicy | None = None, *,
               seed: int | None = None) -> dict[str, Any]:
        """Plan waves over the matching devices and start the first wave at once."""
        now = self.clock()
        parsed = Selector.parse(selector) if selector.strip() else Selector.everything()
        rollout_id = f"ro-{secrets.token_hex(6)}"
        issued: list[IssuedAssignment] = []
        with self.db.session() as session:
            self._lock_model(session, model)
            row = session.scalars(select(ModelRow).where(ModelRow.name == model, ModelRow.version == version)
                                  ).one_or_none()
            if row is None:
                raise NotFoundError(f"model {model}@{version} is not published",
                                    fix=f"push it first: edgefleet models push {model}-{version}.tar.gz")
            if row.yanked:
                raise ConflictError(f"model {model}@{version} is yanked and can never be rolled out",
                                    fix="publish a new version and roll that out")
            live = session.scalars(select(RolloutRow.id).where(RolloutRow.model == model,
                                                               RolloutRow.state.in_(LIVE_STATES))).first()
            if live is not None:
                raise ConflictError(f"rollout {live} of {model} is still live; two rollouts of one model would "
                                    "fight over the same devices",
                                    fix=f"wait for it, or `edgefleet rollouts abort {live}`")
            target = ModelTarget(row.version, row.target_path, row.sha256, row.length)
            rollout = Rollout.create(rollout_id, model, version, selector=parsed,
                                     targets=dict.fromkeys(row.profiles, target),
                                     devices=self._fleet(session, model), seed=new_seed() if seed is None else seed,
                                     policy=policy)
            stored = RolloutRow(id=rollout_id, model=model, version=version, state=rollout.state.value,
                                spec={}, header={}, revision=0, log=[], created_at=now, updated_at=now)
            session.add(stored)
            self._log(stored, now, f"created: {model}@{version} to {len(rollout.devices)} matching device(s) "
                                   f"in {len(rollout.plan.waves)} wave(s), seed {rollout.plan.seed}")
            issued = self._execute(session, stored, rollout, rollout.start(now), now)
            self.store.add(session, stored, rollout, now)
            view = rollout_view(stored, rollout)
        self.store.keep(rollout_id, stored.revision, rollout)
        self._publish(issued)
        return view

    def get(self, rollout_id: str, *, devices: bool = False) -> dict[str, Any]:
        with self.db.session() as session:
            row = session.scalars(self.store.header_query(rollout_id)).one_or_none()
            if row is None:
                raise NotFoundError(f"no rollout {rollout_id}", fix="list rollouts with `edgefleet rollouts list`")
            summary = None if devices else self.store.summary(rollout_id, row.revision)
            if summary is not None:
                return _view(row, summary)  # this revision was stored or read here: no device row read
            row = session.scalars(self.store.share_lock(session, self.store.header_query(rollout_id))
                                  .execution_options(populate_existing=True)).one()
            [(row, rollout)] = self.store.read(session, [row])
            return rollout_view(row, rollout, devices=devices)

    def list_rollouts(self, *, state: str | None = None) -> list[dict[str, Any]]:
        with self.db.session() as session:
            query = select(RolloutRow).order_by(RolloutRow.created_at.desc(), RolloutRow.id).options(
                defer(RolloutRow.spec))
            if state is not None:
                query = query.where(RolloutRow.state == state)
            rows = list(session.scalars(query))
            summaries = {r.id: self.store.summary(r.id, r.revision) for r in rows}
            missing = [r.id for r in rows if summaries[r.id] is None]
            if missing:
                locked = session.scalars(self.store.share_lock(session, query.where(RolloutRow.id.in_(missing)))
                                         .execution_options(populate_existing=True))
                summaries.update((r.id, rollout_summary(rollout)) for r, rollout in self.store.read(session, locked))
            return [_view(r, summaries[r.id] or {}) for r in rows]

    def pause(self, rollout_id: str) -> dict[str, Any]:
        return self._change(rollout_id, lambda r, now, _s: r.pause(now), "paused by an operator")

    def resume(self, rollout_id: str) -> dict[str, Any]:
        return self._change(rollout_id, lambda r, now, _s: r.resume(now), "resumed by an operator")

    def abort(self, rollout_id: str) -> dict[str, Any]:
        return self._change(rollout_id, lambda r, now, _s: r.abort(now), "aborted by an operator")

    def rollback(self, rollout_id: str) -> dict[str, Any]:
        return self._change(rollout_id, lambda r, now, _s: r.rollback(now), "rolled back by an operator")

    # -- inputs from the fleet ---------------------------------------------------------------

    def handle_message(self, topic: str, payload: bytes) -> None:
        """MQTT handler for device ``events`` and ``reported`` messages; others are ignored."""
        self.handle_messages([(topic, payload)])

    def handle_messages(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Apply a batch of messages, in order, with ONE locked transaction per rollout concerned.

        A wave of devices reports in bursts; taking the rollout's lock once per burst instead
        of once per message is what keeps the engine ahead of a few hundred devices.
        """
        inputs = [i for topic, payload in messages for i in self._parse(topic, payload)]
        if inputs:
            self._apply(inputs)

    def _parse(self, topic: str, payload: bytes) -> list[_Input]:
        """The rollout inputs in one ``events`` or ``reported`` message (none for anything else)."""
        try:
            device_id, kind = topics.parse_device_topic(topic)
            document = json.loads(payload) if payload else None
        except ValueError as exc:
            log.warning("rollout engine dropped a message on %s: %s", topic, exc)
            return []
        if not isinstance(document, dict) or document.get("device_id", device_id) != device_id:
            return []
        if kind == "events":
            return _event_inputs(device_id, document)
        if kind != "reported":
            return []
        try:
            report = parse_reported(document)
        except ReportError as exc:
            self._malformed(device_id, exc)
            online = document.get("online")  # its presence still counts
            return [_Input(device_id, "online" if online else "offline")] if isinstance(online, bool) else []
        return [_Input(device_id, "report", report=report)]

    def _malformed(self, device_id: str, exc: ReportError) -> None:
        self.malformed_reports += 1
        if device_id not in self._malformed_devices:
            self._malformed_devices.add(device_id)
            log.warning("device %s reports a malformed document (%s); its rollout outcome is taken from its "
                        "events only", device_id, exc.message)

    def device_event(self, device_id: str, event: Mapping[str, Any]) -> None:
        """One lifecycle event (docs/contracts.md ``events``) to the live rollout it concerns."""
        self._apply(_event_inputs(device_id, event))

    def device_presence(self, device_id: str, online: bool) -> None:
        self._apply([_Input(device_id, "online" if online else "offline")])

    def _apply(self, inputs: Sequence[_Input]) -> None:
        # One transaction for the whole batch, the live rollouts' lookup included: per batch,
        # the round trips of a session are what is left to pay once only changed rows are written.
        with self.db.session() as session:
            changes = []
            for rollout_id, model in self._live(session):  # in id order: the order rollouts are locked in
                # By model, not by the event's rollout id: one model has at most one live rollout,
                # and a device's assignment may carry another rollout's id (another model's, or a
                # refresh) while it updates this model. The core filters by device and version.
                relevant = [i for i in inputs if i.model in (None, model)]
                if relevant:
                    changes.append(self._feed(session, rollout_id, relevant))
        for change in changes:
            self._changed(change)

    def _feed(self, session: Session, rollout_id: str, inputs: Sequence[_Input]) -> _Change:
        # Each input is checked against the state the ones before it left: a repeated "online"
        # (every report of an updating device says so) changes nothing, and feeding it anyway
        # would re-evaluate every wave, a pass over the whole fleet; the tick re-evaluates for time.
        return self._change_in(session, rollout_id,
                               lambda r, now, _s: [a for i in inputs if i.matters(r) for a in i.feed(r, now)],
                               None, only_if=lambda r: any(i.matters(r) for i in inputs), view=False)

    def reconcile(self) -> bool:
        """Replay the last reports of every device in flight in a live rollout; False: try again later.

        First the report stored in the database (it also holds devices that are offline now: the
        broker retains their last will instead), then the one the broker retains, when this
        engine has a ``RetainedReports``. A server runs this once when it starts: whatever its
        predecessor missed or lost in its queues is in one of the two. Replaying a report the
        rollout already took changes nothing.
        """
        in_flight = self.in_flight()
        if not in_flight:
            return True
        stored: list[tuple[str, bytes]] = []
        with self.db.session() as session:
            ids = sorted(in_flight)
            for start in range(0, len(ids), _LOCK_CHUNK):
                for device_id, reported, online in session.execute(
                        select(DeviceRow.id, DeviceRow.reported, DeviceRow.online)
                        .where(DeviceRow.id.in_(ids[start:start + _LOCK_CHUNK]))):
                    stored += _stored_messages(device_id, reported, online)
        if stored:
            self.handle_messages(stored)
        if self.reports is None:
            return True
        try:
            retained = self.reports.retained([topics.reported(d) for d in sorted(in_flight)], RETAINED_TIMEOUT_S)
        except ServerError as exc:
            log.warning("reading the retained reports of %d device(s) in flight failed (%s); trying again",
                        len(in_flight), exc)
            return False
        self.handle_messages(sorted(retained.items()))
        log.info("reconciled %d device(s) in flight from %d stored and %d retained report(s)", len(in_flight),
                 len(stored), len(retained))
        return True

    def in_flight(self) -> set[str]:
        """Devices assigned (or timed out) in a live rollout: those whose outcome may be unknown."""
        with self.db.session() as session:
            return self.store.in_flight(session, LIVE_STATES, ("assigned", "candidate", "timed_out"))

    def tick(self) -> int:
        """Advance every live rollout; return how many were ticked. Safe to call from every replica."""
        live = self._live()
        for rollout_id, _ in live:
            self._change(rollout_id, self._tick_one, None, view=False)
            self._stage_figures(rollout_id)
        return len(live)

    def _stage_figures(self, rollout_id: str) -> None:
        """Gather the running stage's figures, if the core asks for them, and hand them in.

        Read in a transaction of its own, BEFORE the rollout's lock is taken: a wave's records
        can be many rows, and the devices' events must not wait behind that read. The core
        ignores figures for a stage that was decided meanwhile.
        """
        now = self.clock()
        with self.db.session() as session:
            header = session.scalars(select(RolloutRow.header).where(RolloutRow.id == rollout_id)).one_or_none()
            stages = header.get("stages") if isinstance(header, dict) else None
            if not stages or all(s.get("verdict") is not None for s in stages if isinstance(s, dict)):
                return  # the usual case, told from the header alone
        with self.db.session() as session:
            row = session.scalars(self.store.share_lock(session, self.store.header_query(rollout_id))).one_or_none()
            query = None if row is None else self.store.read(session, [row])[0][1].stage_query(now)
        if query is None:
            return
        with self.db.session() as session:  # apart from the share lock: writers must not wait on this read
            figures = gather(session, query)
        self._change(rollout_id, lambda r, _now, _s: r.stage_figures(query.wave, figures, now), None, view=False)

    # -- internals ----------------------------------------------------------------------------

    def _tick_one(self, rollout: Rollout, now: datetime, session: Session) -> list[Action]:
        actions: list[Action] = []
        model = session.scalars(select(ModelRow).where(ModelRow.name == rollout.model,
                                                       ModelRow.version == rollout.version)).one_or_none()
        if model is None or model.yanked:
            actions += rollout.yank(now, "the registry no longer offers it")
        for device in self._newcomers(session, rollout):
            if device.device_id not in rollout.devices:
                actions += rollout.add_device(device, now)
        return actions + rollout.tick(now)

    def _live(self, session: Session | None = None) -> list[tuple[str, str]]:
        if session is None:
            with self.db.session() as own:
                return self._live(own)
        return [(r.id, r.model) for r in session.execute(
            select(RolloutRow.id, RolloutRow.model).where(RolloutRow.state.in_(LIVE_STATES)).order_by(RolloutRow.id))]

    def _lock_model(self, session: Session, model: str) -> None:
        """Serialise rollout creation per model, so two replicas cannot both start one."""
        if self.db.engine.dialect.name == "sqlite":
            session.execute(update(ModelRow).where(ModelRow.name == model).values(name=ModelRow.name))
        else:
            session.execute(select(ModelRow.id).where(ModelRow.name == model).with_for_update())

    def _lock(self, session: Session, rollout_id: str) -> RolloutRow | None:
        if self.db.engine.dialect.name == "sqlite":
            # SQLite has no row locks: a write first takes the database's writer lock, so no
            # other connection can read-modify-write this rollout until we commit.
            session.execute(update(RolloutRow).where(RolloutRow.id == rollout_id)
                            .values(updated_at=RolloutRow.updated_at))
        return session.scalars(self.store.header_query(rollout_id)
                               .with_for_update().execution_options(populate_existing=True)).one_or_none()

    def _change(self, rollout_id: str, step: Callable[[Rollout, datetime, Session], list[Action]], note: str | None, *,
                only_if: Callable[[Rollout], bool] | None = None, view: bool = True) -> dict[str, Any]:
        """Run ``step`` on the rollout under its row lock and store what it changed; its view (if ``view``)."""
        with self.db.session() as session:
            change = self._change_in(session, rollout_id, step, note, only_if=only_if, view=view)
        return self._changed(change)

    def _change_in(self, session: Session, rollout_id: str, step: Callable[[Rollout, datetime, Session], list[Action]],
                   note: str | None, *, only_if: Callable[[Rollout], bool] | None = None,
                   view: bool = True) -> _Change:
        """``_change``'s work inside ``session``; the caller commits, then hands the result to ``_changed``."""
        now = self.clock()
        row = self._lock(session, rollout_id)
        if row is None:
            raise NotFoundError(f"no rollout {rollout_id}", fix="list rollouts with `edgefleet rollouts list`")
        # The copy this process holds when the revision is still its own: most messages
        # concern no rollout or change nothing, and then this costs the lock alone.
        rollout = self.store.load(session, row)
        if only_if is not None and not only_if(rollout):
            return _Change(row, rollout, [], {})
        wave_before, logged = rollout.current_wave, len(row.log)
        stages_before = dict(rollout.stages)
        header_before = rollout.header_to_dict()
        actions = step(rollout, now, session)
        if note:
            self._log(row, now, note)
        issued = self._execute(session, row, rollout, actions, now)
        if rollout.current_wave != wave_before:
            self._log(row, now, f"wave {rollout.current_wave + 1} started")
        self._log_stages(row, now, stages_before, rollout)
        if rollout.changed_devices() or rollout.header_to_dict() != header_before or len(row.log) != logged:
            # most ticks change nothing: leave the row (and its updated_at) alone then
            self.store.save(session, row, rollout, now)
        return _Change(row, rollout, issued, rollout_view(row, rollout) if view else {})

    def _changed(self, change: _Change) -> dict[str, Any]:
        """After the commit: the copy is this revision's, and the assignments may go out.

        Had anything failed, the copy (changed in memory, not in the database) would have been
        dropped with the exception instead, and nothing published.
        """
        self.store.keep(change.row.id, change.row.revision, change.rollout)
        self._publish(change.issued)
        return change.view

    def _execute(self, session: Session, row: RolloutRow, rollout: Rollout, actions: Iterable[Action],
                 now: datetime) -> list[IssuedAssignment]:
        pending = list(actions)
        issued: dict[str, IssuedAssignment] = {}
        sent_back = withdrawn = 0
        rounds = 0
        locked: set[str] = set()
        while pending:
            rounds += 1
            if rounds > _MAX_ACTION_ROUNDS:
                raise ServerError(f"rollout {rollout.id} produced actions without end", fix="report this bug")
            action = pending.pop(0)
            if isinstance(action, _Assigning):
                # Issue the run of assignments at the front together (one device at most once per
                # run, so each is issued against the map the one before it stored).
                run: list[_Assigning] = [action]
                in_run = {action.device_id}
                while pending:
                    head = pending[0]
                    if not isinstance(head, _Assigning) or head.device_id in in_run:
                        break
                    run.append(head)
                    in_run.add(head.device_id)
                    del pending[0]
                if not in_run <= locked:
                    locked |= self._lock_devices(session, [a.device_id for a in [*run, *pending]
                                                           if isinstance(a, _Assigning)])
                done, refused = self.assignments.next_assignments(
                    session, {a.device_id: {a.model: _wanted(a)} for a in run}, rollout.id, now)
                issued.update({i.device_id: i for i in done})
                sent = {a.device_id for a in run if isinstance(a, AssignVersion)}
                pending += self._assigned(session, rollout, [i for i in done if i.device_id in sent], now)
                candidates = {a.device_id for a in run if isinstance(a, AssignCandidate)}
                for candidate in done:
                    if candidate.device_id in candidates:
                        rollout.assignment_issued(candidate.device_id, candidate.counter)
                for assign in run:
                    exc = refused.get(assign.device_id)
                    if exc is None:
                        sent_back += isinstance(assign, AssignPrevious)
                        withdrawn += isinstance(assign, WithdrawCandidate)
                        continue
                    self._log(row, now, f"{assign.device_id}: not assigned {assign.model}@{_named(assign)}: "
                                        f"{exc.message}")
                    if isinstance(assign, AssignVersion | AssignCandidate):
                        # The core thought the device eligible; tell it, so it counts as failed.
                        pending += rollout.device_event(assign.device_id, "failed", now,
                                                        f"not assignable: {getattr(exc, 'reason', 'unknown')}",
                                                        rollout.version)
            elif isinstance(action, Halt):
                log.warning("rollout %s halted: %s", rollout.id, action.reason)
                self._log(row, now, f"halted: {action.reason}")
            elif isinstance(action, Completed):
                self._log(row, now, "completed: every wave passed")
            elif isinstance(action, AlertNeeded):
                log.warning("rollout %s: %s", rollout.id, action.message)
                self._log(row, now, f"alert {action.topic}: {action.message}")
        if sent_back:
            self._log(row, now, f"rolled back: {sent_back} device(s) sent their previous version")
        if withdrawn:
            self._log(row, now, f"candidate withdrawn from {withdrawn} device(s): they serve their previous version")
        return list(issued.values())

    def _log_stages(self, row: RolloutRow, now: datetime, before: Mapping[int, Any], rollout: Rollout) -> None:
        """Log each stage that opened or was decided in this change (the status view's log)."""
        for wave, stage in sorted(rollout.stages.items()):
            old = before.get(wave)
            if stage.opened_at is not None and (old is None or old.opened_at is None):
                self._log(row, now, f"wave {wave + 1}: {stage.mode} stage running on {stage.sent} device(s)")
            if stage.decided and (old is None or not old.decided):
                self._log(row, now, f"wave {wave + 1}: {stage.mode} stage {stage.verdict}: {stage.reason}")

    def _assigned(self, session: Session, rollout: Rollout, issued: Sequence[IssuedAssignment],
                  now: datetime) -> list[Action]:
        """Tell the core under which counter each device got the version, and replay its stored report.

        A device that already serves the version installs nothing and reports nothing new: its
        stored report is the only news of its outcome there will be.
        """
        for assignment in issued:
            rollout.assignment_issued(assignment.device_id, assignment.counter)
        ids = [a.device_id for a in issued]
        actions: list[Action] = []
        for start in range(0, len(ids), _LOCK_CHUNK):
            for device_id, reported, online in session.execute(
                    select(DeviceRow.id, DeviceRow.reported, DeviceRow.online)
                    .where(DeviceRow.id.in_(ids[start:start + _LOCK_CHUNK]))):
                if _served(reported, rollout.model) != rollout.version:
                    continue  # the usual case, decided without parsing the whole report
                try:
                    report = parse_reported(reported)
                except ReportError as exc:
                    self._malformed(device_id, exc)
                    continue
                actions += rollout.device_reported(device_id, report, now)
                if not online:
                    actions += rollout.device_offline(device_id, now)
        return actions

    @staticmethod
    def _log(row: RolloutRow, now: datetime, message: str) -> None:
        row.log = [*(row.log or []), {"at": _iso(now), "message": message}][-LOG_LIMIT:]

    def _lock_devices(self, session: Session, device_ids: Iterable[str]) -> set[str]:
        """Row-lock ``device_ids`` in id order (PostgreSQL; SQLite's writer lock covers it already)."""
        ids = sorted(set(device_ids))
        if self.db.engine.dialect.name == "postgresql":
            for start in range(0, len(ids), _LOCK_CHUNK):
                session.execute(select(DeviceRow.id).where(DeviceRow.id.in_(ids[start:start + _LOCK_CHUNK]))
                                .order_by(DeviceRow.id).with_for_update()).all()
        return set(ids)

    def _publish(self, issued: list[IssuedAssignment]) -> None:
        if not issued:
            return
        if self._handoff is not None:
            self._handoff(issued)
        else:
            self.publish_now(issued)

    def publish_now(self, issued: Sequence[IssuedAssignment]) -> None:
        """Publish stored assignments together; what fails stays stored and ``maintain`` re-sends it."""
        try:
            unconfirmed = self.assignments.publish_all(issued)
        except (ServerError, OSError, SQLAlchemyError) as exc:
            log.warning("publishing %d assignment(s) failed (%s); they will be re-sent", len(issued), exc)
            return
        if unconfirmed:
            log.warning("the broker did not confirm the assignments of %d device(s) (%s...); they will be re-sent",
                        len(unconfirmed), ", ".join(unconfirmed[:3]))

    def _newcomers(self, session: Session, rollout: Rollout) -> list[RolloutDevice]:
        """Enrolled devices ``rollout`` has no record of and whose profile and labels its selector matches.

        The tick's question, every few seconds: the database leaves out the devices the
        rollout knows, and only the few that match are read whole, so a tick does not read
        the fleet's rows.
        """
        unknown = session.execute(
            select(DeviceRow.id, DeviceRow.profile, DeviceRow.labels)
            .where(DeviceRow.status == ENROLLED,
                   ~exists().where(RolloutDeviceRow.rollout_id == rollout.id, RolloutDeviceRow.device_id == DeviceRow.id))
            .order_by(DeviceRow.id))
        matching = [device_id for device_id, profile, labels in unknown
                    if rollout.selector.matches(RolloutDevice(device_id, profile, dict(labels or {})))]
        return self._fleet(session, rollout.model, only=matching) if matching else []

    def _fleet(self, session: Session, model: str, *, only: Sequence[str] | None = None) -> list[RolloutDevice]:
        """Every enrolled device (or those of ``only``) with the version of ``model`` it runs (reported, else desired)."""
        devices, wanted = select(DeviceRow).where(DeviceRow.status == ENROLLED), select(DeviceAssignmentRow)
        if only is None:
            listed = list(session.scalars(devices.order_by(DeviceRow.id)))
            desired = {r.device_id: r.models for r in session.scalars(wanted)}
        else:
            listed, desired = [], {}
            for start in range(0, len(only), _LOCK_CHUNK):
                chunk = only[start:start + _LOCK_CHUNK]
                listed += session.scalars(devices.where(DeviceRow.id.in_(chunk)).order_by(DeviceRow.id))
                desired.update((r.device_id, r.models)
                               for r in session.scalars(wanted.where(DeviceAssignmentRow.device_id.in_(chunk))))
        fleet = []
        for device in listed:
            # A malformed stored report (models as a list...) counts as no report: the desired map decides.
            version = _served(device.reported, model) or _served({"models": desired.get(device.id)}, model)
            fleet.append(RolloutDevice(device.id, device.profile, dict(device.labels), version))
        return fleet


def _senders(batch: Iterable[tuple[str, bytes]]) -> set[str]:
    """The devices whose messages are in ``batch`` (topics that are not a device's are skipped)."""
    senders = set()
    for topic, _ in batch:
        try:
            senders.add(topics.parse_device_topic(topic)[0])
        except ValueError:
            continue
    return senders


class RolloutWorker:
    """The engine's thread: reconciles at start, handles queued MQTT messages in order, ticks every ``interval`` s.

    ``submit`` is the MQTT handler. It only enqueues, because the engine publishes assignments
    and waits for the broker's acknowledgement, which would deadlock on paho's own loop thread.
    The worker also publishes everything the engine issues (``RolloutEngine.hand_publishing_to``),
    before it takes the next messages: devices are waiting for those.

    With ``send`` (QoS 0, ``FleetMqtt.send``; a getter, since the connection may come later), it
    also asks the devices in flight it has not heard from for ``quiet.quiet_s`` to report again
    (``fleet_server.rollouts.quiet``: their outcome's event and report may both have been lost).
    """

    def __init__(self, engine: RolloutEngine, interval: float = 5.0, *,
                 send: Callable[[], Send | None] | None = None, quiet: QuietPolicy | None = None,
                 on_asked: Callable[[int], None] | None = None) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.engine = engine
        self.interval = interval
        self._send = send
        self.quiet = QuietDevices(quiet)
        self._next_ask = 0.0
        self.asked = 0  # report commands sent
        self._on_asked = on_asked  # e.g. the edgefleet_rollout_report_requests_total counter's inc
        # None wakes the thread (to publish, or to stop)
        self._queue: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollout-worker", daemon=True)
        self._to_publish: list[IssuedAssignment] = []
        self._publish_lock = threading.Lock()

    def submit(self, topic: str, payload: bytes) -> None:
        self._queue.put((topic, payload))

    def publish(self, issued: list[IssuedAssignment]) -> None:
        """Publish ``issued`` (stored and committed) on the worker's thread, soon."""
        with self._publish_lock:
            self._to_publish.extend(issued)
        self._queue.put(None)

    def _flush(self) -> None:
        with self._publish_lock:
            issued, self._to_publish = self._to_publish, []
        if issued:
            self.engine.publish_now(issued)

    def start(self) -> RolloutWorker:
        self.engine.hand_publishing_to(self.publish)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=30)
        self.engine.hand_publishing_to(None)

    def _ask_quiet(self) -> None:
        """Send ``report`` to the devices in flight that went quiet (checked a few times per ``quiet_s``)."""
        send = self._send() if self._send is not None else None
        now = time.monotonic()
        if send is None or now < self._next_ask:
            return
        self._next_ask = now + self.quiet.policy.quiet_s / 4
        quiet = self.quiet.due(self.engine.in_flight(), now)
        if quiet:
            sent = send([(topics.commands(d), REPORT_COMMAND) for d in quiet])
            self.asked += sent
            if self._on_asked is not None:
                self._on_asked(sent)
            log.info("asked %d quiet device(s) in flight to report again (e.g. %s)", len(quiet), ", ".join(quiet[:3]))

    def _reconcile(self) -> bool:
        try:
            return self.engine.reconcile()
        except Exception:  # a database hiccup at start: the next tick tries again
            log.exception("reconciling the devices in flight failed; trying again at the next tick")
            return False

    def _run(self) -> None:
        next_tick = time.monotonic() + self.interval
        # Before anything else: what a predecessor missed while it was down, or lost in its queues.
        reconciled = self._reconcile()
        while not self._stop.is_set():
            batch: list[tuple[str, bytes]] = []
            try:
                item = self._queue.get(timeout=max(0.0, next_tick - time.monotonic()))
                while item is not None:
                    batch.append(item)
                    if len(batch) >= _BATCH:
                        break  # checked before taking the next, which would otherwise be lost
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            try:
                self._flush()
                if batch:
                    self.quiet.heard(_senders(batch), time.monotonic())
                    self.engine.handle_messages(batch)
                    self._flush()
                if time.monotonic() >= next_tick and not self._stop.is_set():
                    next_tick = time.monotonic() + self.interval
                    self.engine.tick()
                    self._flush()
                    self.engine.assignments.maintain(self.engine.clock())
                    if not reconciled:
                        reconciled = self._reconcile()
                    self._ask_quiet()
            except Exception:  # the worker must outlive a database or broker hiccup
                log.exception("rollout engine step failed; carrying on")
        try:
            self._flush()  # what was handed over before stop still goes out while the broker is up
        except Exception:
            log.exception("publishing before the rollout worker stopped failed; maintain re-sends it")
