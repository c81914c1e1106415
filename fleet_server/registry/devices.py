"""Devices: enrollment tokens, enrollment, device credentials, labels, revocation and presence.

An admin asks for a one-time enrollment token naming a firmware profile and labels; a device
redeems it once (``enroll``) and receives its id, MQTT credentials and API token. The token is
spent by one conditional UPDATE (``used_at IS NULL AND expires_at > now``), so two devices racing
with the same token cannot both win, on SQLite or PostgreSQL. Only hashes of tokens are stored.

After every change to who may connect (enroll, revoke) the broker's accounts are told through
the ``BrokerAccounts`` seam (``enrolled``/``revoked``: Mosquitto's dynamic-security plugin
changes that one account, the password/ACL files are rendered again whole, a broker the server
does not manage gets nothing); ``sync_broker`` reconciles all of them at start.

This module knows nothing of HTTP or MQTT transport; presence arrives as parsed
``PresenceUpdate`` values from the MQTT ingest.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from edgefleet.profiles import Profile, load_profile, profile_names
from fleet_server.broker.accounts import BrokerAccounts, BrokerUser
from fleet_server.broker.logins import Account
from fleet_server.credentials import check_labels, hash_secret, new_device_id, new_secret
from fleet_server.db import Database
from fleet_server.errors import AuthError, GoneError, InvalidInputError, NotFoundError, ServerError
from fleet_server.registry.presence import PresenceUpdate
from fleet_server.tables import DeviceRow, EnrollmentTokenRow

log = logging.getLogger(__name__)

ENROLLED = "enrolled"
REVOKED = "revoked"
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class EnrollmentToken:
    token: str
    profile: str
    labels: Mapping[str, str]
    expires_at: datetime


@dataclass(frozen=True)
class Enrollment:
    """What a device receives once: its identity and secrets (the API adds the trust bundle)."""

    device_id: str
    profile: Profile
    labels: Mapping[str, str]
    mqtt_username: str
    mqtt_password: str
    api_token: str


@dataclass(frozen=True)
class DeviceRecord:
    """One enrolled device as the registry stores it: identity, labels, presence, what it reported.

    What the REST API shows for a device. Not to be confused with ``rollouts.waves.RolloutDevice``,
    the little a rollout needs to know to place a device in a wave.
    """

    id: str
    profile: str
    labels: Mapping[str, str]
    status: str
    online: bool
    last_seen: datetime | None
    hostname: str
    agent_version: str
    enrolled_at: datetime
    revoked_at: datetime | None
    reported: Mapping[str, Any] | None
    mqtt_username: str
    assignment_counter: int

    @classmethod
    def from_row(cls, row: DeviceRow) -> DeviceRecord:
        return cls(row.id, row.profile, dict(row.labels), row.status, row.online, row.last_seen, row.hostname,
                   row.agent_version, row.enrolled_at, row.revoked_at, row.reported, row.mqtt_username,
                   row.assignment_counter)

    def to_dict(self) -> dict[str, Any]:
        def ts(moment: datetime | None) -> str | None:
            return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")

        return {
            "id": self.id, "profile": self.profile, "labels": dict(self.labels), "status": self.status,
            "online": self.online, "last_seen": ts(self.last_seen), "hostname": self.hostname,
            "agent_version": self.agent_version, "enrolled_at": ts(self.enrolled_at),
            "revoked_at": ts(self.revoked_at), "reported": self.reported, "mqtt_username": self.mqtt_username,
            "assignment_counter": self.assignment_counter,
        }


def check_profile(name: str) -> Profile:
    """The firmware profile called ``name``; a path or unknown name is refused (HTTP 422)."""
    if not isinstance(name, str) or not _PROFILE_NAME.match(name) or name not in profile_names():
        raise InvalidInputError(f"profile: no firmware profile named {name!r}",
                                fix=f"use one of: {', '.join(profile_names())}")
    return load_profile(name)


def check_text(field: str, value: str) -> str:
    """``value`` if it holds no control character, else a 422 naming the field and the position.

    PostgreSQL refuses NUL in text outright (a 500 before this check), and control characters in
    a hostname or version only ever mislead whoever reads the device list or the logs.
    """
    bad = next((i for i, c in enumerate(value) if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise InvalidInputError(f"{field}: holds the control character {value[bad]!r} at position {bad}",
                                fix=f"send a {field} of printable characters only")
    return value


def _default_password_hash(password: str) -> str:
    from fleet_server.broker.auth import mosquitto_password_hash

    return mosquitto_password_hash(password)


class Devices:
    def __init__(self, db: Database, broker: BrokerAccounts, *, server_user: BrokerUser | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 hash_password: Callable[[str], str] = _default_password_hash,
                 max_token_ttl: timedelta = timedelta(days=30)) -> None:
        self.db = db
        self.broker = broker
        self.server_user = server_user
        self.clock = clock
        self.hash_password = hash_password
        self.max_token_ttl = max_token_ttl

    def _now(self) -> datetime:
        return self.clock().astimezone(UTC).replace(microsecond=0)

    # ------------------------------------------------------------ enrollment

    def create_token(self, profile: str, labels: Mapping[str, str], ttl: timedelta) -> EnrollmentToken:
        check_profile(profile)
        try:
            clean = check_labels(labels)
        except ValueError as exc:
            raise InvalidInputError(f"labels: {exc}") from exc
        if not timedelta(seconds=1) <= ttl <= self.max_token_ttl:
            raise InvalidInputError(f"ttl_seconds: {int(ttl.total_seconds())} is out of range",
                                    fix=f"use 1 to {int(self.max_token_ttl.total_seconds())} seconds")
        token = new_secret()
        now = self._now()
        with self.db.session() as session:
            session.add(EnrollmentTokenRow(token_hash=hash_secret(token), profile=profile, labels=clean,
                                           created_at=now, expires_at=now + ttl))
        return EnrollmentToken(token, profile, clean, now + ttl)

    def enroll(self, token: str, *, hostname: str = "", agent_version: str = "") -> Enrollment:
        # Checked before the token is spent: a refused enrollment may be retried with the same token.
        check_text("hostname", hostname)
        check_text("agent_version", agent_version)
        now = self._now()
        token_hash = hash_secret(token)
        device_id = new_device_id()
        password, api_token = new_secret(), new_secret()
        user = BrokerUser(device_id, self.hash_password(password), device_id)
        with self.db.session() as session:
            spent = session.execute(
                update(EnrollmentTokenRow)
                .where(EnrollmentTokenRow.token_hash == token_hash, EnrollmentTokenRow.used_at.is_(None),
                       EnrollmentTokenRow.expires_at > now)
                .values(used_at=now)
            )
            if spent.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                raise self._why_refused(token_hash, now)
            row = session.scalars(select(EnrollmentTokenRow).where(EnrollmentTokenRow.token_hash == token_hash)).one()
            profile = load_profile(row.profile)
            session.add(DeviceRow(
                id=device_id, profile=row.profile, labels=dict(row.labels), hostname=hostname[:255],
                agent_version=agent_version[:64], mqtt_username=device_id,
                mqtt_password_hash=user.password_hash, api_token_hash=hash_secret(api_token),
                status=ENROLLED, online=False, last_seen=None, reported=None, assignment_counter=0,
                enrolled_at=now, revoked_at=None,
            ))
            session.flush()
            row.device_id = device_id
            labels = dict(row.labels)
        try:
            self.broker.enrolled(user, password, self.broker_users)
        except ServerError as exc:
            # The token is spent and the device exists: refusing now would strand it. With the
            # files, the next sync (any enrollment, revocation or restart) writes its account;
            # with dynamic security, the node that missed it is named at the next reconcile.
            log.error("device %s enrolled but the broker accounts were not updated: %s", device_id, exc)
        log.info("enrolled device %s (profile %s, host %r)", device_id, profile.name, hostname)
        return Enrollment(device_id, profile, labels, device_id, password, api_token)

    def _why_refused(self, token_hash: str, now: datetime) -> Exception:
        with self.db.session() as session:
            row = session.scalars(select(EnrollmentTokenRow).where(EnrollmentTokenRow.token_hash == token_hash)).first()
        if row is None:
            return AuthError("token: this enrollment token is not known to the server",
                             fix="copy the token exactly, or create one with `edgefleet devices enroll`")
        if row.used_at is not None:
            return GoneError(f"token: this enrollment token was already used (by {row.device_id})",
                             fix="a token works once: create a new one with `edgefleet devices enroll`")
        return GoneError("token: this enrollment token has expired",
                         fix="create a new one with `edgefleet devices enroll --ttl 1h`")

    # ---------------------------------------------------------- devices

    def authenticate(self, api_token: str) -> DeviceRecord:
        with self.db.session() as session:
            row = session.scalars(select(DeviceRow).where(DeviceRow.api_token_hash == hash_secret(api_token))).first()
            if row is None or row.status != ENROLLED:
                raise AuthError("the device token is not valid or the device was revoked",
                                fix="re-enroll the device with a new token")
            return DeviceRecord.from_row(row)

    def get(self, device_id: str) -> DeviceRecord:
        with self.db.session() as session:
            row = session.get(DeviceRow, device_id)
            if row is None:
                raise NotFoundError(f"no device {device_id!r}", fix="see `edgefleet devices list`")
            return DeviceRecord.from_row(row)

    def list(self, *, status: str | None = None, ids: Sequence[str] | None = None) -> list[DeviceRecord]:
        with self.db.session() as session:
            query = select(DeviceRow).order_by(DeviceRow.enrolled_at, DeviceRow.id)
            if status is not None:
                query = query.where(DeviceRow.status == status)
            if ids is not None:
                query = query.where(DeviceRow.id.in_(list(ids)))
            return [DeviceRecord.from_row(r) for r in session.scalars(query)]

    def update_labels(self, device_id: str, changes: Mapping[str, str | None]) -> DeviceRecord:
        """Set each label to its value; a value of None removes the label."""
        with self.db.session() as session:
            row = session.get(DeviceRow, device_id)
            if row is None:
                raise NotFoundError(f"no device {device_id!r}", fix="see `edgefleet devices list`")
            labels = dict(row.labels)
            for key, value in changes.items():
                if value is None:
                    labels.pop(key, None)
                else:
                    labels[key] = value
            try:
                row.labels = check_labels(labels)
            except ValueError as exc:
                raise InvalidInputError(f"labels: {exc}") from exc
            return DeviceRecord.from_row(row)

    def revoke(self, device_id: str) -> DeviceRecord:
        """Revoke a device: its API token stops working and the broker no longer accepts it."""
        with self.db.session() as session:
            row = session.get(DeviceRow, device_id)
            if row is None:
                raise NotFoundError(f"no device {device_id!r}", fix="see `edgefleet devices list`")
            if row.status != REVOKED:
                row.status = REVOKED
                row.revoked_at = self._now()
                row.online = False
            info = DeviceRecord.from_row(row)
            user = BrokerUser(row.mqtt_username, row.mqtt_password_hash, row.id)
        self.broker.revoked(user, self.broker_users)
        log.warning("revoked device %s", device_id)
        return info

    def sync_broker(self) -> None:
        self.broker.sync(self.broker_users)

    def broker_login(self, username: str, password: str) -> str | None:
        """The enrolled device whose broker login this is, or None (a broker asking at CONNECT:
        fleet_server.broker.nats_auth). One row by its unique username, whatever the fleet size."""
        from fleet_server.broker.auth import verify_mosquitto_password

        account = self.broker_account(username)
        return account.device_id if account is not None and verify_mosquitto_password(password, account.password_hash) \
            else None

    def broker_account(self, username: str) -> Account | None:
        """The enrolled device with this broker username and its stored password hash, or None
        (revoked or unknown): one row by its unique username (fleet_server.broker.logins)."""
        with self.db.session() as session:
            row = session.execute(select(DeviceRow.id, DeviceRow.mqtt_password_hash)
                                  .where(DeviceRow.mqtt_username == username, DeviceRow.status == ENROLLED)).first()
        return None if row is None else Account(row[0], row[1])

    def broker_users(self) -> Sequence[BrokerUser]:
        """The server's own account, then every enrolled device's, as the registry holds them now."""
        with self.db.session() as session:
            rows = session.execute(select(DeviceRow.id, DeviceRow.mqtt_username, DeviceRow.mqtt_password_hash)
                                   .where(DeviceRow.status == ENROLLED).order_by(DeviceRow.id)).all()
        users = [BrokerUser(username, pw_hash, device_id) for device_id, username, pw_hash in rows]
        if self.server_user is not None:
            users.insert(0, self.server_user)
        return users

    # ---------------------------------------------------------- presence

    def record_presence(self, update_: PresenceUpdate) -> bool:
        """Store what a device's message says about it; False if the device is unknown or revoked."""
        return update_.device_id in self.record_presences([update_])

    def record_presences(self, updates: Sequence[PresenceUpdate]) -> set[str]:
        """Store many presence updates, in order, in ONE transaction; return the devices that took them.

        The MQTT ingest batches a burst of reports and events here: one transaction per batch,
        not per message, is what keeps presence ahead of a wave of thousands of devices.
        """
        ids = {u.device_id for u in updates}
        if not ids:
            return set()
        with self.db.session() as session:
            # Locked in id order, as the rollout engine locks the devices it assigns: two
            # transactions that each hold many device rows can then never wait on each other
            # in a cycle (PostgreSQL would abort one as a deadlock).
            rows = {r.id: r for r in session.scalars(
                select(DeviceRow).where(DeviceRow.id.in_(sorted(ids)), DeviceRow.status == ENROLLED)
                .order_by(DeviceRow.id).with_for_update())}
            for update_ in updates:
                row = rows.get(update_.device_id)
                if row is None:
                    continue
                if row.last_seen is not None and update_.at < row.last_seen:
                    continue  # a late duplicate must not undo newer presence
                row.last_seen = update_.at
                if update_.online is not None:
                    row.online = update_.online
                if update_.reported is not None:
                    row.reported = dict(update_.reported)
                    agent_version = update_.reported.get("agent_version")
                    if isinstance(agent_version, str):
                        row.agent_version = agent_version[:64]
            return set(rows)
