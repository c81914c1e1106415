"""Scratch databases for a fleet server run by the tests, the benchmarks or a simulation.

``postgres_database()`` creates a PostgreSQL database with a name of its own on the server at
EDGEFLEET_TEST_PG_HOST:EDGEFLEET_TEST_PG_PORT (127.0.0.1:5432, user ``postgres``, trust auth),
optionally as a copy of a ``template`` database (``CREATE DATABASE ... TEMPLATE``: a file copy
inside the server, far cheaper than running every migration again), and drops it afterwards.
``migrated_postgres()`` and ``migrated_sqlite()`` make such a template once: a database at the
newest migration. ``sqlite_copy()`` copies a migrated SQLite file.

Names carry a random part, so parallel test workers and concurrent runs never share one.

What this does not do: start PostgreSQL (scripts/_env.sh does), or know any table.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = os.environ.get("EDGEFLEET_TEST_PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("EDGEFLEET_TEST_PG_PORT", "5432"))
# The database scripts/test asks for (scripts/_env.sh), to connect to while creating and dropping others.
ADMIN_DSN = f"host={HOST} port={PORT} user=postgres dbname=test"


def postgres_available() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=1):
            return True
    except OSError:
        return False


def postgres_url(name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the scratch server."""
    return f"postgresql+psycopg://postgres@{HOST}:{PORT}/{name}"


@contextmanager
def postgres_database(template: str | None = None, *, prefix: str = "edgefleet") -> Iterator[str]:
    """A new database (a copy of ``template`` when given); yields its URL, drops it afterwards.

    The drop uses ``WITH (FORCE)``: a server or pool the caller left running must not keep a
    scratch database alive forever.
    """
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield postgres_url(name)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _migrate(url: str) -> None:
    from fleet_server.db import Database

    database = Database(url)
    try:
        database.migrate()
    finally:
        # A template may have no open connection while it is copied; SQLite folds its WAL back.
        database.dispose()


@contextmanager
def migrated_postgres(*, prefix: str = "edgefleet_template") -> Iterator[str]:
    """A database at the newest migration, to pass by name as ``template``; yields its name."""
    with postgres_database(prefix=prefix) as url:
        _migrate(url)
        yield url.rsplit("/", 1)[1]


def migrated_sqlite(path: Path) -> Path:
    """An SQLite file at ``path`` at the newest migration, to copy with ``sqlite_copy``."""
    _migrate(f"sqlite:///{path}")
    return path


def sqlite_copy(template: Path, path: Path) -> str:
    """A copy of the migrated SQLite ``template`` at ``path``; returns its SQLAlchemy URL."""
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"
