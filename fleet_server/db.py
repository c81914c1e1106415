"""Storage: the SQLAlchemy 2 tables, the engine, and running the Alembic migrations.

The schema lives in ``fleet_server/migrations`` (Alembic), which ``migrate`` runs to ``head``
at server start; the ORM classes here mirror it and a test checks the two agree. The same
code runs on SQLite (the embedded default) and PostgreSQL: only portable types are used
(JSON, not JSONB; timestamps stored as UTC and handed back timezone-aware on both).

This module holds no session of its own: callers open one per unit of work with
``Database.session()``, so nothing leaks between requests or threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from fleet_server.credentials import safe_url
from fleet_server.errors import ConfigError, ServerError

__all__ = ["AlertStateRow", "Base", "Database", "DeviceEventRow", "DeviceRow", "EnrollmentTokenRow", "ModelRow",
           "TelemetryBatchRow", "TelemetryRecordRow", "normalize_url", "safe_url", "upgrade"]


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


class AlertStateRow(Base):
    """The alert evaluator's episodes, persisted so a restart or a second replica does not fire again."""

    __tablename__ = "alert_state"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    episodes: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    evaluated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


def normalize_url(url: str) -> str:
    """Pick the psycopg 3 driver for a plain ``postgresql://`` URL (SQLAlchemy's default is psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class Database:
    """The engine and a session factory for one database URL."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        try:
            self.engine: Engine = create_engine(self.url, echo=echo, pool_pre_ping=True)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise ConfigError(f"database URL {safe_url(url)!r} is not usable: {exc}",
                              fix="use sqlite:///PATH or postgresql://USER@HOST:PORT/DB") from exc
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: committed if the block ends normally, rolled back otherwise."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the MQTT ingest thread write while API requests read; foreign keys are off by
    # default in SQLite and the busy timeout avoids "database is locked" under concurrent writers.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("fleet_server") / "migrations"))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    try:
        command.upgrade(alembic_config(engine), revision)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]  # one line for the CLI
        raise ServerError(f"database migration failed on {safe_url(engine.url.render_as_string())}: {reason}",
                          fix="check the database is reachable and the user may create tables") from exc
