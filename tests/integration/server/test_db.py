"""The Alembic migrations and the ORM agree, on SQLite and PostgreSQL, and timestamps stay UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from fleet_server.db import Database, normalize_url, safe_url
from fleet_server.tables import Base, ModelRow


@pytest.fixture
def database(migrated_db: Database) -> Database:
    return migrated_db


def _model(version: str = "1.0.0") -> ModelRow:
    return ModelRow(name="digits", version=version, sha256="0" * 64, length=10, target_path="digits/x",
                    manifest={}, profiles=["rpi4-64"], yanked=False, created_at=datetime(2026, 1, 1, tzinfo=UTC))


def test_migrations_match_the_orm(database: Database) -> None:
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_migrate_is_idempotent(database: Database) -> None:
    database.migrate()


def test_name_version_is_unique(database: Database) -> None:
    with database.session() as s:
        s.add(_model())
    with pytest.raises(IntegrityError), database.session() as s:
        s.add(_model())


def test_timestamps_come_back_aware_utc(database: Database) -> None:
    with database.session() as s:
        s.add(_model("2.0.0"))
    with database.session() as s:
        row = s.scalars(select(ModelRow)).one()
    assert row.created_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert row.created_at.tzinfo is not None


def test_naive_datetimes_are_refused(database: Database) -> None:
    row = _model("3.0.0")
    row.created_at = datetime(2026, 1, 1)  # a naive time: the point of the test
    with pytest.raises(Exception, match="naive"), database.session() as s:
        s.add(row)


def test_plain_postgresql_url_uses_psycopg3() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert safe_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
