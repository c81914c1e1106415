"""Fixtures shared by the whole suite: a real Mosquitto and a real PostgreSQL schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mosquitto import MosquittoBroker, mosquitto_binary
from tests.support.postgres import postgres_available, postgres_schema


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """An anonymous Mosquitto on a free port."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (scripts/test does this)")
    with MosquittoBroker(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def mosquitto_auth(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto that enforces a password file and an ACL (initially empty)."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (scripts/test does this)")
    with MosquittoBroker(tmp_path / "mosquitto-auth", auth=True) as broker:
        yield broker


@pytest.fixture(params=["sqlite", "postgres"])
def migrated_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fleet-server Database at the latest migration, once on SQLite and once on PostgreSQL."""
    from fleet_server.db import Database

    url = f"sqlite:///{tmp_path}/db.sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    database = Database(url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL for a fresh PostgreSQL schema, dropped after the test."""
    if not postgres_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (see scripts/test for how to start it)")
    with postgres_schema() as url:
        yield url
