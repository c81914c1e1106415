"""Signed per-device assignments: what each device should run, issued, stored and published.

Every device has one desired model map (model name -> version). ``Assignments.next_assignments``
changes the maps of many devices at once (``next_assignment``: one): it locks the devices'
rows in id order (``SELECT ... FOR UPDATE`` on PostgreSQL, SQLite's single writer lock), reads
their maps, checks every entry, bumps the eligible devices' ``assignment_counter`` IN THE
DATABASE in one ``UPDATE ... SET assignment_counter = assignment_counter + 1 RETURNING``, signs
each new document with the director key, and stores the envelopes as the devices' latest. Two
server replicas therefore never issue the same counter to a device, and a refused device or a
failed transaction (a crash) leaves the counter where it was.

Publishing is separate from issuing because the rollout engine issues inside its own
transaction and may publish only after it commits: ``publish_all`` sends the envelopes retained
at QoS 1 on ``devices/{id}/desired``, all of them first and then waits for every PUBACK against
one deadline (when the publisher can: ``BatchPublisher``), marks the confirmed ones published
in one UPDATE, and reads the stored counters once to re-send any device whose latest envelope
is newer than what went out (latest wins on the retained topic). ``publish`` is the same for
one assignment. ``republish`` sends devices' stored latest again (``fleet_server.rollouts.resend``:
a device reported an older one). ``maintain`` is the periodic pass: it re-publishes any
envelope that was stored but not confirmed published (a broker outage, a replica that died
between commit and publish) and re-issues assignments that have passed half their lifetime,
so a device never holds an expired one.

A desired entry may carry a candidate beside the serving version (issue 18, a rollout's shadow
or canary stage): pass a :class:`WithCandidate` instead of a version string. The candidate is
checked for the device like the serving version, and it stays in the device's map through
refreshes and changes of other models, until an entry for its model is given again: a plain
version string (the promotion to the candidate, or the withdrawal back to the serving version)
replaces the whole entry, candidate included.

Checked here, not only in the rollout core: a device is never assigned a model version that
is unknown, yanked, or not validated for the device's profile, nor a bundle whose manifest
schema its reported agent version cannot read (``edgefleet.manifest.agent_reads``), and a
revoked device is never assigned anything.

This module does not decide WHO gets WHAT (``fleet_server.rollouts.machine`` does), and it does not own
the broker connection (a ``Publisher`` is injected).

    ServerError                     (fleet_server.errors)
    └── InvalidInputError
        └── IneligibleError         the device may not be assigned that model version
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import (
    Table,
    bindparam,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from edgefleet import topics
from edgefleet.assignment import SHADOW, Assignment, Candidate, DirectorSigner, ModelTarget
from edgefleet.manifest import AGENT_READS_SINCE, agent_reads
from fleet_server.db import Database
from fleet_server.errors import BrokerError, InvalidInputError, NotFoundError
from fleet_server.tables import DeviceAssignmentRow, DeviceRow, ModelRow

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(days=7)
PUBLISH_TIMEOUT_S = 30.0  # for a whole batch of PUBACKs; what is unconfirmed by then, maintain re-sends
_IN_CHUNK = 1000  # ids per IN (...) list
ENROLLED = "enrolled"  # fleet_server.registry.devices' status for a device that may receive assignments


class IneligibleError(InvalidInputError):
    """The device may not be assigned that model version (profile, agent too old, yank, revocation)."""

    def __init__(self, message: str, *, reason: str, fix: str | None = None) -> None:
        # a stable code the rollout engine records per device
        self.reason = reason
        super().__init__(message, fix=fix)


class Publisher(Protocol):
    """Publishes one MQTT message at QoS 1 and returns once the broker has it.

    ``fleet_server.broker.connection.FleetMqtt`` is the real one.
    """

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...


@runtime_checkable
class BatchPublisher(Protocol):
    """Publishes many QoS 1 messages, then waits for all acknowledgements; True per confirmed message.

    ``fleet_server.broker.connection.FleetMqtt`` is one. A ``Publisher`` without it is driven one message at a time.
    """

    def publish_all(self, messages: Sequence[tuple[str, bytes]], *, retain: bool = False,
                    timeout: float = PUBLISH_TIMEOUT_S) -> list[bool]: ...


@dataclass(frozen=True)
class WithCandidate:
    """A desired entry: ``version`` serves, ``candidate`` runs beside it (``mode`` shadow or canary at ``rate``)."""

    version: str
    candidate: str
    mode: str
    rate: float


Wanted = str | WithCandidate  # what a desired entry names: a version, or a version with a candidate


@dataclass(frozen=True)
class IssuedAssignment:
    """A signed assignment stored as a device's latest; publish it after the transaction commits."""

    device_id: str
    counter: int
    envelope: bytes
    models: Mapping[str, ModelTarget]
    rollout_id: str | None
    expires_at: datetime

    def __post_init__(self) -> None:
        if self.counter < 1 or not self.envelope:
            raise ValueError("an issued assignment has a counter >= 1 and an envelope")


