"""Signed per-device assignments: what each device should run, issued, stored and published.

Every device has one desired model map (model name -> version). ``Assignments.next_assignment``
changes that map, bumps the device's ``assignment_counter`` IN THE DATABASE (an
``UPDATE ... SET assignment_counter = assignment_counter + 1 RETURNING``, which row-locks the
device on PostgreSQL until commit and takes SQLite's single writer lock), signs the new
document with the director key, and stores the envelope as the device's latest. Two server
replicas therefore never issue the same counter to a device, and a failed transaction
(an ineligible model, a crash) leaves the counter where it was.

Publishing is separate from issuing because the rollout engine issues inside its own
transaction and may publish only after it commits: ``publish`` sends the envelope retained at
QoS 1 on ``devices/{id}/desired``. ``maintain`` is the periodic pass: it re-publishes any
envelope that was stored but not confirmed published (a broker outage, a replica that died
between commit and publish) and re-issues assignments that have passed half their lifetime,
so a device never holds an expired one.

Checked here, not only in the rollout core: a device is never assigned a model version that
is unknown, yanked, or not validated for the device's profile, and a revoked device is never
assigned anything.

This module does not decide WHO gets WHAT (``fleet_server.rollout`` does), and it does not own
the broker connection (a ``Publisher`` is injected).

    ServerError                     (fleet_server.errors)
    └── InvalidInputError
        └── IneligibleError         the device may not be assigned that model version
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgefleet import topics
from edgefleet.assignment import Assignment, DirectorSigner, ModelTarget
from fleet_server.db import Base, Database, DeviceRow, ModelRow, UTCDateTime
from fleet_server.errors import InvalidInputError, NotFoundError

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(days=7)
ENROLLED = "enrolled"  # fleet_server.devices' status for a device that may receive assignments


class IneligibleError(InvalidInputError):
    """The device may not be assigned that model version (profile, yank, revocation)."""

    def __init__(self, message: str, *, reason: str, fix: str | None = None) -> None:
        # a stable code the rollout engine records per device
        self.reason = reason
        super().__init__(message, fix=fix)


class Publisher(Protocol):
    """Publishes one MQTT message at QoS 1 and returns once the broker has it.

    ``fleet_server.mqtt.FleetMqtt`` is the real one.
    """

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...


class DeviceAssignmentRow(Base):
    """The latest signed assignment of one device."""

    __tablename__ = "device_assignments"

    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"), primary_key=True)
    counter: Mapped[int] = mapped_column(Integer)
    # name -> ModelTarget.to_dict(): the desired model map this envelope signs
    models: Mapped[dict[str, Any]] = mapped_column(JSON)
    rollout_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    envelope: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # half-life of the assignment: after this the periodic pass re-issues it
    refresh_after: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    published_counter: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


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
    return ModelTarget(row.version, row.target_path, row.sha256, row.length)


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

    def next_assignment(self, session: Session, device_id: str, models: Mapping[str, str | None],
                        rollout_id: str | None, now: datetime, ttl: timedelta | None = None) -> IssuedAssignment:
        """Change ``device_id``'s desired map by ``models`` (name -> version, None removes) and sign it.

        Runs in ``session``'s transaction and does not commit or publish: the caller commits,
        then calls ``publish``. Raises IneligibleError (nothing stored, counter unchanged once the
        caller rolls back) if any model in the resulting map may not go to this device.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        lifetime = ttl or self.ttl
        # Check before writing anything, so a refusal leaves the transaction clean for the
        # caller (the rollout engine goes on with its other devices).
        self._desired_targets(session, device_id, models)
        # The UPDATE takes the device's row lock (SQLite: the writer lock) until commit, so
        # the map we re-read below is what the previous issuer committed, never a concurrent
        # replica's half-way state; the re-check covers a yank that landed in between.
        counter = session.execute(
            update(DeviceRow).where(DeviceRow.id == device_id, DeviceRow.status == ENROLLED)
            .values(assignment_counter=DeviceRow.assignment_counter + 1)
            .returning(DeviceRow.assignment_counter)
        ).scalar_one_or_none()
        if counter is None:
            raise IneligibleError(f"device {device_id} was revoked meanwhile and gets no assignments",
                                  reason="device_revoked")
        targets, current = self._desired_targets(session, device_id, models)
        issued_at = now.astimezone(UTC).replace(microsecond=0)
        assignment = Assignment(device_id, counter, issued_at, issued_at + lifetime, rollout_id, targets)
        envelope = self.signer.sign(assignment)
        row = current or DeviceAssignmentRow(device_id=device_id, published_counter=0)
        row.counter = counter
        row.models = _dump(targets)
        row.rollout_id = rollout_id
        row.envelope = envelope.decode()
        row.issued_at = issued_at
        row.expires_at = assignment.expires_at
        row.refresh_after = issued_at + lifetime / 2
        if current is None:
            session.add(row)
        session.flush()
        return IssuedAssignment(device_id, counter, envelope, targets, rollout_id, assignment.expires_at)

    def _desired_targets(self, session: Session, device_id: str, models: Mapping[str, str | None]
                         ) -> tuple[dict[str, ModelTarget], DeviceAssignmentRow | None]:
        """The device's desired map changed by ``models``, every entry checked for this device."""
        device = session.get(DeviceRow, device_id, populate_existing=True)
        if device is None:
            raise NotFoundError(f"device {device_id} is not enrolled", fix="list devices with `edgefleet devices list`")
        if device.status != ENROLLED:
            raise IneligibleError(f"device {device_id} is {device.status} and gets no assignments",
                                  reason="device_revoked")
        current = session.get(DeviceAssignmentRow, device_id, populate_existing=True)
        wanted = {n: t.version for n, t in (_targets(current.models) if current else {}).items()}
        for name, version in models.items():
            if version is None:
                wanted.pop(name, None)
            else:
                wanted[name] = version
        targets = {name: eligible_target(session, device, name, version) for name, version in sorted(wanted.items())}
        return targets, current

    # -- convenience: issue, commit, publish ------------------------------------------------

    def assign(self, device_id: str, models: Mapping[str, str | None], rollout_id: str | None,
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

    # -- publishing ------------------------------------------------------------------------

    def publish(self, issued: IssuedAssignment) -> None:
        """Publish retained, then make sure the broker ends up holding the LATEST envelope.

        Two replicas can commit counters 5 and 6 and publish them in the opposite order; the
        broker would then retain 5, which the device refuses as a replay. So after publishing we
        look again, and publish the stored latest if it is newer than what we sent.
        """
        self._send(issued.device_id, issued.envelope)
        self._mark_published(issued.device_id, issued.counter)
        with self.db.session() as session:
            row = session.get(DeviceAssignmentRow, issued.device_id)
            newer = (row.counter, row.envelope.encode()) if row and row.counter > issued.counter else None
        if newer is not None:
            self._send(issued.device_id, newer[1])
            self._mark_published(issued.device_id, newer[0])

    def _send(self, device_id: str, envelope: bytes) -> None:
        self.publisher.publish(topics.desired(device_id), envelope, retain=True)

    def _mark_published(self, device_id: str, counter: int) -> None:
        with self.db.session() as session:
            session.execute(update(DeviceAssignmentRow)
                            .where(DeviceAssignmentRow.device_id == device_id,
                                   DeviceAssignmentRow.published_counter < counter)
                            .values(published_counter=counter))

    def maintain(self, now: datetime) -> tuple[int, int]:
        """Re-publish unconfirmed envelopes and re-issue half-expired ones; return (republished, reissued)."""
        with self.db.session() as session:
            unpublished = session.execute(
                select(DeviceAssignmentRow.device_id, DeviceAssignmentRow.counter, DeviceAssignmentRow.envelope)
                .where(DeviceAssignmentRow.published_counter < DeviceAssignmentRow.counter)).all()
            due = session.scalars(select(DeviceAssignmentRow.device_id)
                                  .where(DeviceAssignmentRow.refresh_after <= now)).all()
        for device_id, counter, envelope in unpublished:
            self._send(device_id, envelope.encode())
            self._mark_published(device_id, counter)
        reissued = 0
        for device_id in due:
            try:
                with self.db.session() as session:
                    row = session.get(DeviceAssignmentRow, device_id)
                    if row is None or row.refresh_after > now:
                        continue  # another replica refreshed it meanwhile
                    issued = self.next_assignment(session, device_id, {}, row.rollout_id, now)
            except (IneligibleError, NotFoundError) as exc:
                # e.g. a version it runs was yanked since: re-signing would assign it again
                log.warning("not refreshing the assignment of %s: %s", device_id, exc)
                continue
            self.publish(issued)
            reissued += 1
        return len(unpublished), reissued
