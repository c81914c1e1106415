"""Storage: the engine, sessions, and running the Alembic migrations.

The schema lives in ``fleet_server/migrations`` (Alembic), which ``migrate`` runs to ``head``
at server start; the ORM classes that mirror it are all in ``fleet_server.tables``, and a test
checks the two agree. The same code runs on SQLite (the embedded default) and PostgreSQL.

This module holds no session of its own: callers open one per unit of work with
``Database.session()``, so nothing leaks between requests or threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from typing import Any

from sqlalchemy import (
    Engine,
    create_engine,
    event,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.credentials import safe_url
from fleet_server.errors import ConfigError, ServerError

__all__ = ["Database", "normalize_url", "safe_url", "upgrade"]


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
