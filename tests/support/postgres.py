"""PostgreSQL for tests: a fresh schema in database ``test`` on 127.0.0.1:5432, dropped after.

The URL carries ``options=-csearch_path=<schema>`` so every connection (SQLAlchemy, Alembic,
psycopg) lands in the test's own schema without code changes.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

HOST = os.environ.get("EDGEFLEET_TEST_PG_HOST", "127.0.0.1")
PORT = int(os.environ.get("EDGEFLEET_TEST_PG_PORT", "5432"))
BASE_URL = f"postgresql+psycopg://postgres@{HOST}:{PORT}/test"


def postgres_available() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def postgres_schema() -> Iterator[str]:
    """Yield a SQLAlchemy URL bound to a new schema; drop the schema afterwards."""
    import psycopg

    schema = f"ef_test_{uuid.uuid4().hex[:12]}"
    dsn = f"host={HOST} port={PORT} user=postgres dbname=test"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{BASE_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