def eligible_target(session: Session, device: DeviceRow, name: str, version: str) -> ModelTarget:
    """The TUF target for ``name@version`` if ``device`` may run it; else raise IneligibleError."""
    row = session.scalars(select(ModelRow).where(ModelRow.name == name, ModelRow.version == version)).one_or_none()
    return _eligible(row, device, name, version)


def _eligible(row: ModelRow | None, device: DeviceRow, name: str, version: str) -> ModelTarget:
    if row is None:
        raise IneligibleError(f"model {name}@{version} is not published", reason="unknown_version",
                              fix=f"push it first: edgefleet models push {name}-{version}.tar.gz")
    if row.yanked:
        raise IneligibleError(f"model {name}@{version} is yanked and can never be assigned", reason="yanked",
                              fix="publish a new version and roll that out")
    if device.profile not in row.profiles:
        raise IneligibleError(
            f"model {name}@{version} was validated for {', '.join(row.profiles) or 'no profile'}, "
            f"not for device {device.id}'s profile {device.profile}", reason="profile_not_validated",
            fix=f"convert the model for {device.profile} and push that bundle")
    schema = row.manifest.get("schema_version", 1) if isinstance(row.manifest, dict) else 1
    if not agent_reads(device.agent_version, schema):
        # An agent that predates the schema would fail the update at the manifest: say so here.
        since = AGENT_READS_SINCE.get(schema, "?")
        raise IneligibleError(
            f"model {name}@{version} is a schema-{schema} bundle, which device {device.id}'s agent "
            f"({device.agent_version or 'no version reported'}) cannot read: it needs edgefleet {since} or later",
            reason="agent_too_old", fix=f"upgrade the agent on {device.id} to edgefleet {since} or later")
    return ModelTarget(row.version, row.target_path, row.sha256, row.length)


