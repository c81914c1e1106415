"""Fixtures for the fleet server's integration tests.

``database_url`` runs each test on SQLite and PostgreSQL. ``mosquitto_auth`` is overridden
here so it also works when the tests run as root: Mosquitto started as root switches to the
``mosquitto`` user, which cannot read pytest's 0700 temporary directory; ``user root`` keeps
it as the owner of its files. (The fix belongs in tests/support/mosquitto.py.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import MosquittoBroker, mosquitto_binary


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/edgefleet.sqlite"
    url: str = request.getfixturevalue("postgres_url")
    return url


class _OwnedBroker(MosquittoBroker):
    def _write_config(self) -> None:
        super()._write_config()
        if os.geteuid() == 0:
            with self.config_file.open("a") as config:
                config.write("user root\n")


@pytest.fixture
def mosquitto_auth(tmp_path: Path) -> Iterator[MosquittoBroker]:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (scripts/test does this)")
    with _OwnedBroker(tmp_path / "mosquitto-auth", auth=True) as broker:
        yield broker
