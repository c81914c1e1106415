"""Every table of the fleet server's database, as SQLAlchemy 2 ORM classes, in one place.

The schema itself lives in ``fleet_server/migrations`` (Alembic), which the server runs to
``head`` at start (``fleet_server.db``); the classes here mirror it, and a test compares
``Base.metadata`` with the migrated database so the two cannot drift apart. Only portable types
are used, so the same classes serve SQLite (the embedded default) and PostgreSQL: JSON, not
JSONB; timestamps stored as UTC and handed back timezone-aware on both (``UTCDateTime``).

    registry     models, devices, enrollment_tokens
    rollouts     device_assignments (fleet_server.rollouts.assignments), rollouts and rollout_devices (.engine)
    telemetry    telemetry_batches, telemetry_records, device_events (fleet_server.telemetry.ingest),
                 shadow_records (fleet_server.telemetry.shadow; read by fleet_server.rollouts.figures),
                 device_refusals (fleet_server.telemetry.refusals), alert_state (fleet_server.telemetry.monitor)

This module holds no engine or session (``fleet_server.db.Database`` does) and no queries:
the modules named above own the reads and writes of their tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = ["AlertStateRow", "Base", "DeviceAssignmentRow", "DeviceEventRow", "DeviceRefusalRow", "DeviceRow",
           "EnrollmentTokenRow", "ModelRow", "RolloutDeviceRow", "RolloutRow", "ShadowRecordRow", "TelemetryBatchRow",
           "TelemetryRecordRow",
           "UTCDateTime"]


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    SQLite keeps no zone and hands back naive datetimes; PostgreSQL hands back aware ones.
    Normalizing here means comparisons with ``datetime.now(UTC)`` never raise.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: pass a timezone-aware UTC time")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    """One published model version (a TUF target)."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(BigInteger)
    target_path: Mapped[str] = mapped_column(String(300))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    profiles: Mapped[list[str]] = mapped_column(JSON)
    yanked: Mapped[bool] = mapped_column(Boolean, default=False)
    yanked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeviceRow(Base):
    """One enrolled device, its credentials (hashed) and its last known presence."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    profile: Mapped[str] = mapped_column(String(64), index=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    mqtt_username: Mapped[str] = mapped_column(String(64), unique=True)
    # Mosquitto's PBKDF2 line for the password: the broker files are rendered from it.
    mqtt_password_hash: Mapped[str] = mapped_column(String(255))
    api_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="enrolled", index=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reported: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The highest assignment counter issued to this device; only ever grows (update path).
    assignment_counter: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class EnrollmentTokenRow(Base):
    """A one-time enrollment token; only its sha256 is stored."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    profile: Mapped[str] = mapped_column(String(64))
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("devices.id"), nullable=True)


class TelemetryBatchRow(Base):
    """One telemetry batch, stored once per (device, seq) (migration 0003, fleet_server.telemetry.ingest)."""

    __tablename__ = "telemetry_batches"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_telemetry_batches_device_seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    interval_s: Mapped[float] = mapped_column(Float)
    dropped: Mapped[int] = mapped_column(Integer, default=0)
    cpu_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    rss_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    temperature_c: Mapped[float | None] = mapped_column(Float, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TelemetryRecordRow(Base):
    """One model version's counters from one batch: what the fleet views and alerts add up."""

    __tablename__ = "telemetry_records"
    __table_args__ = (UniqueConstraint("device_id", "seq", "model", "version", name="uq_telemetry_records_key"),
                      Index("ix_telemetry_records_model_ts", "model", "version", "ts"),
                      Index("ix_telemetry_records_device_ts", "device_id", "ts"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128))
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    count: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[dict[str, int]] = mapped_column(JSON)
    p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    outputs: Mapped[list[int]] = mapped_column(JSON)
    drift: Mapped[list[list[int]]] = mapped_column(JSON)
    feedback_labels: Mapped[int] = mapped_column(Integer, default=0)
    feedback_correct: Mapped[int] = mapped_column(Integer, default=0)


class ShadowRecordRow(Base):
    """One candidate's shadow figures from one batch (the batch's ``sh``, migration 0005, issue 18)."""

    __tablename__ = "shadow_records"
    __table_args__ = (UniqueConstraint("device_id", "seq", "model", "version", name="uq_shadow_records_key"),
                      Index("ix_shadow_records_model_ts", "model", "version", "ts"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128))    # the candidate's
    serving: Mapped[str] = mapped_column(String(128))    # the version that answered
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    compared: Mapped[int] = mapped_column(BigInteger)
    agreed: Mapped[int] = mapped_column(BigInteger)
    skipped: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    relative_error_sum: Mapped[float | None] = mapped_column(Float, nullable=True)
    serving_buckets: Mapped[list[int]] = mapped_column(JSON)
    candidate_buckets: Mapped[list[int]] = mapped_column(JSON)


class DeviceEventRow(Base):
    """One update-lifecycle event, stored once per (device, event_id)."""

    __tablename__ = "device_events"
    __table_args__ = (UniqueConstraint("device_id", "event_id", name="uq_device_events_device_event"),
                      Index("ix_device_events_device_ts", "device_id", "ts"))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    event: Mapped[str] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)


class DeviceRefusalRow(Base):
    """How many messages of one device, topic and reason were refused or clamped (migration 0004)."""

    __tablename__ = "device_refusals"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    topic: Mapped[str] = mapped_column(String(16), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)
    detail: Mapped[str] = mapped_column(String(200))


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


class RolloutRow(Base):
    """One rollout's header: the pure core's spec and header documents, a denormalised state, a log.

    Its devices' records are ``RolloutDeviceRow`` rows, so a change writes the few rows it
    changed, not the fleet (migration 0006 split the whole document that was kept here before).
    ``revision`` grows by one with every stored change: an engine that holds the rollout in
    memory at that revision need not read the device rows again.
    """

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)     # Rollout.spec_to_dict(): written once
    header: Mapped[dict[str, Any]] = mapped_column(JSON)   # Rollout.header_to_dict()
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    log: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_tick_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RolloutDeviceRow(Base):
    """One device's record in one rollout (``fleet_server.rollouts.machine.DeviceRecord``, column for field)."""

    __tablename__ = "rollout_devices"
    __table_args__ = (Index("ix_rollout_devices_status", "rollout_id", "status"),)

    rollout_id: Mapped[str] = mapped_column(String(64), ForeignKey("rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    profile: Mapped[str] = mapped_column(String(64))
    wave: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    previous_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    online: Mapped[bool] = mapped_column(Boolean)
    joined_late: Mapped[bool] = mapped_column(Boolean)
    last_event: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    offline_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    rolled_back_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    serves: Mapped[str | None] = mapped_column(String(128), nullable=True)
    counter: Mapped[int | None] = mapped_column(Integer, nullable=True)


class AlertStateRow(Base):
    """The alert evaluator's episodes, persisted so a restart or a second replica does not fire again."""

    __tablename__ = "alert_state"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    episodes: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    evaluated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