class _ModelCache:
    """Model rows read once per issuing pass: a wave names one or two versions thousands of times."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.rows: dict[tuple[str, str], ModelRow | None] = {}

    def target(self, device: DeviceRow, name: str, version: str) -> ModelTarget:
        key = (name, version)
        if key not in self.rows:
            self.rows[key] = self.session.scalars(select(ModelRow).where(ModelRow.name == name,
                                                                        ModelRow.version == version)).one_or_none()
        return _eligible(self.rows[key], device, name, version)


def _wanted(target: ModelTarget) -> Wanted:
    """What a stored entry names, so a refresh re-checks (and keeps) its candidate too."""
    candidate = target.candidate
    if candidate is None:
        return target.version
    return WithCandidate(target.version, candidate.version, candidate.mode, candidate.rate)


def _resolve(cache: _ModelCache, device: DeviceRow, name: str, entry: Wanted) -> ModelTarget:
    if isinstance(entry, str):
        return cache.target(device, name, entry)
    serving = cache.target(device, name, entry.version)
    beside = cache.target(device, name, entry.candidate)
    candidate = Candidate.shadow(beside, entry.rate) if entry.mode == SHADOW else Candidate.canary(beside, entry.rate)
    return serving.with_candidate(candidate)


def _targets(data: Mapping[str, Any]) -> dict[str, ModelTarget]:
    return {str(n): ModelTarget.from_dict(t) for n, t in data.items()}


def _dump(models: Mapping[str, ModelTarget]) -> dict[str, Any]:
    return {n: t.to_dict() for n, t in sorted(models.items())}


class Assignments:
    """Issues, stores and publishes the signed assignments of every device."""

    def __init__(self, db: Database, signer: DirectorSigner, publisher: Publisher, *,
                 ttl: timedelta = DEFAULT_TTL) -> None:
        if ttl <= timedelta(minutes=2):
            raise ValueError("assignment ttl must be longer than 2 minutes")
        self.db = db
        self.signer = signer
        self.publisher = publisher
        self.ttl = ttl

    # -- issuing (inside the caller's transaction) -----------------------------------------

    def next_assignment(self, session: Session, device_id: str, models: Mapping[str, Wanted | None],
                        rollout_id: str | None, now: datetime, ttl: timedelta | None = None) -> IssuedAssignment:
        """Change ``device_id``'s desired map by ``models`` (name -> version, None removes) and sign it.

        Runs in ``session``'s transaction and does not commit or publish: the caller commits,
        then calls ``publish``. Raises IneligibleError (nothing stored, counter unchanged) if
        any model in the resulting map may not go to this device, NotFoundError if there is no
        such device.
        """
        issued, refused = self.next_assignments(session, {device_id: models}, rollout_id, now, ttl)
        if refused:
            raise refused[device_id]
        return issued[0]

    def next_assignments(self, session: Session, changes: Mapping[str, Mapping[str, Wanted | None]],
                         rollout_id: str | None, now: datetime, ttl: timedelta | None = None
                         ) -> tuple[list[IssuedAssignment], dict[str, IneligibleError | NotFoundError]]:
        """``next_assignment`` for many devices at once (device -> model changes), set-based.

        Returns what was issued and, per refused device, why; a refused device leaves no trace
        (its counter and envelope unchanged) and the others are issued all the same. A wave of
        thousands costs a handful of statements instead of several round trips per device.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        lifetime = ttl or self.ttl
        ids = sorted(changes)
        # Lock first, then read: the maps and statuses read below are what the previous issuer
        # committed, never a concurrent replica's half-way state, and two replicas issuing to
        # overlapping devices queue on the locks (taken in id order: no deadlock).
        devices = self._lock_devices(session, ids)
        current = {r.device_id: r for start in range(0, len(ids), _IN_CHUNK) for r in session.scalars(
            select(DeviceAssignmentRow).where(DeviceAssignmentRow.device_id.in_(ids[start:start + _IN_CHUNK]))
            .execution_options(populate_existing=True))}
        refused: dict[str, IneligibleError | NotFoundError] = {}
        wanted: dict[str, dict[str, ModelTarget]] = {}
        models = _ModelCache(session)
        for device_id in ids:
            try:
                wanted[device_id] = self._desired_targets(devices.get(device_id), device_id, current.get(device_id),
                                                          changes[device_id], models)
            except (IneligibleError, NotFoundError) as exc:
                refused[device_id] = exc
        counters: dict[str, int] = {}
        eligible = [d for d in ids if d in wanted]
        for start in range(0, len(eligible), _IN_CHUNK):
            counters.update({d: c for d, c in session.execute(
                update(DeviceRow).where(DeviceRow.id.in_(eligible[start:start + _IN_CHUNK]),
                                        DeviceRow.status == ENROLLED)
                .values(assignment_counter=DeviceRow.assignment_counter + 1)
                .returning(DeviceRow.id, DeviceRow.assignment_counter)
                .execution_options(synchronize_session=False))})
        issued_at = now.astimezone(UTC).replace(microsecond=0)
        issued = []
        for device_id in eligible:
            counter = counters.get(device_id)
            if counter is None:  # cannot happen under the lock; refuse rather than sign a guess
                refused[device_id] = IneligibleError(f"device {device_id} was revoked meanwhile and gets no "
                                                     "assignments", reason="device_revoked")
                continue
            targets = wanted[device_id]
            assignment = Assignment(device_id, counter, issued_at, issued_at + lifetime, rollout_id, targets)
            envelope = self.signer.sign(assignment)
            row = current.get(device_id) or DeviceAssignmentRow(device_id=device_id, published_counter=0)
            row.counter = counter
            row.models = _dump(targets)
            row.rollout_id = rollout_id
            row.envelope = envelope.decode()
            row.issued_at = issued_at
            row.expires_at = assignment.expires_at
            row.refresh_after = issued_at + lifetime / 2
            if device_id not in current:
                session.add(row)
            issued.append(IssuedAssignment(device_id, counter, envelope, targets, rollout_id, assignment.expires_at))
        session.flush()
        return issued, refused

    def _lock_devices(self, session: Session, ids: Sequence[str]) -> dict[str, DeviceRow]:
        """Row-lock and read the devices ``ids`` (sorted) in id order."""
        if self.db.engine.dialect.name == "sqlite" and ids:
            # SQLite has no row locks: a write takes the database's writer lock before we read.
            session.execute(update(DeviceRow).where(DeviceRow.id.in_(ids[:1])).values(id=DeviceRow.id)
                            .execution_options(synchronize_session=False))
        rows: dict[str, DeviceRow] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            rows.update({r.id: r for r in session.scalars(
                select(DeviceRow).where(DeviceRow.id.in_(ids[start:start + _IN_CHUNK])).order_by(DeviceRow.id)
                .with_for_update().execution_options(populate_existing=True))})
        return rows

    @staticmethod
    def _desired_targets(device: DeviceRow | None, device_id: str, current: DeviceAssignmentRow | None,
                         models: Mapping[str, Wanted | None], cache: _ModelCache) -> dict[str, ModelTarget]:
        """The device's desired map changed by ``models``, every entry (and candidate) checked for this device."""
        if device is None:
            raise NotFoundError(f"device {device_id} is not enrolled", fix="list devices with `edgefleet devices list`")
        if device.status != ENROLLED:
            raise IneligibleError(f"device {device_id} is {device.status} and gets no assignments",
                                  reason="device_revoked")
        wanted: dict[str, Wanted] = {n: _wanted(t) for n, t in (_targets(current.models) if current else {}).items()}
        for name, version in models.items():
            if version is None:
                wanted.pop(name, None)
            else:
                wanted[name] = version
        return {name: _resolve(cache, device, name, entry) for name, entry in sorted(wanted.items())}

    # -- convenience: issue, commit, publish ------------------------------------------------

    def assign(self, device_id: str, models: Mapping[str, Wanted | None], rollout_id: str | None,
               now: datetime, ttl: timedelta | None = None) -> IssuedAssignment:
        """Issue in a transaction of its own, commit, then publish."""
        with self.db.session() as session:
            issued = self.next_assignment(session, device_id, models, rollout_id, now, ttl)
        self.publish(issued)
        return issued

    def desired(self, device_id: str) -> dict[str, ModelTarget]:
        """The device's current desired model map (empty if it was never assigned)."""
        with self.db.session() as session:
            row = session.get(DeviceAssignmentRow, device_id)
            return _targets(row.models) if row else {}

    def latest_envelope(self, device_id: str) -> bytes | None:
        with self.db.session() as session:
            row = session.get(DeviceAssignmentRow, device_id)
            return row.envelope.encode() if row else None

    def latest_counters(self, device_ids: Sequence[str]) -> dict[str, int]:
        """The counter of each device's latest issued assignment (devices never assigned are absent)."""
        found: dict[str, int] = {}
        with self.db.session() as session:
            for start in range(0, len(device_ids), _IN_CHUNK):
                chunk = list(device_ids[start:start + _IN_CHUNK])
                found.update((d, int(c)) for d, c in session.execute(
                    select(DeviceAssignmentRow.device_id, DeviceAssignmentRow.counter)
                    .where(DeviceAssignmentRow.device_id.in_(chunk))))
        return found

    def republish(self, device_ids: Sequence[str]) -> list[str]:
        """Publish each device's stored latest envelope again (``fleet_server.rollouts.resend``: a device
        reported an older one); return the devices whose envelope the broker did not confirm."""
        sending: dict[str, tuple[int, bytes]] = {}
        with self.db.session() as session:
            for start in range(0, len(device_ids), _IN_CHUNK):
                chunk = list(device_ids[start:start + _IN_CHUNK])
                sending.update((d, (int(c), e.encode())) for d, c, e in session.execute(
                    select(DeviceAssignmentRow.device_id, DeviceAssignmentRow.counter, DeviceAssignmentRow.envelope)
                    .where(DeviceAssignmentRow.device_id.in_(chunk))))
        return self._publish_latest(sending)

    # -- publishing ------------------------------------------------------------------------

    def publish(self, issued: IssuedAssignment) -> None:
        """Publish one assignment (see ``publish_all``); BrokerError if the broker did not confirm it."""
        if self.publish_all([issued]):
            raise BrokerError(f"the broker did not confirm the assignment of {issued.device_id}; it stays "
                              "stored and the periodic pass re-sends it", fix="check the broker is reachable")

    def publish_all(self, issued: Iterable[IssuedAssignment]) -> list[str]:
        """Publish many assignments at once; return the devices whose envelope the broker did not confirm.

        Two replicas can commit counters 5 and 6 and publish them in the opposite order; the
        broker would then retain 5, which the device refuses as a replay. So after publishing we
        look again, and publish the stored latest wherever it is newer than what we sent. What
        is not confirmed stays unmarked in the database, and ``maintain`` sends it again.
        """
        latest: dict[str, tuple[int, bytes]] = {}
        for item in issued:
            if item.device_id not in latest or latest[item.device_id][0] < item.counter:
                latest[item.device_id] = (item.counter, item.envelope)
        return self._publish_latest(latest)

    def _publish_latest(self, sending: Mapping[str, tuple[int, bytes]]) -> list[str]:
        if not sending:
            return []
        unconfirmed = set(self._deliver(sending))
        newer = self._newer_than({d: c for d, (c, _) in sending.items()})
        if newer:
            unconfirmed -= set(newer)
            unconfirmed |= set(self._deliver(newer))
        return sorted(unconfirmed)

    def _deliver(self, sending: Mapping[str, tuple[int, bytes]]) -> list[str]:
        """Send each device's envelope, mark the confirmed ones published; return the unconfirmed devices."""
        ids = list(sending)
        confirmed = self._send_all([(topics.desired(d), sending[d][1]) for d in ids])
        self._mark_published({d: sending[d][0] for d, ok in zip(ids, confirmed, strict=True) if ok})
        return [d for d, ok in zip(ids, confirmed, strict=True) if not ok]

    def _send_all(self, messages: Sequence[tuple[str, bytes]]) -> list[bool]:
        if isinstance(self.publisher, BatchPublisher):
            return self.publisher.publish_all(messages, retain=True, timeout=PUBLISH_TIMEOUT_S)
        confirmed = []
        for topic, payload in messages:
            try:
                self.publisher.publish(topic, payload, retain=True)
                confirmed.append(True)
            except (BrokerError, OSError) as exc:
                log.warning("publishing to %s failed (%s); it will be re-sent", topic, exc)
                confirmed.append(False)
        return confirmed

    def _newer_than(self, sent: Mapping[str, int]) -> dict[str, tuple[int, bytes]]:
        """The stored envelopes of devices whose stored counter is above what was ``sent``."""
        ids = list(sent)
        newer: dict[str, tuple[int, bytes]] = {}
        with self.db.session() as session:
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start:start + _IN_CHUNK]
                stored = session.execute(select(DeviceAssignmentRow.device_id, DeviceAssignmentRow.counter)
                                         .where(DeviceAssignmentRow.device_id.in_(chunk))).all()
                behind = [d for d, counter in stored if counter > sent[d]]
                if behind:
                    # only the few that moved on carry their (kilobyte) envelopes back
                    newer.update({d: (c, e.encode()) for d, c, e in session.execute(
                        select(DeviceAssignmentRow.device_id, DeviceAssignmentRow.counter,
                               DeviceAssignmentRow.envelope).where(DeviceAssignmentRow.device_id.in_(behind)))})
        return newer

    def _mark_published(self, confirmed: Mapping[str, int]) -> None:
        """Raise each device's ``published_counter`` to what the broker confirmed, in one statement."""
        if not confirmed:
            return
        with self.db.session() as session:
            if session.get_bind().dialect.name == "postgresql":
                # One statement whatever the batch size: the pairs travel as two arrays.
                session.execute(text(
                    "UPDATE device_assignments AS a SET published_counter = v.counter "
                    "FROM unnest(CAST(:ids AS VARCHAR[]), CAST(:counters AS INTEGER[])) AS v(device_id, counter) "
                    "WHERE a.device_id = v.device_id AND a.published_counter < v.counter"),
                    {"ids": list(confirmed), "counters": list(confirmed.values())})
                return
            table = DeviceAssignmentRow.__table__
            assert isinstance(table, Table)
            session.execute(update(table)
                            .where(table.c.device_id == bindparam("b_device"),
                                   table.c.published_counter < bindparam("b_counter"))
                            .values(published_counter=bindparam("b_counter")),
                            [{"b_device": d, "b_counter": c} for d, c in confirmed.items()])

    def maintain(self, now: datetime) -> tuple[int, int]:
        """Re-publish unconfirmed envelopes and re-issue half-expired ones; return (republished, reissued)."""
        with self.db.session() as session:
            unpublished = session.execute(
                select(DeviceAssignmentRow.device_id, DeviceAssignmentRow.counter, DeviceAssignmentRow.envelope)
                .where(DeviceAssignmentRow.published_counter < DeviceAssignmentRow.counter)).all()
            due = session.scalars(select(DeviceAssignmentRow.device_id)
                                  .where(DeviceAssignmentRow.refresh_after <= now)).all()
        failed = self._deliver({d: (c, e.encode()) for d, c, e in unpublished})
        reissued: list[IssuedAssignment] = []
        for device_id in due:
            try:
                with self.db.session() as session:
                    row = session.get(DeviceAssignmentRow, device_id)
                    if row is None or row.refresh_after > now:
                        continue  # another replica refreshed it meanwhile
                    reissued.append(self.next_assignment(session, device_id, {}, row.rollout_id, now))
            except (IneligibleError, NotFoundError) as exc:
                # e.g. a version it runs was yanked since: re-signing would assign it again
                log.warning("not refreshing the assignment of %s: %s", device_id, exc)
        self.publish_all(reissued)
        return len(unpublished) - len(failed), len(reissued)
