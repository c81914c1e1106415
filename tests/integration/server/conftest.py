"""Fixtures for the fleet server's integration tests: each runs on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/edgefleet.sqlite"
    url: str = request.getfixturevalue("postgres_url")
    return url
